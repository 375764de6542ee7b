//! The probe client: joins a cgroup and a network namespace, then makes connection attempts
//! and prints one JSON result per attempt on stdout.
//!
//! Usage (argv after the dispatching binary's own sub-command):
//! `--cgroup DIR --netns NAME [--repeat N] [--fork] PROBE...` where PROBE is
//! `KIND://ADDR:PORT`:
//! - `tcp`: TCP `connect()`;
//! - `udp`: connected UDP: `connect()`, `send()`, wait for the echo;
//! - `udp-sendto`: unconnected UDP `sendto()` with the destination, wait for the echo;
//! - `tcp-fastopen`: TCP Fast Open, `sendto(MSG_FASTOPEN)` without `connect()`, wait for
//!   the echo;
//! - `udp-sendmmsg`: unconnected UDP `sendmmsg()` of two datagrams to the destination, wait
//!   for an echo;
//! - `uring-tcp`: `IORING_OP_CONNECT` through io_uring;
//! - `uring-sendmsg`: `IORING_OP_SENDMSG` with a destination on an unconnected UDP socket,
//!   wait for the echo;
//! - `icmp`: ICMP (v4) or ICMPv6 echo request on a raw socket, wait for the reply (PORT is
//!   ignored);
//! - `rawip`: a raw IP datagram with protocol number PORT (no reply expected);
//! - `packet-dgram`, `packet-raw`: a hand-built IPv4/UDP datagram to ADDR:PORT (IPv4 only)
//!   on an AF_PACKET `SOCK_DGRAM` or `SOCK_RAW` socket, out of the interface on ADDR's /24
//!   (no reply expected; see [`crate::frames`]); `packet-bypass`: as `packet-raw` with
//!   `PACKET_QDISC_BYPASS` set (the frame skips the device's queueing layer);
//! - `hdrincl://NEXTHOP:PORT/HEADERDST`: an `IPPROTO_RAW` socket sends a UDP datagram whose
//!   own IPv4 header names HEADERDST, with `sendto(NEXTHOP)` (no reply expected);
//! - `hdrincl6://[NEXTHOP]:PORT/HEADERDST`: the same with an AF_INET6 `IPPROTO_RAW` socket
//!   and an IPv6 header;
//! - `dev-udp`, `pktinfo-udp`, `unicastif-udp`, `dev-tcp`, `mark-udp` (`KIND://ADDR:PORT/ARG`):
//!   a socket forced onto interface ARG (or marked ARG), see [`crate::forced`];
//! - `tcp-hold`: connect, exchange one byte (result `#1`), then wait for a line on stdin and
//!   exchange another byte on the same connection (result `#2`);
//! - `hdrincl-pair://NEXTHOP:PORT/HEADERDST`: one `IPPROTO_RAW` socket (AF_INET or AF_INET6,
//!   as NEXTHOP) sends the same UDP datagram, whose header names HEADERDST, first with
//!   `sendto(HEADERDST)` (result `#1`), then with `sendto(NEXTHOP)` (result `#2`);
//! - `rawip-pair://ADDR:PROTO/SECOND`: one raw IP socket of protocol PROTO sends a datagram
//!   to ADDR (result `#1`), then one to SECOND (result `#2`), so a verdict cached on the
//!   socket for the first destination meets the second;
//! - `dev-udp-hold://ADDR:PORT/ARG`: the same for a datagram from a socket bound to
//!   interface ARG (results `#1` and `#2`, no echo awaited; see [`crate::forced::hold`]);
//! - `rawip-hold://ADDR:PROTO`: one raw IP socket of protocol PROTO sends a datagram to ADDR
//!   (result `#1`), waits for a line on stdin, and sends another (result `#2`).
//!
//! `PROBE*N` repeats one probe N times in a row, `pause://MS` sleeps (no result line).
//! `--uid N` runs the probes as user and group N (no groups, no capabilities) after joining
//! the cgroup and network namespace. `--fork` makes the probes run in a child forked after
//! joining the cgroup; `--for-ms N`
//! repeats the probe list until N milliseconds have passed (at most 100,000 rounds), and
//! with `--until-eof` also stops once stdin is closed (the caller decides when to stop). IPv6
//! addresses are bracketed (`tcp://[2001:db8:2::2]:8080`); an IPv4-mapped address
//! (`[::ffff:198.18.2.2]`) goes through an AF_INET6 socket.
use std::{
    fs,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::Netns;

/// Result of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe as given (`#1`/`#2` appended for the stages of `tcp-hold`).
    pub probe: String,
    /// The attempt succeeded (connected; got the echo or reply back; datagram sent).
    pub ok: bool,
    /// `errno` of the failing call, if any (1 = EPERM, 11 = EAGAIN: timed out, 101 =
    /// ENETUNREACH).
    pub errno: Option<i32>,
    /// Which step failed and how.
    pub error: Option<String>,
    /// `CLOCK_MONOTONIC` nanoseconds just before the attempt (system-wide, so comparable
    /// with the test's own clock).
    #[serde(default)]
    pub t0_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds just after the attempt.
    #[serde(default)]
    pub t1_ns: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Entry point; returns the process exit code (0 when every attempt was *made*, whatever
/// its outcome; 2 on bad usage or set-up failure).
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("probe: {e:#}");
            2
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let mut cgroup = None;
    let mut netns = None;
    let mut repeat = 1u32;
    let mut fork = false;
    let mut for_ms = None;
    let mut until_eof = false;
    let mut uid = None;
    let mut then_exec = None;
    let mut linger_ms = 0u64;
    let mut probes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cgroup" => cgroup = it.next().cloned(),
            "--netns" => netns = it.next().cloned(),
            "--repeat" => repeat = it.next().context("--repeat N")?.parse()?,
            "--fork" => fork = true,
            "--for-ms" => for_ms = Some(it.next().context("--for-ms N")?.parse::<u64>()?),
            "--until-eof" => until_eof = true,
            "--uid" => uid = Some(it.next().context("--uid N")?.parse::<u32>()?),
            // After the probes, execve PATH with this same command line minus this option
            // (the same process, another program name): tests of attribution across exec.
            "--then-exec" => then_exec = Some(it.next().context("--then-exec PATH")?.clone()),
            // Stay alive this long after the probes (so /proc can still be read).
            "--linger-ms" => linger_ms = it.next().context("--linger-ms N")?.parse()?,
            p if p.contains("://") => probes.push(p.to_owned()),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    // Join the cgroup first: the netns switch does not change cgroup membership, and every
    // socket below must be created by a process inside the cgroup.
    if let Some(cg) = cgroup {
        let procs = format!("{cg}/cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("joining {procs}"))?;
    }
    if let Some(ns) = netns {
        let handle = Netns::existing(&ns);
        handle.enter_current_thread()?;
        std::mem::forget(handle);
    }
    if let Some(id) = uid {
        // An unprivileged user from here on (uid = gid = N, no groups, no capabilities).
        // SAFETY: plain system calls on our own credentials.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(id, id, id) == 0
                && libc::setresuid(id, id, id) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error()).context("dropping to --uid");
        }
    }
    if fork {
        io::stdout().flush()?;
        // SAFETY: single-threaded process; the child only runs the probes and exits.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()).context("fork"),
            0 => {
                let code = i32::from(probe_all(&probes, repeat).is_err());
                // SAFETY: leave the child without running the parent's exit handlers twice.
                unsafe { libc::_exit(code) };
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    bail!("forked probe failed: status {status}");
                }
                return Ok(());
            }
        }
    }
    if let Some(ms) = for_ms {
        let end = monotonic_ns() + ms * 1_000_000;
        let eof = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if until_eof {
            let eof = eof.clone();
            std::thread::spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                eof.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
        for _ in 0..100_000 {
            if monotonic_ns() >= end || eof.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            probe_all(&probes, 1)?;
        }
        return Ok(());
    }
    probe_all(&probes, repeat)?;
    if let Some(path) = then_exec {
        io::stdout().flush()?;
        let mut argv: Vec<std::ffi::CString> = vec![std::ffi::CString::new(path.as_str())?];
        let marker = std::env::args().nth(1).context("no probe marker in argv")?;
        argv.push(std::ffi::CString::new(marker)?);
        let mut skip = false;
        for a in args {
            if skip {
                skip = false;
            } else if a == "--then-exec" {
                skip = true;
            } else {
                argv.push(std::ffi::CString::new(a.as_str())?);
            }
        }
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: NUL-terminated strings and a NULL-terminated array that outlive the call.
        unsafe { libc::execv(argv[0].as_ptr(), ptrs.as_ptr()) };
        return Err(io::Error::last_os_error()).with_context(|| format!("execv {path}"));
    }
    std::thread::sleep(std::time::Duration::from_millis(linger_ms));
    Ok(())
}

