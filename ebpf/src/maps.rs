//! Map definitions. Static names are the map names userspace looks up; they must equal the
//! constants in `egressd_common::maps` (the loader fails with "map not found" otherwise, and
//! the agent's tests check every one).
use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf},
};
use egressd_common::{
    COUNTER_SLOTS, DEFAULT_MAX_PREFIXES, EVENTS_BYTES, GlobalPolicy, MAX_REGIONS, RegionPolicy,
    loss,
};

/// IPv4 prefix (network byte order) -> region id.
#[map]
pub static EGRESSD_PREFIXES_V4_V1: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// IPv6 prefix (network byte order) -> region id.
#[map]
pub static EGRESSD_PREFIXES_V6_V1: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// Region id -> allowlisted or not.
#[map]
pub static EGRESSD_REGIONS_V1: Array<RegionPolicy> = Array::with_max_entries(MAX_REGIONS, 0);

/// Index 0: mode and generation.
#[map]
pub static EGRESSD_GLOBAL_V1: Array<GlobalPolicy> = Array::with_max_entries(1, 0);

/// (hook, region, verdict) -> attempts, per CPU.
#[map]
pub static EGRESSD_COUNTERS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Events lost in the kernel, per CPU, by cause.
#[map]
pub static EGRESSD_LOSS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::SLOTS, 0);

/// Deny/audit events for the daemon.
#[map]
pub static EGRESSD_EVENTS_V1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
