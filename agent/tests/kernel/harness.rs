//! Shared harness: a running `egressd run`, the probe client, and JSON helpers.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use egressd_testbed::{PORT, Testbed, client::ProbeResult};
use libtest_mimic::Failed;
use serde_json::Value;

pub use egressd_testbed::patience;

/// How long [`Agent::stop`] waits for the daemon to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// argv[1] that turns the test binary into the probe client.
pub const PROBE_ARG: &str = "__egressd_probe";
/// `EPERM`: what a denied socket call returns.
pub const EPERM: i32 = 1;
/// `EAGAIN`: a receive timed out (a dropped packet).
pub const EAGAIN: i32 = 11;
/// `ENETUNREACH`: no route (the destination was allowed but leads nowhere).
pub const ENETUNREACH: i32 = 101;

/// Fails unless running as root: these tests are never skipped.
pub fn require_root() -> Result<(), Failed> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "these tests load eBPF programs and create namespaces: run them as root \
                    (they are never skipped)"
                .into(),
        );
    }
    Ok(())
}

/// A fresh test bed or a test failure; fails first unless running as root
/// ([`require_root`]), so a test starts with this one call.
pub fn testbed() -> Result<Testbed, Failed> {
    require_root()?;
    Testbed::new().map_err(|e| format!("testbed: {e:#}").into())
}

/// A fresh temporary directory named `PREFIX` plus a unique suffix, removed on drop.
pub fn temp_dir(prefix: &str) -> Result<TempDir, Failed> {
    let dir = TempDir(std::env::temp_dir().join(egressd_testbed::unique(prefix)));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("tempdir: {e}"))?;
    Ok(dir)
}

/// A fresh temporary directory for a test's files, removed on drop.
pub fn tempdir() -> Result<TempDir, Failed> {
    temp_dir("egressd-test-")
}

/// Writes `text` as `policy.toml` in `dir`; its path.
pub fn write_config(dir: &TempDir, text: &str) -> Result<PathBuf, Failed> {
    let cfg = dir.0.join("policy.toml");
    std::fs::write(&cfg, text).map_err(|e| format!("writing policy: {e}"))?;
    Ok(cfg)
}

/// The test bed policy with `mode` substituted.
pub fn policy(mode: &str) -> String {
    egressd_testbed::POLICY.replace("{mode}", mode)
}

/// How long a start may take: loading and verifying every program, plus attaching the BPF
/// LSM programs (a trampoline update each) where the LSM runs, takes 20-30 s in a VM under
/// TCG on a busy machine (about a second natively).
pub const START_WITHIN: Duration = Duration::from_secs(60);

