//! Packet-level hooks: the egress backstop and byte accounting in both directions.
//!
//! Egress judges what the socket hooks did not (raw sockets, ICMP, sockets opened before the
//! agent, flows judged under an older generation). Per packet, the fast path is the verdict
//! cached on the packet's socket ([`cache`]): one for the same destination and generation
//! (or any earlier allow, with `established = keep`) is reused, found before any header
//! walk when the headers are plain ([`addr::plain`]).
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_tcp_sock},
    programs::SkBuffContext,
};
use egressd_common::{
    Hook, MAX_ROUTE_ADDRS, REGION_LOCAL, REGION_UNKNOWN, SockVerdict, Verdict, direction, failsafe,
    family, mode, route_check, set_of, unwrap,
};

use crate::{addr, cache, decide, forced, maps::EGRESSD_SETTINGS_V1, memo, owner, report};

const PASS: i32 = 1;
const DROP: i32 = 0;
/// [`egressd_skb_cached`]: no cached verdict applies, walk the headers.
const WALK: i32 = 2;
/// [`egressd_skb_cached`]: as [`WALK`], and the handshake memo was asked for this plain
/// packet and did not vouch for it: the walk need not ask again.
const WALK_ASKED: i32 = 3;

/// `ifindex` of the loopback device in every network namespace (`LOOPBACK_IFINDEX`,
/// `include/net/net_namespace.h`).
const LOOPBACK_IFINDEX: u32 = 1;

/// `cgroup_skb/egress`: a plain packet of a socket whose cached verdict applies is decided
/// by [`egressd_skb_cached`]; any other is read with [`egressd_skb_parse`] and decided by
/// [`egressd_skb_judge`].
///
/// Global functions (exported by the linker, see `build.rs`), which the verifier checks
/// once each, on their own, with their arguments unknown: the header walk's paths and the
/// judging's paths then add up instead of multiplying. In one piece, this program took about
/// 780,000 of the 1,000,000 instructions the 5.10 and 6.1 verifiers allow, and most of a
/// daemon's start-up there. Being siblings, the functions' stack frames share the 512
/// bytes of the BPF stack with this one's small frame, not with each other; the judge's
/// frame does with those of the functions it calls (the lookup and its range search, the
/// next-hop check [`forced::check`]). Measured from the object (39ba05e): 40 + 352 + 20 +
/// 40 bytes (the lookup and its range search), 40 + 352 + 48 + 24 (the next-hop check and
/// its route lookup): 512 on 5.10, whose verifier rounds each frame up to 32, its limit
/// exactly, so any frame that grows on these paths fails to load there (the fast path's
/// frame, 120 bytes, with the next-hop check's it calls, is a sibling of the judge's).
#[inline(always)]
pub fn egress(ctx: &SkBuffContext) -> i32 {
    let fast = egressd_skb_cached(ctx.skb.skb);
    // SAFETY: reading a live local (as in `pass_or_drop`).
    let asked = match unsafe { core::ptr::read_volatile(&fast) } {
        WALK => false,
        WALK_ASKED => true,
        DROP => return DROP,
        _ => return PASS,
    };
    let Some(token) = addr::start_walk() else {
        // Without scratch space nothing can be read: fail closed.
        let verdict = egressd_skb_judge(ctx.skb.skb, 0, 0, Parked::doubt(failsafe::UNPARSEABLE), 0);
        return pass_or_drop(verdict);
    };
    let verdict = egress_walk(ctx, token, asked);
    addr::end_walk(token);
    pass_or_drop(verdict)
}

/// The fast path of [`egress`]: the verdict cached on the packet's socket for a packet with
/// plain headers ([`addr::plain`]), when [`settle`] would reuse it as it stands: the same
/// flow; the generation in force, or an allow of a connection kept under `established =
/// keep`; a deny, or a verdict that passed the next-hop check for this device and route
/// epoch; not a first report due. Without a cached verdict, a handshake packet this CPU's
/// memo vouches for ([`vouched`]). The packet is counted and its verdict returned (1 pass,
/// 0 drop); [`WALK`] in every other case ([`WALK_ASKED`] when the memo was asked), which
/// the header walk and [`egressd_skb_judge`] then decide. No walk scratch space: one
/// `bpf_sk_storage_get`, array reads and compares.
///
/// A global function (exported by the linker, see `build.rs`), so its frame is a sibling
/// of the judge's, not added to it under 5.10's combined stack limit.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_skb_cached(skb: *mut __sk_buff) -> i32 {
    cached(&SkBuffContext::new(skb)).unwrap_or(WALK)
}