fn probe_all(probes: &[String], repeat: u32) -> anyhow::Result<()> {
    for _ in 0..repeat {
        for p in probes {
            if let Some(addr) = p.strip_prefix("tcp-hold://") {
                hold(p, addr)?;
            } else if let Some(rest) = p.strip_prefix("rawip-pair://") {
                raw_pair(p, rest)?;
            } else if let Some(rest) = p.strip_prefix("hdrincl-pair://") {
                hdrincl_pair(p, rest)?;
            } else if let Some(rest) = p.strip_prefix("dev-udp-hold://") {
                hold_dev_udp(p, rest)?;
            } else if let Some(rest) = p.strip_prefix("rawip-hold://") {
                hold_raw(p, rest)?;
            } else if let Some(ms) = p.strip_prefix("pause://") {
                std::thread::sleep(Duration::from_millis(ms.parse().context("pause://MS")?));
            } else {
                // `PROBE*N` repeats one probe N times in a row.
                let (p, times) = match p.rsplit_once('*') {
                    Some((p, n)) => (p, n.parse::<u32>().context("PROBE*N")?),
                    None => (p.as_str(), 1),
                };
                for _ in 0..times {
                    let t0_ns = monotonic_ns();
                    let r = attempt(p);
                    emit(&ProbeResult {
                        t0_ns,
                        t1_ns: monotonic_ns(),
                        ..r
                    })?;
                }
            }
        }
    }
    Ok(())
}