/// A running `egressd run` attached to the test bed's cgroup.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
    config: PathBuf,
    /// The temporary directory of a policy written by [`Agent::start_with`].
    _dir: Option<TempDir>,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Agent {
    /// Starts `egressd run` with the test bed policy in `mode`.
    pub fn start(tb: &Testbed, mode: &str) -> Result<Self, Failed> {
        Self::start_with(tb, &policy(mode))
    }

    /// Starts `egressd run` with policy text `text`, attached to the test bed's cgroup, and
    /// waits for its `agent_start` record.
    pub fn start_with(tb: &Testbed, text: &str) -> Result<Self, Failed> {
        let dir = TempDir(std::env::temp_dir().join(egressd_testbed::unique("egressd-test-")));
        std::fs::create_dir_all(&dir.0).map_err(|e| format!("tempdir: {e}"))?;
        let cfg = dir.0.join("policy.toml");
        std::fs::write(&cfg, text).map_err(|e| format!("writing policy: {e}"))?;
        let mut agent = Self::spawn(tb, &cfg, &[])?;
        agent._dir = Some(dir);
        agent.wait_for("agent_start", START_WITHIN)?;
        Ok(agent)
    }

    /// Starts `egressd run --config config` with `extra` arguments, attached to the test
    /// bed's cgroup, and waits for its `agent_start` record.
    pub fn start_at(tb: &Testbed, config: &Path, extra: &[&str]) -> Result<Self, Failed> {
        let mut agent = Self::spawn(tb, config, extra)?;
        agent.wait_for("agent_start", START_WITHIN)?;
        Ok(agent)
    }

    /// As [`Agent::start_at`], without waiting for it to attach.
    pub fn spawn(tb: &Testbed, config: &Path, extra: &[&str]) -> Result<Self, Failed> {
        Self::spawn_full(tb, config, extra, &[], &[])
    }

    /// As [`Agent::spawn`], with `env` added to its environment.
    pub fn spawn_with_env(
        tb: &Testbed,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self, Failed> {
        Self::spawn_full(tb, config, extra, &[], env)
    }

    /// As [`Agent::spawn`], run under the command `wrapper` (e.g. `prlimit --nofile=1024`);
    /// the wrapper must exec egressd, so the child's pid is the daemon's.
    pub fn spawn_under(
        tb: &Testbed,
        config: &Path,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Result<Self, Failed> {
        Self::spawn_full(tb, config, extra, wrapper, &[])
    }

    /// As [`Agent::spawn`], under `wrapper` (may be empty) with `env` added.
    fn spawn_full(
        tb: &Testbed,
        config: &Path,
        extra: &[&str],
        wrapper: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self, Failed> {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_egressd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_egressd")),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .arg("--cgroup")
            .arg(tb.cgroup.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning egressd: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Agent {
            child,
            lines: rx,
            seen: Vec::new(),
            config: config.to_path_buf(),
            _dir: None,
        })
    }

    /// Waits for the next record of type `kind` and returns it; `within` is stretched by
    /// [`patience`].
    pub fn wait_for(&mut self, kind: &str, within: Duration) -> Result<Value, Failed> {
        let within = patience(within);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => {
                    let v: Value =
                        serde_json::from_str(&l).map_err(|e| format!("bad JSON {l}: {e}"))?;
                    self.seen.push(v.clone());
                    if v["type"] == kind {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        return Err(format!("egressd exited ({st}) waiting for {kind}").into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("egressd closed stdout waiting for {kind}").into());
                }
            }
        }
        Err(format!("no {kind} record within {within:?}").into())
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits until the daemon catches `sig` (its bit in `SigCgt` of /proc/PID/status);
    /// `within` is stretched by [`patience`].
    pub fn catches(&self, sig: i32, within: Duration) -> Result<(), Failed> {
        let within = patience(within);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.signals().caught(sig) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("egressd did not install a handler for signal {sig} within {within:?}").into())
    }

    /// The daemon's signal masks now (all empty once it is gone).
    pub fn signals(&self) -> SignalState {
        SignalState::of(self.child.id())
    }

    /// Its exit status, if it has exited (reaped here).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL and wait: nothing of the daemon's own shutdown runs.
    pub fn kill9(mut self) -> Result<(), Failed> {
        self.child.kill().map_err(|e| e.to_string())?;
        self.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The records read so far (at least up to `agent_start`).
    pub fn records(&self) -> &[Value] {
        &self.seen
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the policy file with `text`, sends SIGHUP and returns the record that answers
    /// it (`policy_loaded` or `reload_failed`).
    pub fn reload(&mut self, text: &str) -> Result<Value, Failed> {
        std::fs::write(&self.config, text).map_err(|e| format!("writing policy: {e}"))?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        let within = patience(Duration::from_secs(20));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let v: Value =
                    serde_json::from_str(&l).map_err(|e| format!("bad JSON {l}: {e}"))?;
                let answer = v["type"] == "policy_loaded" || v["type"] == "reload_failed";
                self.seen.push(v.clone());
                if answer {
                    return Ok(v);
                }
            }
        }
        Err(format!("no answer to SIGHUP within {within:?}").into())
    }

    /// Reads the records it writes until none has come for `quiet` (its backlog written),
    /// or `max` has passed.
    pub fn wait_quiet(&mut self, quiet: Duration, max: Duration) -> Result<(), Failed> {
        let deadline = Instant::now() + patience(max);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(quiet) {
                Ok(l) => self
                    .seen
                    .push(serde_json::from_str(&l).map_err(|e| format!("bad JSON {l}: {e}"))?),
                Err(_) => return Ok(()),
            }
        }
        Err(format!("egressd still writing records after {max:?}").into())
    }

    /// SIGTERM, wait, and return every JSON record it wrote (start, events, stop).
    pub fn stop(mut self) -> Result<Vec<Value>, Failed> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Generous: a SIGTERM during start-up is served once the programs are attached,
        // which under single-threaded TCG on a loaded machine took more than 20 s.
        let deadline = Instant::now() + patience(STOP_WITHIN);
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                if !st.success() {
                    return Err(format!("egressd exited with {st}").into());
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(
                    format!("egressd did not stop within {STOP_WITHIN:?} of SIGTERM").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen
                .push(serde_json::from_str(&l).map_err(|e| format!("bad JSON {l}: {e}"))?);
        }
        Ok(std::mem::take(&mut self.seen))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's signal masks, from `/proc/PID/status` (bit `sig - 1` of each).
#[derive(Clone, Copy, Debug, Default)]
pub struct SignalState {
    /// `SigPnd | ShdPnd`: pending for a thread or the process.
    pub pending: u64,
    /// `SigBlk`: blocked (by the main thread).
    pub blocked: u64,
    /// `SigIgn`: ignored.
    pub ignored: u64,
    /// `SigCgt`: caught by a handler.
    pub caught: u64,
}

impl SignalState {
    /// Reads them for `pid`; all zero if it cannot be read.
    pub fn of(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mut s = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let v = u64::from_str_radix(value.trim(), 16).unwrap_or(0);
            match key {
                "SigPnd" | "ShdPnd" => s.pending |= v,
                "SigBlk" => s.blocked = v,
                "SigIgn" => s.ignored = v,
                "SigCgt" => s.caught = v,
                _ => {}
            }
        }
        s
    }

    fn bit(sig: i32) -> u64 {
        1 << (sig - 1)
    }

    /// `sig` is pending.
    pub fn is_pending(&self, sig: i32) -> bool {
        self.pending & Self::bit(sig) != 0
    }

    /// `sig` is ignored.
    pub fn is_ignored(&self, sig: i32) -> bool {
        self.ignored & Self::bit(sig) != 0
    }

    /// `sig` has a handler.
    pub fn caught(&self, sig: i32) -> bool {
        self.caught & Self::bit(sig) != 0
    }
}

/// Probe results as the probe client prints them, one JSON object per line.
pub fn parse_probe_output(stdout: &[u8]) -> Result<Vec<ProbeResult>, Failed> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| parse_probe_line(l).map_err(Failed::from))
        .collect()
}

