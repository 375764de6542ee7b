//! Packet-level hooks: the egress backstop and byte accounting in both directions.
//!
//! Egress judges what the socket hooks did not (raw sockets, ICMP, sockets opened before the
//! agent, flows judged under an older generation). Per packet, the fast path is the verdict
//! cached on the packet's socket ([`cache`]): one for the same destination and generation
//! (or any earlier allow, with `established = keep`) is reused.
use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_tcp_sock, programs::SkBuffContext};
use egressd_common::{Hook, SockVerdict, Verdict, direction};

use crate::{addr, cache, decide, owner, report};

const PASS: i32 = 1;
const DROP: i32 = 0;
/// `IPPROTO_TCP` (`include/uapi/linux/in.h`).
const IPPROTO_TCP: u8 = 6;

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
        let kept =
            !fresh && c.verdict != Verdict::Deny as u8 && !decide::cut_established(generation);
        if fresh || kept {
            let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
            report::flow(direction::EGRESS, c.region, verdict, len);
            return if verdict == Verdict::Deny { DROP } else { PASS };
        }
    }
    let (wire, wire_family) = (d.addr, d.family);
    let dec = decide::decide(&mut d, generation);
    report::flow(direction::EGRESS, dec.region, dec.verdict, len);
    // A handshake packet confirms what connect() decided and counted: neither counted
    // again nor cached (see `handshake`).
    if !sk.is_null() && handshake(sk, &d, &dec) {
        return PASS;
    }
    report::count(Hook::SkbEgress, dec.region, dec.verdict);
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
        report::event(Hook::SkbEgress, &d, &dec, &owner::of_packet(ctx, sk));
    }
    if dec.verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}

/// Whether this packet is the handshake of an allowed TCP connection under `established =
/// cut`: a full TCP socket that has sent no data and at most its handshake (SYN, ACK, and a
/// FIN or RST). Its verdict is not cached: creating socket storage costs more than the few
/// decisions a short connection needs, and a connection that carries data is cached from
/// its first data segment on. `segs_out` and `data_segs_out` are the socket's own counts
/// (`struct bpf_tcp_sock`), this segment included.
#[inline(always)]
fn handshake(sk: *mut bpf_sock, d: &addr::Dest, dec: &decide::Decision) -> bool {
    if dec.verdict != Verdict::Allow
        || d.protocol != IPPROTO_TCP
        || !decide::cut_established(dec.generation)
    {
        return false;
    }
    // SAFETY: `sk` is the packet's socket (not null); the helper returns null for anything
    // but a full TCP socket.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    // SAFETY: non-null result of `bpf_tcp_sock`, valid for the program's duration.
    let (segs, data) = unsafe { ((*tp).segs_out, (*tp).data_segs_out) };
    data == 0 && segs <= 3
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
