//! Kernel/userspace ABI of egressd.
//!
//! Everything both sides of the ring buffer and the maps must agree on lives here: map names,
//! `#[repr(C)]` value layouts with explicit padding, and the numeric codes of verdicts, hooks,
//! modes and address families. The crate is `#![no_std]` so the eBPF programs can use it; the
//! `user` feature adds `aya::Pod` implementations for userspace.
//!
//! Byte order: addresses are stored in network byte order (as the kernel hands them to the
//! socket hooks, see `struct bpf_sock_addr` in `include/uapi/linux/bpf.h`); ports are stored in
//! host byte order; everything else is host byte order.
#![no_std]

/// Map names as they appear in the eBPF object. A typo is a compile error, not a runtime
/// "map not found". The `_v1` suffix is the layout version: bump it when a value changes shape
/// so an upgrade never reads a map with the old layout.
///
/// Policy maps come in two sets, A and B. Generation `g` is served by set `g % 2`
/// ([`set_of`]): userspace fills the idle set completely, then publishes the new generation
/// with one 8-byte write to [`maps::GENERATION`]. The kernel reads the generation once per
/// decision, so every decision sees one whole policy, never a mix.
pub mod maps {
    /// `BPF_MAP_TYPE_LPM_TRIE` per set: key prefix length (`u32`) + 4 address bytes (network
    /// byte order), value `u32` entry id (index into `ENTRIES`).
    pub const PREFIXES_V4: [&str; 2] = ["EGRESSD_PREFIXES_V4_A_V1", "EGRESSD_PREFIXES_V4_B_V1"];
    /// `BPF_MAP_TYPE_LPM_TRIE` per set: key prefix length + 16 address bytes, value `u32`
    /// entry id.
    pub const PREFIXES_V6: [&str; 2] = ["EGRESSD_PREFIXES_V6_A_V1", "EGRESSD_PREFIXES_V6_B_V1"];
    /// IPv4 lookup table, directory, per set: `BPF_MAP_TYPE_ARRAY` with `BPF_F_MMAPABLE` of
    /// [`crate::table::Page24`] pages, [`crate::table::DIR_PAGES`] of them (64 KiB) when the
    /// table is in use (1 otherwise). Entry `a >> 18` (address `a` in host byte order, so
    /// one entry per /14) is an entry id when every address of the /14 shares the /24
    /// entry (a uniform /14), else [`crate::table::PAGE`] | the index of its page in
    /// `TABLE24`. Written by userspace through `mmap`.
    pub const TABLE14: [&str; 2] = ["EGRESSD_TABLE14_A_V1", "EGRESSD_TABLE14_B_V1"];
    /// IPv4 lookup table, page pool of the first level (DIR-24-8: Gupta, Lin, McKeown,
    /// "Routing lookups in hardware at memory access speeds", INFOCOM 1998, paged so that
    /// only /14s that are not uniform take memory), per set: `BPF_MAP_TYPE_ARRAY` with
    /// `BPF_F_MMAPABLE` of [`crate::table::Page24`] pages, one per non-uniform /14 in
    /// address order (1 when no table). Entry `(a >> 8) & 1023` of a page is an entry id, or
    /// [`crate::table::CHUNK`] | the index of a 256-entry chunk of `TABLE8` for /24s holding
    /// a longer prefix. `_V2`: `_V1` was the whole first level (2^24 entries, 64 MiB), which
    /// an upgrade drops ([`LEGACY_TABLE24`]).
    pub const TABLE24: [&str; 2] = ["EGRESSD_TABLE24_A_V2", "EGRESSD_TABLE24_B_V2"];
    /// The first level of egressd before the directory (`TABLE24`'s `_V1`, same value
    /// shape, 16,384 pages when in use): pins of these names are dropped at start.
    pub const LEGACY_TABLE24: [&str; 2] = ["EGRESSD_TABLE24_A_V1", "EGRESSD_TABLE24_B_V1"];
    /// IPv4 lookup table, second level, per set: `BPF_MAP_TYPE_ARRAY` with `BPF_F_MMAPABLE`
    /// of [`crate::table::Page8`] pages; entry `chunk * 256 + (a & 0xff)` is an entry id.
    pub const TABLE8: [&str; 2] = ["EGRESSD_TABLE8_A_V1", "EGRESSD_TABLE8_B_V1"];
    /// IPv6 lookup table, per set: `BPF_MAP_TYPE_ARRAY` with `BPF_F_MMAPABLE` of `u64`,
    /// [`crate::table6::index_entries`] of them when the table is in use (1 otherwise).
    /// Element [`crate::table6::IN_USE`] is 1 when the set looks IPv6 up in the table (0: in
    /// its LPM trie); element `1 + b` describes the /16 bucket `b`, and the chunks after them
    /// the longer buckets inside dense ones: either a bucket (low 32 bits: the index of the
    /// last range starting before it, or range 0 for the bucket at `::`, where it starts;
    /// high 32 bits: one past the index of its last range) or [`crate::table6::CHUNK`] with a
    /// chunk number (see [`crate::table6`]). An index of [`crate::table6::INDEX_ENTRIES`]
    /// elements, as egressd made before the chunks, has no room for any and is filled
    /// without them: the layout without chunks is the same.
    pub const TABLE6_INDEX: [&str; 2] = ["EGRESSD_TABLE6_INDEX_A_V1", "EGRESSD_TABLE6_INDEX_B_V1"];
    /// IPv6 lookup table, per set: `BPF_MAP_TYPE_ARRAY` with `BPF_F_MMAPABLE` of
    /// [`crate::table6::Range6`], ascending by first address; range 0 starts at `::`.
    pub const TABLE6_RANGES: [&str; 2] =
        ["EGRESSD_TABLE6_RANGES_A_V1", "EGRESSD_TABLE6_RANGES_B_V1"];
    /// `BPF_MAP_TYPE_LPM_TRIE` per set: NAT64 /96 prefixes (key as in `PREFIXES_V6`), value
    /// `u32` 1. A destination inside one is judged by its last 4 bytes as IPv4 (RFC 6052).
    pub const NAT64: [&str; 2] = ["EGRESSD_NAT64_A_V1", "EGRESSD_NAT64_B_V1"];
    /// `BPF_MAP_TYPE_ARRAY` per set of [`crate::Entry`] (decision tables), indexed by the
    /// entry id the LPM tries return; entry 0 decides destinations no prefix covers.
    pub const ENTRIES: [&str; 2] = ["EGRESSD_ENTRIES_A_V1", "EGRESSD_ENTRIES_B_V1"];
    /// `BPF_MAP_TYPE_ARRAY` of two [`crate::GlobalPolicy`], index = set.
    pub const SETTINGS: &str = "EGRESSD_SETTINGS_V1";
    /// `BPF_MAP_TYPE_ARRAY` with one `u64` at index 0: the generation in force (0 = no
    /// policy yet: everything is allowed and counted).
    pub const GENERATION: &str = "EGRESSD_GENERATION_V1";
    /// `BPF_MAP_TYPE_SK_STORAGE` (a BTF map; key `i32` socket fd from userspace) ->
    /// [`crate::SockVerdict`]: the verdict cache of the packet-level backstop, stored on each
    /// socket and freed with it.
    pub const SOCKETS: &str = "EGRESSD_SOCKETS_V1";
    /// `BPF_MAP_TYPE_SK_STORAGE` (a BTF map) -> [`crate::SockOwner`]: the task that created
    /// each socket of the enforced cgroup, recorded by [`crate::programs::SOCK_CREATE`] so
    /// the packet hook can name the owner of a packet it judges.
    pub const OWNERS: &str = "EGRESSD_OWNERS_V1";
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` of the packet hooks' scratch space, one entry per nesting
    /// level ([`crate::SCRATCH_SLOTS`]). Holds nothing between two runs of a program but
    /// slot 0's handshake memo, a hint (the eBPF crate's `memo`).
    pub const SCRATCH: &str = "EGRESSD_SCRATCH_V1";
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` of [`crate::FlowCounter`], indexed by
    /// [`crate::flow_index`].
    pub const FLOWS: &str = "EGRESSD_FLOWS_V1";
    /// `BPF_MAP_TYPE_LRU_PERCPU_HASH`: [`crate::SuppressKey`] -> [`crate::SuppressState`],
    /// event flood control. Per CPU, so that taking a key's suppressed count (a read, then
    /// an atomic subtraction: 5.10 has no fetching atomics) cannot race with another CPU
    /// taking it too: each CPU's window and count are its own.
    pub const SUPPRESS: &str = "EGRESSD_SUPPRESS_V1";
    /// `BPF_MAP_TYPE_HASH` (preallocated, no LRU: an entry is never evicted by the
    /// kernel): [`crate::SummaryKey`] -> [`crate::SummaryState`], attempts the kernel
    /// aggregated instead of writing one record each (ring buffer full, or the key over its
    /// record budget). Userspace drains it every interval.
    pub const SUMMARIES: &str = "EGRESSD_SUMMARIES_V1";
    /// `BPF_MAP_TYPE_ARRAY` with one [`crate::SummaryControl`], written by userspace only:
    /// the current summary interval and the record budget per key and interval.
    pub const SUMMARY_CONTROL: &str = "EGRESSD_SUMMARY_CONTROL_V1";
    /// `BPF_MAP_TYPE_ARRAY` with one zeroed [`crate::SummaryState`], never written: the value
    /// the kernel inserts a new summary key with (too large for the BPF stack).
    pub const SUMMARY_ZERO: &str = "EGRESSD_SUMMARY_ZERO_V1";
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` of `u64`, indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "EGRESSD_COUNTERS_V1";
    /// `BPF_MAP_TYPE_ARRAY` of `u64` (shared, atomic adds; `BPF_F_MMAPABLE`: userspace reads
    /// it in place), [`crate::unreported::SLOTS`] entries: per (hook, region, verdict), attempts the kernel counted and no record or
    /// summary carries yet. See [`crate::unreported`].
    pub const UNREPORTED: &str = "EGRESSD_UNREPORTED_V1";
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` of `u64`, indexed by [`crate::loss`] constants.
    pub const LOSS: &str = "EGRESSD_LOSS_V1";
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` of `u64`, indexed by [`crate::failsafe`] reasons: packets
    /// and attempts denied because the kernel could not judge them safely.
    pub const FAILSAFE: &str = "EGRESSD_FAILSAFE_V1";
    /// `BPF_MAP_TYPE_RINGBUF` of [`crate::Event`] records.
    pub const EVENTS: &str = "EGRESSD_EVENTS_V1";
    /// `BPF_MAP_TYPE_CGROUP_ARRAY` with one slot: the enforced cgroup (written by userspace
    /// as a cgroup directory descriptor). The LSM programs, which run for every task of the
    /// host, act only for tasks under it (`bpf_current_task_under_cgroup`).
    pub const LSM_CGROUP: &str = "EGRESSD_LSM_CGROUP_V1";
    /// `BPF_MAP_TYPE_HASH`: [`crate::ExeKey`] -> `u8` [`crate::exe`] grant: executables
    /// that may use packet sockets despite `packet_sockets` (policy
    /// `packet_socket_open`/`packet_socket_send`).
    pub const PACKET_EXES: &str = "EGRESSD_PACKET_EXES_V1";
    /// `BPF_MAP_TYPE_LPM_TRIE` (`BPF_F_NO_PREALLOC`), at most [`crate::MAX_ROUTES`]: the
    /// IPv4 routes of egressd's network namespace, all tables, by the device they leave
    /// through. Key data: the output ifindex (4 bytes, network byte order), then the
    /// destination prefix (4 bytes, network byte order); key prefix length 32 + the route's.
    /// Value `u8` 1. Written by the daemon (`kernel::routes`), read by `cgroup_skb/egress`.
    pub const ROUTES_V4: &str = "EGRESSD_ROUTES_V4_V1";
    /// As [`ROUTES_V4`] for IPv6: key data ifindex (4 bytes) then 16 address bytes.
    pub const ROUTES_V6: &str = "EGRESSD_ROUTES_V6_V1";
    /// `BPF_MAP_TYPE_ARRAY` with one [`crate::RouteState`]: the route mirror's epoch and the
    /// address of the daemon's probe socket.
    pub const ROUTE_STATE: &str = "EGRESSD_ROUTE_STATE_V1";
}

/// Routes each of [`maps::ROUTES_V4`] and [`maps::ROUTES_V6`] holds at most (distinct
/// (device, prefix) pairs; more are not mirrored, so traffic through them is denied as
/// [`failsafe::NEXT_HOP_FORCED`], and the daemon logs it).
pub const MAX_ROUTES: u32 = 65536;

/// The route mirror's state, value of [`maps::ROUTE_STATE`] (written by userspace only).
/// 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteState {
    /// Incremented by the daemon after every change of the mirror; 0: never filled (every
    /// packet the check applies to is denied, [`failsafe::NEXT_HOP_FORCED`]). Cached
    /// verdicts record its low 32 bits ([`SockVerdict::route_check`]), so a route change makes
    /// every socket's next packet checked again.
    pub epoch: u64,
    /// IPv4 address (network byte order) of the daemon's probe socket, a UDP socket bound
    /// with `IP_FREEBIND` in egressd's network namespace. The packet hook finds it with
    /// `bpf_sk_lookup_udp` in the namespace of the device a packet leaves by: found, that
    /// device is one of egressd's, whose routes the mirror holds; not found, the packet is
    /// another namespace's and the check does not apply.
    pub probe_addr: [u8; 4],
    /// Port of the probe socket, network byte order.
    pub probe_port: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
}

/// Most executables [`maps::PACKET_EXES`] holds.
pub const MAX_PACKET_EXES: u32 = 64;

/// Grants of [`maps::PACKET_EXES`].
pub mod exe {
    /// May create packet sockets (receive, e.g. a capture tool); sends are judged.
    pub const OPEN: u8 = 1;
    /// May create packet sockets and send on them (e.g. a DHCP client).
    pub const SEND: u8 = 2;
}

/// An executable file as the kernel names it: the (device, inode) of `task->mm->exe_file`,
/// key of [`maps::PACKET_EXES`]. Not its path (a task can exec through any link or bind
/// mount) and never its `comm` (which the task sets itself). 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeKey {
    /// `inode->i_sb->s_dev`, the kernel's encoding (`major << 20 | minor`).
    pub dev: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// `inode->i_ino`.
    pub ino: u64,
}

/// Name of the read-only global ([`KernelOffsets`]) that userspace sets before loading.
pub const KERNEL_OFFSETS: &str = "EGRESSD_KERNEL_OFFSETS";

/// Whether the kernel programs look IPv6 up in the range table ([`table6`]): the search is
/// a global BPF function the verifier checks once (`egressd_table6_lookup_a`, `_b`). It was off
/// while `cgroup_skb/egress` was one piece, which the 5.10 and 6.1 verifiers could not take
/// with the search in it (1M instructions); a build with it off never fills a range table
/// and keeps IPv6 in the LPM trie.
pub const TABLE6_IN_PROGRAMS: bool = true;

/// Program (function) names in the eBPF object, one per hook.
pub mod programs {
    /// `cgroup/connect4`: `connect()` on AF_INET sockets (TCP, connected UDP).
    pub const CONNECT4: &str = "egressd_connect4";
    /// `cgroup/connect6`: `connect()` on AF_INET6 sockets, including IPv4-mapped destinations.
    pub const CONNECT6: &str = "egressd_connect6";
    /// `cgroup/sendmsg4`: `sendto()`/`sendmsg()` with a destination on AF_INET UDP sockets.
    pub const SENDMSG4: &str = "egressd_sendmsg4";
    /// `cgroup/sendmsg6`: `sendto()`/`sendmsg()` with a destination on AF_INET6 UDP sockets.
    pub const SENDMSG6: &str = "egressd_sendmsg6";
    /// `cgroup_skb/egress`: packet-level backstop (raw sockets, ICMP, flows older than the
    /// policy) and egress byte accounting.
    pub const SKB_EGRESS: &str = "egressd_skb_egress";
    /// `cgroup_skb/ingress`: ingress byte accounting (never drops).
    pub const SKB_INGRESS: &str = "egressd_skb_ingress";
    /// `cgroup/sock_create`: records the creating task on every AF_INET/AF_INET6 socket
    /// ([`crate::maps::OWNERS`]); never refuses.
    pub const SOCK_CREATE: &str = "egressd_sock_create";
    /// `lsm/socket_create`: creation of sockets that put frames on the wire past the INET
    /// hooks (AF_PACKET, AF_XDP) by tasks under the enforced cgroup.
    pub const LSM_SOCKET_CREATE: &str = "egressd_lsm_socket_create";
    /// `lsm/socket_sendmsg`: sends on AF_PACKET/AF_XDP sockets, and the next hop of raw IP
    /// sockets that write their own IP header (`IP_HDRINCL`, `IPPROTO_RAW`).
    pub const LSM_SOCKET_SENDMSG: &str = "egressd_lsm_socket_sendmsg";
    /// `tc/egress`: frames of non-INET sockets (AF_PACKET) created under the enforced cgroup,
    /// on the interfaces of egressd's network namespace; loaded only where the LSM hooks do
    /// not run.
    pub const TC_EGRESS: &str = "egressd_tc_egress";
}

/// Policy set (0 = A, 1 = B) that serves generation `generation`.
#[inline(always)]
pub const fn set_of(generation: u64) -> usize {
    (generation & 1) as usize
}

/// Maximum number of NAT64 prefixes per set.
pub const MAX_NAT64: u32 = 64;

/// Region ids are indices into [`maps::REGIONS`]. Id 0 is reserved for "in no region".
pub const REGION_UNKNOWN: u32 = 0;
/// Reserved region id under which loopback and unspecified destinations (always allowed)
/// are counted.
pub const REGION_LOCAL: u32 = MAX_REGIONS - 1;
/// Number of region slots, including the reserved ids [`REGION_UNKNOWN`] and
/// [`REGION_LOCAL`]; a policy can name at most `MAX_REGIONS - 2` regions.
pub const MAX_REGIONS: u32 = 1024;

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Default maximum number of prefixes per LPM trie; userspace may raise it at load time.
pub const DEFAULT_MAX_PREFIXES: u32 = 1 << 20;

/// What happened to a connection attempt.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Destination is allowlisted (or loopback/unspecified): let through, no event.
    Allow = 0,
    /// Destination is not allowlisted and the policy enforces: the caller gets `EPERM`.
    Deny = 1,
    /// Destination is not allowlisted but the policy is in audit mode: let through, reported.
    Audit = 2,
}

/// Number of [`Verdict`] values (counter index stride).
pub const VERDICT_COUNT: u32 = 3;

impl Verdict {
    /// Decode a verdict code from the kernel; `None` for an unknown code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Allow),
            1 => Some(Self::Deny),
            2 => Some(Self::Audit),
            _ => None,
        }
    }
}

/// The kernel hook that judged an attempt.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// See [`programs::CONNECT4`].
    Connect4 = 0,
    /// See [`programs::CONNECT6`].
    Connect6 = 1,
    /// See [`programs::SENDMSG4`].
    Sendmsg4 = 2,
    /// See [`programs::SENDMSG6`].
    Sendmsg6 = 3,
    /// See [`programs::SKB_EGRESS`].
    SkbEgress = 4,
    /// See [`programs::SKB_INGRESS`].
    SkbIngress = 5,
    /// See [`programs::LSM_SOCKET_CREATE`].
    LsmSocketCreate = 6,
    /// See [`programs::LSM_SOCKET_SENDMSG`].
    LsmSocketSendmsg = 7,
    /// See [`programs::TC_EGRESS`].
    TcEgress = 8,
}

/// Number of hook slots reserved in the counter layout (room for later hooks without a
/// layout change).
pub const HOOK_SLOTS: u32 = 12;

impl Hook {
    /// All hooks this build knows, in code order.
    pub const ALL: [Hook; 4] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
    ];

    /// Decode a hook code from the kernel; `None` for an unknown code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Connect4),
            1 => Some(Self::Connect6),
            2 => Some(Self::Sendmsg4),
            3 => Some(Self::Sendmsg6),
            4 => Some(Self::SkbEgress),
            5 => Some(Self::SkbIngress),
            6 => Some(Self::LsmSocketCreate),
            7 => Some(Self::LsmSocketSendmsg),
            8 => Some(Self::TcEgress),
            _ => None,
        }
    }
}

/// Index into [`maps::COUNTERS`] for one (hook, region, verdict) triple.
///
/// Layout: `((hook * MAX_REGIONS) + region) * VERDICT_COUNT + verdict`; the map has
/// [`COUNTER_SLOTS`] entries.
#[inline(always)]
pub const fn counter_index(hook: u32, region: u32, verdict: u32) -> u32 {
    (hook * MAX_REGIONS + region) * VERDICT_COUNT + verdict
}

/// Number of entries of [`maps::COUNTERS`].
pub const COUNTER_SLOTS: u32 = HOOK_SLOTS * MAX_REGIONS * VERDICT_COUNT;

/// Indices of [`maps::UNREPORTED`]: what keeps the invariant "per (hook, region, verdict),
/// `connection` records (each `1 + suppressed`) plus `connection_summary` counts equal the
/// decision counters" exact where no record is written at the time.
pub mod unreported {
    use crate::COUNTER_SLOTS;

    /// `PENDING + counter_index(..)`: suppressed attempts not yet carried by an event (+1
    /// for each suppressed attempt, minus the count an event or summary takes; wrapping).
    /// Userspace reports what is left when it detaches (a later event can no longer carry
    /// it), including the counts of suppression entries the LRU evicted.
    pub const PENDING: u32 = 0;
    /// `OVERFLOW + counter_index(..)`: attempts that neither a record (ring buffer full) nor
    /// a summary (summary table full) could take, with the suppressed count they carried.
    /// Only grows; userspace reports the growth.
    pub const OVERFLOW: u32 = COUNTER_SLOTS;
    /// `REPORTED + counter_index(..)`: how much of `OVERFLOW + counter_index(..)` egressd has
    /// reported, written by userspace only (programs never touch it). Pinned with the rest,
    /// so a run adopting the pins reports the overflow of the time no daemon ran.
    pub const REPORTED: u32 = 2 * COUNTER_SLOTS;
    /// Entries of the map.
    pub const SLOTS: u32 = 3 * COUNTER_SLOTS;
}

/// Indices of [`maps::LOSS`].
pub mod loss {
    /// Events that could not be reserved in the ring buffer because it was full, and could
    /// not be aggregated into a summary either (the summary table [`crate::maps::SUMMARIES`]
    /// was full) nor counted in [`crate::maps::UNREPORTED`] (an older build's programs):
    /// attempts no record or summary accounts for.
    pub const RINGBUF_FULL: u32 = 0;
    /// Events not emitted because an event for the same (process, destination, verdict, hook) was
    /// emitted less than the suppression window ago (not a loss: the next event carries the
    /// count, and the decision counters are exact regardless).
    pub const SUPPRESSED: u32 = 1;
    /// Number of entries of the loss map.
    pub const SLOTS: u32 = 4;
}

/// Reasons the kernel denied without the policy's say, because it could not judge safely
/// ("fail closed"): indices of [`maps::FAILSAFE`] and values of [`Event::reason`] (0 there
/// means the policy decided).
pub mod failsafe {
    /// The policy decided (no doubt).
    pub const NONE: u32 = 0;
    /// A packet whose IP header (or an IPv6 extension header, or the transport header's
    /// ports) could not be read; or a kernel structure an LSM hook reads (socket, message,
    /// destination address, the enforced cgroup) could not be read.
    pub const UNPARSEABLE: u32 = 1;
    /// An IPv6 extension header chain longer than [`crate::MAX_EXT_HEADERS`], or an IPv4
    /// option list longer than the bound.
    pub const CHAIN_TOO_LONG: u32 = 2;
    /// An LPM trie returned an entry id outside the decision table.
    pub const BAD_ENTRY: u32 = 3;
    /// The IPv4 table pointed at a page the map does not have, or the IPv6 range table at
    /// an index element, chunk or range it does not have (or at a chunk deeper or larger
    /// than its layout allows).
    pub const NO_PAGE: u32 = 4;
    /// A loopback or unspecified destination in a packet that leaves through another
    /// interface (a raw socket whose header names another address than it is sent to).
    pub const LOCAL_MISROUTED: u32 = 5;
    /// A routing header or IPv4 source route naming more addresses than
    /// [`crate::MAX_ROUTE_ADDRS`].
    pub const ROUTE_TOO_LONG: u32 = 6;
    /// A routing header or source route hop whose prefix has protocol/port rules: hops are
    /// judged by their prefix's default decision only, so such a hop is denied.
    pub const ROUTE_HOP_RULES: u32 = 7;
    /// A frame of a raw IP socket (`tc/egress`) leaving to another next hop than its
    /// header's destination would be routed to (another device or link-layer address), or
    /// whose header's destination is not routed out of that device at all (local,
    /// unreachable, blackhole, no neighbour entry): the kernel routed it by the `sendto`
    /// address, the packet hook judged the header.
    pub const NEXT_HOP_MISMATCH: u32 = 8;
    /// A frame of a raw IP socket (`tc/egress`) whose next hop the kernel's FIB helper
    /// would not compute (`bpf_fib_lookup`: forwarding disabled on the device, an
    /// unsupported route) or whose link-layer header could not be read.
    pub const NEXT_HOP_UNVERIFIED: u32 = 9;
    /// A packet hook's header walk whose per-CPU scratch slot was overwritten while it
    /// ran, by another walk in the same slot (nesting deeper than the slots per CPU, or a
    /// task preempting it): what it read there may be another packet's.
    pub const SCRATCH_RACE: u32 = 10;
    /// A packet of the enforced cgroup leaving through a device that has no route to its
    /// destination in any routing table ([`crate::maps::ROUTES_V4`], [`crate::maps::ROUTES_V6`]):
    /// the kernel's on-link fallback for a socket forced onto a device (`SO_BINDTODEVICE`,
    /// `SO_BINDTOIFINDEX`, `IP_UNICAST_IF`, an `IP_PKTINFO` interface index), which sends to
    /// whatever host answers for the address on that link. Also a packet judged before the
    /// daemon filled the route mirror ([`crate::RouteState::epoch`] 0).
    pub const NEXT_HOP_FORCED: u32 = 11;
    /// Number of entries of [`crate::maps::FAILSAFE`].
    pub const SLOTS: u32 = 12;
}

/// IPv6 extension headers the packet hook walks before it gives up (and denies, see
/// [`failsafe::CHAIN_TOO_LONG`]).
pub const MAX_EXT_HEADERS: usize = 8;
/// Addresses of a routing header or IPv4 source route the packet hook judges besides the
/// header's destination (more: denied, see [`failsafe::ROUTE_TOO_LONG`]).
pub const MAX_ROUTE_ADDRS: usize = 4;
/// Scratch slots per CPU of the packet hooks ([`maps::SCRATCH`]), one per nesting level: a
/// walk of `cgroup_skb/egress` in a task can be interrupted by a softirq whose packet hooks
/// walk another packet (an incoming one, or an ACK sent from there), which can be
/// interrupted in turn. Only deeper nesting shares the last slot, where each walk's token
/// catches it ([`failsafe::SCRATCH_RACE`]). A power of two: the slot is a token's low bits.
pub const SCRATCH_SLOTS: u32 = 4;
/// Size in bytes of one scratch slot (the eBPF crate's `addr::Scratch`, checked there at
/// compile time): a pinned scratch map of another size is replaced.
pub const SCRATCH_BYTES: u32 = 288;

/// Policy mode codes of [`GlobalPolicy::mode`].
pub mod mode {
    /// Not-allowlisted destinations are denied with `EPERM`.
    pub const ENFORCE: u8 = 0;
    /// Not-allowlisted destinations are let through and reported as `audit`.
    pub const AUDIT: u8 = 1;
}

/// Rule id reported when the policy `default` decided (no region, no rule); 0 means the
/// region allowlist decided.
pub const RULE_DEFAULT: u32 = u32::MAX;

/// Port rules an [`Entry`] holds at most (after inheriting those of covering prefixes).
pub const MAX_PORT_RULES: usize = 16;

/// Entries of [`maps::ENTRIES`] per set (entry ids fit the `u16` of [`table::Page8`]).
pub const MAX_ENTRIES: u32 = 16384;

/// Layout of the IPv4 lookup table ([`maps::TABLE14`], [`maps::TABLE24`], [`maps::TABLE8`]):
/// DIR-24-8 with its first level paged. All three maps are arrays of 4 KiB pages so that one
/// map element is one page: few elements, and userspace can fill them with one `memcpy`
/// through `mmap` instead of a syscall per entry. A lookup reads the directory entry of the
/// /14, then (not uniform) the /24 entry in its page, then (a chunk) the address's entry.
pub mod table {
    /// Bytes per map element.
    pub const PAGE_BYTES: usize = 4096;
    /// First-level (directory and pool) entries per page.
    pub const PER_PAGE24: usize = PAGE_BYTES / 4;
    /// Second-level entries per page.
    pub const PER_PAGE8: usize = PAGE_BYTES / 2;
    /// /14s of the address space: directory entries, and the most pages a pool may need.
    pub const PAGES24: u32 = (1 << 24) / PER_PAGE24 as u32;
    /// Directory pages of a table in use: one entry per /14 (64 KiB).
    pub const DIR_PAGES: u32 = PAGES24 / PER_PAGE24 as u32;
    /// Address bits below a directory entry's /14.
    pub const DIR_SHIFT: u32 = 18;
    /// Directory flag: the low 31 bits are the index of a pool page, not an entry id.
    pub const PAGE: u32 = 1 << 31;
    /// Pool-page flag: the low 31 bits are a chunk index, not an entry id.
    pub const CHUNK: u32 = 1 << 31;
    /// Entries of one second-level chunk (the last 8 bits of the address).
    pub const CHUNK_ENTRIES: usize = 256;
    /// Chunks per second-level page.
    pub const CHUNKS_PER_PAGE8: usize = PER_PAGE8 / CHUNK_ENTRIES;
    /// Most chunks a table may have (keeps `chunk << 8` within 31 bits).
    pub const MAX_CHUNKS: u32 = 1 << 23;
    /// One directory or pool page: entry ids, or [`PAGE`] | pool page (directory),
    /// [`CHUNK`] | chunk index (pool).
    pub type Page24 = [u32; PER_PAGE24];
    /// One second-level page: entry ids.
    pub type Page8 = [u16; PER_PAGE8];
}

/// Layout of the IPv6 lookup table ([`maps::TABLE6_INDEX`], [`maps::TABLE6_RANGES`]): the
/// address space cut into disjoint ranges, each deciding one entry id. The index maps the
/// destination's /16 to a bucket of ranges, or, for a /16 holding more than a few ranges, to
/// a chunk of [`CHUNK_ENTRIES`] buckets indexed by the next [`STRIDE`] bits (a multibit trie
/// over the buckets, at most [`SUB_LEVELS`] deep, down to /40); the kernel then
/// binary-searches the bucket's range starts. One map element per bucket and per range (not
/// pages): the kernel then reads them by key at a constant offset, so the verifier need not
/// track the search indices precisely and prunes the search's paths. Filled through `mmap`
/// like [`table`].
pub mod table6 {
    /// Index element that is 1 when the set uses the table.
    pub const IN_USE: u32 = 0;
    /// Index elements before the chunks: the flag, then one per /16 bucket.
    pub const INDEX_ENTRIES: u32 = 1 + (1 << 16);
    /// Address bits a chunk level indexes: a chunk's elements are the buckets of the values
    /// of the next `STRIDE` bits.
    pub const STRIDE: u32 = 4;
    /// Elements of one chunk.
    pub const CHUNK_ENTRIES: u32 = 1 << STRIDE;
    /// Chunk levels below the /16 buckets: down to /40 (/20, /24, ... /40).
    pub const SUB_LEVELS: u32 = 24 / STRIDE;
    /// Flag of an index element that points to a chunk: its low 32 bits are the chunk's
    /// number `c`, whose elements are `INDEX_ENTRIES + c * CHUNK_ENTRIES ..`.
    pub const CHUNK: u64 = 1 << 63;
    /// Most chunks an index may hold (2^19: 64 MiB of index).
    pub const MAX_CHUNKS: u32 = 1 << 19;
    /// Most ranges a table may hold (2^21).
    pub const MAX_RANGES: usize = 1 << 21;
    /// Steps of the kernel's binary search: log2([`MAX_RANGES`]) + 1.
    pub const SEARCH_STEPS: u32 = 22;

    /// Index elements of a table with room for `chunks` chunks.
    pub const fn index_entries(chunks: u32) -> u32 {
        INDEX_ENTRIES + chunks * CHUNK_ENTRIES
    }

    /// Chunks a table with room for `ranges` ranges gets: one per 8 ranges (a chunk, 128
    /// bytes, costs about two thirds of the 8 ranges' 192), at least 16, at most
    /// [`MAX_CHUNKS`].
    pub const fn chunk_budget(ranges: usize) -> u32 {
        let c = ranges / 8 + 16;
        if c > MAX_CHUNKS as usize {
            MAX_CHUNKS
        } else {
            c as u32
        }
    }

    /// One range: its first address (host byte order, in two halves) and its entry id.
    /// 24 bytes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Range6 {
        /// High 64 bits of the first address.
        pub hi: u64,
        /// Low 64 bits of the first address.
        pub lo: u64,
        /// Entry id of every address from here to the next range's first.
        pub id: u32,
        /// Explicit padding, always zero.
        pub _pad: u32,
    }
}

/// Action codes of [`PortRule::action`] and [`Entry::default_action`].
pub mod action {
    /// Deny (or report, when the rule is in audit mode).
    pub const DENY: u8 = 0;
    /// Allow.
    pub const ALLOW: u8 = 1;
}

/// A protocol/port rule inside an [`Entry`]. 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// First port of the range, host byte order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host byte order.
    pub port_hi: u16,
    /// IANA protocol number the rule matches (see `any_protocol`): 0 is IANA's HOPOPT,
    /// never "any".
    pub protocol: u8,
    /// [`action`] code.
    pub action: u8,
    /// 1: a deny is reported as audit and let through.
    pub audit: u8,
    /// 1: the rule matches every protocol (`protocol` is then 0 and ignored); 0: only
    /// `protocol`.
    pub any_protocol: u8,
    /// Rule id for events.
    pub rule: u32,
}

impl PortRule {
    /// Whether the rule applies to IP protocol `protocol` and port `port` (host byte order;
    /// 0 for protocols without ports). The one definition the kernel, the compiler and
    /// the reference model share.
    #[inline(always)]
    pub const fn matches(&self, protocol: u8, port: u16) -> bool {
        (self.any_protocol != 0 || self.protocol == protocol)
            && self.port_lo <= port
            && port <= self.port_hi
    }
}

/// The decision table of one prefix, value of [`maps::ENTRIES`]. The kernel tries `rules`
/// in order (first match wins: userspace orders them by precedence, see
/// `agent/src/policy/mod.rs`), then falls back to the default. 208 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Region id reported for destinations judged by this entry.
    pub region: u32,
    /// Rule id of the default decision (0: the region allowlist or the policy default).
    pub default_rule: u32,
    /// [`action`] code when no port rule matches.
    pub default_action: u8,
    /// 1: a default deny is reported as audit and let through.
    pub default_audit: u8,
    /// Number of valid `rules`, at most [`MAX_PORT_RULES`].
    pub n_rules: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
    /// Port rules, `n_rules` valid, the rest zero.
    pub rules: [PortRule; MAX_PORT_RULES],
}

/// Per-set policy settings, value of [`maps::SETTINGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalPolicy {
    /// Generation this set was filled for (must equal the published generation).
    pub generation: u64,
    /// [`mode::ENFORCE`] or [`mode::AUDIT`].
    pub mode: u8,
    /// 1: flows judged under an older generation are re-judged and cut if now denied;
    /// 0: they keep their verdict until closed.
    pub cut_established: u8,
    /// 1: IPv4 destinations are looked up in this set's table ([`maps::TABLE14`]); 0: in
    /// its LPM trie ([`maps::PREFIXES_V4`]).
    pub v4_table: u8,
    /// [`Verdict`] code for sockets that bypass the INET hooks (AF_PACKET, AF_XDP) created
    /// or used by tasks under the enforced cgroup (policy field `packet_sockets`). 0 (allow)
    /// in a set filled by an egressd older than the LSM programs, which never read it.
    pub packet_sockets: u8,
    /// Event suppression window in milliseconds: at most one event per (process,
    /// destination, verdict) per window; 0 disables suppression.
    pub suppress_ms: u32,
}

/// Key of [`maps::SUPPRESS`]: one (process, destination, verdict, hook, region). 32 bytes.
///
/// The hook and region are part of it because the suppressed counts not yet carried by an
/// event are kept per (hook, region, verdict) ([`unreported::PENDING`]): an attempt
/// suppressed at one hook must be carried by an event of the same hook and region, or the
/// per-hook accounting counts it twice (once carried, once pending at the stop). Before
/// they were, a `connect()` and a v4-mapped `connect()` (connect4, connect6), or a
/// `sendto()` and a `send()` on the connected socket (sendmsg4, the packet hook), to one
/// destination shared a key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuppressKey {
    /// Thread-group id.
    pub pid: u32,
    /// Destination, as in [`Event::dst_addr`].
    pub dst_addr: [u8; 16],
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`Verdict`] code.
    pub verdict: u8,
    /// Address family ([`family`]).
    pub family: u8,
    /// [`Hook`] code of the attempt.
    pub hook: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
    /// Region id of the destination, as in [`Event::region`].
    pub region: u32,
}

