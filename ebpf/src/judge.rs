//! The verdict: region lookup, allowlist, mode, counters and events.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    maps::{PerCpuArray, lpm_trie::Key},
    programs::SockAddrContext,
};
use egressd_common::{
    Event, Hook, REGION_LOCAL, REGION_UNKNOWN, Verdict, counter_index, family, loss, mode,
};

use crate::{
    addr::{self, Dest},
    maps::{
        EGRESSD_COUNTERS_V1, EGRESSD_EVENTS_V1, EGRESSD_GLOBAL_V1, EGRESSD_LOSS_V1,
        EGRESSD_PREFIXES_V4_V1, EGRESSD_PREFIXES_V6_V1, EGRESSD_REGIONS_V1,
    },
};

/// Return value that lets the syscall proceed.
const PROCEED: i32 = 1;
/// Return value that makes the syscall fail with `EPERM`.
const REJECT: i32 = 0;

/// Judges one attempt at `hook`: returns [`PROCEED`] or [`REJECT`].
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let v6 = matches!(hook, Hook::Connect6 | Hook::Sendmsg6);
    let d = addr::dest(ctx, v6);
    if addr::is_local(&d) {
        count(hook, REGION_LOCAL, Verdict::Allow);
        return PROCEED;
    }
    let region = lookup(&d);
    let allowed = EGRESSD_REGIONS_V1
        .get(region)
        .is_some_and(|r| r.allowed != 0);
    let (generation, audit) = match EGRESSD_GLOBAL_V1.get(0) {
        Some(g) => (g.generation, g.mode == mode::AUDIT),
        // Unreachable for an array of one entry; fail closed.
        None => (0, false),
    };
    let verdict = if allowed {
        Verdict::Allow
    } else if audit {
        Verdict::Audit
    } else {
        Verdict::Deny
    };
    count(hook, region, verdict);
    if verdict != Verdict::Allow {
        report(ctx, hook, &d, region, verdict, generation);
    }
    if verdict == Verdict::Deny {
        REJECT
    } else {
        PROCEED
    }
}

/// Longest-prefix match of the destination; [`REGION_UNKNOWN`] when no prefix covers it.
#[inline(always)]
fn lookup(d: &Dest) -> u32 {
    let hit = if d.family == family::INET {
        let key = Key::new(32, [d.addr[0], d.addr[1], d.addr[2], d.addr[3]]);
        EGRESSD_PREFIXES_V4_V1.get(&key)
    } else {
        let key = Key::new(128, d.addr);
        EGRESSD_PREFIXES_V6_V1.get(&key)
    };
    hit.copied().unwrap_or(REGION_UNKNOWN)
}

/// Adds one to a per-CPU counter. Atomic because sock_addr programs run with migration, not
/// preemption, disabled: two tasks on one CPU could otherwise interleave the increment.
#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is a valid, aligned per-CPU u64 slot for the program's lifetime.
        // BPF has a 64-bit atomic add (BPF_ATOMIC | BPF_ADD) but core's AtomicU64 is not
        // offered for this target, so use the intrinsic it is built on.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

#[inline(always)]
fn count(hook: Hook, region: u32, verdict: Verdict) {
    bump(
        &EGRESSD_COUNTERS_V1,
        counter_index(hook as u32, region, verdict as u32),
    );
}

/// Writes one [`Event`]; a full ring buffer is counted in [`loss::RINGBUF_FULL`], never waited
/// on.
#[inline(always)]
fn report(
    ctx: &SockAddrContext,
    hook: Hook,
    d: &Dest,
    region: u32,
    verdict: Verdict,
    generation: u64,
) {
    let Some(mut entry) = EGRESSD_EVENTS_V1.reserve::<Event>(0) else {
        bump(&EGRESSD_LOSS_V1, loss::RINGBUF_FULL);
        return;
    };
    // SAFETY: the kernel passes a valid `bpf_sock_addr`.
    let protocol = unsafe { (*ctx.sock_addr).protocol } as u8;
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let ev = Event {
        // SAFETY: helpers without preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        generation,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        region,
        suppressed: 0,
        rule: 0,
        dst_port: d.port,
        family: d.family,
        protocol,
        verdict: verdict as u8,
        hook: hook as u8,
        mapped: d.mapped,
        _pad: [0; 5],
        dst_addr: d.addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    entry.write(ev);
    entry.submit(0);
}
