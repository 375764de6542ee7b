//! Probes that build their own frames or IP headers, past the INET socket hooks: AF_PACKET
//! sockets (`SOCK_DGRAM`: IPv4 header and up; `SOCK_RAW`: Ethernet header too) and a raw
//! IPv4 socket with `IP_HDRINCL` whose header names another destination than `sendto`.
//! Frames go out of the client namespace's interface on the destination's subnet, to the
//! Ethernet broadcast address (the host on the link takes an IP datagram addressed to it
//! whatever the link-layer destination), so no neighbour lookup is needed.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

type Step = Result<(), (&'static str, io::Error)>;

fn last_err<T>(step: &'static str) -> Result<T, (&'static str, io::Error)> {
    Err((step, io::Error::last_os_error()))
}

/// `ETH_P_IP`.
const ETH_P_IP: u16 = 0x0800;

/// The first interface address (interface index, address) for which `want` holds,
/// from `getifaddrs(3)`.
fn local_address(want: impl Fn(IpAddr) -> bool) -> Option<(u32, IpAddr)> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr of the node.
        let a = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if want(a) {
            // SAFETY: the name is a NUL-terminated string of the node.
            let idx = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            found = Some((idx, a));
            break;
        }
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

/// The interface (index, IPv4 address) whose /24 holds `dst`.
fn interface_for(dst: Ipv4Addr) -> Result<(u32, Ipv4Addr), (&'static str, io::Error)> {
    match local_address(|a| matches!(a, IpAddr::V4(a) if a.octets()[..3] == dst.octets()[..3])) {
        Some((idx, IpAddr::V4(a))) => Ok((idx, a)),
        _ => Err((
            "interface",
            io::Error::other(format!("no interface on {dst}/24")),
        )),
    }
}

/// The Internet checksum (RFC 1071) of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP datagram from `src` to `dst` (UDP checksum 0: none, RFC 768).
fn ipv4_udp(src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.ip().octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn socket(family: i32, ty: i32, proto: i32) -> Result<OwnedFd, (&'static str, io::Error)> {
    // SAFETY: plain syscall; the fd is owned on success.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return last_err("socket");
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `packet-dgram` (`raw` false) and `packet-raw` (`raw` true): a hand-built IPv4/UDP
/// datagram to `dst` on an AF_PACKET socket.
pub fn packet(dst: SocketAddrV4, raw: bool) -> Step {
    packet_with(dst, raw, false)
}

/// As [`packet`]; with `bypass`, `PACKET_QDISC_BYPASS` is set first (`packet-bypass`): the
/// kernel hands the frame to the driver without the queueing layer (`dev_direct_xmit`).
pub fn packet_with(dst: SocketAddrV4, raw: bool, bypass: bool) -> Step {
    let (ifindex, src) = interface_for(*dst.ip())?;
    let ty = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let fd = socket(libc::AF_PACKET, ty, i32::from(ETH_P_IP.to_be()))?;
    if bypass {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffer.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            return last_err("setsockopt(PACKET_QDISC_BYPASS)");
        }
    }
    let mut frame = Vec::new();
    if raw {
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    }
    frame.extend_from_slice(&ipv4_udp(src, dst, b"egressd-packet"));
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_IP.to_be();
    ll.sll_ifindex = ifindex as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return last_err("sendto");
    }
    Ok(())
}

/// `hdrincl`: an `IPPROTO_RAW` socket (the process writes the IPv4 header) sends a UDP
/// datagram whose header names `header_dst` with `sendto(next_hop)`: the kernel routes by
/// `next_hop`.
pub fn hdrincl(next_hop: SocketAddrV4, header_dst: Ipv4Addr) -> Step {
    let (fd, dgram) = hdrincl_datagram(next_hop.into(), header_dst.into())?;
    send_raw(&fd, &dgram, IpAddr::V4(*next_hop.ip()))
}

/// `hdrincl-pair`: one `IPPROTO_RAW` socket of `next_hop`'s family sends the same UDP
/// datagram (its header naming `header_dst`, from the client's address next to
/// `next_hop`) twice: first with `sendto(header_dst)`, where the header says, then with
/// `sendto(next_hop)`. So what the packet hook cached for the first send meets a header
/// that leaves by another device. The result of each send.
pub fn hdrincl_pair(next_hop: SocketAddr, header_dst: IpAddr) -> (Step, Step) {
    match hdrincl_datagram(next_hop, header_dst) {
        Ok((fd, dgram)) => (
            send_raw(&fd, &dgram, header_dst),
            send_raw(&fd, &dgram, next_hop.ip()),
        ),
        Err((step, e)) => {
            let again = io::Error::new(e.kind(), e.to_string());
            (Err((step, e)), Err((step, again)))
        }
    }
}

/// An `IPPROTO_RAW` socket of `next_hop`'s family and a UDP datagram to `header_dst`, port
/// `next_hop`'s, from the client's address on `next_hop`'s subnet.
fn hdrincl_datagram(
    next_hop: SocketAddr,
    header_dst: IpAddr,
) -> Result<(OwnedFd, Vec<u8>), (&'static str, io::Error)> {
    let payload = b"egressd-hdrincl";
    match (next_hop, header_dst) {
        (SocketAddr::V4(hop), IpAddr::V4(dst)) => {
            let (_, src) = interface_for(*hop.ip())?;
            let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            Ok((
                fd,
                ipv4_udp(src, SocketAddrV4::new(dst, hop.port()), payload),
            ))
        }
        (SocketAddr::V6(hop), IpAddr::V6(dst)) => {
            let src = source6_for(*hop.ip())?;
            let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            Ok((fd, ipv6_udp(src, dst, hop.port(), payload)))
        }
        _ => Err((
            "parse",
            io::Error::other("next hop and header destination of different families"),
        )),
    }
}

/// `dgram`, a whole IP datagram, on the raw socket `fd` with `sendto(to)`.
fn send_raw(fd: &OwnedFd, dgram: &[u8], to: IpAddr) -> Step {
    let (ss, len) = crate::client::sockaddr(&SocketAddr::new(to, 0));
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            dgram.as_ptr().cast(),
            dgram.len(),
            0,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 {
        return last_err("sendto");
    }
    Ok(())
}

/// The client's IPv6 address on the /64 of `dst`.
fn source6_for(dst: Ipv6Addr) -> Result<Ipv6Addr, (&'static str, io::Error)> {
    match local_address(|a| matches!(a, IpAddr::V6(a) if a.octets()[..8] == dst.octets()[..8])) {
        Some((_, IpAddr::V6(a))) => Ok(a),
        _ => Err((
            "interface",
            io::Error::other(format!("no address on {dst}/64")),
        )),
    }
}

/// An IPv6/UDP datagram from `src` to `dst`:`port` (UDP checksum over the RFC 8200
/// pseudo-header: mandatory in IPv6).
fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(usize::from(ulen));
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(ulen).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let c = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = Vec::with_capacity(40 + udp.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp);
    p
}

/// `hdrincl6`: an AF_INET6 `IPPROTO_RAW` socket (the process writes the IPv6 header, as
/// with `IPV6_HDRINCL`) sends a UDP datagram whose header names `header_dst` with
/// `sendto(next_hop)`: the kernel routes by `next_hop`.
pub fn hdrincl6(next_hop: SocketAddrV6, header_dst: Ipv6Addr) -> Step {
    let (fd, dgram) = hdrincl_datagram(next_hop.into(), header_dst.into())?;
    send_raw(&fd, &dgram, IpAddr::V6(*next_hop.ip()))
}