/// Value of [`maps::SUPPRESS`]. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuppressState {
    /// `bpf_ktime_get_boot_ns()` of the last emitted event.
    pub last_ns: u64,
    /// Events suppressed since then (atomically added to and taken).
    pub suppressed: u64,
}

/// Entries of [`maps::SUPPRESS`] (LRU: an evicted key only means its next event is not
/// suppressed; its count is then lost from the event stream but not from the counters).
pub const SUPPRESS_ENTRIES: u32 = 16384;

/// Key of [`maps::SUMMARIES`]: one (cgroup, hook, region, verdict, rule) in one interval
/// parity. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SummaryKey {
    /// cgroup v2 id, as in [`Event::cgroup_id`].
    pub cgroup_id: u64,
    /// Region id, as in [`Event::region`].
    pub region: u32,
    /// Rule id, as in [`Event::rule`].
    pub rule: u32,
    /// [`Hook`] code.
    pub hook: u8,
    /// [`Verdict`] code.
    pub verdict: u8,
    /// `SummaryControl::epoch & 1` of the interval the attempts were aggregated in: the
    /// kernel fills one parity while userspace drains and removes the other's keys, so the
    /// table holds the keys of about one interval (see [`SUMMARY_LAYOUT_DRAINED`]). Always 0
    /// from programs of an older layout (the byte was padding).
    pub parity: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
}

