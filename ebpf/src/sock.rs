//! Socket-address hooks: connect4/6, sendmsg4/6.
use aya_ebpf::programs::SockAddrContext;
use egressd_common::{Hook, SockVerdict, Verdict, unwrap};

use crate::{
    addr, cache, decide, memo,
    owner::{self, Who},
    report, skb,
};

/// Return value that lets the syscall proceed.
const PROCEED: i32 = 1;
/// Return value that makes the syscall fail with `EPERM`.
const REJECT: i32 = 0;

/// `IPPROTO_UDP` (`include/uapi/linux/in.h`).
const IPPROTO_UDP: u8 = 17;

/// The cache entry for verdict `dec` on destination `wire` (as the packets carry it).
#[inline(always)]
fn cached(
    d: &addr::Dest,
    wire: [u8; 16],
    family: u8,
    dec: &decide::Decision,
    flow: u8,
    reported: u8,
) -> SockVerdict {
    SockVerdict {
        generation: dec.generation,
        dst_addr: wire,
        region: dec.region,
        rule: dec.rule,
        verdict: dec.verdict as u8,
        family,
        protocol: d.protocol,
        flow,
        dst_port: d.port,
        reported,
        mapped: d.mapped,
        // Routing has not happened yet: the packet hook checks the device.
        route_check: 0,
    }
}

/// Judges one attempt at `hook`.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let v6 = matches!(hook, Hook::Connect6 | Hook::Sendmsg6);
    let mut d = addr::from_sock_addr(ctx, v6);
    // What the packets will carry (mapped already unwrapped: the kernel sends IPv4).
    let (wire, wire_family) = (d.addr, d.family);
    let dec = decide::decide(&mut d, decide::generation());
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; its `sk` is the calling socket.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let connect = matches!(hook, Hook::Connect4 | Hook::Connect6);
    if connect && d.protocol == IPPROTO_UDP {
        // A UDP connect() sends nothing (glibc's getaddrinfo connects a UDP socket to each
        // address it sorts, RFC 6724): not an attempt. The socket carries the verdict; the
        // packet hook refuses, counts and reports the first datagram.
        if dec.verdict != Verdict::Allow || !decide::cut_established(dec.generation) {
            cache::put(sk, cached(&d, wire, wire_family, &dec, 1, 0));
        }
        return PROCEED;
    }
    report::count(hook, dec.region, dec.verdict);
    let who = || Who {
        attribution: egressd_common::attribution::TASK,
        owner: owner::current(),
    };
    if dec.verdict == Verdict::Deny {
        report::event(hook, &d, &dec, &who(), true);
        return REJECT;
    }
    // Remember the verdict on the socket only where it must be remembered: an audit verdict
    // (so the packets do not report it again) or `established = keep` (the verdict outlives
    // a reload). An allow under `cut` is derived again by the packet hook, which caches it
    // once the connection carries data: creating socket storage costs more than the few
    // handshake decisions it would save (see `cache`). This CPU's handshake memo spares the
    // SYN, sent by this connect(), the lookup (not the next-hop check).
    if dec.verdict == Verdict::Allow && decide::cut_established(dec.generation) {
        // A destination as named (not unwrapped) is the one the packets carry.
        if d.protocol == addr::IPPROTO_TCP && d.mapped == unwrap::NONE && d.family == wire_family {
            memo::keep(
                memo::cookie_of(ctx.sock_addr),
                skb::plain_flow(&d),
                dec.generation,
                memo::UNROUTED,
                dec.region,
            );
        }
        return PROCEED;
    }
    // connect() makes a connection (TCP here); sendmsg does not.
    cache::put(
        sk,
        cached(&d, wire, wire_family, &dec, u8::from(connect), 1),
    );
    if dec.verdict == Verdict::Audit {
        report::event(hook, &d, &dec, &who(), true);
    }
    PROCEED
}