/// The body of [`egressd_skb_cached`].
#[inline(always)]
fn cached(ctx: &SkBuffContext) -> Option<i32> {
    let sk = socket(ctx);
    if sk.is_null() {
        return None;
    }
    let d = addr::plain(ctx, true)?;
    let Some(c) = cache::get(sk) else {
        // No verdict on the socket: a handshake packet under `cut` (see [`handshake`]).
        return Some(if vouched(ctx, sk, plain_flow(&d)) {
            PASS
        } else {
            WALK_ASKED
        });
    };
    if !same_flow(&c, &d) {
        return None;
    }
    let verdict = Verdict::from_u8(c.verdict)?;
    if !holds(&c, decide::generation()) {
        return None;
    }
    if verdict != Verdict::Allow && c.reported == 0 {
        return None;
    }
    // SAFETY: valid context pointer for a cgroup_skb program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Only the device the verdict was checked on (for a loopback destination, `lo`:
    // [`routed`]).
    if verdict != Verdict::Deny && c.route_check != route_check(ifindex, forced::epoch()) {
        return None;
    }
    report::flow(direction::EGRESS, c.region, verdict, ctx.len());
    Some(if verdict == Verdict::Deny { DROP } else { PASS })
}

/// The body of [`egress`], in the walk with `token`: 1 to pass the packet, 0 to drop it.
/// `asked`: the fast path asked the memo for this packet already (plain headers: the walk
/// parks the same flow).
#[inline(always)]
fn egress_walk(ctx: &SkBuffContext, token: u64, asked: bool) -> i32 {
    let parsed = egressd_skb_parse(ctx.skb.skb, token);
    // SAFETY: reading a live local (the compiler must not assume the result).
    if unsafe { core::ptr::read_volatile(&parsed) } == 0 {
        return PASS;
    }
    let [hi, lo, meta] = addr::parked(token);
    // Read before the check, so a walk that overwrote them is caught.
    let meta = if addr::owns(token) {
        meta
    } else {
        Parked::doubt(failsafe::SCRATCH_RACE)
    };
    // A handshake packet this CPU's memo vouches for (no doubt, no routing hops) passes
    // without being judged again ([`memo`]).
    let memo = if !asked && meta >> 32 & 0xff00_0007 == 0 {
        egressd_skb_memo(ctx.skb.skb, hi, lo, meta)
    } else {
        0
    };
    // SAFETY: reading a live local (as in `pass_or_drop`).
    if unsafe { core::ptr::read_volatile(&memo) } != 0 {
        return PASS;
    }
    egressd_skb_judge(ctx.skb.skb, hi, lo, meta, token)
}

/// PASS or DROP for a global function's verdict. The verifier knows nothing of its result,
/// and the compiler, which does, would drop a check: read back through memory.
#[inline(always)]
fn pass_or_drop(verdict: i32) -> i32 {
    // SAFETY: reading a live local.
    if unsafe { core::ptr::read_volatile(&verdict) } == DROP {
        DROP
    } else {
        PASS
    }
}

/// The header walk of `cgroup_skb/egress` ([`addr::from_skb`]), in the walk with `token`
/// the caller started ([`addr::start_walk`]): 0 for a packet that is not IP, else 1 with the
/// packet parked in the walk's scratch slot ([`Parked`], [`addr::parked`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_skb_parse(skb: *mut __sk_buff, token: u64) -> i32 {
    let ctx = SkBuffContext::new(skb);
    let Some(p) = addr::from_skb(&ctx, true, token) else {
        return 0;
    };
    addr::park(token, Parked::addr(&p.dest), Parked::meta(&p));
    1
}

