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
    bindings::bpf_sock_tuple,
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release},
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use egressd_common::{RouteState, failsafe, family};

use crate::maps::{EGRESSD_ROUTE_STATE_V1, EGRESSD_ROUTES_V4_V1, EGRESSD_ROUTES_V6_V1};

/// `LOOPBACK_IFINDEX` (`include/net/net_namespace.h`).
const LOOPBACK_IFINDEX: u32 = 1;
/// `BPF_F_CURRENT_NETNS`: look up in the namespace of the context (for `cgroup_skb`, the
/// namespace of the device the packet leaves by).
const CURRENT_NETNS: u64 = u64::MAX;

/// The IPv4 member of `struct bpf_sock_tuple` (addresses and ports in network byte order).
#[repr(C)]
struct Tuple4 {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: u16,
    dport: u16,
}

/// The route mirror's state (all zero, epoch 0, when unreadable).
#[inline(always)]
pub fn state() -> RouteState {
    EGRESSD_ROUTE_STATE_V1.get(0).copied().unwrap_or_default()
}

/// Whether a packet to `addr` (family `fam`) leaving through device `ifindex` goes through a
/// route of that device: [`failsafe::NONE`] when it does or the check does not apply, else
/// [`failsafe::NEXT_HOP_FORCED`].
#[inline(always)]
pub fn check(ctx: &SkBuffContext, addr: &[u8; 16], fam: u8, ifindex: u32, st: &RouteState) -> u32 {
    if ifindex == LOOPBACK_IFINDEX || ifindex == 0 || !unicast(addr, fam) {
        return failsafe::NONE;
    }
    if st.epoch == 0 {
        // Never filled: the daemon fills the mirror before it attaches, so this is a
        // recreated or tampered map. Fail closed.
        return failsafe::NEXT_HOP_FORCED;
    }
    if !own_namespace(ctx, st) {
        return failsafe::NONE;
    }
    let dev = ifindex.to_be_bytes();
    let hit = if fam == family::INET {
        let key = Key::new(
            64,
            [
                dev[0], dev[1], dev[2], dev[3], addr[0], addr[1], addr[2], addr[3],
            ],
        );
        EGRESSD_ROUTES_V4_V1.get(&key).is_some()
    } else {
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&dev);
        data[4..].copy_from_slice(addr);
        EGRESSD_ROUTES_V6_V1.get(&Key::new(160, data)).is_some()
    };
    if hit {
        failsafe::NONE
    } else {
        failsafe::NEXT_HOP_FORCED
    }
}

/// False for destinations sent to a link-layer group or on-link by definition: IPv4
/// multicast and limited broadcast, IPv6 multicast and link-local.
#[inline(always)]
fn unicast(a: &[u8; 16], fam: u8) -> bool {
    if fam == family::INET {
        return a[0] & 0xf0 != 0xe0 && a[..4] != [0xff; 4];
    }
    a[0] != 0xff && !(a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

/// Whether the device the packet leaves by is in egressd's network namespace: the daemon's
/// probe socket, bound to an address and port no other socket has, is found there.
#[inline(always)]
fn own_namespace(ctx: &SkBuffContext, st: &RouteState) -> bool {
    let mut t = Tuple4 {
        saddr: st.probe_addr,
        daddr: st.probe_addr,
        sport: st.probe_port,
        dport: st.probe_port,
    };
    // SAFETY: valid context; `t` is the 12-byte IPv4 tuple the size says.
    let sk = unsafe {
        bpf_sk_lookup_udp(
            ctx.skb.skb.cast(),
            (&raw mut t).cast::<bpf_sock_tuple>(),
            core::mem::size_of::<Tuple4>() as u32,
            CURRENT_NETNS,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket the lookup returned (released below on every path).
    let (ip, port) = unsafe { ((*sk).src_ip4, (*sk).src_port) };
    // SAFETY: the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    // A socket bound to the wildcard address with the same port also matches the lookup:
    // only the exact binding is the probe.
    ip.to_ne_bytes() == st.probe_addr && port == u32::from(u16::from_be(st.probe_port))
}
