//! `cargo xtask vm-test`: egressd's kernel tests (`agent/tests/kernel.rs`) inside the
//! Debian cloud kernels its users run (5.10, 6.1, 6.12; pinned in [`kernels::KERNELS`]),
//! each booted under QEMU from an initramfs holding the release `egressd`, the `kernel`
//! test binary and the tools they run. The host's own kernel keeps running the native
//! suite (`cargo xtask test`).
//!
//! Steps: fetch and unpack the kernels (cached under `target/vm/kernels/`), build the
//! binaries (release: the guest runs under TCG, about 17x slower than the host), build the
//! initramfs ([`initramfs`]), boot the kernels ([`qemu`]; `--jobs` at a time, by default
//! two where the host has two CPUs) and print a table and
//! `vm-test: N passed, N failed` (N counts kernels). Each kernel's console is echoed
//! with its name and kept in `target/vm/<kernel>/console.log`.
//!
//! `--exec -- CMD...` runs another command in the guest instead (`sh -c 'lsmod'`,
//! `bpftool feature probe kernel`, ...). `EGRESSD_VM_ACCEL=kvm|tcg|auto` (default `auto`:
//! KVM when a probe boot shows it works, else TCG).
//!
//! Measured here (TCG, 2 host cores): a kernel reaches `/init` in 2-4 s; the whole kernel
//! suite (34 tests, 2 test threads) takes 1.5-2.5 minutes per kernel, 4.5 minutes with
//! `--test-threads=1`.
mod initramfs;
mod kernels;
mod qemu;

pub use qemu::{FailuresBlock, failed_test};

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{setup, sh};
use qemu::{Accel, Outcome};

/// `cargo xtask vm-test` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// A kernel to boot: 5.10, 6.1 or 6.12 (repeat for several). Default: all three, in
    /// that order.
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// Seconds one kernel's boot and tests may take before QEMU is killed.
    #[arg(long, value_name = "SECS", default_value_t = 2700)]
    timeout: u64,
    /// Run the command after `--` in the guest instead of the kernel test binary (e.g.
    /// `--exec -- sh -c 'lsmod; bpftool feature probe kernel'`); its exit status is the
    /// verdict.
    #[arg(long)]
    exec: bool,
    /// Extra kernel command line for the guest (e.g. `--append loglevel=7` to see the
    /// registers and call trace of a soft lockup or oops, which `quiet` hides).
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// Virtual CPUs of the guest.
    #[arg(long, value_name = "N", default_value_t = 2)]
    cpus: u32,
    /// Kernels booted at the same time. Default: the host's CPU count, at most 2 (a
    /// single-threaded TCG guest keeps one host CPU busy; the kernels take turns on the
    /// rest).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// TCG threading: `auto` (each kernel's `tcg_single`), `single` or `multi`.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "single", "multi"])]
    tcg_threads: String,
    /// Arguments for the kernel test binary (libtest-mimic: a name filter, `--skip NAME`,
    /// `--exact`, `--list`, `--test-threads N`), or the command of `--exec`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Kernel tests a whole-suite VM run skips (`--skip NAME`): they run for minutes of real
/// time (`audit_verify_day_like_run`: a daemon for 150 s), which under TCG would cost more
/// than it proves beyond the native run; name one after `--` to run it in the VMs anyway.
///
/// Also those whose subject is userspace logic (falling back to the last good policy,
/// the per-cgroup lock, the audit chain's verification, reading `/proc` names that are not
/// UTF-8, a metrics port held by another process, a reload's output settings) while their kernel-facing part
/// (load, attach, a probe's verdict) is what every other test does in each VM: each costs
/// 30-100 s per kernel under TCG, and CI's whole run must stay within 90 minutes.
const NATIVE_ONLY: &[&str] = &[
    "audit_verify_day_like_run",
    "audit_verify_clean_run_and_damage",
    "audit_verify_keyed_chain",
    "lastgood_fallback_on_invalid_policy_at_start",
    "lastgood_status_shows_the_fallback",
    "fleet_second_daemon_on_a_cgroup_refused",
    "security_attribution_survives_names_that_are_not_utf8",
    "security_metrics_port_taken",
    "reload_refuses_output_that_would_not_start",
];

/// One kernel's line of the result table.
struct Row {
    kernel: &'static kernels::Kernel,
    /// The boot's report, or the host-side error that prevented or broke it.
    report: Result<qemu::Report, String>,
}

impl Row {
    fn passed(&self) -> bool {
        matches!(
            self.report,
            Ok(qemu::Report {
                outcome: Outcome::Exit(0),
                ..
            })
        )
    }
}

