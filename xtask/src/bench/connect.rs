//! The connect() benchmark: a tight loop of blocking TCP `connect()`s from a worker process
//! in the test bed's client namespace to a listener in the "eu" host namespace.
//!
//! Each iteration is `socket()`, `SO_LINGER {1, 0}` (close sends RST: no TIME_WAIT, so the
//! ephemeral ports never run out), `connect()` (timed), `close()`. The worker is a separate
//! process so it can be moved between two cgroups: `filtered` (egressd attached) and `plain`
//! (nothing attached); the netfilter contenders act on the namespace whatever the cgroup.
//! Loops are bounded by time and count, and connect has a 1 s timeout.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egressd_testbed::Netns;
use serde_json::{Value, json};

use super::Filter;

/// Port of the benchmark listener (the test bed's own listeners use 8080).
pub const PORT: u16 = 9100;

/// Upper bound of iterations in one measurement.
const MAX_ITERATIONS: u64 = 2_000_000;
/// Upper bound of datagrams in one UDP flood.
const MAX_DATAGRAMS: u64 = 50_000_000;

/// The worker process: a child running `xtask bench --worker NETNS`.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Where the worker runs and which cgroups it moves between.
pub struct Bed {
    /// Client namespace name (for `ip netns exec`).
    pub ns: String,
    /// cgroup egressd attaches to.
    pub filtered: PathBuf,
    /// cgroup with nothing attached.
    pub plain: PathBuf,
    /// The connect loop.
    pub worker: Worker,
}

/// One measurement.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Attempts made.
    pub attempts: u64,
    /// Attempts that connected.
    pub ok: u64,
    /// Wall time of the loop in ns.
    pub elapsed_ns: f64,
    /// Median `connect()` time of successful attempts, ns.
    pub p50: f64,
    /// 99th percentile, ns.
    pub p99: f64,
    /// The first failure's errno, if any.
    pub errno: Option<i64>,
}

impl Sample {
    /// Wall time per iteration (socket + connect + close) in ns.
    pub fn per_connect(&self) -> f64 {
        self.elapsed_ns / self.attempts.max(1) as f64
    }
    /// Iterations per second.
    pub fn rate(&self) -> f64 {
        self.attempts as f64 / (self.elapsed_ns / 1e9)
    }
}

impl Worker {
    /// Starts the worker, `xtask` binary `bin` (in the caller's cgroup; move it before
    /// measuring).
    pub fn spawn(bin: &Path, ns: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["bench", "--worker", ns])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the connect worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Moves the worker process into `cgroup`.
    pub fn move_to(&self, cgroup: &Path) -> anyhow::Result<()> {
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, self.child.id().to_string())
            .with_context(|| format!("moving the worker into {}", procs.display()))
    }

    /// Runs the loop against `addr:port` for `millis` (at most [`MAX_ITERATIONS`]). With
    /// `rotate`, the last byte of the address cycles through 1..=254 (for denied attempts to
    /// many destinations).
    pub fn run(
        &mut self,
        addr: IpAddr,
        port: u16,
        millis: u64,
        rotate: bool,
    ) -> anyhow::Result<Sample> {
        self.command(addr, port, millis, MAX_ITERATIONS, u8::from(rotate))
    }

    /// Sends one-byte UDP datagrams on one unconnected socket to `addr:port`, the last byte
    /// of the address cycling through 1..=254, for `millis` (at most [`MAX_DATAGRAMS`]):
    /// the fastest way to make denied attempts (`cgroup/sendmsg4`), one event each.
    pub fn udp_flood(&mut self, addr: IpAddr, port: u16, millis: u64) -> anyhow::Result<Sample> {
        self.command(addr, port, millis, MAX_DATAGRAMS, 2)
    }

    /// Sends one datagram as [`Self::udp_flood`] does.
    pub fn udp_once(&mut self, addr: IpAddr, port: u16) -> anyhow::Result<Sample> {
        self.command(addr, port, 1000, 1, 2)
    }

    fn command(
        &mut self,
        addr: IpAddr,
        port: u16,
        millis: u64,
        max: u64,
        mode: u8,
    ) -> anyhow::Result<Sample> {
        writeln!(self.stdin, "{addr} {port} {millis} {max} {mode}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("worker answered {line:?}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("worker: {e}");
        }
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Sample {
            attempts: v["attempts"].as_u64().unwrap_or(0),
            ok: v["ok"].as_u64().unwrap_or(0),
            elapsed_ns: f("elapsed_ns"),
            p50: f("p50"),
            p99: f("p99"),
            errno: v["errno"].as_i64(),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The no-filter baseline: nothing to switch.
pub struct NoFilter;

impl Filter for NoFilter {
    fn name(&self) -> &'static str {
        "none"
    }
    fn enable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        Ok(())
    }
    fn disable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Enables `filter`, warms up, measures `millis` of connects to `addr`, disables it.
pub fn measure(
    bed: &mut Bed,
    filter: &mut dyn Filter,
    addr: IpAddr,
    warm_ms: u64,
    millis: u64,
) -> anyhow::Result<Sample> {
    filter.enable(bed)?;
    let res = bed
        .worker
        .run(addr, PORT, warm_ms, false)
        .and_then(|_| bed.worker.run(addr, PORT, millis, false));
    filter.disable(bed)?;
    let s = res?;
    if s.ok * 100 < s.attempts * 99 {
        bail!(
            "{}: only {} of {} connects to {addr} succeeded (errno {:?})",
            filter.name(),
            s.ok,
            s.attempts,
            s.errno
        );
    }
    Ok(s)
}

/// Accept-and-close listener on [`PORT`] in a host namespace (dual-stack, backlog 4096).
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn listen_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we own; structures are fully initialised.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let zero: libc::c_int = 0;
        let sz = size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            sz,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const zero).cast(),
            sz,
        );
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = PORT.to_be();
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind");
        }
        if libc::listen(fd.as_raw_fd(), 4096) != 0 {
            return Err(std::io::Error::last_os_error()).context("listen");
        }
        Ok(fd)
    }
}