/// The memo path of `cgroup_skb/egress` for a parked packet (`hi`, `lo`, `meta`:
/// [`Parked`]) without doubt or routing hops: 1 when [`vouched`] (its bytes then counted),
/// else 0: judge it.
///
/// A global function (exported by the linker, see `build.rs`): verified once, on its own,
/// and its frame is a sibling of the judge's, not added to it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_skb_memo(skb: *mut __sk_buff, hi: u64, lo: u64, meta: u64) -> i32 {
    let ctx = SkBuffContext::new(skb);
    let sk = socket(&ctx);
    if sk.is_null() || !vouched(&ctx, sk, [hi, lo, meta]) {
        return 0;
    }
    1
}

/// Whether this CPU's [`memo`] vouches for a packet of `sk` (not null) with `flow` (as
/// parked, without doubt or routing hops): a handshake packet of the socket and flow it
/// holds, under the generation in force, through the same next-hop check or, kept by the
/// connect hook ([`memo::UNROUTED`]), passing it now and recorded; so `egressd_skb_judge`
/// would allow it, uncounted and uncached (see [`handshake`]). Its bytes are then counted.
#[inline(always)]
fn vouched(ctx: &SkBuffContext, sk: *mut bpf_sock, flow: [u64; 3]) -> bool {
    let skb = ctx.skb.skb;
    if (flow[2] >> 16) as u8 != addr::IPPROTO_TCP {
        return false;
    }
    // SAFETY: valid context pointer for a cgroup_skb program.
    let ifindex = unsafe { (*skb).ifindex };
    let check = route_check(ifindex, forced::epoch());
    let cookie = memo::cookie(skb);
    let generation = decide::generation();
    let Some((region, routed)) = memo::find(cookie, flow, generation) else {
        return false;
    };
    if !in_handshake(sk) {
        return false;
    }
    // Tested first, so that an entry kept before routing is always checked, even were the
    // packet's own check word 0 too.
    if routed == memo::UNROUTED {
        // What `egressd_skb_judge` checks besides the lookup: a loopback destination
        // leaving through another device ([`judge`]), and the next hop.
        if (region == REGION_LOCAL && ifindex != LOOPBACK_IFINDEX)
            || forced::check(skb, flow[0], flow[1], flow[2] as u8, ifindex) != failsafe::NONE
        {
            return false;
        }
        memo::keep(cookie, flow, generation, check, region);
    } else if routed != check {
        return false;
    }
    report::flow(direction::EGRESS, region, Verdict::Allow, ctx.len());
    true
}

/// The flow of `d` as its plain packets are parked ([`Parked`]), for [`memo::find`]: `d` is
/// a plain packet's ([`addr::plain`]) or a destination as a socket hook read it, not
/// unwrapped ([`unwrap::NONE`]).
#[inline(always)]
pub fn plain_flow(d: &addr::Dest) -> [u64; 3] {
    let [hi, lo] = Parked::addr(d);
    let p = addr::Packet {
        dest: *d,
        n_route: 0,
        header_family: d.family,
        doubt: failsafe::NONE,
        token: 0,
    };
    [hi, lo, Parked::meta(&p)]
}

/// Whether the cached verdict `c` still holds under `generation`: it was given under it,
/// or, under `established = keep`, it is an allow given to a connection. Only such an
/// allow outlives a reload: an audit verdict is judged again (a reload to enforce must stop
/// it), and so is anything of a socket without connections (raw, ping), which would
/// otherwise keep an allow for a destination forever.
#[inline(always)]
fn holds(c: &SockVerdict, generation: u64) -> bool {
    c.generation == generation
        || (c.flow != 0
            && c.verdict == Verdict::Allow as u8
            && !decide::cut_established(generation))
}

/// Whether the cached verdict `c` is for `d`'s destination, protocol and port.
#[inline(always)]
fn same_flow(c: &SockVerdict, d: &addr::Dest) -> bool {
    c.dst_addr == d.addr && c.family == d.family && c.protocol == d.protocol && c.dst_port == d.port
}

/// A packet between the two halves of `cgroup_skb/egress`: the destination address as two
/// `u64`s and the rest packed in a third ([`Parked::meta`]). Handed to
/// [`egressd_skb_judge`] in scalar arguments (a global function takes no other pointer than
/// the context), read from scratch space once and checked against the walk's token.
struct Parked;

