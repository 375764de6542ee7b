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
pub fn check(ctx: &SkBuffContext, addr: &[u8; 16], fam: u8, ifindex: u32) -> u32 {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    egressd_forced_check(
        ctx.skb.skb,
        hi,
        lo,
        (u64::from(fam) << 32) | u64::from(ifindex),
    ) as u32
}

/// [`check`] for the destination `hi`:`lo` (host byte order halves; IPv4 in the top 4 bytes
/// of `hi`), family and ifindex in `meta` (`family << 32 | ifindex`).
///
/// A global function (exported by the linker, see `build.rs`): the verifier checks it once,
/// on its own, instead of on every path of `cgroup_skb/egress` that reaches it (it is
/// called from two). Note: on 5.10 `cgroup_skb/egress` with this check, inlined or not,
/// did not finish loading within the tests' limit in the VM; the cause is not isolated.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_forced_check(ctx: *mut __sk_buff, hi: u64, lo: u64, meta: u64) -> u64 {
    let fam = (meta >> 32) as u8;
    let ifindex = meta as u32;
    let h = hi.to_be_bytes();
    let l = lo.to_be_bytes();
    let addr = [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ];
    if ifindex == LOOPBACK_IFINDEX || ifindex == 0 || !unicast(&addr, fam) {
        return u64::from(failsafe::NONE);
    }
    let st = state();
    if st.epoch == 0 {
        // Never filled: the daemon fills the mirror before it attaches, so this is a
        // recreated or tampered map. Fail closed.
        return u64::from(failsafe::NEXT_HOP_FORCED);
    }
    if !own_namespace(ctx, &st) {
        return u64::from(failsafe::NONE);
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
        data[4..].copy_from_slice(&addr);
        EGRESSD_ROUTES_V6_V1.get(&Key::new(160, data)).is_some()
    };
    u64::from(if hit {
        failsafe::NONE
    } else {
        failsafe::NEXT_HOP_FORCED
    })
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
fn own_namespace(ctx: *mut __sk_buff, st: &RouteState) -> bool {
    let mut t = Tuple4 {
        saddr: st.probe_addr,
        daddr: st.probe_addr,
        sport: st.probe_port,
        dport: st.probe_port,
    };
    // SAFETY: valid context; `t` is the 12-byte IPv4 tuple the size says.
    let sk = unsafe {
        bpf_sk_lookup_udp(
            ctx.cast(),
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
