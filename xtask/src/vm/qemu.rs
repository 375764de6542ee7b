//! Booting a kernel and its initramfs under QEMU and reading the verdict from the serial
//! console.
//!
//! The console is streamed to the terminal (each line prefixed with the kernel's name and
//! the seconds since boot) and to a log file. The guest's `/init` prints
//! `egressd-vm: exit=N` once when its command has ended; QEMU is killed when that marker
//! does not come within the timeout, or when the kernel panics, oopses or reports a soft
//! lockup.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Marker prefix of every line the guest's `/init` prints for the host.
const MARKER: &str = "egressd-vm: ";
/// Console text that means the kernel is broken: stop waiting for a marker. (A general
/// protection fault of a user process is reported with `traps:` and is not one.)
const CRASH: &[&str] = &[
    "Kernel panic",
    "Oops:",
    "BUG: soft lockup",
    "general protection fault",
];
/// How long to keep reading after a crash line (for the trace) before killing QEMU.
const CRASH_GRACE: Duration = Duration::from_secs(30);
/// How long QEMU may take to exit after the exit marker (the guest powers off).
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// How QEMU executes the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    /// Hardware virtualization (only where it really works; see [`probe_kvm`]).
    Kvm,
    /// QEMU's emulator, multi-threaded: slow (CPU-bound work about 17x slower here) but
    /// works everywhere.
    Tcg,
}

/// One boot.
pub struct Boot<'a> {
    /// Label of the console lines (the kernel's short name).
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// Extra kernel command line.
    pub append: &'a str,
    pub accel: Accel,
    /// The console log (written from scratch).
    pub log: &'a Path,
    /// Kill QEMU when no exit marker came within this.
    pub timeout: Duration,
    /// Echo the console to the terminal.
    pub echo: bool,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Under TCG, run every vCPU on one host thread (see [`super::kernels::Kernel::tcg_single`]).
    pub tcg_single: bool,
}

/// How a boot ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest's command exited with this status.
    Exit(i32),
    /// No exit marker within the timeout.
    Timeout,
    /// The kernel crashed (the first crash line).
    Crash(String),
    /// QEMU ended without an exit marker.
    NoMarker(String),
    /// More than one exit marker: the console is not to be trusted.
    Garbled(String),
}

/// What a boot produced.
pub struct Report {
    pub outcome: Outcome,
    /// From spawning QEMU to its end.
    pub wall: Duration,
    /// From spawning QEMU to the `egressd-vm: ready` marker (the guest's set-up done).
    pub ready: Option<Duration>,
    /// Every `egressd-vm:` line the guest printed (without the prefix).
    pub markers: Vec<String>,
    /// The test binary's closing summary (see [`test_summary`]), if it printed one.
    pub result_line: Option<String>,
    /// The guest kernel's OOM-killer lines (`Out of memory: Killed process ...`): why a
    /// test binary ended with `exit=137` and no summary.
    pub oom_kills: Vec<String>,
    /// The test binary's `failures:` block (each failed test's name and panic message),
    /// at most [`FAILURE_LINES`] lines: what CI shows when a kernel fails.
    pub failures: Vec<String>,
    /// Names of the tests libtest reported `FAILED` ([`failed_test`]).
    pub failed_tests: Vec<String>,
}

/// Lines of a kernel's `failures:` block kept for the closing summary; the console log
/// has all of them.
pub const FAILURE_LINES: usize = 60;

/// Console text of the guest's OOM killer (printed at `KERN_ERR`, so `loglevel=5` shows it).
const OOM: &str = "Out of memory: Killed process";

