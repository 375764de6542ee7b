//! Packet-level hooks: the egress backstop and byte accounting in both directions.
//!
//! Egress judges what the socket hooks did not (raw sockets, ICMP, sockets opened before the
//! agent, flows judged under an older generation). Per packet, the fast path is the verdict
//! cached on the packet's socket ([`cache`]): one for the same destination and generation
//! (or any earlier allow, with `established = keep`) is reused.
use aya_ebpf::{bindings::bpf_sock, programs::SkBuffContext};
use egressd_common::{Hook, SockVerdict, Verdict, direction};

use crate::{addr, cache, decide, report};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// `cgroup_skb/egress`.
#[inline(always)]
pub fn egress(ctx: &SkBuffContext) -> i32 {
    let Some(mut d) = addr::from_skb(ctx, true) else {
        return PASS;
    };
    let len = ctx.len();
    let generation = decide::generation();
    let sk = socket(ctx);
    if !sk.is_null()
        && let Some(c) = cache::get(sk)
        && c.dst_addr == d.addr
        && c.family == d.family
    {
        let fresh = c.generation == generation;
        let kept = !fresh && c.verdict != Verdict::Deny as u8 && !cut_established(generation);
        if fresh || kept {
            let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
            report::flow(direction::EGRESS, c.region, verdict, len);
            return if verdict == Verdict::Deny { DROP } else { PASS };
        }
    }
    let (wire, wire_family) = (d.addr, d.family);
    let dec = decide::decide(&mut d, generation);
    report::count(Hook::SkbEgress, dec.region, dec.verdict);
    report::flow(direction::EGRESS, dec.region, dec.verdict, len);
    let cached = SockVerdict {
        generation,
        dst_addr: wire,
        region: dec.region,
        verdict: dec.verdict as u8,
        family: wire_family,
        _pad: [0; 2],
    };
    if !sk.is_null() {
        cache::put(sk, cached);
    }
    // One event per (socket, destination, generation): later packets hit the cache.
    if dec.verdict != Verdict::Allow {
        report::event(Hook::SkbEgress, &d, &dec);
    }
    if dec.verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}

/// The set's `cut_established` for `generation`.
#[inline(always)]
fn cut_established(generation: u64) -> bool {
    crate::maps::EGRESSD_SETTINGS_V1
        .get(egressd_common::set_of(generation) as u32)
        .is_none_or(|s| s.cut_established != 0)
}

/// The packet's socket (`skb->sk`), null for packets without one (forwarded, some
/// replies sent by the kernel itself).
#[inline(always)]
fn socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: valid context pointer for a cgroup_skb program.
    unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }
}

/// `cgroup_skb/ingress`: counts bytes by the region of the sender; never drops.
#[inline(always)]
pub fn ingress(ctx: &SkBuffContext) -> i32 {
    let Some(mut d) = addr::from_skb(ctx, false) else {
        return PASS;
    };
    let len = ctx.len();
    let sk = socket(ctx);
    if !sk.is_null()
        && let Some(c) = cache::get(sk)
        && c.dst_addr == d.addr
        && c.family == d.family
    {
        let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
        report::flow(direction::INGRESS, c.region, verdict, len);
        return PASS;
    }
    let dec = decide::decide(&mut d, decide::generation());
    report::flow(direction::INGRESS, dec.region, dec.verdict, len);
    PASS
}