fn emit(r: &ProbeResult) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, r)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn fail(probe: &str, step: &str, e: &io::Error) -> ProbeResult {
    ProbeResult {
        probe: probe.to_owned(),
        ok: false,
        errno: e.raw_os_error(),
        error: Some(format!("{step}: {e}")),
        t0_ns: 0,
        t1_ns: 0,
    }
}

fn ok(probe: &str) -> ProbeResult {
    ProbeResult {
        probe: probe.to_owned(),
        ok: true,
        errno: None,
        error: None,
        t0_ns: 0,
        t1_ns: 0,
    }
}

type Step = Result<(), (&'static str, io::Error)>;

/// Makes one attempt; never panics.
pub fn attempt(probe: &str) -> ProbeResult {
    let Some((kind, addr)) = probe.split_once("://") else {
        return fail(probe, "parse", &io::Error::other("missing ://"));
    };
    if kind == "hdrincl" {
        let parsed = addr.split_once('/').and_then(|(hop, dst)| {
            Some((
                hop.parse::<std::net::SocketAddrV4>().ok()?,
                dst.parse().ok()?,
            ))
        });
        let Some((hop, dst)) = parsed else {
            return fail(probe, "parse", &io::Error::other("NEXTHOP:PORT/HEADERDST"));
        };
        return match crate::frames::hdrincl(hop, dst) {
            Ok(()) => ok(probe),
            Err((step, e)) => fail(probe, step, &e),
        };
    }
    if kind == "hdrincl6" {
        let parsed = addr.rsplit_once('/').and_then(|(hop, dst)| {
            Some((
                hop.parse::<std::net::SocketAddrV6>().ok()?,
                dst.parse().ok()?,
            ))
        });
        let Some((hop, dst)) = parsed else {
            return fail(
                probe,
                "parse",
                &io::Error::other("[NEXTHOP]:PORT/HEADERDST"),
            );
        };
        return match crate::frames::hdrincl6(hop, dst) {
            Ok(()) => ok(probe),
            Err((step, e)) => fail(probe, step, &e),
        };
    }
    if let Some((a, arg)) = addr.rsplit_once('/')
        && let Ok(a) = a.parse::<SocketAddr>()
        && let Some(r) = crate::forced::attempt(kind, a, arg)
    {
        return match r {
            Ok(()) => ok(probe),
            Err((step, e)) => fail(probe, step, &e),
        };
    }
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return fail(probe, "parse", &io::Error::other(e)),
    };
    let timeout = crate::patience(Duration::from_secs(3));
    let res = match kind {
        "tcp" => TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|e| ("connect", e)),
        "udp" | "udp-sendto" => udp(kind == "udp", addr, timeout),
        // A connection that carries data: one echoed exchange.
        "tcp-echo" => TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| ("connect", e))
            .and_then(|mut c| {
                c.set_read_timeout(Some(timeout))
                    .map_err(|e| ("setsockopt", e))?;
                c.write_all(b"egressd").map_err(|e| ("write", e))?;
                let mut buf = [0u8; 7];
                c.read_exact(&mut buf).map_err(|e| ("read", e))
            }),
        // What glibc's getaddrinfo does to sort addresses (RFC 6724): connect a UDP socket,
        // read its source address, close it; nothing is sent.
        "udp-connect" => std::net::UdpSocket::bind(if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .map_err(|e| ("bind", e))
        .and_then(|s| s.connect(addr).map_err(|e| ("connect", e)).map(|()| s))
        .and_then(|s| s.local_addr().map(drop).map_err(|e| ("getsockname", e))),
        "tcp-fastopen" => fastopen(addr, timeout),
        "udp-sendmmsg" => sendmmsg(addr, timeout),
        "uring-tcp" => uring_connect(addr),
        "uring-sendmsg" => uring_sendmsg(addr, timeout),
        "icmp" => icmp_echo(addr, timeout),
        "rawip" => raw_ip(addr),
        "sctp" => sctp_associate(addr, crate::patience(Duration::from_secs(2))),
        "packet-dgram" | "packet-raw" | "packet-bypass" => match addr {
            SocketAddr::V4(a) => {
                crate::frames::packet_with(a, kind != "packet-dgram", kind == "packet-bypass")
            }
            SocketAddr::V6(_) => Err(("parse", io::Error::other("IPv4 only"))),
        },
        _ => {
            return fail(
                probe,
                "parse",
                &io::Error::other(format!("unknown kind {kind}")),
            );
        }
    };
    match res {
        Ok(()) => ok(probe),
        Err((step, e)) => fail(probe, step, &e),
    }
}

