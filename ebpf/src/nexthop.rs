//! `tc/egress`, raw IP frames: the next hop of a raw socket that writes its own IP header,
//! where the BPF LSM hooks (which judge the `sendto` address) do not run.
//!
//! Such a socket (`IP_HDRINCL`, `IPV6_HDRINCL`, `IPPROTO_RAW`) is routed by its `sendto`
//! address while `cgroup_skb/egress` judges the header it wrote. At the device's queueing
//! layer the frame shows where it really goes: its device and, on a link with addresses,
//! its destination link-layer address. This program asks the kernel's FIB
//! (`bpf_fib_lookup`, `BPF_FIB_LOOKUP_OUTPUT`, constrained to the frame's device) where a
//! packet to the header's destination would go; a frame that goes anywhere else (another
//! device, another neighbour, a destination not routed out of this device, no neighbour
//! entry) leaves to a next hop its header does not name: [`failsafe::NEXT_HOP_MISMATCH`].
//! A lookup the kernel refuses (forwarding disabled on the device, an unsupported route)
//! or a link-layer header it cannot read: [`failsafe::NEXT_HOP_UNVERIFIED`]. Both are
//! denied (reported and let through in audit mode). Multicast and limited-broadcast
//! header destinations are checked without the FIB: the frame must go to the link-layer
//! address the header's destination maps to.
//!
//! Every `SOCK_RAW` INET socket created under the enforced cgroup is checked, not only
//! those that write their header (`struct bpf_sock` does not show the flag): where the
//! kernel wrote the header, its destination is the routed address and the check passes.
use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_fib_lookup, bpf_sk_fullsock, bpf_skb_load_bytes_relative},
    programs::TcContext,
};
use egressd_common::{Hook, REGION_UNKNOWN, Verdict, failsafe, family, mode, set_of, unwrap};

use crate::{
    addr::Dest,
    decide::{self, Decision},
    maps::{EGRESSD_LSM_CGROUP_V1, EGRESSD_SETTINGS_V1},
    owner, report,
};

/// `SOCK_RAW`.
const SOCK_RAW: u32 = 3;
/// `ETH_P_IP`, `ETH_P_IPV6`.
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `BPF_HDR_START_MAC`, `BPF_HDR_START_NET` (`bpf_skb_load_bytes_relative`).
const HDR_START_MAC: u32 = 0;
const HDR_START_NET: u32 = 1;
/// `BPF_FIB_LOOKUP_OUTPUT`: a lookup from the egress side (`flowi_oif` = the device).
const FIB_LOOKUP_OUTPUT: u32 = 1 << 1;
/// `bpf_fib_lookup` results (`BPF_FIB_LKUP_RET_*`): success, the header's destination is
/// not forwarded out of this device (blackhole, unreachable, prohibit, local or other
/// non-unicast), no neighbour entry; `FRAG_NEEDED` still fills the next hop.
const FIB_SUCCESS: i64 = 0;
const FIB_BLACKHOLE: i64 = 1;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;

/// `struct bpf_fib_lookup` (`include/uapi/linux/bpf.h`), 64 bytes, the same layout from
/// 4.18 to today (later kernels put `tbid` and `mark` in unions over the fields named
/// here). Addresses in network byte order.
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// `tot_len` in, `mtu_result` out.
    tot_len: u16,
    /// In: the device to look up from; out: the device of the next hop.
    ifindex: u32,
    /// `tos` (IPv4, first byte) or `flowinfo` (IPv6) in, `rt_metric` out.
    tos: u32,
    src: [u8; 16],
    /// In: the destination; out: the next hop (gateway or destination).
    dst: [u8; 16],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

