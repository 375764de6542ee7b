//! Contender: egressd, loaded through its library by the `bench_kernel` example (see
//! `agent/examples/bench_kernel`), attached to the `filtered` cgroup. Enabling it moves the
//! connect worker into that cgroup; disabling moves it back to `plain`.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{Bed, Filter};

/// The running `bench_kernel` process.
pub struct Egressd {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Its measurement line (load/reload, memory, test runs, lookup prototypes).
    pub measured: Value,
    /// Memory reported once attached.
    pub attached: Value,
}

/// Options of one `bench_kernel` run.
pub struct Options<'a> {
    /// The example binary.
    pub bin: &'a Path,
    /// Prefix set file.
    pub set: &'a Path,
    /// cgroup to attach to.
    pub cgroup: &'a Path,
    /// Load and reload repetitions.
    pub reps: usize,
    /// Distinct destinations for first-packet and lookup timings.
    pub first_runs: usize,
    /// Also time the lookup structures alone.
    pub proto: bool,
}

impl Egressd {
    /// Starts `bench_kernel`, waits for its measurements and for the attach (`timeout`).
    pub fn start(o: &Options<'_>, timeout: Duration) -> anyhow::Result<Self> {
        let mut cmd = Command::new(o.bin);
        cmd.arg("--set")
            .arg(o.set)
            .arg("--cgroup")
            .arg(o.cgroup)
            .args(["--reps", &o.reps.to_string()])
            .args(["--first-runs", &o.first_runs.to_string()]);
        if o.proto {
            cmd.arg("--proto");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", o.bin.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            stdin,
            lines,
            measured: Value::Null,
            attached: Value::Null,
        };
        me.measured = me.next(timeout).context("bench_kernel measurements")?;
        me.attached = me
            .next(Duration::from_secs(60))
            .context("bench_kernel attach")?;
        if me.attached["ready"] != true {
            bail!("bench_kernel: unexpected {}", me.attached);
        }
        Ok(me)
    }

    fn next(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).with_context(|| format!("parsing {line:?}")),
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                bail!("no answer within {timeout:?} (exit status {status:?}; its stderr is above)")
            }
        }
    }
}

impl super::Stats for Egressd {
    fn command(&mut self, cmd: &str) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.next(Duration::from_secs(10))
    }
}

impl Filter for Egressd {
    fn name(&self) -> &'static str {
        "egressd"
    }
    fn enable(&mut self, bed: &Bed) -> anyhow::Result<()> {
        bed.worker.move_to(&bed.filtered)
    }
    fn disable(&mut self, bed: &Bed) -> anyhow::Result<()> {
        bed.worker.move_to(&bed.plain)
    }
}

impl Drop for Egressd {
    fn drop(&mut self) {
        super::quit(&mut self.child, &mut self.stdin);
    }
}