fn last_err<T>(step: &'static str) -> Result<T, (&'static str, io::Error)> {
    Err((step, io::Error::last_os_error()))
}

/// One `recv(2)` into `buf`, the byte count read. Retried on `EINTR`: after an io_uring
/// submission, task work the kernel queues for this thread can interrupt a blocking
/// receive before the reply (or the receive timeout) comes.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, (&'static str, io::Error)> {
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(("recv", e));
        }
    }
}

/// A socket of `family`, `ty`, `proto`, owned.
fn socket(addr: &SocketAddr, ty: i32, proto: i32) -> Result<OwnedFd, (&'static str, io::Error)> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned on success.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return last_err("socket");
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `sockaddr_storage` and length for `addr`.
pub(crate) fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn set_rcv_timeout(fd: &OwnedFd, timeout: Duration) -> Step {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as i64,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option value.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    if r != 0 {
        last_err("setsockopt")
    } else {
        Ok(())
    }
}

fn udp(connected: bool, addr: SocketAddr, timeout: Duration) -> Step {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| ("bind", io::Error::other(e)))?;
    let sock = UdpSocket::bind(bind).map_err(|e| ("bind", e))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| ("setsockopt", e))?;
    let msg = b"egressd-probe";
    if connected {
        sock.connect(addr).map_err(|e| ("connect", e))?;
        sock.send(msg).map_err(|e| ("send", e))?;
    } else {
        sock.send_to(msg, addr).map_err(|e| ("sendto", e))?;
    }
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).map_err(|e| ("recv", e))?;
    if &buf[..n] != msg {
        return Err(("recv", io::Error::other("echo mismatch")));
    }
    Ok(())
}

