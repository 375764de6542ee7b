//! The floor of any cgroup-BPF agent, for the connect benchmark's "no-op programs"
//! contender: on each of egressd's cgroup hooks (its hook table,
//! [`egressd::kernel::hooks::HOOKS`], so a hook added there is mirrored here), a program of
//! the same type and attach type that allows at once (`r0 = 1; exit`), attached with a
//! bpf_link to a cgroup of its own, as egressd attaches its programs. The benchmark moves its
//! worker into that cgroup: what it then pays over no filter is the kernel's cost of having
//! programs on these hooks at all (the cgroup-BPF run path and one program call per hook
//! run), before a program does anything.
//!
//! With `--owner`, the `cgroup/sock_create` hook gets egressd's own program instead of the
//! no-op one: it records the creating task on each socket in socket-local storage (an
//! element allocated per socket, freed at close after an RCU grace period) and does nothing
//! else. What that contender pays over the no-op programs is the price of naming the process
//! behind a packet event, which egressd pays on every socket.
//!
//! egressd's global programs (the BPF LSM hooks, or the tc/egress fallback where those
//! cannot run) get no twin here: the benchmark's egressd process keeps them attached while
//! every contender is measured, the no-filter baseline included, so they are in every figure
//! alike.
use std::{
    fs::File,
    io::Write as _,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;
use egressd::kernel::{
    hooks::{HOOKS, Hook, Kind},
    loader::Enforcer,
};
use egressd_common::programs;
use serde_json::json;

use crate::rawbpf::{
    self, PROG_CGROUP_SKB, PROG_CGROUP_SOCK, PROG_CGROUP_SOCK_ADDR,
    asm::{exit, mov_imm},
};

/// A no-op program attached to one hook (detached when the link is closed).
struct Attached {
    hook: &'static Hook,
    /// The program (`None`: egressd's own, held by its [`Enforcer`]).
    prog: Option<OwnedFd>,
    _link: OwnedFd,
}

/// `BPF_PROG_TYPE_*` of `kind`'s programs; `None` for the global (not cgroup) hooks.
fn prog_type(kind: Kind) -> Option<u32> {
    match kind {
        Kind::SockAddr => Some(PROG_CGROUP_SOCK_ADDR),
        Kind::SkbEgress | Kind::SkbIngress => Some(PROG_CGROUP_SKB),
        Kind::Sock => Some(PROG_CGROUP_SOCK),
        Kind::Lsm => None,
    }
}

/// Loads and attaches a no-op program to each of egressd's cgroup hooks on `cgroup`, in
/// egressd's attach order; with `owner` (egressd's programs, loaded but not attached),
/// egressd's own `cgroup/sock_create` program instead of the no-op one there.
fn attach(cgroup: &Path, owner: Option<&Enforcer>) -> anyhow::Result<Vec<Attached>> {
    let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    let mut out = Vec::new();
    for hook in &HOOKS {
        let Some(prog_type) = prog_type(hook.kind) else {
            continue;
        };
        if let (Some(e), programs::SOCK_CREATE) = (owner, hook.program) {
            let link =
                rawbpf::link_create(e.program_fd(hook.program)?, cg.as_fd(), hook.attach_type)
                    .with_context(|| format!("attaching egressd's program to {}", hook.name))?;
            out.push(Attached {
                hook,
                prog: None,
                _link: link,
            });
            continue;
        }
        // 1 allows on every one of these hooks (sock_addr and sock_create: the call goes on;
        // cgroup_skb: the packet passes).
        let prog = rawbpf::prog_load(
            prog_type,
            hook.attach_type,
            &format!("noop_{}", hook.pin),
            &[mov_imm(0, 1), exit()],
        )
        .with_context(|| format!("loading the no-op program for {}", hook.name))?;
        let link = rawbpf::link_create(prog.as_fd(), cg.as_fd(), hook.attach_type)
            .with_context(|| format!("attaching a no-op program to {}", hook.name))?;
        out.push(Attached {
            hook,
            prog: Some(prog),
            _link: link,
        });
    }
    Ok(out)
}

/// `bench_kernel --noop DIR [--owner]`: attaches the no-op programs to `DIR` (with `owner`,
/// egressd's `cgroup/sock_create` program among them), prints
/// `{"ready":true,"hooks":[...]}` (the hooks, as egressd names them), and keeps them attached
/// until `quit` or the end of stdin. Commands on stdin, one per line, each answered with a
/// JSON line, as for egressd's programs: `stats-on` / `stats-off` (BPF run-time
/// statistics), `stats` (`run_time_ns`/`run_cnt` per hook, keyed by egressd's program
/// name for that hook, so both answers read alike), `quit`.
pub fn serve(cgroup: &Path, owner: bool) -> anyhow::Result<()> {
    // Kept until the links are closed (they hold the program and its map themselves): the
    // `stats` command reads the program through it.
    let enforcer = owner
        .then(|| Enforcer::open(0).context("loading egressd's programs"))
        .transpose()?;
    let attached = attach(cgroup, enforcer.as_ref())?;
    let hooks: Vec<&str> = attached.iter().map(|a| a.hook.name).collect();
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    writeln!(w, "{}", json!({ "ready": true, "hooks": hooks }))?;
    w.flush()?;
    crate::serve_commands(&mut w, || {
        let mut v = json!({});
        for a in &attached {
            let s = match (&a.prog, &enforcer) {
                (Some(p), _) => rawbpf::prog_stats(p.as_fd(), &format!("noop_{}", a.hook.pin))?,
                (None, Some(e)) => {
                    rawbpf::prog_stats(e.program_fd(a.hook.program)?, a.hook.program)?
                }
                (None, None) => continue,
            };
            v[a.hook.program] = json!({ "run_time_ns": s.run_time_ns, "run_cnt": s.run_cnt });
        }
        Ok(v)
    })?;
    drop(attached);
    drop(enforcer);
    Ok(())
}
