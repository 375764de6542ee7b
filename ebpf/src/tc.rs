//! `tc/egress`: the fallback for packet sockets where the BPF LSM hooks do not run.
//!
//! A frame sent on an AF_PACKET socket carries that socket (`skb->sk`, set by
//! `sock_alloc_send_skb`) down to the device's queueing layer, where this `sched_cls`
//! program runs (clsact egress, or a TCX link). It judges frames whose socket is not an
//! AF_INET/AF_INET6 one (those were judged by the cgroup hooks, which cannot see where a
//! raw socket's frame goes: [`nexthop`] checks that) and whose socket was created
//! under the enforced cgroup (`bpf_skb_under_cgroup` against [`EGRESSD_LSM_CGROUP_V1`]),
//! with the policy's `packet_sockets`. There is no task context here: the executable
//! allowlist cannot apply, and events carry the socket's uid and cgroup
//! ([`attribution::SOCKET_UID`]). Frames that skip the queueing layer
//! (`PACKET_QDISC_BYPASS`, AF_XDP) never reach it.
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_uid, bpf_sk_fullsock, bpf_skb_cgroup_id},
    programs::TcContext,
};
use egressd_common::{
    Hook, REGION_UNKNOWN, SockOwner, Verdict, attribution, failsafe, family, unwrap,
};

use crate::{
    addr::Dest,
    decide::{self, Decision},
    lsm::packet_setting,
    maps::EGRESSD_LSM_CGROUP_V1,
    nexthop,
    owner::Who,
    report,
};

/// `TC_ACT_UNSPEC` (netlink filters) and `TCX_NEXT` (TCX links): not decided here, the
/// next program or the default (pass) decides.
const NEXT: i32 = -1;
/// `TC_ACT_SHOT`: drop the frame (the sender's `sendmsg` gets `ENOBUFS`).
const SHOT: i32 = 2;

/// `tc/egress`.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: valid context pointer of a sched_cls program.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return NEXT;
    }
    // SAFETY: the verifier allows `family` on any socket pointer of the context.
    let fam = unsafe { (*sk).family };
    if fam == u32::from(family::INET) || fam == u32::from(family::INET6) {
        // Judged by the cgroup hooks, but for where a raw socket's frame really goes.
        return if nexthop::judge(ctx, sk) { NEXT } else { SHOT };
    }
    let fam = fam as u8;
    let generation = decide::generation();
    let (verdict, reason) = match ctx.skb_under_cgroup(&EGRESSD_LSM_CGROUP_V1, 0) {
        Ok(false) => return NEXT,
        Ok(true) => (packet_setting(generation), failsafe::NONE),
        // An empty slot (the map was tampered with) or a socket the kernel cannot place:
        // fail closed, as the LSM hooks do.
        Err(_) => (Verdict::Deny, failsafe::UNPARSEABLE),
    };
    // SAFETY: `sk` comes from the context; the helper checks for a full socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    let kind = if full.is_null() {
        0
    } else {
        // SAFETY: a non-null full socket the verifier knows.
        unsafe { (*full).type_ as u8 }
    };
    // The frame's EtherType (`skb->protocol`, network byte order): what the packet socket
    // sends, which its `sk_protocol` does not record.
    // SAFETY: valid context pointer of a sched_cls program.
    let proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    let d = Dest {
        family: fam,
        mapped: unwrap::NONE,
        protocol: kind,
        addr: [0; 16],
        port: proto,
    };
    let dec = Decision {
        generation,
        region: REGION_UNKNOWN,
        verdict,
        rule: 0,
        reason,
    };
    report::count(Hook::TcEgress, dec.region, dec.verdict);
    if reason != failsafe::NONE {
        report::failsafe(reason);
    }
    if verdict != Verdict::Allow {
        // SAFETY: valid context pointer of a sched_cls program.
        let (uid, cgroup_id) = unsafe { (bpf_get_socket_uid(skb), bpf_skb_cgroup_id(skb)) };
        let who = Who {
            attribution: attribution::SOCKET_UID,
            owner: SockOwner {
                cgroup_id,
                uid,
                ..SockOwner::default()
            },
        };
        report::event(Hook::TcEgress, &d, &dec, &who, false);
    }
    if verdict == Verdict::Deny { SHOT } else { NEXT }
}