fn fastopen(addr: SocketAddr, timeout: Duration) -> Step {
    let fd = socket(&addr, libc::SOCK_STREAM, 0)?;
    set_rcv_timeout(&fd, timeout)?;
    let (ss, len) = sockaddr(&addr);
    let msg = b"tfo";
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_FASTOPEN,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 {
        return last_err("sendto(MSG_FASTOPEN)");
    }
    let mut stream = TcpStream::from(fd);
    let mut buf = [0u8; 3];
    stream.read_exact(&mut buf).map_err(|e| ("recv", e))
}

fn sendmmsg(addr: SocketAddr, timeout: Duration) -> Step {
    let fd = socket(&addr, libc::SOCK_DGRAM, 0)?;
    set_rcv_timeout(&fd, timeout)?;
    let (mut ss, len) = sockaddr(&addr);
    let mut bufs = [*b"egressd-mmsg1", *b"egressd-mmsg2"];
    let mut iovs = bufs.each_mut().map(|b| libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    });
    // SAFETY: all-zero mmsghdr is valid; the pointers set below refer to live locals.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_name = (&raw mut ss).cast();
        m.msg_hdr.msg_namelen = len;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: valid fd and message array.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) };
    if n < 0 {
        return last_err("sendmmsg");
    }
    let mut buf = [0u8; 64];
    recv(&fd, &mut buf).map(drop)
}

fn uring_connect(addr: SocketAddr) -> Step {
    let fd = socket(&addr, libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(&addr);
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        (&raw const ss).cast(),
        len,
    )
    .build();
    uring_submit(op, "io_uring connect").map(drop)
}

fn uring_sendmsg(addr: SocketAddr, timeout: Duration) -> Step {
    let fd = socket(&addr, libc::SOCK_DGRAM, 0)?;
    set_rcv_timeout(&fd, timeout)?;
    let (mut ss, len) = sockaddr(&addr);
    let mut msg = *b"egressd-probe";
    let mut iov = libc::iovec {
        iov_base: msg.as_mut_ptr().cast(),
        iov_len: msg.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below point at live locals.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&raw mut ss).cast();
    hdr.msg_namelen = len;
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    let op =
        io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd.as_raw_fd()), &raw const hdr).build();
    uring_submit(op, "io_uring sendmsg")?;
    let mut buf = [0u8; 64];
    recv(&fd, &mut buf).map(drop)
}

/// Submits one SQE and waits for its CQE; a negative result is the errno.
fn uring_submit(
    op: io_uring::squeue::Entry,
    step: &'static str,
) -> Result<i32, (&'static str, io::Error)> {
    let mut ring = io_uring::IoUring::new(4).map_err(|e| ("io_uring_setup", e))?;
    // SAFETY: the buffers the entry points at outlive the wait below.
    unsafe { ring.submission().push(&op) }.map_err(|e| (step, io::Error::other(e)))?;
    ring.submit_and_wait(1).map_err(|e| (step, e))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or((step, io::Error::other("no completion")))?;
    let r = cqe.result();
    if r < 0 {
        return Err((step, io::Error::from_raw_os_error(-r)));
    }
    Ok(r)
}

