//! `cargo xtask`: the project's automation. Every command that needs the eBPF toolchain runs
//! [`setup::ensure`] first, so each works on a fresh machine (as root).
mod bench;
mod bench_check;
mod demo;
mod fuzz;
mod package;
mod setup;
mod sh;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "egressd build, demo and test helpers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker,
    /// ansible-core and ansible-lint for the role tests); idempotent.
    Setup,
    /// Build egressd (release) with its eBPF programs.
    Build,
    /// Run egressd on configs/example.toml inside a sandbox (namespaces + a cgroup), drive
    /// allowed and denied connections, and show the events and counters.
    Demo,
    /// Run the whole test suite: unit tests, the privileged kernel tests on this kernel, and
    /// the kernel tests again inside VMs booting Debian's 5.10, 6.1 and 6.12 kernels (root).
    Test {
        /// Skip the VM part (the kernel tests inside Debian's 5.10, 6.1 and 6.12 kernels
        /// under QEMU, about 6 minutes): the native suite only.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments passed to `cargo test` after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark egressd against nftables, ipset, iptables and no filter; writes
    /// docs/benchmarks.md and docs/benchmarks-connect.svg (root; about 10 minutes).
    Bench(bench::Args),
    /// Time and peak memory of `egressd check` on generated policies of growing size (1k to
    /// 1M prefixes, 10 to 10,000 rules); writes docs/benchmarks-check.md and fails when a
    /// series does not grow linearly (no privileges; a few minutes, `--quick` seconds).
    BenchCheck(bench_check::Args),
    /// Run every cargo-fuzz target of fuzz/ (nightly, libFuzzer) for a bounded time from
    /// its seeds; prints one line per target and `fuzz: N passed, N failed` (CI: 20 s each;
    /// `--seconds 3600 TARGET` for a longer hunt).
    Fuzz(fuzz::Args),
    /// Build the Debian package (cargo-deb: binary, systemd unit, example policy) and check
    /// it by installing it into a throwaway root (`dpkg -x`); prints the .deb's path.
    Package,
    /// Run the kernel tests inside Debian's cloud kernels (5.10, 6.1, 6.12) under QEMU, one
    /// after the other; prints a table and `vm-test: N passed, N failed` (N counts kernels).
    /// Root; about 10 minutes per kernel under TCG.
    VmTest(vm::Args),
    /// Internal: the probe client the demo runs inside the sandbox.
    #[command(hide = true)]
    Probe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Cmd::Setup => setup::ensure().and_then(|()| setup::ensure_ansible()),
        Cmd::Build => setup::ensure().and_then(|()| build()),
        Cmd::Demo => setup::ensure()
            .and_then(|()| build())
            .and_then(|()| demo::run()),
        Cmd::Test { no_vm, args } => setup::ensure()
            .and_then(|()| setup::ensure_ansible())
            .and_then(|()| test(&args, !no_vm)),
        Cmd::Package => setup::ensure().and_then(|()| package::run().map(|_| ())),
        Cmd::Bench(args) => bench::run(args),
        Cmd::BenchCheck(args) => bench_check::run(args),
        Cmd::Fuzz(args) => setup::ensure().and_then(|()| fuzz::run(args)),
        // The summary line is the last one printed: a failed kernel is only the exit code.
        Cmd::VmTest(args) => match vm::run(args) {
            Ok(r) if r.iter().all(|k| k.ok) => return std::process::ExitCode::SUCCESS,
            Ok(_) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Cmd::Probe { args } => {
            return std::process::ExitCode::from(egressd_testbed::client::main(&args) as u8);
        }
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    sh::cargo(&["build", "--release", "-p", "egressd"])
}

/// What the test binaries reported, added up over all of them.
#[derive(Default)]
struct TestSummary {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// (name, reason) of each skipped (ignored) test.
    skips: Vec<(String, String)>,
    /// Names of the failed tests, `KERNEL: NAME` for those that failed in a VM.
    failures: Vec<String>,
    /// The native runs' `failures:` blocks (names and messages), repeated at the end where
    /// CI's excerpt shows them.
    native_failures: vm::FailuresBlock,
}

impl TestSummary {
    /// Folds one line of `cargo test`'s stdout in.
    fn line(&mut self, line: &str) {
        self.native_failures.line(line);
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(key))
                    .and_then(|n| n.trim().rsplit(' ').next().and_then(|n| n.parse().ok()))
                    .unwrap_or(0)
            };
            self.passed += num(" passed");
            self.failed += num(" failed");
            self.skipped += num(" ignored");
        } else if let Some(name) = vm::failed_test(line) {
            self.failures.push(name.to_owned());
        } else if let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|t| t.split_once(" ... "))
            && let Some(reason) = outcome.trim().strip_prefix("ignored")
        {
            // libtest: `ignored, REASON`; libtest-mimic: `ignored (REASON)`.
            let reason = reason
                .trim_start_matches(',')
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')');
            let reason = if reason.is_empty() {
                "no reason given"
            } else {
                reason
            };
            self.skips.push((name.trim().to_owned(), reason.to_owned()));
        }
    }

    /// One line per reason: `skipped N: REASON: NAME, NAME`.
    fn skip_lines(&self) -> Vec<String> {
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, reason) in &self.skips {
            match reasons.iter_mut().find(|(r, _)| r == reason) {
                Some((_, names)) => names.push(name),
                None => reasons.push((reason, vec![name])),
            }
        }
        reasons
            .into_iter()
            .map(|(reason, names)| {
                format!("skipped {}: {reason}: {}", names.len(), names.join(", "))
            })
            .collect()
    }
}

