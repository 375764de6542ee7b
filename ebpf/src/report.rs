//! Counters and events.
use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, maps::PerCpuArray};
use egressd_common::{
    Event, Hook, SummaryKey, SuppressKey, SuppressState, Verdict, counter_index, flow_index, loss,
    unreported,
};

use crate::{
    addr::Dest,
    decide::Decision,
    maps::{
        EGRESSD_COUNTERS_V1, EGRESSD_EVENTS_V1, EGRESSD_FAILSAFE_V1, EGRESSD_FLOWS_V1,
        EGRESSD_LOSS_V1, EGRESSD_SETTINGS_V1, EGRESSD_SUPPRESS_V1, EGRESSD_UNREPORTED_V1,
    },
    owner::Who,
    summary,
};

/// Adds `n` to a per-CPU `u64` through `p`. Atomic because cgroup programs run with
/// migration, not preemption, disabled: two tasks on one CPU could interleave the update.
/// The result is unused, so LLVM emits the plain `BPF_XADD` that every supported kernel
/// accepts (fetch atomics, whose result is used, need 5.12: never use one here). core's
/// AtomicU64 is not offered for this target, so this uses the intrinsic it is built on.
#[inline(always)]
pub fn add(p: *mut u64, n: u64) {
    // SAFETY: `p` is a valid, aligned slot (per-CPU, or of a shared array: the add is atomic)
    // for the program's lifetime.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = map.get_ptr_mut(index) {
        add(p, 1);
    }
}

/// One decision at `hook`.
#[inline(always)]
pub fn count(hook: Hook, region: u32, verdict: Verdict) {
    bump(
        &EGRESSD_COUNTERS_V1,
        counter_index(hook as u32, region, verdict as u32),
    );
}

/// One denial the kernel made because it could not judge (`reason`, a
/// [`egressd_common::failsafe`] code).
#[inline(always)]
pub fn failsafe(reason: u32) {
    bump(&EGRESSD_FAILSAFE_V1, reason);
}

/// One packet of `bytes` bytes in `direction`.
#[inline(always)]
pub fn flow(direction: u32, region: u32, verdict: Verdict, bytes: u32) {
    if let Some(c) = EGRESSD_FLOWS_V1.get_ptr_mut(flow_index(direction, region, verdict as u32)) {
        // SAFETY: valid per-CPU slot; fields are u64 and 8-byte aligned.
        unsafe {
            add(&raw mut (*c).packets, 1);
            add(&raw mut (*c).bytes, u64::from(bytes));
        }
    }
}

/// Adds `n` (wrapping) to slot `index` of [`EGRESSD_UNREPORTED_V1`]. A function of its own
/// (a BPF-to-BPF call): inlined at its call sites it grew the socket_sendmsg LSM program's
/// frame past 5.10's combined stack limit.
#[inline(never)]
fn unreported(index: u32, n: u64) {
    if let Some(p) = EGRESSD_UNREPORTED_V1.get_ptr_mut(index) {
        add(p, n);
    }
}