fn icmp_echo(addr: SocketAddr, timeout: Duration) -> Step {
    let v4 = addr.is_ipv4();
    let proto = if v4 {
        libc::IPPROTO_ICMP
    } else {
        libc::IPPROTO_ICMPV6
    };
    let fd = socket(&addr, libc::SOCK_RAW, proto)?;
    set_rcv_timeout(&fd, timeout)?;
    let id = (std::process::id() & 0xffff) as u16;
    // type, code, checksum, id, sequence; the kernel computes the ICMPv6 checksum.
    let mut pkt = [if v4 { 8 } else { 128 }, 0, 0, 0, 0, 0, 0, 1, b'e', b'g'];
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    if v4 {
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let (ss, len) = sockaddr(&SocketAddr::new(addr.ip(), 0));
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 {
        return last_err("sendto");
    }
    let mut buf = [0u8; 1500];
    for _ in 0..16 {
        let n = recv(&fd, &mut buf)?;
        // IPv4 raw sockets deliver the IP header; ICMPv6 ones do not.
        let icmp = if v4 {
            &buf[usize::from(buf[0] & 0x0f) * 4..n]
        } else {
            &buf[..n]
        };
        let reply = if v4 { 0 } else { 129 };
        if icmp.len() >= 6 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return Ok(());
        }
    }
    Err(("recv", io::Error::other("no echo reply among 16 packets")))
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn raw_ip(addr: SocketAddr) -> Step {
    let fd = socket(&addr, libc::SOCK_RAW, i32::from(addr.port()))?;
    raw_send(&fd, addr.ip())
}

/// `rawip-pair://ADDR:PROTO/SECOND` (`rest` is what follows `://`): results `#1` and `#2`.
fn raw_pair(probe: &str, rest: &str) -> anyhow::Result<()> {
    let (first, second) = address_and_arg(probe, rest)?;
    let second: std::net::IpAddr = second
        .parse()
        .with_context(|| format!("bad second address in {probe}"))?;
    raw_two(probe, first, second, || Ok(()))
}

/// `rawip-hold://ADDR:PROTO` (`rest` is what follows `://`): results `#1` and `#2`, a line
/// on stdin awaited between them.
fn hold_raw(probe: &str, rest: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = rest
        .parse()
        .with_context(|| format!("bad address in {probe}"))?;
    raw_two(probe, addr, addr.ip(), next_line)
}

/// One raw IP socket of protocol `first.port()` sends a datagram to `first.ip()` (result
/// `#1`), runs `between`, then sends one to `second` (result `#2`). When the socket cannot
/// be made, both results carry that error and `between` does not run.
fn raw_two(
    probe: &str,
    first: SocketAddr,
    second: std::net::IpAddr,
    between: impl FnOnce() -> io::Result<()>,
) -> anyhow::Result<()> {
    let fd = match socket(&first, libc::SOCK_RAW, i32::from(first.port())) {
        Ok(fd) => fd,
        Err((step, e)) => {
            let again = io::Error::new(e.kind(), e.to_string());
            emit(&stage(probe, 1, Err((step, e))))?;
            return emit(&stage(probe, 2, Err((step, again))));
        }
    };
    emit(&stage(probe, 1, raw_send(&fd, first.ip())))?;
    between()?;
    emit(&stage(probe, 2, raw_send(&fd, second)))
}

/// Waits for the test's line on stdin (the go-ahead between the stages of a hold probe).
fn next_line() -> io::Result<()> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line).map(drop)
}

/// `hdrincl-pair://NEXTHOP:PORT/HEADERDST` (`rest` is what follows `://`): results `#1`
/// and `#2` ([`crate::frames::hdrincl_pair`]).
fn hdrincl_pair(probe: &str, rest: &str) -> anyhow::Result<()> {
    let (next_hop, header_dst) = address_and_arg(probe, rest)?;
    let header_dst: std::net::IpAddr = header_dst
        .parse()
        .with_context(|| format!("bad header destination in {probe}"))?;
    let (one, two) = crate::frames::hdrincl_pair(next_hop, header_dst);
    emit(&stage(probe, 1, one))?;
    emit(&stage(probe, 2, two))
}