impl Server {
    /// Starts serving in `ns`; returns once the socket listens.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = format!("/run/netns/{}", ns.name());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = (|| -> anyhow::Result<OwnedFd> {
                let f = std::fs::File::open(&path)?;
                // SAFETY: a valid namespace fd; changes only this thread's namespace.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                listen_socket()
            })();
            let fd = match setup {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&raw mut pfd, 1, 50) };
                loop {
                    // SAFETY: accepting on our listening socket; the result is closed at once.
                    let c = unsafe {
                        libc::accept4(
                            fd.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        break;
                    }
                    // SAFETY: closing the descriptor accept4 just returned.
                    unsafe { libc::close(c) };
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .context("benchmark listener did not start")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Entry point of `xtask bench --worker NETNS`: enters the namespace, then answers one JSON
/// line per command line `ADDR PORT MILLIS MAX MODE` on stdin (MODE 0: connect loop, 1:
/// connect loop over 254 addresses, 2: UDP flood over 254 addresses).
pub fn worker_main(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace fd; the worker is single-threaded.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let reply = match parse_and_run(&line) {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

fn parse_and_run(line: &str) -> anyhow::Result<Value> {
    let mut it = line.split_whitespace();
    let addr: IpAddr = it.next().context("address")?.parse()?;
    let port: u16 = it.next().context("port")?.parse()?;
    let millis: u64 = it.next().context("millis")?.parse()?;
    let max: u64 = it.next().context("max")?.parse()?;
    let mode = it.next();
    if mode == Some("2") {
        return Ok(udp_loop(addr, port, Duration::from_millis(millis), max));
    }
    let rotate = mode == Some("1");
    Ok(connect_loop(
        addr,
        port,
        Duration::from_millis(millis),
        max,
        rotate,
    ))
}

/// A socket address for `addr:port`, as raw bytes plus length.
fn sockaddr(addr: IpAddr, port: u16) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; we fill the family-specific view.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sa = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        IpAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let sa = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            sa.sin6_addr.s6_addr = a.octets();
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn rotated(addr: IpAddr, i: u64) -> IpAddr {
    let last = 1 + (i % 254) as u8;
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], last))
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] = last;
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

fn connect_loop(addr: IpAddr, port: u16, dur: Duration, max: u64, rotate: bool) -> Value {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let addrs: Vec<_> = if rotate {
        (0..254).map(|i| sockaddr(rotated(addr, i), port)).collect()
    } else {
        vec![sockaddr(addr, port)]
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    let mut times: Vec<u32> = Vec::with_capacity(200_000);
    let (mut attempts, mut ok) = (0u64, 0u64);
    let mut errno = None;
    let start = Instant::now();
    let deadline = start + dur;
    while attempts < max && (attempts % 32 != 0 || Instant::now() < deadline) {
        let (sa, len) = &addrs[(attempts % addrs.len() as u64) as usize];
        attempts += 1;
        // SAFETY: plain socket calls on a descriptor owned by this loop and closed at its end.
        unsafe {
            let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                errno.get_or_insert(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
                continue;
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
            let t = Instant::now();
            let r = libc::connect(fd, (&raw const *sa).cast(), *len);
            let spent = t.elapsed();
            if r == 0 {
                ok += 1;
                times.push(u32::try_from(spent.as_nanos()).unwrap_or(u32::MAX));
            } else {
                errno.get_or_insert(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            libc::close(fd);
        }
    }
    let elapsed = start.elapsed();
    times.sort_unstable();
    let q = |f: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * f) as usize)
            .copied()
    };
    json!({
        "attempts": attempts, "ok": ok, "elapsed_ns": elapsed.as_nanos() as f64,
        "p50": q(0.5), "p99": q(0.99), "errno": errno,
    })
}

fn udp_loop(addr: IpAddr, port: u16, dur: Duration, max: u64) -> Value {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let addrs: Vec<_> = (0..254).map(|i| sockaddr(rotated(addr, i), port)).collect();
    // SAFETY: plain socket call; the descriptor is owned (and closed) by `OwnedFd`.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return json!({ "error": format!("socket: {}", std::io::Error::last_os_error()) });
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (mut attempts, mut ok) = (0u64, 0u64);
    let mut errno = None;
    let start = Instant::now();
    let deadline = start + dur;
    while attempts < max && (attempts % 256 != 0 || Instant::now() < deadline) {
        let (sa, len) = &addrs[(attempts % addrs.len() as u64) as usize];
        attempts += 1;
        // SAFETY: one byte from a live buffer to a valid socket address.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                b"x".as_ptr().cast(),
                1,
                0,
                (&raw const *sa).cast(),
                *len,
            )
        };
        if r == 1 {
            ok += 1;
        } else {
            errno.get_or_insert(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
    }
    let elapsed = start.elapsed();
    json!({
        "attempts": attempts, "ok": ok, "elapsed_ns": elapsed.as_nanos() as f64,
        "p50": null, "p99": null, "errno": errno,
    })
}