/// One line of the probe client's output; the error names the line.
pub fn parse_probe_line(line: &str) -> Result<ProbeResult, String> {
    serde_json::from_str(line).map_err(|e| format!("bad probe output {line:?}: {e}"))
}

/// The probe client repeating `probes` for `for_ms` milliseconds in the background; its
/// results are read as they come, so a test can pace itself to them.
pub struct ProbeLoop {
    child: Child,
    /// Parses the client's output into `results` until it ends.
    reader: std::thread::JoinHandle<Result<(), String>>,
    results: std::sync::Arc<std::sync::Mutex<Vec<ProbeResult>>>,
    /// Closed by [`ProbeLoop::finish`]: the client's `--until-eof` stop signal.
    stdin: Option<ChildStdin>,
}

impl ProbeLoop {
    /// Starts the loop in the test bed's client namespace and cgroup; it runs `for_ms`
    /// milliseconds, or until [`ProbeLoop::finish`] when `until_finish` is set (then
    /// `for_ms` only bounds it).
    pub fn start(
        tb: &Testbed,
        for_ms: u64,
        until_finish: bool,
        probes: &[String],
    ) -> Result<Self, Failed> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(PROBE_ARG)
            .arg("--cgroup")
            .arg(tb.cgroup.path())
            .args(["--netns", tb.client.name(), "--for-ms", &for_ms.to_string()])
            .args(until_finish.then_some("--until-eof"))
            .args(probes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("probe loop: no stdout")?;
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = results.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|e| format!("probe output: {e}"))?;
                let r = parse_probe_line(&line)?;
                sink.lock().map_err(|_| "probe results poisoned")?.push(r);
            }
            Ok(())
        });
        Ok(Self {
            child,
            reader,
            results,
            stdin,
        })
    }

    /// Attempts so far that started at or after `from_ns` and ended by `to_ns`
    /// (`CLOCK_MONOTONIC`): how many succeeded and how many failed.
    pub fn outcomes_between(&self, from_ns: u64, to_ns: u64) -> (usize, usize) {
        let Ok(results) = self.results.lock() else {
            return (0, 0);
        };
        let within = results
            .iter()
            .rev()
            .take_while(|r| r.t0_ns >= from_ns)
            .filter(|r| r.t1_ns <= to_ns);
        within.fold((0, 0), |(ok, failed), r| {
            if r.ok {
                (ok + 1, failed)
            } else {
                (ok, failed + 1)
            }
        })
    }

    /// The loop has ended (its time is up, or it failed).
    pub fn ended(&self) -> bool {
        self.reader.is_finished()
    }

    /// Stops the loop (when started `until_finish`), waits for it to end and returns every
    /// result, in order.
    pub fn finish(mut self) -> Result<Vec<ProbeResult>, Failed> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        self.reader.join().map_err(|_| "probe reader panicked")??;
        if !status.success() {
            return Err(format!("probe loop failed: {status}").into());
        }
        let results = std::mem::take(&mut *self.results.lock().map_err(|_| "poisoned")?);
        Ok(results)
    }
}