impl Parked {
    /// The destination address as two `u64`s (bytes 0..8 and 8..16, native order).
    #[inline(always)]
    fn addr(d: &addr::Dest) -> [u64; 2] {
        let a = d.addr;
        [
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        ]
    }

    /// Family, unwrap code, protocol and header family (a byte each), the route count (bits
    /// 32..35), the port (bits 40..56) and the fail-closed reason (the top byte: every
    /// [`failsafe`] code fits).
    #[inline(always)]
    fn meta(p: &addr::Packet) -> u64 {
        u64::from(p.dest.family)
            | u64::from(p.dest.mapped) << 8
            | u64::from(p.dest.protocol) << 16
            | u64::from(p.header_family) << 24
            | (p.n_route as u64 & 7) << 32
            | u64::from(p.dest.port) << 40
            | u64::from(p.doubt & 0xff) << 56
    }

    /// The meta word of a packet denied for `reason` whatever else it says.
    #[inline(always)]
    fn doubt(reason: u32) -> u64 {
        u64::from(family::INET) | u64::from(reason & 0xff) << 56
    }

    /// The packet back from [`Parked::addr`] and [`Parked::meta`].
    #[inline(always)]
    fn packet(hi: u64, lo: u64, meta: u64, token: u64) -> addr::Packet {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&hi.to_ne_bytes());
        a[8..].copy_from_slice(&lo.to_ne_bytes());
        addr::Packet {
            dest: addr::Dest {
                family: meta as u8,
                mapped: (meta >> 8) as u8,
                protocol: (meta >> 16) as u8,
                addr: a,
                port: (meta >> 40) as u16,
            },
            header_family: (meta >> 24) as u8,
            n_route: ((meta >> 32) as usize) & 7,
            doubt: ((meta >> 56) & 0xff) as u32,
            token,
        }
    }
}

/// The decision of `cgroup_skb/egress` on a parked packet (`hi`, `lo`, `meta`: [`Parked`];
/// `token`: its walk's, see [`addr::owns`]): from the socket's cached verdict, else judged,
/// counted, cached and reported. Returns the program's verdict (1 pass, 0 drop).
///
/// Per packet, the fast path is the verdict cached on the packet's socket ([`cache`]): one
/// for the same destination, protocol, port and generation (or an earlier allow of a
/// connection, with `established = keep`) is reused.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_skb_judge(
    skb: *mut __sk_buff,
    hi: u64,
    lo: u64,
    meta: u64,
    token: u64,
) -> i32 {
    let ctx = SkBuffContext::new(skb);
    let sk = socket(&ctx);
    let (verdict, report) = settle(&ctx, sk, hi, lo, meta, token);
    // One call site: the event's frame (its owner, keys) is on the stack once, which keeps
    // the judge's frame small enough for 5.10's combined limit (512 bytes, each frame
    // rounded up to 32) beside the lookup and next-hop functions it calls.
    if let Some((d, dec)) = report {
        report::event(Hook::SkbEgress, &d, &dec, &owner::of_packet(&ctx, sk), true);
    }
    verdict
}

