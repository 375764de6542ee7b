//! Per-CPU memo of the last TCP handshake allowed under `established = cut`.
//!
//! Such a verdict is not cached on the socket (creating socket storage costs more than the
//! few decisions of a short connection, see `skb::handshake`), so without this memo each
//! handshake packet (SYN, ACK, FIN or RST) and the SYN-ACK's ingress byte count would look
//! the destination up, read the decision table and (egress) check the next hop again. The
//! packets of one handshake mostly run on one CPU (the SYN in the connect() that the
//! connect hook allowed, the SYN-ACK and the ACK in the softirq the SYN's transmission
//! raised): this CPU's slot remembers the socket (by its cookie, unique per boot, so a
//! reused socket cannot match), the flow as parked (`skb::Parked`), the generation, the
//! next-hop check passed ([`egressd_common::route_check`], or [`UNROUTED`] when the connect
//! hook kept it, before routing) and the region. A packet that matches all of it would be
//! decided exactly so again: the policy maps of a generation do not change while it is in
//! force. An [`UNROUTED`] entry spares the SYN the lookup, not the next-hop check, which it
//! then passes and records. Anything else misses and is judged as before; the memo only
//! ever saves work.
//!
//! Cgroup programs run with migration disabled, not preemption: a program can run nested
//! on this CPU (a softirq) inside another, and on a preemptible kernel a task's program can
//! be preempted by another task's. A sequence count guards the slot against nesting: a
//! writer makes it odd while it writes (and gives up if it finds it odd: it interrupted a
//! writer), a reader misses on an odd or changed count. Two preempted writers can both
//! find the count even and interleave their stores (no compare-and-swap before 5.12), so
//! the entry also carries a check word, a mix of all its fields written after them: a
//! reader that read fields of two entries misses on the check (a 64-bit mix; a mixed
//! entry passes only by a collision). One CPU sees its own stores in program order, and
//! the accesses are volatile, so the compiler keeps that order.
use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_get_socket_cookie};

use crate::addr::{self, Scratch};

/// The next-hop check of an entry the connect hook kept: none yet (routing comes after the
/// hook). Never a real [`egressd_common::route_check`], whose ifindex half is never 0 on
/// egress.
pub const UNROUTED: u64 = 0;

/// The memo in this CPU's scratch slot ([`Scratch::memo`]).
#[repr(C)]
pub struct Memo {
    /// Sequence count: odd while a writer fills the slot.
    seq: u64,
    /// Socket cookie (`bpf_get_socket_cookie`, never 0 for a socket).
    cookie: u64,
    /// The flow as parked: destination address halves and the meta word.
    flow: [u64; 3],
    /// Generation that decided.
    generation: u64,
    /// [`egressd_common::route_check`] the egress packet passed.
    route_check: u64,
    /// Region of the destination (the verdict is Allow).
    region: u64,
    /// [`check`] of the fields above, written after them.
    check: u64,
}

/// A 64-bit mix of an entry's fields (splitmix64's finalizer folded over them), so that an
/// entry whose fields come from two writers does not match its check word.
#[inline(always)]
fn check(cookie: u64, flow: [u64; 3], generation: u64, route_check: u64, region: u64) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for v in [
        cookie,
        flow[0],
        flow[1],
        flow[2],
        generation,
        route_check,
        region,
    ] {
        h ^= v;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

/// The socket cookie of the packet's socket (`skb->sk` must not be null).
#[inline(always)]
pub fn cookie(skb: *mut __sk_buff) -> u64 {
    // SAFETY: valid context pointer; the helper reads `skb->sk`'s cookie.
    unsafe { bpf_get_socket_cookie(skb.cast()) }
}

/// The socket cookie of a sock_addr hook's socket (the same cookie its packets give
/// [`cookie`]).
#[inline(always)]
pub fn cookie_of(ctx: *mut aya_ebpf::bindings::bpf_sock_addr) -> u64 {
    // SAFETY: valid context pointer of a sock_addr program.
    unsafe { bpf_get_socket_cookie(ctx.cast()) }
}

#[inline(always)]
fn get(v: &u64) -> u64 {
    // SAFETY: a valid, aligned field of this CPU's scratch slot.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn put(v: &mut u64, x: u64) {
    // SAFETY: as in `get`.
    unsafe { core::ptr::write_volatile(v, x) }
}

/// Remembers that the socket with `cookie` had the flow `flow` allowed as a handshake
/// under `generation`, through the next-hop check `route_check` ([`UNROUTED`]: none yet),
/// in `region`.
#[inline(always)]
pub fn keep(cookie: u64, flow: [u64; 3], generation: u64, route_check: u64, region: u32) {
    let Some(sc) = addr::scratch(0) else {
        return;
    };
    let m = &mut sc.memo;
    let seq = get(&m.seq);
    if seq & 1 != 0 {
        return;
    }
    put(&mut m.seq, seq.wrapping_add(1));
    put(&mut m.cookie, cookie);
    put(&mut m.flow[0], flow[0]);
    put(&mut m.flow[1], flow[1]);
    put(&mut m.flow[2], flow[2]);
    put(&mut m.generation, generation);
    put(&mut m.route_check, route_check);
    put(&mut m.region, u64::from(region));
    put(
        &mut m.check,
        check(cookie, flow, generation, route_check, u64::from(region)),
    );
    put(&mut m.seq, seq.wrapping_add(2));
}

/// The region and next-hop check remembered for exactly this socket, flow and generation,
/// else `None`. Every field is read once, then the check word and the sequence count: a
/// miss on any doubt.
#[inline(always)]
pub fn find(cookie: u64, flow: [u64; 3], generation: u64) -> Option<(u32, u64)> {
    let sc: &Scratch = addr::scratch(0)?;
    let m = &sc.memo;
    let seq = get(&m.seq);
    if seq & 1 != 0 {
        return None;
    }
    let e_cookie = get(&m.cookie);
    let e_flow = [get(&m.flow[0]), get(&m.flow[1]), get(&m.flow[2])];
    let e_generation = get(&m.generation);
    let e_route = get(&m.route_check);
    let e_region = get(&m.region);
    let e_check = get(&m.check);
    if get(&m.seq) != seq
        || e_check != check(e_cookie, e_flow, e_generation, e_route, e_region)
        || e_cookie != cookie
        || e_flow[0] != flow[0]
        || e_flow[1] != flow[1]
        || e_flow[2] != flow[2]
        || e_generation != generation
    {
        return None;
    }
    Some((e_region as u32, e_route))
}