/// Seconds one kernel's boot and kernel tests may take in `cargo xtask test`. Two kernels
/// boot at once on 2 cores (`vm-test --jobs`), each then slower than alone: on 2026-12-01,
/// 5.10 took about 17 minutes beside 6.1, and 6.1 (single-threaded TCG) about 25; CI's
/// machines have been up to twice as slow as this one.
const VM_TIMEOUT_SECS: u64 = 2700;

fn test(extra: &[String], vms: bool) -> anyhow::Result<()> {
    // --no-fail-fast: every test binary runs even after one failed, so one failure never
    // hides others.
    let mut args = vec![
        "test".to_owned(),
        "--workspace".into(),
        "--exclude".into(),
        "egressd-ebpf".into(),
        "--no-fail-fast".into(),
    ];
    if !extra.is_empty() {
        args.push("--".into());
        args.extend(extra.iter().cloned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // cargo prints one "test result:" line per test binary, the last ones often for binaries
    // without tests; add them up so the run ends with one line that says what ran.
    let (status, mut sum) = sh::cargo_tee(&args, |line, sum: &mut TestSummary| sum.line(line))?;
    // The kernel tests again, inside VMs booting the Debian kernels users run. After a
    // native failure too: one failure never hides another.
    let mut vm_failed = false;
    if vms {
        match vm::run(vm::Args::all(VM_TIMEOUT_SECS)) {
            Ok(kernels) => {
                for k in kernels {
                    match &k.result_line {
                        Some(line) => sum.line(&format!("test result: {line}")),
                        // A kernel that crashed or timed out before its summary.
                        None => sum.failed += 1,
                    }
                    println!(
                        "kernel {}: {}",
                        k.name,
                        k.result_line
                            .as_deref()
                            .unwrap_or("no test summary (see above)")
                    );
                    sum.failures
                        .extend(k.failed_tests.iter().map(|n| format!("{}: {n}", k.name)));
                    for kill in &k.oom_kills {
                        println!("kernel {}: the guest's OOM killer ran: {kill}", k.name);
                    }
                    vm_failed |= !k.ok;
                }
            }
            Err(e) => {
                eprintln!("xtask: vm-test could not run: {e:#}");
                vm_failed = true;
                sum.failed += 1;
            }
        }
    }
    for line in &sum.native_failures.lines {
        println!("native failures: {line}");
    }
    for line in sum.skip_lines() {
        println!("{line}");
    }
    for name in &sum.failures {
        println!("failed: {name}");
    }
    println!(
        "egressd: {} passed, {} failed, {} skipped",
        sum.passed, sum.failed, sum.skipped
    );
    if !status.success() || sum.failed > 0 || vm_failed {
        anyhow::bail!("tests failed ({status})");
    }
    if sum.passed == 0 {
        anyhow::bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestSummary;

    /// libtest's and libtest-mimic's lines are both counted, skips with their reasons.
    #[test]
    fn summary_adds_up_both_harnesses() {
        let mut s = TestSummary::default();
        for line in [
            "test a ... ok",
            "test b ... ignored, needs a network",
            "test provider_files::c ... ignored (EGRESSD_PROVIDER_DATA not set)",
            "test d ... ignored",
            "test f ... FAILED",
            "",
            "failures:",
            "",
            "---- f ----",
            "too few decisive attempts: 218",
            "",
            "failures:",
            "    f",
            "",
            "test result: ok. 1 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 14 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s",
        ] {
            s.line(line);
        }
        assert_eq!((s.passed, s.failed, s.skipped), (15, 2, 3));
        assert_eq!(s.failures, ["f"]);
        assert_eq!(
            s.native_failures.lines,
            ["---- f ----", "too few decisive attempts: 218", "    f"]
        );
        s.line("test e ... ignored, needs a network");
        assert_eq!(
            s.skip_lines(),
            [
                "skipped 2: needs a network: b, e",
                "skipped 1: EGRESSD_PROVIDER_DATA not set: provider_files::c",
                "skipped 1: no reason given: d",
            ]
        );
    }
}