/// `tc/egress` for a frame whose socket `sk` is AF_INET/AF_INET6: whether it may pass
/// (false: drop it). Counts and reports each frame it denies or audits.
#[inline(always)]
pub fn judge(ctx: &TcContext, sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` comes from the context; the helper checks for a full socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return true;
    }
    // SAFETY: a non-null full socket the verifier knows.
    let (kind, fam) = unsafe { ((*full).type_, (*full).family) };
    if kind != SOCK_RAW {
        return true;
    }
    let generation = decide::generation();
    if generation == 0 {
        return true;
    }
    let fam = fam as u8;
    let mut d = Dest {
        family: fam,
        mapped: unwrap::NONE,
        protocol: 0,
        addr: [0; 16],
        port: 0,
    };
    let reason = match ctx.skb_under_cgroup(&EGRESSD_LSM_CGROUP_V1, 0) {
        Ok(false) => return true,
        Ok(true) => check(ctx, &mut d),
        Err(_) => failsafe::UNPARSEABLE,
    };
    if reason == failsafe::NONE {
        return true;
    }
    let audit = EGRESSD_SETTINGS_V1
        .get(set_of(generation) as u32)
        .is_some_and(|s| s.mode == mode::AUDIT);
    let verdict = if audit { Verdict::Audit } else { Verdict::Deny };
    if verdict == Verdict::Deny {
        report::failsafe(reason);
    }
    let dec = Decision {
        generation,
        region: REGION_UNKNOWN,
        verdict,
        rule: 0,
        reason,
    };
    report::count(Hook::TcEgress, dec.region, dec.verdict);
    report::event(
        Hook::TcEgress,
        &d,
        &dec,
        &owner::of_skb(ctx.skb.skb, full),
        false,
    );
    verdict != Verdict::Deny
}

/// Whether the frame goes where its IP header's destination would be routed from this
/// device: [`failsafe::NONE`] when it does, else why not. Fills `d` with the header's
/// destination and protocol (for the event).
#[inline(always)]
fn check(ctx: &TcContext, d: &mut Dest) -> u32 {
    let skb = ctx.skb.skb;
    // SAFETY: valid context pointer of a sched_cls program.
    let (proto, ifindex) = unsafe { (u16::from_be((*skb).protocol as u16), (*skb).ifindex) };
    let mut p = FibParams {
        family: d.family,
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        tot_len: 0,
        ifindex,
        tos: 0,
        src: [0; 16],
        dst: [0; 16],
        vlan: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    let mut ip = [0u8; 40];
    let n: u32 = if d.family == family::INET { 20 } else { 40 };
    let want = if d.family == family::INET {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    if proto != want {
        // A tunnel's or a VLAN's outer frame: judged on the inner device.
        return failsafe::NONE;
    }
    // SAFETY: the buffer holds `n` bytes; the helper checks the packet's bounds.
    if unsafe {
        bpf_skb_load_bytes_relative(skb.cast(), 0, ip.as_mut_ptr().cast(), n, HDR_START_NET)
    } != 0
    {
        return failsafe::UNPARSEABLE;
    }
    if d.family == family::INET {
        if ip[0] >> 4 != 4 {
            return failsafe::UNPARSEABLE;
        }
        d.protocol = ip[9];
        d.addr[..4].copy_from_slice(&[ip[16], ip[17], ip[18], ip[19]]);
        p.tos = u32::from(ip[1]);
        p.src[..4].copy_from_slice(&[ip[12], ip[13], ip[14], ip[15]]);
    } else {
        if ip[0] >> 4 != 6 {
            return failsafe::UNPARSEABLE;
        }
        d.protocol = ip[6];
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[24..40]);
        d.addr = a;
        let mut s = [0u8; 16];
        s.copy_from_slice(&ip[8..24]);
        p.src = s;
        p.tos = u32::from_ne_bytes([ip[0] & 0x0f, ip[1], ip[2], ip[3]]);
    }
    p.l4_protocol = d.protocol;
    p.dst = d.addr;
    // The link-layer header, if the device has one: at tc egress the MAC header starts
    // where the network header does on a device without one (tun, WireGuard, IP tunnels).
    let mut l2 = [0u8; 14];
    // SAFETY: as above.
    let l2_ok = unsafe {
        bpf_skb_load_bytes_relative(skb.cast(), 0, l2.as_mut_ptr().cast(), 14, HDR_START_MAC)
    } == 0;
    let has_l2 = !(l2_ok && l2[..] == ip[..14]);
    if has_l2 && !l2_ok {
        return failsafe::NEXT_HOP_UNVERIFIED;
    }
    if let Some(mac) = group_mac(d) {
        // Multicast and limited broadcast are not routed to a neighbour: the frame must go
        // to the link-layer group the header's destination maps to.
        return if !has_l2 || l2[..6] == mac {
            failsafe::NONE
        } else {
            failsafe::NEXT_HOP_MISMATCH
        };
    }
    // SAFETY: valid context and a 64-byte parameter block on the stack.
    let rc = unsafe {
        bpf_fib_lookup(
            skb.cast(),
            (&raw mut p).cast(),
            core::mem::size_of::<FibParams>() as i32,
            FIB_LOOKUP_OUTPUT,
        )
    };
    match rc {
        FIB_SUCCESS | FIB_FRAG_NEEDED => {}
        FIB_BLACKHOLE..=4 | FIB_NO_NEIGH => return failsafe::NEXT_HOP_MISMATCH,
        _ => return failsafe::NEXT_HOP_UNVERIFIED,
    }
    if p.ifindex != ifindex {
        return failsafe::NEXT_HOP_MISMATCH;
    }
    if p.smac == [0; 6] || !has_l2 {
        // A device without link-layer addresses has one peer (point-to-point), or picks
        // it by the header (WireGuard): the header decides.
        return failsafe::NONE;
    }
    if l2[6..12] != p.smac || l2[12..14] != proto.to_be_bytes() {
        return failsafe::NEXT_HOP_UNVERIFIED;
    }
    if l2[..6] == p.dmac {
        failsafe::NONE
    } else {
        failsafe::NEXT_HOP_MISMATCH
    }
}

/// The link-layer group address of a multicast or limited-broadcast destination
/// (RFC 1112 section 6.4, RFC 2464 section 7), `None` for unicast.
#[inline(always)]
fn group_mac(d: &Dest) -> Option<[u8; 6]> {
    let a = &d.addr;
    if d.family == family::INET {
        if a[0] & 0xf0 == 0xe0 {
            return Some([0x01, 0x00, 0x5e, a[1] & 0x7f, a[2], a[3]]);
        }
        if a[..4] == [0xff; 4] {
            return Some([0xff; 6]);
        }
        return None;
    }
    if a[0] == 0xff {
        return Some([0x33, 0x33, a[12], a[13], a[14], a[15]]);
    }
    None
}