/// One destination a summary saw, in [`SummaryState::samples`]. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SummarySample {
    /// Destination address, as in [`Event::dst_addr`].
    pub dst_addr: [u8; 16],
    /// Destination port, host byte order (the first one seen with this address).
    pub dst_port: u16,
    /// Address family ([`family`]).
    pub family: u8,
    /// IP protocol number (for a packet socket its type, as in [`Event::protocol`]).
    pub protocol: u8,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// Sample destinations a summary keeps per interval.
pub const SUMMARY_SAMPLES: usize = 4;
/// 64-bit words of [`SummaryState::seen`] (a 1,024-bit linear-counting bitmap).
pub const SUMMARY_SEEN_WORDS: usize = 16;
/// Entries of [`maps::SUMMARIES`], shared by the two interval parities (the keys of the
/// interval that ended are removed within a grace period of its end). When it is full, a
/// new key cannot be aggregated: its attempts are written as records while the ring buffer
/// has room and counted in [`unreported::OVERFLOW`] (by hook, region and verdict) when it
/// has not; userspace reports that growth every interval.
pub const SUMMARY_ENTRIES: u32 = 4096;
/// Default record budget per summary key and interval (policy `summary_after`): past it,
/// the key's attempts are aggregated even while the ring buffer has room.
pub const DEFAULT_SUMMARY_AFTER: u32 = 1000;

