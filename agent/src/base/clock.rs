//! Kernel timestamps to wall-clock time.
//!
//! Events carry `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME); the offset to CLOCK_REALTIME is
//! read at conversion time, so NTP steps after an event shift its time by at most the step.

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Converts CLOCK_BOOTTIME nanoseconds to nanoseconds since the Unix epoch.
pub fn boot_to_unix_ns(boot_ns: u64) -> i128 {
    let offset = now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME);
    i128::from(boot_ns) + offset
}

/// Current time, nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> i128 {
    now_ns(libc::CLOCK_REALTIME)
}

/// Current CLOCK_BOOTTIME, nanoseconds (the clock of kernel event timestamps).
pub fn boot_now_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}