/// The body of [`egressd_skb_judge`]: the program's verdict (1 pass, 0 drop) and the
/// event to report, if any.
#[inline(always)]
fn settle(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    hi: u64,
    lo: u64,
    meta: u64,
    token: u64,
) -> (i32, Option<(addr::Dest, decide::Decision)>) {
    let skb = ctx.skb.skb;
    let mut p = Parked::packet(hi, lo, meta, token);
    let generation = decide::generation();
    // SAFETY: valid context pointer for a cgroup_skb program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let routes = forced::epoch();
    if p.doubt == failsafe::NONE
        && p.n_route == 0
        && !sk.is_null()
        && let Some(mut c) = cache::get(sk)
        && same_flow(&c, &p.dest)
        && routed(skb, sk, &mut c, [hi, lo], ifindex, routes)
    {
        if holds(&c, generation) {
            let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
            report::flow(direction::EGRESS, c.region, verdict, ctx.len());
            let ret = if verdict == Verdict::Deny { DROP } else { PASS };
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
                let d = &p.dest;
                let mut named = *d;
                named.mapped = c.mapped;
                if c.mapped == unwrap::NAT64 {
                    named.addr = [0; 16];
                    named.addr[..4]
                        .copy_from_slice(&[d.addr[12], d.addr[13], d.addr[14], d.addr[15]]);
                    named.family = family::INET;
                }
                cache::put(sk, SockVerdict { reported: 1, ..c });
                return (ret, Some((named, dec)));
            }
            return (ret, None);
        }
    }
    let (wire, wire_family) = (p.dest.addr, p.dest.family);
    let mut dec = judge(ctx, &mut p, generation);
    if !sk.is_null() && dec.reason == failsafe::NONE && dec.verdict != Verdict::Deny {
        // The address on the wire, as parked (`judge` may have put a hop in `p.dest`).
        let reason = forced::check(skb, hi, lo, wire_family, ifindex);
        if reason != failsafe::NONE {
            dec = forced_decision(generation, reason);
        }
    }
    let d = &p.dest;
    report::flow(direction::EGRESS, dec.region, dec.verdict, ctx.len());
    // A handshake packet confirms what connect() decided and counted: neither counted
    // again nor cached (see `handshake`).
    if !sk.is_null() && dec.reason == failsafe::NONE && p.n_route == 0 && handshake(sk, d, &dec) {
        // The flow as parked: `meta` without doubt or hops, `hi`:`lo` the wire address.
        let check = route_check(ifindex, routes);
        memo::keep(
            memo::cookie(skb),
            [hi, lo, meta],
            generation,
            check,
            dec.region,
        );
        return (PASS, None);
    }
    let judged = !sk.is_null() && dec.reason == failsafe::NONE && p.n_route == 0;
    let tcp_flow = judged && d.protocol == addr::IPPROTO_TCP && is_tcp(sk);
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
            route_check: route_check(ifindex, routes),
        };
        cache::put(sk, cached);
    }
    let ret = if dec.verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    };
    // One event per (socket, destination, generation): later packets hit the cache.
    if dec.verdict != Verdict::Allow {
        return (ret, Some((*d, dec)));
    }
    (ret, None)
}

/// Whether the cached verdict `c` (for the address `addr`, as parked: [`Parked::addr`]) may
/// be reused for a packet leaving through `ifindex`: a deny needs no route; a verdict
/// checked for this device and route epoch `epoch` was; a loopback destination's verdict
/// leaving through another device is not (judged afresh, [`judge`] denies it as
/// `LOCAL_MISROUTED`); anything else is checked now ([`forced::check`]) and, if it passes,
/// the socket's cache records the device and epoch (in place, one atomic store; a failure
/// is judged afresh, and denied, by the slow path).
#[inline(always)]
fn routed(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    c: &mut SockVerdict,
    addr: [u64; 2],
    ifindex: u32,
    epoch: u64,
) -> bool {
    let check = route_check(ifindex, epoch);
    if c.verdict == Verdict::Deny as u8 || c.route_check == check {
        return true;
    }
    // A raw socket's header names the loopback address while `sendto` routes it out of
    // another device: a route there (a default one) would pass the next-hop check.
    if c.region == REGION_LOCAL && ifindex != LOOPBACK_IFINDEX {
        return false;
    }
    if forced::check(skb, addr[0], addr[1], c.family, ifindex) != failsafe::NONE {
        return false;
    }
    c.route_check = check;
    cache::set_route_check(sk, check);
    true
}