/// Index of a destination address in [`SummaryState::seen`]: murmur3's 32-bit finalizer
/// over the folded address, low 10 bits. The one definition kernel and tests share.
#[inline(always)]
pub fn seen_bit(addr: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let mut h = w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(13) ^ w(12).rotate_left(19);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & (SUMMARY_SEEN_WORDS as u32 * 64 - 1)
}

/// Value of [`maps::SUMMARY_CONTROL`]. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SummaryControl {
    /// Current interval number; userspace adds 1 each time it drains the summaries. A
    /// summary whose [`SummaryState::epoch`] differs starts its per-interval fields anew.
    pub epoch: u64,
    /// Records per key and interval the kernel writes before it aggregates the key's
    /// further attempts (policy `summary_after`); 0: no budget (aggregate only when the ring
    /// buffer is full).
    pub records_per_key: u32,
    /// How userspace drains [`maps::SUMMARIES`]: [`SUMMARY_LAYOUT_DRAINED`], or 0 (an older
    /// egressd, which kept every key for good and reported the growth of its `count`).
    pub layout: u32,
}

/// [`SummaryControl::layout`]: at each interval's end userspace publishes the next epoch,
/// waits for an RCU grace period (every program that read the old epoch has returned),
/// reports the keys of the ended interval's parity and removes them. So the keys of the
/// current parity hold only attempts no record reports yet, and a table filled in one
/// interval is empty again in the next.
pub const SUMMARY_LAYOUT_DRAINED: u32 = 1;