/// Runs the probe client in the test bed's client namespace and cgroup.
pub fn probe(tb: &Testbed, repeat: u32, probes: &[String]) -> Result<Vec<ProbeResult>, Failed> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg(PROBE_ARG)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name(), "--repeat", &repeat.to_string()])
        .args(probes)
        .output()
        .map_err(|e| format!("spawning probe: {e}"))?;
    if !out.status.success() {
        return Err(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    parse_probe_output(&out.stdout)
}

pub fn tcp(host: &str) -> String {
    if host.contains(':') {
        format!("tcp://[{host}]:{PORT}")
    } else {
        format!("tcp://{host}:{PORT}")
    }
}
pub fn udp(host: &str) -> String {
    tcp(host).replacen("tcp", "udp", 1)
}
pub fn sendto(host: &str) -> String {
    tcp(host).replacen("tcp", "udp-sendto", 1)
}

pub fn expect_ok(r: &ProbeResult) -> Result<(), Failed> {
    if r.ok {
        Ok(())
    } else {
        Err(format!("{} should succeed: {:?}", r.probe, r.error).into())
    }
}
pub fn expect_eperm(r: &ProbeResult) -> Result<(), Failed> {
    if !r.ok && r.errno == Some(EPERM) {
        Ok(())
    } else {
        Err(format!(
            "{} should fail with EPERM, got ok={} {:?}",
            r.probe, r.ok, r.error
        )
        .into())
    }
}

pub fn connections(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "connection")
        .collect()
}

pub fn stop_record(records: &[Value]) -> Result<&Value, Failed> {
    records
        .iter()
        .find(|r| r["type"] == "agent_stop")
        .ok_or_else(|| "no agent_stop record".into())
}

