//! TCP and UDP listeners inside a test host namespace: both echo what they receive (TCP
//! connections stay open until the client closes them). Where the kernel has SCTP, an SCTP
//! listener on the same port accepts associations (and closes them).
//! Dual-stack (`[::]`), so one listener serves IPv4 and IPv6.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::Netns;

/// A running listener; stopped and joined on drop.
pub struct Listener {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts serving `port` (TCP and UDP) in `ns`; returns once both sockets are bound.
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let ns_name = ns.name().to_owned();
        let ns_handle = Netns::existing(&ns_name);
        let (stop2, served2) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let bound = ns_handle.enter_current_thread().and_then(|()| {
                let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                let tcp = TcpListener::bind(addr).context("bind tcp")?;
                let udp = UdpSocket::bind(addr).context("bind udp")?;
                tcp.set_nonblocking(true)?;
                udp.set_read_timeout(Some(Duration::from_millis(5)))?;
                Ok((tcp, udp, sctp_listener(addr)))
            });
            let (tcp, udp, sctp) = match bound {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            let mut conns: Vec<std::net::TcpStream> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                // Every connection waiting, not one per round: a round can wait 5 ms for a
                // datagram, and a client connecting faster than that would fill the accept
                // queue, whose overflow drops SYNs (a 1 s retransmit the client sees as a
                // slow or timed-out connect).
                while let Ok((c, _)) = tcp.accept() {
                    served2.fetch_add(1, Ordering::Relaxed);
                    if c.set_nonblocking(true).is_ok() {
                        conns.push(c);
                    }
                }
                conns.retain_mut(|c| match c.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => c.write_all(&buf[..n]).is_ok(),
                    Err(e) => e.kind() == ErrorKind::WouldBlock,
                });
                if let Some(Ok((a, _))) = sctp.as_ref().map(TcpListener::accept) {
                    served2.fetch_add(1, Ordering::Relaxed);
                    drop(a);
                }
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    served2.fetch_add(1, Ordering::Relaxed);
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
            std::mem::forget(ns_handle);
        });
        rx.recv_timeout(Duration::from_secs(10))
            .context("listener did not start")?
            .with_context(|| format!("listener in {ns_name}"))?;
        Ok(Self {
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// TCP connections accepted plus UDP datagrams echoed so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// A non-blocking one-to-one SCTP socket listening on `addr`, or `None` where the kernel has
/// no SCTP. Held as a [`TcpListener`] only for its `accept`, which is the same `accept4(2)`
/// for any connection-oriented socket.
fn sctp_listener(addr: SocketAddr) -> Option<TcpListener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscall; the fd is owned on success.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh, valid descriptor, owned from here on.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let SocketAddr::V6(a) = addr else {
        return None;
    };
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sin6.sin6_family = libc::AF_INET6 as u16;
    sin6.sin6_port = a.port().to_be();
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid fd and address.
    let ok = unsafe {
        libc::bind(owned.as_raw_fd(), (&raw const sin6).cast(), len) == 0
            && libc::listen(owned.as_raw_fd(), 64) == 0
    };
    ok.then(|| TcpListener::from(owned))
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