/// One datagram from the raw socket `fd` to `ip`.
fn raw_send(fd: &OwnedFd, ip: std::net::IpAddr) -> Step {
    let (ss, len) = sockaddr(&SocketAddr::new(ip, 0));
    let payload = b"egressd-raw";
    // SAFETY: valid fd, buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
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

/// `sctp`: a one-to-one SCTP socket (RFC 6458 section 4) establishes an association with
/// `addr` within `timeout`. A dropped INIT is retransmitted, never reported to the socket,
/// so a denied association shows as `ETIMEDOUT` here.
fn sctp_associate(addr: SocketAddr, timeout: Duration) -> Step {
    let fd = socket(
        &addr,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
        libc::IPPROTO_SCTP,
    )?;
    let (ss, len) = sockaddr(&addr);
    // SAFETY: valid fd and address.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const ss).cast(), len) };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return last_err("connect");
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&raw mut pfd, 1, ms) } {
        n if n < 0 => return last_err("poll"),
        0 => {
            return Err(("connect", io::Error::from_raw_os_error(libc::ETIMEDOUT)));
        }
        _ => {}
    }
    let mut err: libc::c_int = 0;
    let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; err and elen are valid out-parameters.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut elen,
        )
    };
    if r < 0 {
        return last_err("getsockopt");
    }
    if err != 0 {
        return Err(("connect", io::Error::from_raw_os_error(err)));
    }
    Ok(())
}

/// `dev-udp-hold://ADDR:PORT/DEV` (`rest` is what follows `://`): results `#1` and `#2`, a
/// line on stdin awaited between them.
fn hold_dev_udp(probe: &str, rest: &str) -> anyhow::Result<()> {
    let (addr, dev) = address_and_arg(probe, rest)?;
    let mut waited = Ok(());
    let second = crate::forced::hold(addr, dev, |first| {
        waited = emit(&stage(probe, 1, first)).and_then(|()| Ok(next_line()?));
    });
    waited?;
    emit(&stage(probe, 2, second))
}

/// The result of stage `n` (`#n`) of a two-stage probe.
fn stage(probe: &str, n: u32, step: Step) -> ProbeResult {
    let name = format!("{probe}#{n}");
    match step {
        Ok(()) => ok(&name),
        Err((step, e)) => fail(&name, step, &e),
    }
}

/// `ADDR:PORT/ARG` (what follows `://` in `probe`) split into the address and ARG.
fn address_and_arg<'a>(probe: &str, rest: &'a str) -> anyhow::Result<(SocketAddr, &'a str)> {
    let (addr, arg) = rest
        .rsplit_once('/')
        .with_context(|| format!("{probe}: ADDR:PORT/ARG"))?;
    let addr = addr
        .parse()
        .with_context(|| format!("bad address in {probe}"))?;
    Ok((addr, arg))
}

/// `tcp-hold`: two exchanges on one connection with a pause in between (a policy change
/// happens in the pause). Results `#1` and `#2`.
fn hold(probe: &str, addr: &str) -> anyhow::Result<()> {
    let first = format!("{probe}#1");
    let second = format!("{probe}#2");
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address in {probe}"))?;
    let timeout = crate::patience(Duration::from_secs(3));
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            emit(&fail(&first, "connect", &e))?;
            return emit(&fail(&second, "connect", &e));
        }
    };
    s.set_read_timeout(Some(timeout))?;
    let exchange = |s: &mut TcpStream, b: u8| -> Step {
        s.write_all(&[b]).map_err(|e| ("send", e))?;
        let mut got = [0u8; 1];
        s.read_exact(&mut got).map_err(|e| ("recv", e))?;
        if got[0] != b {
            Err(("recv", io::Error::other("echo mismatch")))
        } else {
            Ok(())
        }
    };
    emit(&match exchange(&mut s, b'a') {
        Ok(()) => ok(&first),
        Err((step, e)) => fail(&first, step, &e),
    })?;
    next_line()?;
    emit(&match exchange(&mut s, b'b') {
        Ok(()) => ok(&second),
        Err((step, e)) => fail(&second, step, &e),
    })
}