/// Boots `b` and waits for its verdict. Errors are the host's own (QEMU cannot be spawned,
/// the log cannot be written); a failing guest is an [`Outcome`].
pub fn boot(b: &Boot<'_>) -> anyhow::Result<Report> {
    let accel = match b.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg if b.tcg_single => "tcg,thread=single",
        Accel::Tcg => "tcg,thread=multi",
    };
    // `loglevel=5` after `quiet`: warnings reach the console, so a soft lockup or an oops
    // comes with its registers and call trace (printed at the default level, 4).
    let append = format!(
        "console=ttyS0 panic=-1 noapic quiet loglevel=5 {}",
        b.append
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    let smp = b.cpus.to_string();
    // 4 GiB: the flood tests hold tens of thousands of records as JSON values in the test
    // binary while the daemon queues more; 2 GiB ended in the guest's OOM killer (CI, 5.10).
    // TCG allocates guest memory on first touch, so the host pays only what is used.
    cmd.args(["-accel", accel, "-cpu", "max", "-smp", &smp, "-m", "4096"])
        // No NIC: the tests build their own networks, and its boot ROM only costs time.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log =
        fs::File::create(b.log).with_context(|| format!("creating {}", b.log.display()))?;
    writeln!(log, "# {cmd:?}")?;
    let start = Instant::now();
    let mut child = Qemu(
        cmd.spawn()
            .context("spawning qemu-system-x86_64 (Debian package qemu-system-x86)")?,
    );
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(out) = child.0.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || forward(out, "", &tx));
    }
    if let Some(err) = child.0.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || forward(err, "qemu: ", &tx));
    }
    drop(tx);
    let mut report = Report {
        outcome: Outcome::NoMarker(String::new()),
        wall: Duration::ZERO,
        ready: None,
        markers: Vec::new(),
        result_line: None,
        oom_kills: Vec::new(),
        failures: Vec::new(),
        failed_tests: Vec::new(),
    };
    let mut failures = FailuresBlock::default();
    let mut exit: Option<i32> = None;
    let mut crash: Option<String> = None;
    let mut garbled: Option<String> = None;
    // Until the exit marker (or a crash) the overall timeout; then a short grace.
    let mut deadline = start + b.timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let at = start.elapsed().as_secs_f64();
                writeln!(log, "{at:8.1} {line}")?;
                if b.echo {
                    println!("[{} {at:6.1}s] {line}", b.label);
                }
                if let Some(pos) = line.find(MARKER) {
                    let marker = line[pos + MARKER.len()..].trim().to_owned();
                    if marker.starts_with("ready") && report.ready.is_none() {
                        report.ready = Some(start.elapsed());
                    }
                    if let Some(code) = marker.strip_prefix("exit=") {
                        if exit.is_some() {
                            garbled = Some(format!("second exit marker: {line}"));
                        }
                        exit = Some(code.trim().parse().unwrap_or(-1));
                        deadline = Instant::now() + POWEROFF_GRACE;
                    }
                    report.markers.push(marker);
                }
                if let Some(pos) = line.find(OOM) {
                    report.oom_kills.push(line[pos..].trim().to_owned());
                }
                if let Some(name) = failed_test(&line) {
                    report.failed_tests.push(name.to_owned());
                }
                if let Some(summary) = test_summary(&line) {
                    report.result_line = Some(summary);
                }
                failures.line(&line);
                if crash.is_none()
                    && !line.contains("traps:")
                    && let Some(pat) = CRASH.iter().find(|p| line.contains(*p))
                {
                    crash = Some(format!("{pat}: {}", line.trim()));
                    deadline = Instant::now() + CRASH_GRACE;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = exit.is_none() && crash.is_none();
                break;
            }
            // QEMU closed its output: it has ended.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.finish();
    report.wall = start.elapsed();
    report.failures = failures.lines;
    report.outcome = if let Some(c) = crash {
        Outcome::Crash(c)
    } else if let Some(g) = garbled {
        Outcome::Garbled(g)
    } else if let Some(code) = exit {
        Outcome::Exit(code)
    } else if timed_out {
        Outcome::Timeout
    } else {
        Outcome::NoMarker(status)
    };
    writeln!(
        log,
        "# outcome: {:?}, {:.1}s",
        report.outcome,
        report.wall.as_secs_f64()
    )?;
    Ok(report)
}

/// Sends each line of `from` (lossily decoded, without `\r`) prefixed with `prefix`.
fn forward(from: impl std::io::Read, prefix: &str, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = plain(&String::from_utf8_lossy(&buf));
                if tx.send(format!("{prefix}{line}")).is_err() {
                    return;
                }
            }
        }
    }
}

/// Collects the lines of libtest's `failures:` blocks (each failed test's name and panic
/// message), at most [`FAILURE_LINES`] of them: what CI shows when tests fail.
#[derive(Default)]
pub struct FailuresBlock {
    inside: bool,
    /// The lines kept, blank ones left out.
    pub lines: Vec<String>,
}

impl FailuresBlock {
    /// Folds one line of test output in; a `test result:` line ends a block.
    pub fn line(&mut self, line: &str) {
        if test_summary(line).is_some() {
            self.inside = false;
        } else if line.trim() == "failures:" {
            self.inside = true;
        } else if self.inside && self.lines.len() < FAILURE_LINES && !line.trim().is_empty() {
            self.lines.push(line.trim_end().to_owned());
        }
    }
}

