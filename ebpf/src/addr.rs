//! Destination addresses: extraction from socket hooks and packets, unwrapping, and
//! classification.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    helpers::generated::bpf_skb_load_bytes,
    programs::{SkBuffContext, SockAddrContext},
};
use egressd_common::{MAX_EXT_HEADERS, MAX_ROUTE_ADDRS, failsafe, family, unwrap};

/// A destination as judged.
#[derive(Clone, Copy)]
pub struct Dest {
    /// [`family::INET`] or [`family::INET6`] of `addr`.
    pub family: u8,
    /// [`unwrap`] code: how `addr` was derived from what the socket named.
    pub mapped: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Network byte order; IPv4 in bytes 0..4, rest zero.
    pub addr: [u8; 16],
    /// Host byte order; 0 when the protocol has no ports.
    pub port: u16,
}

/// Reads the destination of a sock_addr hook. `v6` selects `user_ip6`, which the kernel only
/// lets programs read in 4-byte loads (what indexing the `u32` array produces). An
/// IPv4-mapped address (RFC 4291 section 2.5.5.2) becomes the IPv4 address it carries.
#[inline(always)]
pub fn from_sock_addr(ctx: &SockAddrContext, v6: bool) -> Dest {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` to sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sa.user_port as u16);
    let protocol = sa.protocol as u8;
    let mut addr = [0u8; 16];
    if !v6 {
        addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
        return Dest {
            family: family::INET,
            mapped: unwrap::NONE,
            protocol,
            addr,
            port,
        };
    }
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        addr[..4].copy_from_slice(&w[3].to_ne_bytes());
        return Dest {
            family: family::INET,
            mapped: unwrap::MAPPED,
            protocol,
            addr,
            port,
        };
    }
    addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    Dest {
        family: family::INET6,
        mapped: unwrap::NONE,
        protocol,
        addr,
        port,
    }
}

/// `ETH_P_IP` and `ETH_P_IPV6` (`include/uapi/linux/if_ether.h`).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Upper-layer protocols whose first 4 bytes are source and destination port (RFC 9293,
/// RFC 768, RFC 9260, RFC 3828): TCP, UDP, SCTP, UDP-Lite.
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;
/// IPv6 extension headers (RFC 8200 section 4; AH: RFC 4302).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// IPv4 options (RFC 791): end of list, no-op, loose and strict source route.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// Size of the IPv4 option area at most (RFC 791: IHL 15 = 60 bytes of header).
const MAX_IPV4_OPTION_BYTES: usize = 40;
/// Options (NOOPs included) the IPv4 walk reads before it gives up and denies (real packets
/// carry one or two).
const MAX_IPV4_OPTIONS: usize = 12;
/// Offsets inside the header walks are masked with this (they never legitimately exceed
/// it): every path through a loop body then leaves the same offset range behind, so the
/// verifier can prune equivalent states instead of exploring each combination.
const OFF_MASK: usize = 0x7ff;

/// Per-CPU scratch space of one packet's walk ([`crate::maps::EGRESSD_SCRATCH_V1`]).
#[repr(C)]
pub struct Scratch {
    /// The IPv4 option area.
    pub options: [u8; 64],
    /// Further addresses an egress packet is sent to: a routing header's segments (IPv6) or
    /// a source route's hops (IPv4), each judged like the destination (IPv4 in bytes 0..4);
    /// [`Packet::n_route`] of them are valid.
    pub route: [[u8; 16]; MAX_ROUTE_ADDRS],
    /// Valid entries of `route`.
    pub n_route: u64,
    /// The header walks' offset (or the IPv4 option walk's), kept here between rounds.
    pub walk: u64,
    /// 1: a Fragment header with a non-zero offset was seen (no upper-layer header here).
    pub later_fragment: u64,
    /// Start and length of the IPv4 source route option (length 0: none).
    pub route_at: u64,
    /// See `route_at`.
    pub route_len: u64,
    /// Walks started in this slot (wrapping): the source of [`Scratch::token`].
    pub walks: u64,
    /// The walk that owns this slot: each [`start_walk`] takes the next value (the walk
    /// count shifted left by 2, the slot in the low bits). A walk that runs in the same slot
    /// meanwhile (nesting deeper than [`egressd_common::SCRATCH_SLOTS`], or a task preempting a
    /// migration-disabled program) takes a new one, so the first finds out that its scratch
    /// data was overwritten ([`owns`]) and fails closed instead of judging another packet's
    /// headers.
    pub token: u64,
    /// Slot 0 only: the nesting level of the walks running on this CPU, the slot the next
    /// walk takes ([`start_walk`], [`end_walk`]).
    pub depth: u64,
    /// A packet between the two halves of `cgroup_skb/egress` (see `skb::Parked`).
    pub parked: [u64; 3],
    /// Slot 0 only: the last handshake allowed on this CPU (see [`crate::memo`]), kept
    /// between programs (a hint: a replaced pin only costs a judgement).
    pub memo: crate::memo::Memo,
}

const _: () = assert!(size_of::<Scratch>() == egressd_common::SCRATCH_BYTES as usize);

/// Writes `v` to scratch memory, where the verifier does not track values.
#[inline(always)]
fn put(slot: &mut u64, v: u64) {
    // SAFETY: a valid, aligned field of this CPU's scratch slot.
    unsafe { core::ptr::write_volatile(slot, v) }
}

/// Reads scratch memory back. The verifier sees an unknown value, so the states of every
/// path through a walk's round look alike and are pruned, instead of each combination of
/// header types being explored on its own (which older verifiers, 5.10, cannot finish).
#[inline(always)]
fn get(slot: &u64) -> u64 {
    // SAFETY: as in `put`.
    unsafe { core::ptr::read_volatile(slot) }
}

/// This CPU's scratch slot of the walk with `token` (its low bits). Valid for the program's
/// duration (cgroup programs run with migration disabled); a walk nested on this CPU uses
/// another slot, and [`owns`] tells whether one used this one meanwhile.
#[inline(always)]
pub fn scratch(token: u64) -> Option<&'static mut Scratch> {
    // SAFETY: see above.
    crate::maps::EGRESSD_SCRATCH_V1
        .get_ptr_mut((token & u64::from(egressd_common::SCRATCH_SLOTS - 1)) as u32)
        .map(|p| unsafe { &mut *p })
}

/// A packet as the packet hooks judge it.
pub struct Packet {
    /// The remote address (destination on egress, source on ingress), protocol and port.
    pub dest: Dest,
    /// Valid entries of [`Scratch::route`] (0..=MAX_ROUTE_ADDRS).
    pub n_route: usize,
    /// Family of the IP header (and of `route`), whatever `dest` was unwrapped to.
    pub header_family: u8,
    /// A [`failsafe`] reason when the headers could not be read safely: the packet is then
    /// denied whatever `dest` says.
    pub doubt: u32,
    /// The walk's [`Scratch::token`] (see [`owns`]), where a caller knows it; else 0.
    pub token: u64,
}

/// Starts a walk: takes the scratch slot of this CPU's nesting level and the slot's next
/// token, and marks the slot as the walk's. `None` only if a slot is missing (the map
/// lookups cannot fail for indexes below [`egressd_common::SCRATCH_SLOTS`]). Every walk started is ended
/// with [`end_walk`].
#[inline(always)]
pub fn start_walk() -> Option<u64> {
    let base = scratch(0)?;
    let depth = get(&base.depth);
    put(&mut base.depth, depth.wrapping_add(1));
    let slot = depth.min(u64::from(egressd_common::SCRATCH_SLOTS - 1));
    let sc = scratch(slot)?;
    let walks = get(&sc.walks).wrapping_add(1);
    put(&mut sc.walks, walks);
    let token = walks << 2 | slot;
    put(&mut sc.token, token);
    Some(token)
}

/// Ends the walk with `token`: the nesting level goes back to its slot, the one it had when
/// the walk started (so a nested walk that ended without this call costs no slot for long).
#[inline(always)]
pub fn end_walk(token: u64) {
    if let Some(base) = scratch(0) {
        put(
            &mut base.depth,
            token & u64::from(egressd_common::SCRATCH_SLOTS - 1),
        );
    }
}

/// Parks a packet (see `skb::Parked`) in the scratch slot of the walk with `token`.
#[inline(always)]
pub fn park(token: u64, addr: [u64; 2], meta: u64) {
    if let Some(sc) = scratch(token) {
        put(&mut sc.parked[0], addr[0]);
        put(&mut sc.parked[1], addr[1]);
        put(&mut sc.parked[2], meta);
    }
}

/// The packet [`park`]ed last in the slot of the walk with `token` (zeros when the slot is
/// missing): check [`owns`] after reading it.
#[inline(always)]
pub fn parked(token: u64) -> [u64; 3] {
    scratch(token).map_or([0; 3], |sc| {
        [get(&sc.parked[0]), get(&sc.parked[1]), get(&sc.parked[2])]
    })
}

/// Whether the walk with `token` still owns its scratch slot, so the [`Scratch::route`]
/// addresses and counts read from it are its own.
#[inline(always)]
pub fn owns(token: u64) -> bool {
    scratch(token).is_some_and(|sc| get(&sc.token) == token)
}

/// Reads a packet at a cgroup_skb hook (data starts at the IP header): the destination on
/// egress (`egress`), the source on ingress; the upper-layer protocol and port behind IPv4
/// options and IPv6 extension headers, exactly as the socket hooks would see them. `None`
/// for non-IP packets. Call in the walk with `token` ([`start_walk`]), and check [`owns`]
/// after the last use of its scratch slot; the result's `token` is 0.
#[inline(always)]
pub fn from_skb(ctx: &SkBuffContext, egress: bool, token: u64) -> Option<Packet> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut p = Packet {
        dest: Dest {
            family: family::INET,
            mapped: unwrap::NONE,
            protocol: 0,
            addr: [0; 16],
            port: 0,
        },
        n_route: 0,
        header_family: family::INET,
        doubt: failsafe::NONE,
        token: 0,
    };
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return None;
    }
    let Some(sc) = scratch(token) else {
        p.doubt = failsafe::UNPARSEABLE;
        return Some(p);
    };
    put(&mut sc.n_route, 0);
    if proto == ETH_P_IP {
        p.doubt = match ipv4(ctx, egress, &mut p, sc) {
            Ok(()) => failsafe::NONE,
            Err(reason) => reason,
        };
        p.n_route = (get(&sc.n_route) as usize) & 7;
        return Some(p);
    }
    {
        p.dest.family = family::INET6;
        p.header_family = family::INET6;
        p.doubt = match ipv6(ctx, egress, &mut p, sc) {
            Ok(()) => failsafe::NONE,
            Err(reason) => reason,
        };
        p.n_route = (get(&sc.n_route) as usize) & 7;
        // Judged as the socket hooks judge it, so one model describes every hook.
        let a = p.dest.addr;
        if a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            p.dest.addr = [0; 16];
            p.dest.addr[..4].copy_from_slice(&[a[12], a[13], a[14], a[15]]);
            p.dest.family = family::INET;
            p.dest.mapped = unwrap::MAPPED;
        }
        Some(p)
    }
}

/// The remote address, protocol and port of a packet with plain headers, read from the
/// linear data alone (direct packet access: no helper call, no scratch space): an IPv4
/// header without options and without AH, or an IPv6 header followed directly by the
/// upper-layer header, to an address that is not IPv4-mapped, and the first 4 bytes behind
/// it within the linear data. For such a packet this is exactly the destination (`egress`)
/// or source [`from_skb`] finds, with no doubt and no route; `None` for anything else (the
/// caller then walks the headers with [`from_skb`]).
#[inline(always)]
pub fn plain(ctx: &SkBuffContext, egress: bool) -> Option<Dest> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    // SAFETY: valid context pointer for a cgroup_skb program.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    let mut d = Dest {
        family: family::INET,
        mapped: unwrap::NONE,
        protocol: 0,
        addr: [0; 16],
        port: 0,
    };
    if proto == ETH_P_IP {
        // The 20-byte header and the 4 bytes of ports behind it (RFC 791).
        if data + 24 > end {
            return None;
        }
        // SAFETY: bytes 0..24 are within the linear data, checked just above.
        let (vihl, protocol, frag, a) = unsafe {
            (
                *(data as *const u8),
                *((data + 9) as *const u8),
                u16::from_be(ptr::read_unaligned((data + 6) as *const u16)),
                ptr::read_unaligned((data + if egress { 16 } else { 12 }) as *const [u8; 4]),
            )
        };
        if vihl & 0x0f != 5 || protocol == NEXTHDR_AUTH {
            return None;
        }
        d.protocol = protocol;
        d.addr[..4].copy_from_slice(&a);
        // A later fragment carries no ports (as in `ipv4`).
        if frag & 0x1fff == 0 && has_ports(protocol) {
            // SAFETY: as above.
            d.port = u16::from_be(unsafe {
                ptr::read_unaligned((data + if egress { 22 } else { 20 }) as *const u16)
            });
        }
        return Some(d);
    }
    if proto != ETH_P_IPV6 || data + 44 > end {
        return None;
    }
    // SAFETY: bytes 0..44 are within the linear data, checked just above.
    let (next, a) = unsafe {
        (
            *((data + 6) as *const u8),
            ptr::read_unaligned((data + if egress { 24 } else { 8 }) as *const [u8; 16]),
        )
    };
    if is_ext(next) || a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return None;
    }
    d.family = family::INET6;
    d.protocol = next;
    d.addr = a;
    if has_ports(next) {
        // SAFETY: as above.
        d.port = u16::from_be(unsafe {
            ptr::read_unaligned((data + if egress { 42 } else { 40 }) as *const u16)
        });
    }
    Some(d)
}

#[inline(always)]
fn ipv4(ctx: &SkBuffContext, egress: bool, p: &mut Packet, sc: &mut Scratch) -> Result<(), u32> {
    // Two bytes, not one: LLVM turns a one-byte bound `data + 1 <= end` into `data < end`,
    // which the verifier does not read as a bound.
    let [vihl, _]: [u8; 2] = read(ctx, 0).ok_or(failsafe::UNPARSEABLE)?;
    let [protocol, _]: [u8; 2] = read(ctx, 9).ok_or(failsafe::UNPARSEABLE)?;
    let frag: u16 = read::<u16>(ctx, 6)
        .map(u16::from_be)
        .ok_or(failsafe::UNPARSEABLE)?;
    let a: [u8; 4] = read(ctx, if egress { 16 } else { 12 }).ok_or(failsafe::UNPARSEABLE)?;
    p.dest.addr[..4].copy_from_slice(&a);
    p.dest.protocol = protocol;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(failsafe::UNPARSEABLE);
    }
    if egress && ihl > 20 {
        ipv4_options(ctx, ihl, sc)?;
    }
    // A later fragment carries no ports: judged by protocol alone (port 0).
    if frag & 0x1fff != 0 {
        return Ok(());
    }
    let mut l4 = ihl;
    if protocol == NEXTHDR_AUTH {
        // Judged by what AH protects, as for IPv6 (RFC 4302 section 2.2: length in 4-byte
        // units, minus 2).
        let [nh, len]: [u8; 2] = read(ctx, ihl).ok_or(failsafe::UNPARSEABLE)?;
        p.dest.protocol = nh;
        l4 += (usize::from(len) + 2) * 4;
    }
    p.dest.port = port(ctx, p.dest.protocol, l4, egress)?;
    Ok(())
}

/// Collects the hops of a loose or strict source route (RFC 791 section 3.1) into
/// [`Scratch::route`]. The option area (at most 40 bytes) is copied to scratch space once and scanned at
/// fixed positions, which the verifier checks cheaply.
#[inline(always)]
fn ipv4_options(ctx: &SkBuffContext, ihl: usize, sc: &mut Scratch) -> Result<(), u32> {
    let optlen = ihl - 20;
    if optlen == 0 || optlen > MAX_IPV4_OPTION_BYTES {
        return Err(failsafe::UNPARSEABLE);
    }
    // 1..=64 by masking, which every verifier follows (5.10 cannot represent "not 0" from
    // a test). Read back through memory first, so the compiler, which knows `optlen` is
    // 1..=40, cannot fold the masking away; for 1..=40 it changes nothing.
    // SAFETY: reading a live local.
    let n = ((unsafe { core::ptr::read_volatile(&optlen) } - 1) & 63) + 1;
    // SAFETY: valid context; `options` holds 64 bytes, `n` is at most 64.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            20,
            sc.options.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if ret != 0 {
        return Err(failsafe::UNPARSEABLE);
    }
    // Option by option (RFC 791 section 3.1: type, length, data; END and NOOP are one
    // byte), at most MAX_IPV4_OPTIONS of them.
    put(&mut sc.walk, 0);
    put(&mut sc.route_len, 0);
    let mut done = false;
    for _ in 0..MAX_IPV4_OPTIONS {
        let at = (get(&sc.walk) as usize) & 63;
        if at >= optlen {
            done = true;
            break;
        }
        let kind = sc.options[at];
        if kind == IPOPT_END {
            done = true;
            break;
        }
        if kind == IPOPT_NOOP {
            put(&mut sc.walk, (at + 1) as u64);
            continue;
        }
        let len = usize::from(sc.options[(at + 1) & 63]);
        if len < 2 || at + len > optlen {
            return Err(failsafe::UNPARSEABLE);
        }
        if kind == IPOPT_LSRR || kind == IPOPT_SSRR {
            if get(&sc.route_len) != 0 {
                return Err(failsafe::UNPARSEABLE);
            }
            put(&mut sc.route_at, at as u64);
            put(&mut sc.route_len, len as u64);
        }
        put(&mut sc.walk, (at + len) as u64);
    }
    let at = (get(&sc.walk) as usize) & 63;
    if !done && at < optlen && sc.options[at] != IPOPT_END {
        return Err(failsafe::CHAIN_TOO_LONG);
    }
    let len = (get(&sc.route_len) as usize) & 63;
    if len == 0 {
        return Ok(());
    }
    let at = (get(&sc.route_at) as usize) & 63;
    let hops = len.saturating_sub(3) / 4;
    if hops > MAX_ROUTE_ADDRS {
        return Err(failsafe::ROUTE_TOO_LONG);
    }
    for i in 0..MAX_ROUTE_ADDRS {
        if i >= hops {
            break;
        }
        let a: [u8; 4] = load(ctx, 20 + at + 3 + 4 * i).ok_or(failsafe::UNPARSEABLE)?;
        sc.route[i] = [0; 16];
        sc.route[i][..4].copy_from_slice(&a);
    }
    put(&mut sc.n_route, hops as u64);
    Ok(())
}

#[inline(always)]
fn ipv6(ctx: &SkBuffContext, egress: bool, p: &mut Packet, sc: &mut Scratch) -> Result<(), u32> {
    let [mut next, _]: [u8; 2] = read(ctx, 6).ok_or(failsafe::UNPARSEABLE)?;
    p.dest.addr = read(ctx, if egress { 24 } else { 8 }).ok_or(failsafe::UNPARSEABLE)?;
    if !is_ext(next) {
        p.dest.protocol = next;
        p.dest.port = port(ctx, next, 40, egress)?;
        return Ok(());
    }
    put(&mut sc.walk, 40);
    put(&mut sc.later_fragment, 0);
    // Walk the extension headers (RFC 8200 section 4.1) to the upper-layer header. One
    // more round than headers: the last one finds the upper-layer header.
    for _ in 0..=MAX_EXT_HEADERS {
        let off = (get(&sc.walk) as usize) & OFF_MASK;
        if !is_ext(next) {
            p.dest.protocol = next;
            // Any later fragment in the chain means no upper-layer header here.
            if get(&sc.later_fragment) == 0 {
                p.dest.port = port(ctx, next, off, egress)?;
            }
            return Ok(());
        }
        // Every extension header starts with (next header, length).
        let [nh, len]: [u8; 2] = load(ctx, off).ok_or(failsafe::UNPARSEABLE)?;
        let len = usize::from(len);
        let step = if next == NEXTHDR_FRAGMENT {
            let frag: u16 = load::<u16>(ctx, off + 2)
                .map(u16::from_be)
                .ok_or(failsafe::UNPARSEABLE)?;
            if frag & 0xfff8 != 0 {
                put(&mut sc.later_fragment, 1);
            }
            8
        } else if next == NEXTHDR_AUTH {
            (len + 2) * 4
        } else {
            if next == NEXTHDR_ROUTING && egress {
                routing_header(ctx, off, len, sc)?;
            }
            (len + 1) * 8
        };
        put(&mut sc.walk, (off + step) as u64);
        next = nh;
    }
    p.dest.protocol = next;
    Err(failsafe::CHAIN_TOO_LONG)
}

/// An IPv6 extension header the walk goes past.
#[inline(always)]
fn is_ext(next: u8) -> bool {
    next == NEXTHDR_HOP
        || next == NEXTHDR_DEST
        || next == NEXTHDR_ROUTING
        || next == NEXTHDR_FRAGMENT
        || next == NEXTHDR_AUTH
}

/// Collects the addresses of an IPv6 routing header (RFC 8200 section 4.4: type 2, RFC 6275;
/// type 4, the segment routing header of RFC 8754) into [`Scratch::route`]. Other types (0 is
/// deprecated and refused by Linux; 3 is compressed) cannot be read: fail closed.
#[inline(always)]
fn routing_header(
    ctx: &SkBuffContext,
    off: usize,
    len: usize,
    sc: &mut Scratch,
) -> Result<(), u32> {
    let [kind, _]: [u8; 2] = load(ctx, off + 2).ok_or(failsafe::UNPARSEABLE)?;
    let n = match kind {
        0 | 2 => len / 2,
        4 => {
            let [last_entry, _]: [u8; 2] = load(ctx, off + 4).ok_or(failsafe::UNPARSEABLE)?;
            usize::from(last_entry) + 1
        }
        _ => return Err(failsafe::UNPARSEABLE),
    };
    if n > MAX_ROUTE_ADDRS {
        return Err(failsafe::ROUTE_TOO_LONG);
    }
    if get(&sc.n_route) != 0 {
        // A second routing header: which addresses count is not worth guessing.
        return Err(failsafe::UNPARSEABLE);
    }
    for i in 0..MAX_ROUTE_ADDRS {
        if i >= n {
            break;
        }
        sc.route[i] = load(ctx, off + 8 + 16 * i).ok_or(failsafe::UNPARSEABLE)?;
    }
    put(&mut sc.n_route, n as u64);
    Ok(())
}

/// The remote port of an upper-layer header at `l4` (0 for protocols without ports).
#[inline(always)]
fn port(ctx: &SkBuffContext, protocol: u8, l4: usize, egress: bool) -> Result<u16, u32> {
    if !has_ports(protocol) {
        return Ok(0);
    }
    let off = (if egress { l4 + 2 } else { l4 }) & OFF_MASK;
    load::<u16>(ctx, off)
        .map(u16::from_be)
        .ok_or(failsafe::UNPARSEABLE)
}

/// Whether `protocol`'s header starts with the source and destination port.
#[inline(always)]
fn has_ports(protocol: u8) -> bool {
    protocol == IPPROTO_TCP
        || protocol == IPPROTO_UDP
        || protocol == IPPROTO_SCTP
        || protocol == IPPROTO_UDPLITE
}

/// Reads a `T` at byte `off` of the packet (0 = the IP header): straight from the linear
/// data when it holds those bytes (direct packet access: no helper call), else with
/// `bpf_skb_load_bytes` (a header in a paged fragment). `None` past the end of the packet.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    // SAFETY: valid context pointer for a cgroup_skb program.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + off + size_of::<T>() <= end {
        // SAFETY: bounds checked against `data_end` just above (the verifier checks it too).
        return Some(unsafe { ptr::read_unaligned((data + off) as *const T) });
    }
    ctx.load(off).ok()
}

/// Reads a `T` at byte `off` with `bpf_skb_load_bytes` only: one path for the verifier, for
/// the header walks (the fixed headers use [`read`]).
#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    ctx.load(off & OFF_MASK).ok()
}

/// Loopback (127.0.0.0/8, ::1) or unspecified (0.0.0.0, ::): always allowed, never leaves the
/// host.
#[inline(always)]
pub fn is_local(d: &Dest) -> bool {
    if d.family == family::INET {
        return d.addr[0] == 127 || d.addr[..4] == [0, 0, 0, 0];
    }
    d.addr[..15] == [0u8; 15] && (d.addr[15] == 0 || d.addr[15] == 1)
}
