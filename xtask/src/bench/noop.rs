//! Contender: no-op programs, the floor of any cgroup-BPF agent. `bench_kernel --noop DIR`
//! (see `agent/examples/bench_kernel/noop.rs`) attaches a program that allows at once to
//! each of egressd's cgroup hooks on a cgroup of this contender's own; enabling it moves the
//! connect worker into that cgroup, disabling moves it back to `plain`, as for egressd. It
//! holds no prefixes, so it is started once and measured at every N like the others.
//!
//! Its twin [`OWNER_NAME`] (`bench_kernel --noop DIR --owner`) has egressd's own
//! `cgroup/sock_create` program in place of the no-op one there: it records each socket's
//! owner (socket-local storage) and nothing else, so its cost over the no-op programs is what
//! naming the process behind a packet costs a connect.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};
use egressd_testbed::{Cgroup, unique};
use serde_json::Value;

use super::{Bed, Filter};

/// Name in the report.
pub const NAME: &str = "no-op programs";
/// Name in the report of the twin with egressd's owner record at `cgroup/sock_create`.
pub const OWNER_NAME: &str = "no-op + owner record";

/// The running `bench_kernel --noop` process and its cgroup.
pub struct Noop {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    cgroup: Cgroup,
    name: &'static str,
    /// The hooks it attached to, as egressd names them (`cgroup/connect4`, ...).
    pub hooks: Vec<String>,
}

impl Noop {
    /// Creates the cgroup, starts `bench_kernel` (`bin`) on it and waits until the programs
    /// are attached; with `owner`, the twin that records each socket's owner
    /// ([`OWNER_NAME`]).
    pub fn start(bin: &Path, owner: bool) -> anyhow::Result<Self> {
        let cgroup = Cgroup::create(&unique("egressd-bench-noop-"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--noop").arg(cgroup.path());
        if owner {
            cmd.arg("--owner");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} --noop", bin.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        // From here on `me` owns the child: an error below still stops it (Drop).
        let mut me = Self {
            child,
            stdin,
            stdout,
            cgroup,
            name: if owner { OWNER_NAME } else { NAME },
            hooks: Vec::new(),
        };
        let mut line = String::new();
        me.stdout.read_line(&mut line)?;
        let ready: Value = serde_json::from_str(&line).with_context(|| {
            let status = me.child.try_wait().ok().flatten();
            format!("bench_kernel --noop answered {line:?} (exit status {status:?}; its stderr is above)")
        })?;
        if ready["ready"] != true {
            bail!("bench_kernel --noop: unexpected {ready}");
        }
        me.hooks = ready["hooks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(me)
    }
}

impl super::Stats for Noop {
    fn command(&mut self, cmd: &str) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("bench_kernel --noop exited (its stderr is above)");
        }
        serde_json::from_str(&line).with_context(|| format!("parsing {line:?}"))
    }
}

impl Filter for Noop {
    fn name(&self) -> &'static str {
        self.name
    }
    fn enable(&mut self, bed: &Bed) -> anyhow::Result<()> {
        bed.worker.move_to(self.cgroup.path())
    }
    fn disable(&mut self, bed: &Bed) -> anyhow::Result<()> {
        bed.worker.move_to(&bed.plain)
    }
}

impl Drop for Noop {
    fn drop(&mut self) {
        super::quit(&mut self.child, &mut self.stdin);
    }
}