/// Value of [`maps::SUMMARIES`]. 296 bytes.
///
/// `count` only grows (atomic adds) while the key exists: userspace reads it once no
/// program can write it any more (its interval parity has ended and a grace period passed,
/// see [`SUMMARY_LAYOUT_DRAINED`]), then removes the key, so no attempt is counted twice or
/// lost between a read and a removal. The other fields describe the interval `epoch` and
/// are written without atomics (a race between CPUs can lose a bit of `seen` or a sample,
/// never a count).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryState {
    /// Attempts aggregated under this key since the entry was made (each aggregated record
    /// adds `1 + suppressed`, the attempts it stood for).
    pub count: u64,
    /// Records written for this key in interval `epoch` (the budget).
    pub records: u64,
    /// Interval the fields below describe ([`SummaryControl::epoch`]).
    pub epoch: u64,
    /// `bpf_ktime_get_boot_ns()` of the first aggregated attempt of the interval (0: none).
    pub first_ns: u64,
    /// `bpf_ktime_get_boot_ns()` of the last aggregated attempt.
    pub last_ns: u64,
    /// Valid entries of `samples`.
    pub sampled: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Destination addresses aggregated in the interval, one bit each at [`seen_bit`]
    /// (linear counting: userspace estimates the distinct count from the zero bits).
    pub seen: [u64; SUMMARY_SEEN_WORDS],
    /// The first destinations of the interval with a new `seen` bit.
    pub samples: [SummarySample; SUMMARY_SAMPLES],
    /// The destination being aggregated, written first and read back by the kernel (see
    /// `ebpf/src/summary.rs`); not a sample.
    pub pending: SummarySample,
}

