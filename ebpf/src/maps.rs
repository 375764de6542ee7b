//! Map definitions. Static names are the map names userspace looks up; they must equal the
//! constants in `egressd_common::maps` (the loader fails with "map not found" otherwise).
//! Policy maps come in sets A and B, see `egressd_common::maps`.
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, CgroupArray, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use egressd_common::{
    COUNTER_SLOTS, DEFAULT_MAX_PREFIXES, EVENTS_BYTES, Entry, ExeKey, FLOW_SLOTS, FlowCounter,
    GlobalPolicy, MAX_ENTRIES, MAX_NAT64, MAX_PACKET_EXES, MAX_ROUTES, RouteState, SUMMARY_ENTRIES,
    SUPPRESS_ENTRIES, SockOwner, SockVerdict, SummaryControl, SummaryKey, SummaryState,
    SuppressKey, SuppressState, failsafe, loss,
    table::{Page8, Page24},
    table6::Range6,
};

/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`): userspace fills the tables, and reads the
/// unreported counts, by `mmap`.
const MMAPABLE: u32 = 1 << 10;

/// IPv4 prefix (network byte order) -> region id, set A.
#[map]
pub static EGRESSD_PREFIXES_V4_A_V1: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
/// As above, set B.
#[map]
pub static EGRESSD_PREFIXES_V4_B_V1: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// IPv6 prefix (network byte order) -> region id, set A.
#[map]
pub static EGRESSD_PREFIXES_V6_A_V1: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
/// As above, set B.
#[map]
pub static EGRESSD_PREFIXES_V6_B_V1: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// IPv4 table, directory (one entry per /14), set A (one page until the loader sizes it;
/// see `egressd_common::maps::TABLE14`).
#[map]
pub static EGRESSD_TABLE14_A_V1: Array<Page24> = Array::with_max_entries(1, MMAPABLE);
/// As above, set B.
#[map]
pub static EGRESSD_TABLE14_B_V1: Array<Page24> = Array::with_max_entries(1, MMAPABLE);
/// IPv4 table, pages of the non-uniform /14s, set A (see
/// `egressd_common::maps::TABLE24`).
#[map]
pub static EGRESSD_TABLE24_A_V2: Array<Page24> = Array::with_max_entries(1, MMAPABLE);
/// As above, set B.
#[map]
pub static EGRESSD_TABLE24_B_V2: Array<Page24> = Array::with_max_entries(1, MMAPABLE);
/// IPv4 table, second level, set A.
#[map]
pub static EGRESSD_TABLE8_A_V1: Array<Page8> = Array::with_max_entries(1, MMAPABLE);
/// As above, set B.
#[map]
pub static EGRESSD_TABLE8_B_V1: Array<Page8> = Array::with_max_entries(1, MMAPABLE);

/// IPv6 table, bucket index, set A (one element, 0 = not in use, until the loader sizes
/// it; see `egressd_common::maps::TABLE6_INDEX`).
#[map]
pub static EGRESSD_TABLE6_INDEX_A_V1: Array<u64> = Array::with_max_entries(1, MMAPABLE);
/// As above, set B.
#[map]
pub static EGRESSD_TABLE6_INDEX_B_V1: Array<u64> = Array::with_max_entries(1, MMAPABLE);
/// IPv6 table, ranges, set A.
#[map]
pub static EGRESSD_TABLE6_RANGES_A_V1: Array<Range6> = Array::with_max_entries(1, MMAPABLE);
/// As above, set B.
#[map]
pub static EGRESSD_TABLE6_RANGES_B_V1: Array<Range6> = Array::with_max_entries(1, MMAPABLE);

/// NAT64 /96 prefixes, set A.
#[map]
pub static EGRESSD_NAT64_A_V1: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_NAT64, 0);
/// As above, set B.
#[map]
pub static EGRESSD_NAT64_B_V1: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_NAT64, 0);

/// Entry id -> decision table, set A.
#[map]
pub static EGRESSD_ENTRIES_A_V1: Array<Entry> = Array::with_max_entries(MAX_ENTRIES, 0);
/// As above, set B.
#[map]
pub static EGRESSD_ENTRIES_B_V1: Array<Entry> = Array::with_max_entries(MAX_ENTRIES, 0);

/// Settings of set A (index 0) and B (index 1).
#[map]
pub static EGRESSD_SETTINGS_V1: Array<GlobalPolicy> = Array::with_max_entries(2, 0);

/// Index 0: the generation in force; its parity selects the set.
#[map]
pub static EGRESSD_GENERATION_V1: Array<u64> = Array::with_max_entries(1, 0);

/// Socket -> cached verdict for the packet-level backstop (socket-local storage, see
/// `cache`). A BTF map: the kernel requires BTF key and value types for this map type.
#[btf_map]
pub static EGRESSD_SOCKETS_V1: SkStorage<SockVerdict> = SkStorage::new();

/// Socket -> the task that created it (see `owner`). A BTF map, like the one above.
#[btf_map]
pub static EGRESSD_OWNERS_V1: SkStorage<SockOwner> = SkStorage::new();

/// (hook, region, verdict) -> decisions, per CPU.
#[map]
pub static EGRESSD_COUNTERS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// (direction, region, verdict) -> packets and bytes, per CPU.
#[map]
pub static EGRESSD_FLOWS_V1: PerCpuArray<FlowCounter> =
    PerCpuArray::with_max_entries(FLOW_SLOTS, 0);

/// Per (hook, region, verdict): attempts counted and not (yet) carried by any record, see
/// `egressd_common::unreported`. Mappable: userspace reads it every second in place.
#[map]
pub static EGRESSD_UNREPORTED_V1: Array<u64> =
    Array::with_max_entries(egressd_common::unreported::SLOTS, MMAPABLE);

/// Last event time and suppressed count per (process, destination, verdict, hook), per CPU
/// (see `egressd_common::maps::SUPPRESS`).
#[map]
pub static EGRESSD_SUPPRESS_V1: LruPerCpuHashMap<SuppressKey, SuppressState> =
    LruPerCpuHashMap::with_max_entries(SUPPRESS_ENTRIES, 0);

/// Aggregated attempts per (cgroup, hook, region, verdict, rule) and interval parity (see
/// `report`).
#[map]
pub static EGRESSD_SUMMARIES_V1: HashMap<SummaryKey, SummaryState> =
    HashMap::with_max_entries(SUMMARY_ENTRIES, 0);

/// Slot 0: summary interval and record budget, written by userspace.
#[map]
pub static EGRESSD_SUMMARY_CONTROL_V1: Array<SummaryControl> = Array::with_max_entries(1, 0);

/// Slot 0: a zeroed summary, the value a new key is inserted with.
#[map]
pub static EGRESSD_SUMMARY_ZERO_V1: Array<SummaryState> = Array::with_max_entries(1, 0);

/// Fail-closed denials, per CPU, by `egressd_common::failsafe` reason.
#[map]
pub static EGRESSD_FAILSAFE_V1: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(failsafe::SLOTS, 0);

/// Scratch space of the packet hooks, per CPU and nesting level
/// ([`egressd_common::SCRATCH_SLOTS`]): the BPF stack (512 bytes) has no room for it. Holds
/// nothing between programs but slot 0's handshake memo (`memo`, a hint): a pin of another
/// shape (older builds had one slot, or no memo) is replaced at start.
#[map]
pub static EGRESSD_SCRATCH_V1: PerCpuArray<crate::addr::Scratch> =
    PerCpuArray::with_max_entries(egressd_common::SCRATCH_SLOTS, 0);

/// Events lost in the kernel, per CPU, by cause.
#[map]
pub static EGRESSD_LOSS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::SLOTS, 0);

/// Deny/audit events for the daemon.
#[map]
pub static EGRESSD_EVENTS_V1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Slot 0: the enforced cgroup, for the LSM programs (see `lsm`).
#[map]
pub static EGRESSD_LSM_CGROUP_V1: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Executables that may use packet sockets despite `packet_sockets` (see `lsm`).
#[map]
pub static EGRESSD_PACKET_EXES_V1: HashMap<ExeKey, u8> =
    HashMap::with_max_entries(MAX_PACKET_EXES, 0);

/// (output ifindex, IPv4 prefix) of every route of egressd's network namespace (see
/// `forced`; key layout in `egressd_common::maps::ROUTES_V4`).
#[map]
pub static EGRESSD_ROUTES_V4_V1: LpmTrie<[u8; 8], u8> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
/// As above for IPv6.
#[map]
pub static EGRESSD_ROUTES_V6_V1: LpmTrie<[u8; 20], u8> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
/// Slot 0: the route mirror's epoch and probe socket (see `forced`).
#[map]
pub static EGRESSD_ROUTE_STATE_V1: Array<RouteState> = Array::with_max_entries(1, 0);