/// The name in libtest's (and libtest-mimic's) `test NAME ... FAILED` line.
pub fn failed_test(line: &str) -> Option<&str> {
    let (name, outcome) = line.trim().strip_prefix("test ")?.split_once(" ... ")?;
    (outcome.trim() == "FAILED").then(|| name.trim())
}

/// The summary in a libtest-style closing line: `ok. 34 passed; 0 failed; ...` from
/// `test result: ok. 34 passed; ...`, or the same made from the `suite` record of
/// `--format json`.
fn test_summary(line: &str) -> Option<String> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("test result:") {
        return Some(rest.trim().to_owned());
    }
    if !line.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let event = v["event"].as_str()?;
    if v["type"] != "suite" || event == "started" {
        return None;
    }
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    Some(format!(
        "{event}. {} passed; {} failed; {} ignored; {} filtered out; finished in {:.2}s",
        n("passed"),
        n("failed"),
        n("ignored"),
        n("filtered_out"),
        v["exec_time"].as_f64().unwrap_or(0.0)
    ))
}

/// `text` without terminal escape sequences (the firmware clears the screen) and control
/// characters other than tabs.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte; else ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The QEMU process: killed and reaped on drop, so no path out of [`boot`] leaves it
/// running.
struct Qemu(Child);

impl Qemu {
    /// Kills QEMU unless it has ended, reaps it and describes how it ended.
    fn finish(&mut self) -> String {
        match self.0.try_wait() {
            Ok(Some(st)) => format!("qemu exited: {st}"),
            _ => {
                let _ = self.0.kill();
                match self.0.wait() {
                    Ok(st) => format!("qemu killed: {st}"),
                    Err(e) => format!("qemu: {e}"),
                }
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether KVM really runs a guest here: `/dev/kvm` opens and `initrd` boots to its
/// probe marker within a few seconds (inside these machines `/dev/kvm` exists but QEMU
/// aborts on an MSR with `-cpu max`, and a guest with another CPU model hangs). `Err`
/// says why not.
pub fn probe_kvm(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let b = Boot {
        label: "kvm-probe",
        vmlinuz,
        initrd,
        append: "egressd_vm.probe",
        accel: Accel::Kvm,
        log,
        timeout: Duration::from_secs(20),
        echo: false,
        cpus: 1,
        tcg_single: false,
    };
    let report = boot(&b).map_err(|e| format!("{e:#}"))?;
    if report.markers.iter().any(|m| m == "probe ok") {
        Ok(())
    } else {
        let how = match report.outcome {
            Outcome::NoMarker(how) => how,
            Outcome::Timeout => "no marker within 20 s".to_owned(),
            other => format!("{other:?}"),
        };
        Err(format!("{how}; log {}", log.display()))
    }
}

/// The log path of kernel `name` under `vm_dir`.
pub fn log_path(vm_dir: &Path, name: &str) -> PathBuf {
    vm_dir.join(name).join("console.log")
}

#[cfg(test)]
mod tests {
    use super::{plain, test_summary};

    #[test]
    fn summary_from_pretty_and_json_closing_lines() {
        assert_eq!(
            test_summary("test result: FAILED. 2 passed; 1 failed; 0 ignored").as_deref(),
            Some("FAILED. 2 passed; 1 failed; 0 ignored")
        );
        assert_eq!(
            test_summary(
                r#"{ "type": "suite", "event": "ok", "passed": 34, "failed": 0, "ignored": 0, "measured": 0, "filtered_out": 0, "exec_time": 271.63211455 }"#
            )
            .as_deref(),
            Some("ok. 34 passed; 0 failed; 0 ignored; 0 filtered out; finished in 271.63s")
        );
        assert_eq!(
            test_summary(r#"{ "type": "suite", "event": "started", "test_count": 34 }"#),
            None
        );
        assert_eq!(test_summary("running 34 tests"), None);
    }

    #[test]
    fn escape_sequences_and_controls_are_dropped() {
        assert_eq!(
            plain("\u{1b}c\u{1b}[?7l\u{1b}[2Jegressd-vm: init 6.1\r\n"),
            "egressd-vm: init 6.1"
        );
        assert_eq!(plain("a\tb\u{7}"), "a\tb");
    }
}