/// Cached verdict of one socket for one (destination, protocol, port), value of
/// [`maps::SOCKETS`]. A packet reuses it only when all three match; its next-hop check
/// ([`failsafe::NEXT_HOP_FORCED`]) only for the same device and route epoch. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockVerdict {
    /// Generation the verdict was made under.
    pub generation: u64,
    /// Destination judged (network byte order, IPv4 in bytes 0..4), as in [`Event::dst_addr`].
    pub dst_addr: [u8; 16],
    /// Region id of `dst_addr`.
    pub region: u32,
    /// Id of the rule that decided (as in [`Event::rule`]).
    pub rule: u32,
    /// [`Verdict`] code.
    pub verdict: u8,
    /// Address family of `dst_addr` ([`family`]).
    pub family: u8,
    /// IP protocol number judged.
    pub protocol: u8,
    /// 1: cached for a connection (a TCP connection or a connected UDP socket, judged at
    /// connect or at a TCP segment): only such an allow outlives a reload under
    /// `established = "keep"`.
    pub flow: u8,
    /// Destination port judged, host byte order (0 without ports).
    pub dst_port: u16,
    /// 0: a deny or audit verdict given at a UDP `connect()`, which sends nothing, so it was
    /// neither counted nor reported: the packet hook does both at the first datagram. 1:
    /// counted and reported.
    pub reported: u8,
    /// [`unwrap`] code of the judged address (what the socket named), for the event.
    pub mapped: u8,
    /// The next-hop check this verdict passed: [`route_check`] of the output device and
    /// the route epoch; 0: not checked (a verdict of the socket hooks, which run before
    /// routing). One aligned `u64`, so the packet hook can update it in place atomically.
    pub route_check: u64,
}

