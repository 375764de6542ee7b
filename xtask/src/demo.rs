//! `cargo xtask demo`: the real agent, the real kernel, a sandbox that filters nothing else.
//!
//! It creates the test bed (client namespace in its own cgroup, "eu" and "us" hosts in their
//! own namespaces), runs `egressd run --config configs/example.toml --cgroup <sandbox>`, makes
//! allowed and denied connections from the client, and prints what egressd reported. Its
//! last good policy and its lock live in a private directory of its own, removed after, so
//! the host's `/var/lib/egressd` and `/run/egressd` are left as they were.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egressd_testbed::{EU_V4, EU_V6, PORT, Testbed, US_V4, US_V6, client::ProbeResult};
use serde_json::Value;

use crate::sh;

/// A private (0700) directory for the demo daemon's state, removed on drop.
struct Private(std::path::PathBuf);

impl Private {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let d = std::env::temp_dir().join(format!("egressd-demo-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
        Ok(Self(d))
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo; the sandbox is removed on return, also on error.
pub fn run() -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let tb = Testbed::new().context("creating the sandbox")?;
    let state = Private::new()?;
    println!("== sandbox");
    println!(
        "   client netns {} in cgroup {}",
        tb.client.name(),
        tb.cgroup.path().display()
    );
    println!(
        "   eu host {EU_V4} / {EU_V6} (netns {}), us host {US_V4} / {US_V6} (netns {})",
        tb.eu.name(),
        tb.us.name()
    );
    let config = sh::root().join("configs/example.toml");
    let bin = sh::target_dir().join("release/egressd");
    println!(
        "== {} run --config {} --cgroup {}",
        bin.display(),
        config.display(),
        tb.cgroup.path().display()
    );
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .arg("--state-dir")
        .arg(state.0.join("last-good"))
        .arg("--run-dir")
        .arg(state.0.join("run"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("egressd stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let res = drive(&tb, &rx);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("egressd did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    res?;
    println!("== after SIGTERM: programs detached, final counters");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        let v: Value = serde_json::from_str(&line)?;
        if v["type"] == "connection" {
            println!("   event: {line}");
        } else if v["type"] == "agent_stop" {
            println!(
                "   {:<18} {:<8} {:<6} {:>5}",
                "hook", "region", "verdict", "count"
            );
            for c in v["counters"].as_array().into_iter().flatten() {
                println!(
                    "   {:<18} {:<8} {:<6} {:>5}",
                    c["hook"].as_str().unwrap_or(""),
                    c["region"].as_str().unwrap_or(""),
                    c["verdict"].as_str().unwrap_or(""),
                    c["count"]
                );
            }
            println!(
                "   {:<18} {:<8} {:<6} {:>7} {:>9}",
                "direction", "region", "verdict", "packets", "bytes"
            );
            for f in v["flows"].as_array().into_iter().flatten() {
                println!(
                    "   {:<18} {:<8} {:<6} {:>7} {:>9}",
                    f["direction"].as_str().unwrap_or(""),
                    f["region"].as_str().unwrap_or(""),
                    f["verdict"].as_str().unwrap_or(""),
                    f["packets"],
                    f["bytes"]
                );
            }
            let lost = &v["lost"];
            println!(
                "   events: lost in the kernel {}, suppressed as repeats {} (a repeat of the same \
                 process, destination and verdict within suppress_window_ms is counted above, \
                 and the next event carries the count)",
                lost["ringbuf_full"], lost["suppressed"]
            );
        }
    }
    println!("== sandbox removed; the rest of the machine was never filtered");
    Ok(())
}

fn drive(tb: &Testbed, rx: &mpsc::Receiver<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("egressd did not start (see its log above)")?;
        let v: Value = serde_json::from_str(&line)?;
        if v["type"] == "agent_start" {
            println!("   started: {line}");
            break;
        }
    }
    let probes = [
        format!("tcp://{EU_V4}:{PORT}"),
        format!("tcp://{US_V4}:{PORT}"),
        format!("tcp://[{EU_V6}]:{PORT}"),
        format!("tcp://[{US_V6}]:{PORT}"),
        format!("udp://{EU_V4}:{PORT}"),
        format!("udp-sendto://[{US_V6}]:{PORT}"),
        format!("tcp://[::ffff:{US_V4}]:{PORT}"),
        format!("tcp://198.18.3.3:{PORT}"),
    ];
    println!("== connections from the sandboxed client");
    let out = Command::new(std::env::current_exe()?)
        .arg("probe")
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name()])
        .args(&probes)
        .output()
        .context("running the probe")?;
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let r: ProbeResult = serde_json::from_str(line)?;
        let outcome = if r.ok {
            "allowed".to_owned()
        } else {
            format!("refused: {}", r.error.unwrap_or_default())
        };
        println!("   {:<34} {outcome}", r.probe);
    }
    println!("== events egressd emitted (JSON lines on its stdout)");
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        println!("   {line}");
    }
    Ok(())
}