/// Flood control: `None` when an event for the same (process, destination, verdict, hook) was
/// emitted less than the window ago (the caller then counts it as suppressed), else the
/// number suppressed since that event, which the new event carries. The suppressed counts
/// not yet carried are kept by `hook`, region and verdict ([`unreported::PENDING`]).
#[inline(always)]
fn suppress(hook: Hook, pid: u32, d: &Dest, dec: &Decision, now: u64) -> Option<u64> {
    let set = egressd_common::set_of(dec.generation) as u32;
    let window_ms = EGRESSD_SETTINGS_V1.get(set).map_or(0, |s| s.suppress_ms);
    if window_ms == 0 {
        return Some(0);
    }
    let key = SuppressKey {
        pid,
        dst_addr: d.addr,
        dst_port: d.port,
        protocol: d.protocol,
        verdict: dec.verdict as u8,
        family: d.family,
        hook: hook as u8,
        _pad: [0; 2],
        region: dec.region,
    };
    let window = u64::from(window_ms) * 1_000_000;
    match EGRESSD_SUPPRESS_V1.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: valid map value for the program's duration; fields are 8-byte aligned.
            unsafe {
                if now.wrapping_sub((*state).last_ns) < window {
                    add(&raw mut (*state).suppressed, 1);
                    unreported(
                        unreported::PENDING
                            + counter_index(hook as u32, dec.region, dec.verdict as u32),
                        1,
                    );
                    return None;
                }
                (*state).last_ns = now;
                // Take the count without a fetch atomic: subtract what was read; increments
                // that land in between stay for the next event. The state is this CPU's, so
                // no other CPU takes the same count; a program nested on this CPU (a
                // softirq) could, and would leave the count below zero: never carried
                // (a record must not claim 2^64 - n attempts), it is paid back by the
                // attempts suppressed next.
                let n = ptr::read_volatile(&raw const (*state).suppressed);
                if n > u64::MAX / 2 {
                    return Some(0);
                }
                if n != 0 {
                    add(&raw mut (*state).suppressed, n.wrapping_neg());
                    unreported(
                        unreported::PENDING
                            + counter_index(hook as u32, dec.region, dec.verdict as u32),
                        n.wrapping_neg(),
                    );
                }
                Some(n)
            }
        }
        None => {
            let _ = EGRESSD_SUPPRESS_V1.insert(
                &key,
                &SuppressState {
                    last_ns: now,
                    suppressed: 0,
                },
                0,
            );
            Some(0)
        }
    }
}

/// Writes one [`Event`] with the process fields of `who`, or aggregates the attempt into the
/// summary of its (cgroup, hook, region, verdict, rule) when the ring buffer is full or, with
/// `budgeted`, when the key has written its record budget for the interval (see `summary`).
/// Never waits; an attempt neither written nor aggregated (summary table full), with the
/// suppressed count it carried, is counted in [`unreported::OVERFLOW`] for userspace to
/// report.
///
/// `budgeted` is false at `tc/egress` (its frames are reported once per socket and
/// destination anyway), so it aggregates only when the ring buffer is full.
#[inline(always)]
pub fn event(hook: Hook, d: &Dest, dec: &Decision, who: &Who, budgeted: bool) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let o = &who.owner;
    let Some(suppressed) = suppress(hook, o.pid, d, dec, now) else {
        bump(&EGRESSD_LOSS_V1, loss::SUPPRESSED);
        return;
    };
    let (epoch, budget) = summary::control();
    let key = SummaryKey {
        cgroup_id: o.cgroup_id,
        region: dec.region,
        rule: dec.rule,
        hook: hook as u8,
        verdict: dec.verdict as u8,
        parity: (epoch & 1) as u8,
        _pad: [0; 5],
    };
    let mut state = None;
    let mut over = false;
    if budgeted {
        state = summary::state(&key);
        if let Some(s) = state {
            summary::roll(s, epoch);
            over = summary::over_budget(s, budget);
        }
    }
    let reserved = if over {
        None
    } else {
        EGRESSD_EVENTS_V1.reserve::<Event>(0)
    };
    let Some(mut entry) = reserved else {
        // One place aggregates (not one per reason), so the verifier walks it once per path.
        if !budgeted {
            state = summary::state(&key);
        }
        match state {
            Some(s) => summary::aggregate(s, d, 1 + suppressed, now),
            // Counted for userspace to report (exactly, by hook, region and verdict).
            None => unreported(
                unreported::OVERFLOW + counter_index(hook as u32, dec.region, dec.verdict as u32),
                1 + suppressed,
            ),
        }
        return;
    };
    if let Some(s) = state {
        summary::recorded(s);
    }
    entry.write(Event {
        boot_ns: now,
        cgroup_id: o.cgroup_id,
        generation: dec.generation,
        pid: o.pid,
        tid: o.tid,
        uid: o.uid,
        gid: o.gid,
        region: dec.region,
        suppressed: u32::try_from(suppressed).unwrap_or(u32::MAX),
        rule: dec.rule,
        dst_port: d.port,
        family: d.family,
        protocol: d.protocol,
        verdict: dec.verdict as u8,
        hook: hook as u8,
        mapped: d.mapped,
        attribution: who.attribution,
        reason: dec.reason as u8,
        _pad: [0; 3],
        dst_addr: d.addr,
        comm: o.comm,
    });
    entry.submit(0);
}