/// [`SockVerdict::route_check`] of device `ifindex` under route epoch `epoch` (its low 32
/// bits, high half; the ifindex, low half).
pub const fn route_check(ifindex: u32, epoch: u64) -> u64 {
    (epoch << 32) | ifindex as u64
}

/// Packets and bytes (IP header included, link layer excluded: `skb->len` at the cgroup
/// hook) for one (direction, region, verdict), value of [`maps::FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounter {
    /// Packets (a GSO super-packet counts once).
    pub packets: u64,
    /// Bytes from the IP header on.
    pub bytes: u64,
}

/// Direction of a packet, for [`flow_index`].
pub mod direction {
    /// Leaving the host (`cgroup_skb/egress`).
    pub const EGRESS: u32 = 0;
    /// Arriving (`cgroup_skb/ingress`).
    pub const INGRESS: u32 = 1;
}

/// Index into [`maps::FLOWS`]: `((direction * MAX_REGIONS) + region) * VERDICT_COUNT +
/// verdict`; the map has [`FLOW_SLOTS`] entries.
#[inline(always)]
pub const fn flow_index(direction: u32, region: u32, verdict: u32) -> u32 {
    (direction * MAX_REGIONS + region) * VERDICT_COUNT + verdict
}

/// Number of entries of [`maps::FLOWS`].
pub const FLOW_SLOTS: u32 = 2 * MAX_REGIONS * VERDICT_COUNT;

/// Codes of [`Event::mapped`].
pub mod unwrap {
    /// The address was judged as given.
    pub const NONE: u8 = 0;
    /// An IPv4-mapped IPv6 address (RFC 4291 section 2.5.5.2) judged as its IPv4 address.
    pub const MAPPED: u8 = 1;
    /// A NAT64 address (RFC 6052) judged as the IPv4 address it embeds.
    pub const NAT64: u8 = 2;
}

/// Address family codes (Linux `AF_*` values).
pub mod family {
    /// `AF_INET`.
    pub const INET: u8 = 2;
    /// `AF_INET6`.
    pub const INET6: u8 = 10;
    /// `AF_PACKET`: frames built by the process (link layer and up).
    pub const PACKET: u8 = 17;
    /// `AF_XDP`: frames handed to a driver's queue from a user-space ring.
    pub const XDP: u8 = 44;
}

