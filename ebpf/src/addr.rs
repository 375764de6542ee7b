//! Destination addresses: extraction from socket hooks and packets, unwrapping, and
//! classification.
use core::{mem::size_of, ptr};

use aya_ebpf::programs::{SkBuffContext, SockAddrContext};
use egressd_common::{family, unwrap};

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
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Reads the remote address of a packet at a cgroup_skb hook (data starts at the IP header):
/// the destination on egress (`remote_is_dst`), the source on ingress. `None` for non-IP
/// packets or truncated headers. The port is read for TCP and UDP (IPv6 extension headers
/// are not walked: the port is then 0, the address is still judged).
#[inline(always)]
pub fn from_skb(ctx: &SkBuffContext, remote_is_dst: bool) -> Option<Dest> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut addr = [0u8; 16];
    if proto == ETH_P_IP {
        // Two bytes, not one: LLVM turns a one-byte bound `data + 1 <= end` into
        // `data < end`, which the verifier does not read as a bound.
        let [vihl, _]: [u8; 2] = read(ctx, 0)?;
        let protocol: u8 = read(ctx, 9)?;
        let off = if remote_is_dst { 16 } else { 12 };
        let a: [u8; 4] = read(ctx, off)?;
        addr[..4].copy_from_slice(&a);
        let l4 = usize::from(vihl & 0x0f) * 4;
        let port = l4_port(ctx, protocol, l4, remote_is_dst);
        return Some(Dest {
            family: family::INET,
            mapped: unwrap::NONE,
            protocol,
            addr,
            port,
        });
    }
    if proto == ETH_P_IPV6 {
        let protocol: u8 = read(ctx, 6)?;
        let off = if remote_is_dst { 24 } else { 8 };
        addr = read(ctx, off)?;
        let port = l4_port(ctx, protocol, 40, remote_is_dst);
        // Judged as the socket hooks judge it, so one model describes every hook.
        if addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            let v4 = [addr[12], addr[13], addr[14], addr[15]];
            addr = [0; 16];
            addr[..4].copy_from_slice(&v4);
            return Some(Dest {
                family: family::INET,
                mapped: unwrap::MAPPED,
                protocol,
                addr,
                port,
            });
        }
        return Some(Dest {
            family: family::INET6,
            mapped: unwrap::NONE,
            protocol,
            addr,
            port,
        });
    }
    None
}

#[inline(always)]
fn l4_port(ctx: &SkBuffContext, protocol: u8, l4: usize, dst: bool) -> u16 {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return 0;
    }
    let off = if dst { l4 + 2 } else { l4 };
    read::<u16>(ctx, off).map(u16::from_be).unwrap_or(0)
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

/// Loopback (127.0.0.0/8, ::1) or unspecified (0.0.0.0, ::): always allowed, never leaves the
/// host.
#[inline(always)]
pub fn is_local(d: &Dest) -> bool {
    if d.family == family::INET {
        return d.addr[0] == 127 || d.addr[..4] == [0, 0, 0, 0];
    }
    d.addr[..15] == [0u8; 15] && (d.addr[15] == 0 || d.addr[15] == 1)
}