/// The decision for a packet that fails the next-hop check ([`forced::check`]): denied and
/// counted as fail-closed, or, in audit mode, reported and let through.
#[inline(always)]
fn forced_decision(generation: u64, reason: u32) -> decide::Decision {
    let audit = EGRESSD_SETTINGS_V1
        .get(set_of(generation) as u32)
        .is_some_and(|s| s.mode == mode::AUDIT);
    if !audit {
        return decide::Decision::fail_closed(generation, reason);
    }
    decide::Decision {
        generation,
        region: REGION_UNKNOWN,
        verdict: Verdict::Audit,
        rule: 0,
        reason,
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
    let Some(scratch) = addr::scratch(p.token) else {
        return decide::Decision::fail_closed(generation, failsafe::UNPARSEABLE);
    };
    if !addr::owns(p.token) {
        return decide::Decision::fail_closed(generation, failsafe::SCRATCH_RACE);
    }
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
    // The hops were read from scratch space: still this walk's?
    if !addr::owns(p.token) {
        return decide::Decision::fail_closed(generation, failsafe::SCRATCH_RACE);
    }
    dec
}

/// `SOCK_STREAM` (`include/linux/net.h`).
const SOCK_STREAM: u32 = 1;

/// Whether `sk` is a full TCP socket: a stream socket (`bpf_tcp_sock` checks the protocol
/// only, so a `SOCK_RAW` socket of protocol `IPPROTO_TCP`, which has no connection, would
/// pass it, its fields read as a TCP socket's).
#[inline(always)]
fn is_tcp(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is the packet's socket (not null); the helpers check what it is.
    let full = unsafe { bpf_sk_fullsock(sk) };
    // SAFETY: a non-null result is a full socket, whose `type` programs may read.
    !full.is_null()
        && unsafe { (*full).type_ } == SOCK_STREAM
        && !unsafe { bpf_tcp_sock(sk) }.is_null()
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
        || d.protocol != addr::IPPROTO_TCP
        || !decide::cut_established(dec.generation)
        || !is_tcp(sk)
    {
        return false;
    }
    in_handshake(sk)
}

/// Whether `sk`, a full TCP socket, has sent no data and at most its handshake (see
/// [`handshake`]). The memo's paths ask it only for sockets a TCP connect or
/// [`handshake`] (which checks [`is_tcp`]) kept, so no raw socket's fields are read.
#[inline(always)]
fn in_handshake(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is the packet's socket (not null); the helper returns null for anything
    // but a full socket of protocol TCP.
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
    // The fast path, for a packet with plain headers: what `count_ingress` finds on the
    // socket or in the memo, without the walk.
    let sk = socket(ctx);
    if !sk.is_null()
        && let Some(d) = addr::plain(ctx, false)
        && counted_known(ctx, sk, &d, plain_flow(&d), decide::generation())
    {
        return PASS;
    }
    // Ingress only counts: a packet it cannot read is not counted.
    let Some(token) = addr::start_walk() else {
        return PASS;
    };
    count_ingress(ctx, token);
    addr::end_walk(token);
    PASS
}

/// The body of [`ingress`], in the walk with `token`: counts the packet's bytes under its
/// socket's cached verdict, else under the verdict its source would get.
#[inline(always)]
fn count_ingress(ctx: &SkBuffContext, token: u64) {
    let Some(p) = addr::from_skb(ctx, false, token) else {
        return;
    };
    if p.doubt != failsafe::NONE || !addr::owns(token) {
        return;
    }
    let mut d = p.dest;
    let sk = socket(ctx);
    let generation = decide::generation();
    let [hi, lo] = Parked::addr(&d);
    if !sk.is_null() && counted_known(ctx, sk, &d, [hi, lo, Parked::meta(&p)], generation) {
        return;
    }
    let dec = decide::decide(&mut d, generation);
    report::flow(direction::INGRESS, dec.region, dec.verdict, ctx.len());
}

/// Counts an ingress packet from `d` (its flow as parked, `flow`) of socket `sk` (not null)
/// without judging it: under the socket's cached verdict for that sender, else as the reply
/// to a handshake this CPU's memo holds (the SYN-ACK: the memo's flow, as parked, is this
/// packet's sender, protocol and port, so `decide` would allow it in the memo's region under
/// the same generation). False when neither applies.
#[inline(always)]
fn counted_known(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    d: &addr::Dest,
    flow: [u64; 3],
    generation: u64,
) -> bool {
    if let Some(c) = cache::get(sk)
        && c.dst_addr == d.addr
        && c.family == d.family
    {
        let verdict = Verdict::from_u8(c.verdict).unwrap_or(Verdict::Deny);
        report::flow(direction::INGRESS, c.region, verdict, ctx.len());
        return true;
    }
    if d.protocol == addr::IPPROTO_TCP
        && let Some((region, _)) = memo::find(memo::cookie(ctx.skb.skb), flow, generation)
    {
        report::flow(direction::INGRESS, region, Verdict::Allow, ctx.len());
        return true;
    }
    false
}