/// Where the fields the LSM programs read lie in the running kernel's structures, computed
/// by userspace from its BTF (`/sys/kernel/btf/vmlinux`) and set as a read-only global
/// ([`KERNEL_OFFSETS`]) before the programs load: no offset is compiled in. Offsets are in
/// bytes from the start of the named structure. `valid` is 0 when any could not be found
/// (the LSM programs are then not attached). 36 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when every offset below was found.
    pub valid: u32,
    /// `struct socket`: `short type`.
    pub socket_type: u16,
    /// `struct socket`: `struct sock *sk`.
    pub socket_sk: u16,
    /// `struct sock_common` (at the start of `struct sock`): `unsigned short skc_family`.
    pub skc_family: u16,
    /// `struct sock_common`: `__be32 skc_daddr` (the connected IPv4 address).
    pub skc_daddr: u16,
    /// `struct sock_common`: `struct in6_addr skc_v6_daddr`.
    pub skc_v6_daddr: u16,
    /// `struct sock`: `u16 sk_protocol`.
    pub sk_protocol: u16,
    /// `struct inet_sock` (which starts with `struct sock`): byte holding the header-include
    /// flag (`hdrincl` bit field before 6.6, bit `INET_FLAGS_HDRINCL` of `inet_flags` since).
    pub hdrincl_byte: u16,
    /// Mask of that flag within its byte.
    pub hdrincl_mask: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// `struct msghdr`: `void *msg_name`.
    pub msg_name: u16,
    /// `struct msghdr`: `int msg_namelen`.
    pub msg_namelen: u16,
    /// `struct task_struct`: `struct mm_struct *mm`.
    pub task_mm: u16,
    /// `struct mm_struct`: `struct file *exe_file`.
    pub mm_exe_file: u16,
    /// `struct file`: `struct inode *f_inode`.
    pub file_inode: u16,
    /// `struct inode`: `unsigned long i_ino`.
    pub inode_ino: u16,
    /// `struct inode`: `struct super_block *i_sb`.
    pub inode_sb: u16,
    /// `struct super_block`: `dev_t s_dev`.
    pub sb_dev: u16,
}

/// One denied or audited attempt, as written to [`maps::EVENTS`]. 96 bytes, no implicit
/// padding.
///
/// A packet-socket event (`family` [`family::PACKET`] or [`family::XDP`], from the LSM
/// hooks) has no IP destination: `protocol` is the socket type (`SOCK_DGRAM` 2, `SOCK_RAW`
/// 3, `SOCK_PACKET` 10; 0 when unknown), `dst_port` the protocol argument the socket was
/// created with, in host byte order (an EtherType for AF_PACKET; 0 when unknown),
/// `dst_addr` is zero and `region` is [`REGION_UNKNOWN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, including suspend (CLOCK_BOOTTIME).
    pub boot_ns: u64,
    /// `bpf_get_current_cgroup_id()`: cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Policy generation that judged the attempt ([`GlobalPolicy::generation`]).
    pub generation: u64,
    /// Thread-group id (the process id as userspace sees it).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Region id of the destination, [`REGION_UNKNOWN`] if it is in no region.
    pub region: u32,
    /// Events for the same (process, destination, verdict, hook) suppressed by the kernel since
    /// the previous one that was emitted (flood control); counters are never suppressed.
    pub suppressed: u32,
    /// Id of the policy rule that decided, 0 when the region allowlist decided.
    pub rule: u32,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// [`family::INET`] or [`family::INET6`] of the address *as judged*: an IPv4-mapped IPv6
    /// destination is reported as `INET` with the IPv4 address.
    pub family: u8,
    /// IP protocol number (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17, ...).
    pub protocol: u8,
    /// [`Verdict`] code.
    pub verdict: u8,
    /// [`Hook`] code.
    pub hook: u8,
    /// How the judged address was derived from the socket's: [`unwrap::NONE`],
    /// [`unwrap::MAPPED`] (`::ffff:a.b.c.d`) or [`unwrap::NAT64`].
    pub mapped: u8,
    /// [`attribution`] code: where `pid`, `tid`, `uid`, `gid`, `comm` and `cgroup_id` come
    /// from.
    pub attribution: u8,
    /// [`failsafe`] reason when the kernel denied without the policy's say, else 0.
    pub reason: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
    /// Destination address in network byte order; IPv4 uses the first 4 bytes, rest zero.
    pub dst_addr: [u8; 16],
    /// Task name, NUL-padded (see `attribution`).
    pub comm: [u8; 16],
}

/// Codes of [`Event::attribution`]: whose process fields an event carries. A packet hook
/// (`cgroup_skb`) often runs in another task's context (softirq, a kernel worker, a process
/// that received the socket over a UNIX socket), so it never reads the current task.
pub mod attribution {
    /// The task that made the call, read in the socket hook it called (connect, sendmsg).
    pub const TASK: u8 = 0;
    /// The task that created the socket, recorded by `cgroup/sock_create` (see
    /// [`crate::SockOwner`]); at a packet hook.
    pub const SOCKET_OWNER: u8 = 1;
    /// The socket was created before egressd attached (or has no storage): only the socket's
    /// owner uid (`bpf_get_socket_uid`) and cgroup (`bpf_skb_cgroup_id`) are known; pid,
    /// tid, gid and comm are zero.
    pub const SOCKET_UID: u8 = 2;
}

/// The task that created a socket, value of [`maps::OWNERS`]. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    /// cgroup v2 id of the creating task.
    pub cgroup_id: u64,
    /// Thread-group id (process id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Task name, NUL-padded.
    pub comm: [u8; 16],
    /// `bpf_ktime_get_boot_ns()` at creation (tells a recycled pid from the creator).
    pub created_ns: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Entry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GlobalPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCounter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SuppressKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SuppressState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SummaryKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SummaryState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SummaryControl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteState {}
}

const _: () = assert!(core::mem::size_of::<Event>() == 96);
const _: () = assert!(core::mem::size_of::<GlobalPolicy>() == 16);
const _: () = assert!(core::mem::size_of::<Entry>() == 208);
const _: () = assert!(core::mem::size_of::<PortRule>() == 12);
const _: () = assert!(core::mem::size_of::<SockVerdict>() == 48);
const _: () = assert!(core::mem::offset_of!(SockVerdict, route_check) == 40);
const _: () = assert!(core::mem::size_of::<RouteState>() == 16);
const _: () = assert!(core::mem::size_of::<SockOwner>() == 48);
const _: () = assert!(core::mem::size_of::<SuppressKey>() == 32);
const _: () = assert!(core::mem::size_of::<SuppressState>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 36);
const _: () = assert!(core::mem::size_of::<ExeKey>() == 16);
const _: () = assert!(core::mem::size_of::<SummaryKey>() == 24);
const _: () = assert!(core::mem::size_of::<SummarySample>() == 24);
const _: () = assert!(core::mem::size_of::<SummaryControl>() == 16);
const _: () = assert!(core::mem::size_of::<SummaryState>() == 296);
