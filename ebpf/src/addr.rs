//! Destination address extraction and classification.
use aya_ebpf::programs::SockAddrContext;
use egressd_common::family;

/// A destination as judged: IPv4-mapped IPv6 addresses are unwrapped to IPv4.
pub struct Dest {
    /// [`family::INET`] or [`family::INET6`] of `addr`.
    pub family: u8,
    /// 1 if an AF_INET6 socket named an IPv4-mapped address.
    pub mapped: u8,
    /// Network byte order; IPv4 in bytes 0..4.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
}

/// Reads the destination of a sock_addr hook. `v6` selects the `user_ip6` field; the kernel
/// only allows 4-byte loads of it, which is what indexing the `u32` array produces.
#[inline(always)]
pub fn dest(ctx: &SockAddrContext, v6: bool) -> Dest {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` to sock_addr programs.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sa.user_port as u16);
    let mut addr = [0u8; 16];
    if !v6 {
        addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
        return Dest {
            family: family::INET,
            mapped: 0,
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
    // ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2): judge the IPv4 address it carries.
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        addr[..4].copy_from_slice(&w[3].to_ne_bytes());
        return Dest {
            family: family::INET,
            mapped: 1,
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
        mapped: 0,
        addr,
        port,
    }
}

/// Loopback (127.0.0.0/8, ::1) or unspecified (0.0.0.0, ::): always allowed, never leaves the
/// host.
#[inline(always)]
pub fn is_local(d: &Dest) -> bool {
    if d.family == family::INET {
        return d.addr[0] == 127 || d.addr[..4] == [0, 0, 0, 0];
    }
    let zero12 = d.addr[..15] == [0u8; 15];
    zero12 && (d.addr[15] == 0 || d.addr[15] == 1)
}
