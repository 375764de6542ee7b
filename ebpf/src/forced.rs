//! `cgroup_skb/egress`: device-forced next hops. A socket forced onto a device
//! (`SO_BINDTODEVICE`, `SO_BINDTOIFINDEX`, `IP_UNICAST_IF`, an `IP_PKTINFO` interface index)
//! whose destination has no route through that device is sent anyway: the kernel assumes the
//! destination is on the link (`ip_route_output`'s on-link fallback) and resolves it there,
//! so whatever host answers for the address on that link gets the packet. The packet hook
//! judged the address; this checks the device: a packet of the cgroup must leave through a
//! device that has a route to its destination in some routing table of egressd's network
//! namespace, as mirrored by the daemon into [`EGRESSD_ROUTES_V4_V1`]/[`EGRESSD_ROUTES_V6_V1`]
//! (LPM tries keyed by output ifindex, then prefix). A miss is the on-link fallback:
//! [`failsafe::NEXT_HOP_FORCED`].
//!
//! Not checked: loopback, multicast and broadcast destinations (sent to a link-layer group,
//! not to a neighbour), IPv6 link-local destinations (on-link by definition), and devices of
//! other network namespaces (a container's), whose routes the mirror does not hold. The
//! namespace test: the daemon's probe socket ([`RouteState`]) is looked up with
//! `bpf_sk_lookup_udp` in the namespace of the device the packet leaves by.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_tuple},
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release},
    maps::lpm_trie::Key,
};
use egressd_common::{failsafe, family};

use crate::maps::{EGRESSD_ROUTE_STATE_V1, EGRESSD_ROUTES_V4_V1, EGRESSD_ROUTES_V6_V1};

/// `LOOPBACK_IFINDEX` (`include/net/net_namespace.h`).
const LOOPBACK_IFINDEX: u32 = 1;
/// `BPF_F_CURRENT_NETNS`: look up in the namespace of the context (for `cgroup_skb`, the
/// namespace of the device the packet leaves by).
const CURRENT_NETNS: u64 = u64::MAX;

/// The IPv4 member of `struct bpf_sock_tuple` (addresses and ports in network byte order,
/// as `u32`/`u16` holding the bytes in memory order).
#[repr(C)]
struct Tuple4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// A key of [`EGRESSD_ROUTES_V4_V1`] (the bytes of `Key<[u8; 8]>`): prefix length, then the
/// ifindex and the address, each in network byte order. Word fields, so that every store
/// is aligned (the verifier refuses misaligned stack writes) and the frame stays small.
#[repr(C)]
struct Key4 {
    prefix_len: u32,
    dev: u32,
    addr: u32,
}

/// A key of [`EGRESSD_ROUTES_V6_V1`] (the bytes of `Key<[u8; 20]>`), as [`Key4`].
#[repr(C)]
struct Key6 {
    prefix_len: u32,
    dev: u32,
    hi: u64,
    lo: u64,
}

const _: () = assert!(size_of::<Key4>() == size_of::<Key<[u8; 8]>>());
const _: () = assert!(size_of::<Key6>() == size_of::<Key<[u8; 20]>>());

/// The route mirror's epoch ([`egressd_common::RouteState::epoch`]), 0 when unreadable.
#[inline(always)]
pub fn epoch() -> u64 {
    EGRESSD_ROUTE_STATE_V1.get(0).map_or(0, |s| s.epoch)
}

/// Whether a packet to the address `hi`:`lo` (its bytes 0..8 and 8..16 in memory order, as
/// `cgroup_skb/egress` parks it; IPv4 in bytes 0..4) of family `fam`, leaving through device
/// `ifindex`, goes through a route of that device: [`failsafe::NONE`] when it does or the
/// check does not apply, else [`failsafe::NEXT_HOP_FORCED`].
#[inline(always)]
pub fn check(ctx: *mut __sk_buff, hi: u64, lo: u64, fam: u8, ifindex: u32) -> u32 {
    let meta = (u64::from(fam) << 32) | u64::from(ifindex);
    let r = egressd_forced_check(ctx, hi, lo, meta);
    // The verifier knows nothing of a global function's result, and the compiler, which
    // does, could fold the caller's check: read back through memory.
    // SAFETY: reading a live local.
    unsafe { core::ptr::read_volatile(&r) as u32 }
}

