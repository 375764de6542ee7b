//! Packet-level hooks: the egress backstop and byte accounting in both directions.
//!
//! Egress judges what the socket hooks did not (raw sockets, ICMP, sockets opened before the
//! agent, flows judged under an older generation). Per packet, the fast path is the verdict
//! cached on the packet's socket ([`cache`]): one for the same destination and generation
//! (or any earlier allow, with `established = keep`) is reused.
use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_tcp_sock, programs::SkBuffContext};
use egressd_common::{
    Hook, MAX_ROUTE_ADDRS, SockVerdict, Verdict, direction, failsafe, family, unwrap,
};

use crate::{addr, cache, decide, owner, report};

const PASS: i32 = 1;
const DROP: i32 = 0;
/// `IPPROTO_TCP` (`include/uapi/linux/in.h`).
const IPPROTO_TCP: u8 = 6;

/// `ifindex` of the loopback device in every network namespace (`LOOPBACK_IFINDEX`,
/// `include/net/net_namespace.h`).
const LOOPBACK_IFINDEX: u32 = 1;

/// `cgroup_skb/egress`.
#[inline(always)]
pub fn egress(ctx: &SkBuffContext) -> i32 {
    let Some(mut p) = addr::from_skb(ctx, true) else {
        return PASS;
    };
    let d = &mut p.dest;
    let len = ctx.len();
    let generation = decide::generation();
    let sk = socket(ctx);
    if p.doubt == failsafe::NONE
        && p.n_route == 0
        && !sk.is_null()
        && let Some(c) = cache::get(sk)
        && c.dst_addr == d.addr
        && c.family == d.family
        && c.protocol == d.protocol
        && c.dst_port == d.port
    {
        let fresh = c.generation == generation;
        // Under `keep`, only an allow given to a connection outlives a reload: an audit
        // verdict is judged again (a reload to enforce must stop it), and so is anything
        // of a socket without connections (raw, ping), which would otherwise keep an allow
        // for a destination forever.
        let kept = !fresh
            && c.flow != 0
            && c.verdict == Verdict::Allow as u8
            && !decide::cut_established(generation);
        if fresh || kept {
            let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
            report::flow(direction::EGRESS, c.region, verdict, len);
            if verdict != Verdict::Allow && c.reported == 0 {
                // Judged at a UDP connect(), which sent nothing: this first datagram is the
                // attempt, counted and reported here, once.
                report::count(Hook::SkbEgress, c.region, verdict);
                let dec = decide::Decision {
                    generation: c.generation,
                    region: c.region,
                    verdict,
                    rule: c.rule,
                    reason: failsafe::NONE,
                };
                // Reported as connect() named it: mapped, or NAT64 unwrapped.
                let mut named = *d;
                named.mapped = c.mapped;
                if c.mapped == unwrap::NAT64 {
                    named.addr = [0; 16];
                    named.addr[..4]
                        .copy_from_slice(&[d.addr[12], d.addr[13], d.addr[14], d.addr[15]]);
                    named.family = family::INET;
                }
                report::event(
                    Hook::SkbEgress,
                    &named,
                    &dec,
                    &owner::of_packet(ctx, sk),
                    false,
                );
                cache::put(sk, SockVerdict { reported: 1, ..c });
            }
            return if verdict == Verdict::Deny { DROP } else { PASS };
        }
    }
    let (wire, wire_family) = (d.addr, d.family);
    let dec = judge(ctx, &mut p, generation);
    let d = &p.dest;
    report::flow(direction::EGRESS, dec.region, dec.verdict, len);
    // A handshake packet confirms what connect() decided and counted: neither counted
    // again nor cached (see `handshake`).
    if !sk.is_null() && dec.reason == failsafe::NONE && p.n_route == 0 && handshake(sk, d, &dec) {
        return PASS;
    }
    let judged = !sk.is_null() && dec.reason == failsafe::NONE && p.n_route == 0;
    let tcp_flow = judged && d.protocol == IPPROTO_TCP && is_tcp(sk);
    // An allowed segment of a full TCP socket belongs to a connection connect() judged and
    // counted (or one older than egressd): confirmed, cached, not counted again.
    if !(tcp_flow && dec.verdict == Verdict::Allow) {
        report::count(Hook::SkbEgress, dec.region, dec.verdict);
    }
    if judged {
        let cached = SockVerdict {
            generation,
            dst_addr: wire,
            region: dec.region,
            rule: dec.rule,
            verdict: dec.verdict as u8,
            family: wire_family,
            protocol: d.protocol,
            flow: u8::from(tcp_flow),
            dst_port: d.port,
            reported: 1,
            mapped: d.mapped,
        };
        cache::put(sk, cached);
    }
    // One event per (socket, destination, generation): later packets hit the cache.
    if dec.verdict != Verdict::Allow {
        report::event(Hook::SkbEgress, d, &dec, &owner::of_packet(ctx, sk), false);
    }
    if dec.verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    }
}

/// The verdict for every address `p` is sent to: its destination and each hop of a routing
/// header or source route (the most severe wins: deny, then audit, then allow), or a
/// fail-closed deny when the headers were doubtful or a local destination leaves through
/// another device than loopback.
#[inline(always)]
fn judge(ctx: &SkBuffContext, p: &mut addr::Packet, generation: u64) -> decide::Decision {
    if p.doubt != failsafe::NONE {
        return decide::Decision::fail_closed(generation, p.doubt);
    }
    // SAFETY: valid context pointer for a cgroup_skb program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if addr::is_local(&p.dest) && ifindex != LOOPBACK_IFINDEX {
        return decide::Decision::fail_closed(generation, failsafe::LOCAL_MISROUTED);
    }
    let mut dec = decide::decide(&mut p.dest, generation);
    if p.n_route == 0 {
        return dec;
    }
    let Some(scratch) = addr::scratch() else {
        return decide::Decision::fail_closed(generation, failsafe::UNPARSEABLE);
    };
    for i in 0..MAX_ROUTE_ADDRS {
        if i >= p.n_route || dec.verdict == Verdict::Deny {
            break;
        }
        let mut hop = p.dest;
        hop.addr = scratch.route[i];
        hop.family = p.header_family;
        hop.mapped = egressd_common::unwrap::NONE;
        let h = if addr::is_local(&hop) {
            decide::Decision::fail_closed(generation, failsafe::LOCAL_MISROUTED)
        } else {
            decide::hop(&hop, generation)
        };
        if h.verdict == Verdict::Deny
            || (h.verdict == Verdict::Audit && dec.verdict == Verdict::Allow)
        {
            p.dest = hop;
            dec = h;
        }
    }
    dec
}

/// Whether `sk` is a full TCP socket.
#[inline(always)]
fn is_tcp(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is the packet's socket (not null); the helper checks its type.
    !unsafe { bpf_tcp_sock(sk) }.is_null()
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
    // Ingress only counts: a packet it cannot read is not counted.
    let Some(p) = addr::from_skb(ctx, false) else {
        return PASS;
    };
    if p.doubt != failsafe::NONE {
        return PASS;
    }
    let mut d = p.dest;
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