/// One kernel's outcome, for callers that add it to their own summary.
pub struct KernelResult {
    /// Kernel name (`5.10`, ...).
    pub name: &'static str,
    /// The guest's command exited 0.
    pub ok: bool,
    /// The test binary's closing summary without the `test result:` prefix, if any.
    pub result_line: Option<String>,
    /// The guest's OOM-killer lines, if it killed anything.
    pub oom_kills: Vec<String>,
    /// Names of the tests that failed.
    pub failed_tests: Vec<String>,
}

impl Args {
    /// Every kernel, the whole kernel test suite, the default timeout (`cargo xtask test`).
    pub fn all(timeout: u64) -> Self {
        Self {
            kernels: Vec::new(),
            timeout,
            exec: false,
            append: String::new(),
            cpus: 2,
            jobs: None,
            tcg_threads: "auto".to_owned(),
            args: Vec::new(),
        }
    }
}

/// Runs the command and prints the table and the `vm-test:` summary line; one
/// [`KernelResult`] per kernel. `Err` when nothing could be run.
pub fn run(args: Args) -> anyhow::Result<Vec<KernelResult>> {
    let selected: Vec<&'static kernels::Kernel> = if args.kernels.is_empty() {
        kernels::KERNELS.iter().collect()
    } else {
        args.kernels
            .iter()
            .map(|n| kernels::by_name(n))
            .collect::<anyhow::Result<_>>()?
    };
    let accel = accel_override()?;
    setup::ensure()?;
    setup::ensure_vm()?;
    let vm_dir = sh::target_dir().join("vm");
    // Kernels first: a pin that cannot be fetched fails before the long build.
    let unpacked = selected
        .iter()
        .map(|k| kernels::ensure(&vm_dir, k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (egressd, test_bin) = build()?;
    let mut argv = Vec::new();
    if !args.exec {
        argv.push(test_bin.display().to_string());
    }
    if args.args.is_empty() && !args.exec {
        // The whole suite: without the minutes-long native-only tests.
        for name in NATIVE_ONLY {
            argv.extend(["--skip".to_owned(), (*name).to_owned()]);
        }
    }
    argv.extend(args.args.iter().cloned());
    if argv.is_empty() {
        bail!("--exec needs a command after --");
    }
    let common = initramfs::build_common(
        &vm_dir,
        &initramfs::Contents {
            binaries: &[egressd, test_bin],
            argv: &argv,
        },
    )?;
    eprintln!(
        "xtask: vm-test: initramfs {} ({})",
        common.display(),
        mib(&common)
    );
    let mut prepared = Vec::new();
    for (kernel, unpacked) in selected.iter().copied().zip(&unpacked) {
        let dir = vm_dir.join(kernel.name);
        fs::create_dir_all(&dir)?;
        let initrd = initramfs::build_for_kernel(&dir, &common, unpacked)?;
        prepared.push((kernel, unpacked, initrd));
    }
    let accel = match (accel, prepared.first()) {
        (Some(a), _) => a,
        (None, Some((kernel, unpacked, initrd))) => {
            let probe_log = vm_dir.join(kernel.name).join("kvm-probe.log");
            match qemu::probe_kvm(&unpacked.vmlinuz, initrd, &probe_log) {
                Ok(()) => {
                    eprintln!("xtask: vm-test: KVM works here; using it");
                    Accel::Kvm
                }
                Err(why) => {
                    eprintln!("xtask: vm-test: KVM does not work here ({why}); using TCG");
                    Accel::Tcg
                }
            }
        }
        (None, None) => bail!("no kernel selected"),
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(2)
    });
    // The single-threaded TCG kernels first (longest first): each keeps one host CPU busy,
    // so two of them fill both. The multi-threaded one comes last, when a slot frees, and
    // can then use both CPUs once it is alone. The other way round (the multi-threaded 5.10
    // beside 6.1, then 6.12 alone) left one CPU idle for the whole of 6.12's run: 19 minutes
    // of a 59-minute VM phase on a slow machine (2026-12-03).
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    order.sort_by_key(|&i| {
        let k = prepared[i].0;
        std::cmp::Reverse((k.tcg_single, k.suite_weight))
    });
    let rows = boot_all(&vm_dir, &prepared, &order, accel, &args, jobs.max(1));
    print_table(&vm_dir, &rows);
    for row in &rows {
        for kill in row.report.iter().flat_map(|r| &r.oom_kills) {
            println!(
                "kernel {}: the guest's OOM killer ran: {kill}",
                row.kernel.name
            );
        }
    }
    // Near the end of the output, where CI's excerpt of it looks.
    for row in &rows {
        for line in row.report.iter().flat_map(|r| &r.failures) {
            println!("kernel {} failures: {line}", row.kernel.name);
        }
    }
    let passed = rows.iter().filter(|r| r.passed()).count();
    println!("vm-test: {passed} passed, {} failed", rows.len() - passed);
    Ok(rows
        .iter()
        .map(|r| KernelResult {
            name: r.kernel.name,
            ok: r.passed(),
            result_line: r.report.as_ref().ok().and_then(|x| x.result_line.clone()),
            oom_kills: r
                .report
                .as_ref()
                .map(|x| x.oom_kills.clone())
                .unwrap_or_default(),
            failed_tests: r
                .report
                .as_ref()
                .map(|x| x.failed_tests.clone())
                .unwrap_or_default(),
        })
        .collect())
}