/// [`check`], with family and ifindex in `meta` (`family << 32 | ifindex`).
///
/// A global function (exported by the linker, see `build.rs`): the verifier checks it once,
/// on its own, instead of on every path of `egressd_skb_judge` that reaches it (it is called
/// from two). Called from that global function, its frame adds to the entry's and the
/// judge's in the 512 bytes of the BPF stack (5.10 rounds each frame up to 32 bytes): hence
/// the word-sized keys and no copies of the address.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_forced_check(ctx: *mut __sk_buff, hi: u64, lo: u64, meta: u64) -> u64 {
    let fam = (meta >> 32) as u8;
    let ifindex = meta as u32;
    let h = hi.to_ne_bytes();
    let v4 = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
    if ifindex == LOOPBACK_IFINDEX || ifindex == 0 || !unicast(h[0], h[1], v4, fam) {
        return u64::from(failsafe::NONE);
    }
    let Some(st) = EGRESSD_ROUTE_STATE_V1.get(0) else {
        return u64::from(failsafe::NEXT_HOP_FORCED);
    };
    if st.epoch == 0 {
        // Never filled: the daemon fills the mirror before it attaches, so this is a
        // recreated or tampered map. Fail closed.
        return u64::from(failsafe::NEXT_HOP_FORCED);
    }
    let probe = u32::from_ne_bytes(st.probe_addr);
    if !own_namespace(ctx, probe, st.probe_port) {
        return u64::from(failsafe::NONE);
    }
    let dev = ifindex.to_be();
    // Two functions, so that each lookup's call instruction sees one map and the verifier
    // calls the trie's lookup directly (see `decide`'s module doc).
    let hit = if fam == family::INET {
        route4(dev, v4)
    } else {
        route6(dev, hi, lo)
    };
    u64::from(if hit {
        failsafe::NONE
    } else {
        failsafe::NEXT_HOP_FORCED
    })
}

/// Whether device `dev` (ifindex, network byte order) has a route to the IPv4 address
/// `addr` (as [`Key4::addr`]).
#[inline(never)]
fn route4(dev: u32, addr: u32) -> bool {
    let key = Key4 {
        prefix_len: 64,
        dev,
        addr,
    };
    // SAFETY: `Key4` has the size and the bytes of the map's key (packed, align 1).
    EGRESSD_ROUTES_V4_V1
        .get(unsafe { &*(&raw const key).cast::<Key<[u8; 8]>>() })
        .is_some()
}

/// [`route4`] for the IPv6 address `hi`:`lo` (as [`Key6`]).
#[inline(never)]
fn route6(dev: u32, hi: u64, lo: u64) -> bool {
    let key = Key6 {
        prefix_len: 160,
        dev,
        hi,
        lo,
    };
    // SAFETY: as in `route4`, for `Key6`.
    EGRESSD_ROUTES_V6_V1
        .get(unsafe { &*(&raw const key).cast::<Key<[u8; 20]>>() })
        .is_some()
}

/// False for destinations sent to a link-layer group or on-link by definition: IPv4
/// multicast and limited broadcast, IPv6 multicast and link-local. `a0`, `a1`: the
/// address's first two bytes; `v4`: its first four as [`Key4::addr`].
#[inline(always)]
fn unicast(a0: u8, a1: u8, v4: u32, fam: u8) -> bool {
    if fam == family::INET {
        return a0 & 0xf0 != 0xe0 && v4 != u32::MAX;
    }
    a0 != 0xff && !(a0 == 0xfe && a1 & 0xc0 == 0x80)
}

/// Whether the device the packet leaves by is in egressd's network namespace: the daemon's
/// probe socket, bound to an address and port no other socket has, is found there. `addr`
/// and `port` as in [`egressd_common::RouteState`] (network byte order).
#[inline(always)]
fn own_namespace(ctx: *mut __sk_buff, addr: u32, port: u16) -> bool {
    let mut t = Tuple4 {
        saddr: addr,
        daddr: addr,
        sport: port,
        dport: port,
    };
    // SAFETY: valid context; `t` is the 12-byte IPv4 tuple the size says.
    let sk = unsafe {
        bpf_sk_lookup_udp(
            ctx.cast(),
            (&raw mut t).cast::<bpf_sock_tuple>(),
            size_of::<Tuple4>() as u32,
            CURRENT_NETNS,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket the lookup returned (released below on every path).
    let (ip, sport) = unsafe { ((*sk).src_ip4, (*sk).src_port) };
    // SAFETY: the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    // A socket bound to the wildcard address with the same port also matches the lookup:
    // only the exact binding is the probe.
    ip == addr && sport == u32::from(u16::from_be(port))
}
