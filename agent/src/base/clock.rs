//! Kernel timestamps to wall-clock time.
//!
//! Events carry `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME); the offset to CLOCK_REALTIME is
//! read at conversion time (again after at most a millisecond: [`boot_to_unix_ns`]), so NTP
//! steps after an event shift its time by at most the step.
//! The kernel's timestamps are the initial time namespace's CLOCK_BOOTTIME: egressd must run
//! there (in a time namespace with a boottime offset every event's time is off by it).

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// How long (of CLOCK_BOOTTIME) one reading of the offset between the two clocks serves.
const OFFSET_REUSE_NS: u64 = 1_000_000;

/// Converts CLOCK_BOOTTIME nanoseconds to nanoseconds since the Unix epoch. The offset
/// between the clocks (two `clock_gettime`) is read again for a `boot_ns` more than 1 ms
/// after the last reading on this thread, else reused: one reading per millisecond of a
/// flood, not two clock reads per event.
pub fn boot_to_unix_ns(boot_ns: u64) -> i128 {
    thread_local! {
        /// CLOCK_BOOTTIME of the last reading, and the offset it gave.
        static LAST: std::cell::Cell<(u64, i128)> = const { std::cell::Cell::new((0, 0)) };
    }
    LAST.with(|last| {
        let (at, offset) = last.get();
        let offset = if boot_ns <= at.saturating_add(OFFSET_REUSE_NS) && at != 0 {
            offset
        } else {
            let unix = now_ns(libc::CLOCK_REALTIME);
            let boot = now_ns(libc::CLOCK_BOOTTIME);
            last.set((u64::try_from(boot).unwrap_or(0), unix - boot));
            unix - boot
        };
        i128::from(boot_ns) + offset
    })
}

/// Current time, nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> i128 {
    now_ns(libc::CLOCK_REALTIME)
}

/// Current CLOCK_BOOTTIME, nanoseconds (the clock of kernel event timestamps).
pub fn boot_now_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_convert_to_the_time_of_day() {
        let boot = boot_now_ns();
        let unix = boot_to_unix_ns(boot);
        assert!((unix_now_ns() - unix).abs() < 1_000_000_000, "{unix}");
        // An earlier time reuses the reading; a later one beyond 1 ms reads again, which
        // moves the offset by the clocks' drift at most.
        assert_eq!(boot_to_unix_ns(boot - 5_000_000), unix - 5_000_000);
        let later = boot_to_unix_ns(boot + 2_000_000_000) - 2_000_000_000;
        assert!((later - unix).abs() < 10_000_000, "{later} vs {unix}");
    }
}