/// Boots each prepared kernel (kernel, unpacked files, initramfs), `jobs` at a time, in
/// the order of `order` (indices into `prepared`); the rows come back in `prepared`'s order.
/// Each guest's console is echoed with its kernel's name in front, so concurrent boots stay
/// readable. With guests side by side, every one runs single-threaded under TCG (unless
/// `--tcg-threads multi`): a multi-threaded guest beside another took 1.2 host CPUs of 2
/// and left the single-threaded one 0.66.
fn boot_all(
    vm_dir: &Path,
    prepared: &[(&'static kernels::Kernel, &kernels::Unpacked, PathBuf)],
    order: &[usize],
    accel: Accel,
    args: &Args,
    jobs: usize,
) -> Vec<Row> {
    let shared = jobs.min(prepared.len()) > 1;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(prepared.len()) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(n) else {
                        break;
                    };
                    let (kernel, unpacked, initrd) = &prepared[i];
                    let report = boot_one(vm_dir, kernel, unpacked, initrd, accel, args, shared)
                        .map_err(|e| format!("{e:#}"));
                    let row = Row { kernel, report };
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, row));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, row)| row).collect()
}

/// Boots `kernel` from its initramfs `initrd`; `shared`: other guests run beside it.
fn boot_one(
    vm_dir: &Path,
    kernel: &kernels::Kernel,
    unpacked: &kernels::Unpacked,
    initrd: &Path,
    accel: Accel,
    args: &Args,
    shared: bool,
) -> anyhow::Result<qemu::Report> {
    let dir = vm_dir.join(kernel.name);
    let log = qemu::log_path(vm_dir, kernel.name);
    eprintln!(
        "xtask: vm-test: booting {} ({} {}) with {accel:?}, initramfs {}; console log {}",
        kernel.name,
        kernel.package,
        kernel.version,
        mib(initrd),
        log.display()
    );
    let tcg_single = match args.tcg_threads.as_str() {
        "single" => true,
        "multi" => false,
        _ => kernel.tcg_single || shared,
    };
    let boot = |tcg_single: bool| {
        qemu::boot(&qemu::Boot {
            label: kernel.name,
            vmlinuz: &unpacked.vmlinuz,
            initrd,
            append: &args.append,
            accel,
            log: &log,
            timeout: Duration::from_secs(args.timeout),
            echo: true,
            cpus: args.cpus,
            tcg_single,
        })
    };
    let report = boot(tcg_single)?;
    // QEMU 7.2's multi-threaded TCG can execute a stale breakpoint while the guest patches a
    // `bpf_lsm_*` stub (see `Kernel::tcg_single`): the guest locks up or oopses there, not
    // egressd. Only that crash, only under multi-threaded TCG and only when the tcg mode was
    // not forced, boots once more, the same way (single-threaded, 6.1's suite came near the
    // timeout with a timing test failing); the first console log is kept beside.
    if let qemu::Outcome::Crash(line) = &report.outcome
        && accel == Accel::Tcg
        && !tcg_single
        && args.tcg_threads == "auto"
        && fs::read_to_string(&log).is_ok_and(|t| tcg_lsm_artefact(&t))
    {
        let kept = dir.join("console-multi-thread-crash.log");
        fs::copy(&log, &kept)?;
        eprintln!(
            "xtask: vm-test: {}: crash in a bpf_lsm stub under multi-threaded TCG ({line}); \
             known QEMU artefact, log kept at {}; booting it once more",
            kernel.name,
            kept.display()
        );
        return boot(tcg_single);
    }
    Ok(report)
}

/// Whether a console log shows the multi-threaded TCG artefact: a soft lockup or an `int3`
/// oops whose instruction pointer is in a `bpf_lsm_*` stub.
fn tcg_lsm_artefact(console: &str) -> bool {
    console.lines().any(|l| l.contains("RIP: 0010:bpf_lsm_"))
        && console
            .lines()
            .any(|l| l.contains("soft lockup") || l.contains("Oops: int3"))
}

