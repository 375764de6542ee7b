//! The probe client: joins a cgroup and a network namespace, then makes connection attempts
//! and prints one JSON result per attempt on stdout.
//!
//! Usage (argv after the dispatching binary's own sub-command):
//! `--cgroup DIR --netns NAME [--repeat N] PROBE...` where PROBE is `KIND://ADDR:PORT`:
//! - `tcp`: TCP `connect()`;
//! - `udp`: connected UDP: `connect()`, `send()`, wait up to 3 s for the echo;
//! - `udp-sendto`: unconnected UDP `sendto()` with the destination, wait for the echo.
//!
//! IPv6 addresses are bracketed (`tcp://[2001:db8:2::2]:8080`); an IPv4-mapped address
//! (`[::ffff:198.18.2.2]`) goes through an AF_INET6 socket.
use std::{
    fs,
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::Netns;

/// Result of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe as given.
    pub probe: String,
    /// The attempt succeeded (TCP connected; UDP got its echo back).
    pub ok: bool,
    /// `errno` of the failing call, if any (1 = EPERM, 101 = ENETUNREACH).
    pub errno: Option<i32>,
    /// Which step failed and how.
    pub error: Option<String>,
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
    let mut probes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cgroup" => cgroup = it.next().cloned(),
            "--netns" => netns = it.next().cloned(),
            "--repeat" => repeat = it.next().context("--repeat N")?.parse()?,
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
    let mut out = io::stdout().lock();
    for _ in 0..repeat {
        for p in &probes {
            let r = attempt(p);
            serde_json::to_writer(&mut out, &r)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn fail(probe: &str, step: &str, e: &io::Error) -> ProbeResult {
    ProbeResult {
        probe: probe.to_owned(),
        ok: false,
        errno: e.raw_os_error(),
        error: Some(format!("{step}: {e}")),
    }
}

/// Makes one attempt; never panics.
pub fn attempt(probe: &str) -> ProbeResult {
    let Some((kind, addr)) = probe.split_once("://") else {
        return fail(probe, "parse", &io::Error::other("missing ://"));
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return fail(probe, "parse", &io::Error::other(e)),
    };
    let timeout = Duration::from_secs(3);
    let res = match kind {
        "tcp" => TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|e| ("connect", e)),
        "udp" | "udp-sendto" => udp(kind == "udp", addr, timeout),
        _ => {
            return fail(
                probe,
                "parse",
                &io::Error::other(format!("unknown kind {kind}")),
            );
        }
    };
    match res {
        Ok(()) => ProbeResult {
            probe: probe.to_owned(),
            ok: true,
            errno: None,
            error: None,
        },
        Err((step, e)) => fail(probe, step, &e),
    }
}

fn udp(
    connected: bool,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), (&'static str, io::Error)> {
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
