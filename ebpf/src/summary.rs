//! Summaries: attempts aggregated per (cgroup, hook, region, verdict, rule) and interval when
//! one record each cannot be handed over (the ring buffer is full, or the key has written its
//! record budget for the interval). Layout and what is exact: `egressd_common::SummaryState`.
use core::ptr;

use aya_ebpf::bindings::BPF_NOEXIST;
use egressd_common::{
    SUMMARY_SAMPLES, SUMMARY_SEEN_WORDS, SummaryKey, SummarySample, SummaryState, seen_bit,
};

use crate::{
    addr::Dest,
    maps::{EGRESSD_SUMMARIES_V1, EGRESSD_SUMMARY_CONTROL_V1, EGRESSD_SUMMARY_ZERO_V1},
    report::add,
};

/// The current interval and the record budget per key (0: none).
#[inline(always)]
pub fn control() -> (u64, u32) {
    EGRESSD_SUMMARY_CONTROL_V1
        .get(0)
        .map_or((0, 0), |c| (c.epoch, c.records_per_key))
}

/// The summary of `key`, made (zeroed) when absent; `None` when the table is full.
#[inline(always)]
pub fn state(key: &SummaryKey) -> Option<*mut SummaryState> {
    if let Some(p) = EGRESSD_SUMMARIES_V1.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = EGRESSD_SUMMARY_ZERO_V1.get(0)?;
    // Another CPU may insert it first (NOEXIST then fails): the lookup below finds either.
    let _ = EGRESSD_SUMMARIES_V1.insert(key, zero, u64::from(BPF_NOEXIST));
    EGRESSD_SUMMARIES_V1.get_ptr_mut(key)
}

/// Starts interval `epoch` on `s` if `s` still describes an earlier one. Plain stores: two
/// CPUs may both start it, which only repeats the same reset.
#[inline(always)]
pub fn roll(s: *mut SummaryState, epoch: u64) {
    // SAFETY: `s` is a live map value for the program's duration (see `state`).
    unsafe {
        if ptr::read_volatile(&raw const (*s).epoch) == epoch {
            return;
        }
        (*s).records = 0;
        (*s).first_ns = 0;
        (*s).sampled = 0;
        for w in 0..SUMMARY_SEEN_WORDS {
            (*s).seen[w] = 0;
        }
        ptr::write_volatile(&raw mut (*s).epoch, epoch);
    }
}

/// Whether `s` has written `budget` records in this interval (never with budget 0).
#[inline(always)]
pub fn over_budget(s: *mut SummaryState, budget: u32) -> bool {
    // SAFETY: as in `roll`.
    budget != 0 && unsafe { ptr::read_volatile(&raw const (*s).records) } >= u64::from(budget)
}

/// One record written for `s`'s key.
#[inline(always)]
pub fn recorded(s: *mut SummaryState) {
    // SAFETY: as in `roll`; the field is 8-byte aligned.
    add(unsafe { &raw mut (*s).records }, 1);
}

/// Aggregates `n` attempts (one attempt and the `n - 1` suppressed before it) to `d` at
/// `now` into `s`.
///
/// The destination goes through `s.pending` (map memory, whose contents the verifier does
/// not track) and is read back from there: after the copy, the many paths into `event`
/// that differ only in what they know about the destination are one state, and the verifier
/// walks the rest of this function once instead of once per path (on 5.10 that is the
/// difference between loading in seconds and not at all). Two CPUs aggregating the same key
/// at once may mix their pending destinations: a sample or a `seen` bit may then be wrong,
/// never a count.
#[inline(always)]
pub fn aggregate(s: *mut SummaryState, d: &Dest, n: u64, now: u64) {
    // SAFETY: as in `roll`; every field is naturally aligned.
    unsafe {
        let p = &raw mut (*s).pending;
        (*p).dst_addr = d.addr;
        (*p).dst_port = d.port;
        (*p).family = d.family;
        (*p).protocol = d.protocol;
        (*p)._pad = 0;
        let sample: SummarySample = ptr::read_volatile(p);
        add(&raw mut (*s).count, n);
        if (*s).first_ns == 0 {
            (*s).first_ns = now;
        }
        (*s).last_ns = now;
        let bit = seen_bit(&sample.dst_addr);
        let w = (bit >> 6) as usize;
        let mask = 1u64 << (bit & 63);
        if w >= SUMMARY_SEEN_WORDS {
            return;
        }
        let old = (*s).seen[w];
        if old & mask != 0 {
            return;
        }
        (*s).seen[w] = old | mask;
        let i = (*s).sampled as usize;
        if i < SUMMARY_SAMPLES {
            (*s).samples[i] = sample;
            (*s).sampled = i as u32 + 1;
        }
    }
}