/// `EGRESSD_VM_ACCEL`: `kvm` or `tcg` forces one; `auto` or unset probes.
fn accel_override() -> anyhow::Result<Option<Accel>> {
    match std::env::var("EGRESSD_VM_ACCEL").as_deref() {
        Ok("kvm") => Ok(Some(Accel::Kvm)),
        Ok("tcg") => Ok(Some(Accel::Tcg)),
        Ok("auto") | Ok("") | Err(_) => Ok(None),
        Ok(other) => bail!("EGRESSD_VM_ACCEL={other:?}: want kvm, tcg or auto"),
    }
}

/// Builds the release `egressd` and the `kernel` test binary (which runs that `egressd`
/// by its absolute path, compiled in); returns both executables.
fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "--release",
            "-p",
            "egressd",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(sh::root())
        .env("PATH", sh::path())
        .stderr(Stdio::inherit())
        .output()
        .context("spawning cargo")?;
    if !out.status.success() {
        bail!("building the kernel tests failed: {}", out.status);
    }
    let (mut egressd, mut test_bin) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = &msg["target"]["kind"];
        let is = |kind: &str| {
            kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|v| v == kind))
        };
        match msg["target"]["name"].as_str() {
            Some("egressd") if is("bin") => egressd = Some(PathBuf::from(exe)),
            Some("kernel") if is("test") => test_bin = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    Ok((
        egressd.context("cargo built no egressd executable")?,
        test_bin.context("cargo built no kernel test executable")?,
    ))
}

/// Prints one line per kernel: verdict, time to the guest's set-up, wall time, and the
/// test binary's closing line.
fn print_table(vm_dir: &Path, rows: &[Row]) {
    println!();
    println!(
        "vm-test results (console logs: {}/KERNEL/console.log)",
        vm_dir.display()
    );
    let width = rows
        .iter()
        .map(|r| r.kernel.package.len() + 1 + r.kernel.version.len())
        .max()
        .unwrap_or(0);
    println!(
        "{:<6} {:<width$} {:<9} {:>6} {:>6}  tests",
        "kernel", "package", "verdict", "boot", "wall"
    );
    for row in rows {
        let k = row.kernel;
        let package = format!("{} {}", k.package, k.version);
        let (verdict, boot, wall, tests) = match &row.report {
            Ok(r) => (
                match &r.outcome {
                    Outcome::Exit(0) => "passed".to_owned(),
                    Outcome::Exit(code) => format!("exit={code}"),
                    Outcome::Timeout => "timeout".to_owned(),
                    Outcome::Crash(_) => "crash".to_owned(),
                    Outcome::NoMarker(_) => "no-marker".to_owned(),
                    Outcome::Garbled(_) => "garbled".to_owned(),
                },
                r.ready
                    .map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
                minutes(r.wall),
                match &r.outcome {
                    Outcome::Crash(what) | Outcome::NoMarker(what) | Outcome::Garbled(what) => {
                        what.clone()
                    }
                    Outcome::Timeout => "no exit marker within the timeout".to_owned(),
                    Outcome::Exit(_) => r.result_line.clone().unwrap_or_default(),
                },
            ),
            Err(e) => (
                "error".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                e.clone(),
            ),
        };
        println!(
            "{:<6} {package:<width$} {verdict:<9} {boot:>6} {wall:>6}  {tests}",
            k.name
        );
    }
}

/// `1m05s`-style duration.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// A file's size in MiB, for messages.
fn mib(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |_| "?".to_owned(),
        |m| format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)),
    )
}

#[cfg(test)]
mod tests {
    use super::tcg_lsm_artefact;

    /// The lines of the 6.1 lockup under multi-threaded TCG (2026-12-01) match; an oops
    /// elsewhere, or a lockup elsewhere, does not.
    #[test]
    fn tcg_lsm_artefact_matches_only_the_stub_crash() {
        let lockup = "[  596.462095] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [egressd:4584]\n\
                      [  596.462987] RIP: 0010:bpf_lsm_bpf+0x0/0x10\n";
        assert!(tcg_lsm_artefact(lockup));
        let int3 = "[  12.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                    [  12.1] RIP: 0010:bpf_lsm_socket_create+0x5/0x10\n";
        assert!(tcg_lsm_artefact(int3));
        let elsewhere = "[  9.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [x:1]\n\
                         [  9.0] RIP: 0010:__bpf_prog_run+0x10/0x20\n";
        assert!(!tcg_lsm_artefact(elsewhere));
        let oops = "[  9.0] BUG: kernel NULL pointer dereference\n\
                    [  9.0] RIP: 0010:bpf_lsm_bpf+0x0/0x10\n";
        assert!(!tcg_lsm_artefact(oops));
    }
}
