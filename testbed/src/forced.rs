//! Probes that force the device (or the routing table) a datagram or connection leaves by,
//! for the next-hop check of device-forced sockets. `KIND://ADDR:PORT/ARG`:
//! - `dev-udp`: `SO_BINDTODEVICE` to interface ARG, then `sendto(ADDR:PORT)`;
//! - `pktinfo-udp`: `sendmsg` with an `IP_PKTINFO`/`IPV6_PKTINFO` cmsg naming interface ARG;
//! - `unicastif-udp`: `IP_UNICAST_IF`/`IPV6_UNICAST_IF` set to interface ARG, then `sendto`;
//! - `dev-tcp`: `SO_BINDTODEVICE` to ARG, then `connect()` (2 s);
//! - `mark-udp`: `SO_MARK` ARG (a number; policy routing by `ip rule fwmark`), then `sendto`;
//! - `dev-udp-hold`: as `dev-udp`, then, on the same socket, a second `sendto` once the
//!   caller says so ([`hold`]; the client reads a line on stdin), so a verdict cached on the
//!   socket meets a route change.
//!
//! Datagrams carry [`PAYLOAD`], so a sniffer can tell them apart; none waits for an echo.
use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

/// Payload of every datagram these probes send.
pub const PAYLOAD: &[u8] = b"egressd-forced";

/// One step's outcome: the failed call's name and its error.
pub type Step = Result<(), (&'static str, io::Error)>;

/// Runs probe `kind` to `addr` with argument `arg`; `None` for a kind not handled here.
pub fn attempt(kind: &str, addr: SocketAddr, arg: &str) -> Option<Step> {
    Some(match kind {
        "dev-udp" => udp(addr, |s| bind_device(s, arg)).and_then(|s| sendto(&s, addr)),
        "unicastif-udp" => udp(addr, |s| unicast_if(s, addr, arg)).and_then(|s| sendto(&s, addr)),
        "mark-udp" => udp(addr, |s| mark(s, arg)).and_then(|s| sendto(&s, addr)),
        "pktinfo-udp" => udp(addr, |_| Ok(())).and_then(|s| pktinfo(&s, addr, arg)),
        "dev-tcp" => dev_tcp(addr, arg),
        _ => return None,
    })
}

/// `dev-udp-hold`: a UDP socket bound to interface `dev` sends to `addr`, `between` gets
/// that step's outcome and runs, and the same socket sends again: that outcome is returned.
pub fn hold(addr: SocketAddr, dev: &str, between: impl FnOnce(Step)) -> Step {
    let s = match udp(addr, |s| bind_device(s, dev)) {
        Ok(s) => s,
        Err((step, e)) => {
            let again = io::Error::new(e.kind(), e.to_string());
            between(Err((step, e)));
            return Err((step, again));
        }
    };
    between(sendto(&s, addr));
    sendto(&s, addr)
}

fn udp(
    addr: SocketAddr,
    setup: impl FnOnce(i32) -> io::Result<()>,
) -> Result<UdpSocket, (&'static str, io::Error)> {
    let s = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .map_err(|e| ("bind", e))?;
    setup(s.as_raw_fd()).map_err(|e| ("setsockopt", e))?;
    Ok(s)
}

fn sendto(s: &UdpSocket, addr: SocketAddr) -> Step {
    s.send_to(PAYLOAD, addr)
        .map(drop)
        .map_err(|e| ("sendto", e))
}

fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

fn setsockopt<T>(fd: i32, level: i32, opt: i32, v: &T) -> io::Result<()> {
    // SAFETY: valid descriptor and an option buffer of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            std::ptr::from_ref(v).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_device(fd: i32, name: &str) -> io::Result<()> {
    // SAFETY: valid descriptor and name buffer of the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unicast_if(fd: i32, addr: SocketAddr, name: &str) -> io::Result<()> {
    let i = ifindex(name)?;
    if addr.is_ipv4() {
        // IP_UNICAST_IF takes the index in network byte order.
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_UNICAST_IF, &i.to_be())
    } else {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_IF, &(i as i32))
    }
}

fn mark(fd: i32, arg: &str) -> io::Result<()> {
    let m: u32 = arg.parse().map_err(io::Error::other)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &m)
}

/// `sendmsg` with an interface index in `IP_PKTINFO` (or `IPV6_PKTINFO`).
fn pktinfo(s: &UdpSocket, addr: SocketAddr, name: &str) -> Step {
    let i = ifindex(name).map_err(|e| ("if_nametoindex", e))?;
    let (sa, sa_len): (libc::sockaddr_storage, libc::socklen_t) = crate::client::sockaddr(&addr);
    let mut sa = sa;
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr().cast_mut().cast(),
        iov_len: PAYLOAD.len(),
    };
    let mut cbuf = [0u64; 8];
    let (level, ty, data): (i32, i32, Vec<u8>) = match addr {
        SocketAddr::V4(_) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: i as i32,
                ipi_spec_dst: libc::in_addr { s_addr: 0 },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            (libc::IPPROTO_IP, libc::IP_PKTINFO, bytes(&info))
        }
        SocketAddr::V6(_) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: [0; 16] },
                ipi6_ifindex: i,
            };
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, bytes(&info))
        }
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut sa).cast();
    msg.msg_namelen = sa_len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at a control buffer of `space` <= 64 bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
    }
    // SAFETY: valid descriptor and message.
    if unsafe { libc::sendmsg(s.as_raw_fd(), &raw const msg, 0) } < 0 {
        return Err(("sendmsg", io::Error::last_os_error()));
    }
    Ok(())
}

fn bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain C struct.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// `SO_BINDTODEVICE`, then a TCP connect with a 2 s timeout.
fn dev_tcp(addr: SocketAddr, name: &str) -> Step {
    let fam = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(("socket", io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    bind_device(fd, name).map_err(|e| ("setsockopt", e))?;
    let t = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &t).map_err(|e| ("setsockopt", e))?;
    let (sa, len) = crate::client::sockaddr(&addr);
    // SAFETY: valid descriptor and address of the length passed.
    if unsafe { libc::connect(fd, (&raw const sa).cast(), len) } != 0 {
        return Err(("connect", io::Error::last_os_error()));
    }
    drop(s);
    Ok(())
}