/// Sum of counters matching (hook, region, verdict).
pub fn counter(stop: &Value, hook: &str, region: &str, verdict: &str) -> u64 {
    stop["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["hook"] == hook && c["region"] == region && c["verdict"] == verdict)
        .map(|c| c["count"].as_u64().unwrap_or(0))
        .sum()
}

/// A probe string `KIND://HOST:PORT` (IPv6 hosts bracketed).
pub fn url(kind: &str, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{kind}://[{host}]:{port}")
    } else {
        format!("{kind}://{host}:{port}")
    }
}

/// Fails unless the attempt failed with `errno`.
pub fn expect_errno(r: &ProbeResult, errno: i32) -> Result<(), Failed> {
    if !r.ok && r.errno == Some(errno) {
        Ok(())
    } else {
        Err(format!(
            "{} should fail with errno {errno}, got ok={} {:?}",
            r.probe, r.ok, r.error
        )
        .into())
    }
}

/// Fails unless JSON pointer `ptr` of `v` renders as `want`.
pub fn assert_field(v: &Value, ptr: &str, want: &str) -> Result<(), Failed> {
    match v.pointer(ptr) {
        Some(Value::String(s)) if s == want => Ok(()),
        Some(Value::Number(n)) if n.to_string() == want => Ok(()),
        Some(Value::Bool(b)) if b.to_string() == want => Ok(()),
        other => Err(format!("{ptr}: want {want:?}, got {other:?} in {v}").into()),
    }
}

/// Sum of packets and bytes of the flow counters matching (direction, region, verdict).
pub fn flow(stop: &Value, direction: &str, region: &str, verdict: &str) -> (u64, u64) {
    stop["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["direction"] == direction && c["region"] == region && c["verdict"] == verdict)
        .fold((0, 0), |(p, b), c| {
            (
                p + c["packets"].as_u64().unwrap_or(0),
                b + c["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// A probe process left running (for `tcp-hold`): results are read line by line.
pub struct LiveProbe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LiveProbe {
    /// Starts the probe client with `probes` in the test bed's client namespace and cgroup.
    pub fn start(tb: &Testbed, probes: &[String]) -> Result<Self, Failed> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(PROBE_ARG)
            .arg("--cgroup")
            .arg(tb.cgroup.path())
            .args(["--netns", tb.client.name()])
            .args(probes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning probe: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// The next result line.
    pub fn next(&mut self) -> Result<ProbeResult, Failed> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        parse_probe_line(&line).map_err(Failed::from)
    }

    /// Lets a waiting `tcp-hold` go on.
    pub fn resume(&mut self) -> Result<(), Failed> {
        self.stdin.write_all(b"go\n").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string().into())
    }
}

impl Drop for LiveProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, Failed> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `GET path` from 127.0.0.1:`port` (HTTP/1.1, the server closes): status code and body,
/// after [`egressd::daemon::metrics::SNAPSHOT_REUSE`], so that the answer reflects what the
/// test did before the call (a snapshot answers every request for that long).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), Failed> {
    std::thread::sleep(egressd::daemon::metrics::SNAPSHOT_REUSE + Duration::from_millis(20));
    http_get_now(port, path)
}

/// [`http_get`] at once (the answer may come from a snapshot up to
/// [`egressd::daemon::metrics::SNAPSHOT_REUSE`] old).
pub fn http_get_now(port: u16, path: &str) -> Result<(u16, String), Failed> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    std::io::Write::write_fmt(
        &mut s,
        format_args!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).map_err(|e| e.to_string())?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}

/// A unique pin directory under /sys/fs/bpf; everything pinned there is removed on drop.
pub struct Pins(pub PathBuf);

impl Pins {
    pub fn new() -> Self {
        Self(Path::new("/sys/fs/bpf").join(egressd_testbed::unique("egressd-test-")))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let dir = egressd::kernel::pin::PinDir::new(&self.0);
        if dir.exists() {
            let _ = dir.remove_all();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs bpftool with `args`; its stdout.
pub fn bpftool(args: &[&str]) -> Result<String, Failed> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
