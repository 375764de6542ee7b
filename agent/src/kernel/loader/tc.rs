//! The `tc/egress` fallback for packet sockets, loaded only where the BPF LSM hooks do not
//! run (see `ebpf/src/tc.rs`).
//!
//! The program is attached at the egress of every interface of egressd's network namespace
//! except loopback, and of interfaces that appear later ([`TcCover::rescan`], run by the
//! daemon every few seconds). It prefers TCX links (Linux 6.6), found by trying one; where
//! the kernel refuses them it adds the `clsact` qdisc and a `cls_bpf` filter over netlink.
//!
//! It goes first in the chain (TCX: `BPF_F_BEFORE`; netlink: a low priority), as a
//! program or filter that passes a frame ends the chain. Filters of this instance have one
//! (priority, handle) derived from its cgroup
//! ([`filter_priority`]), so several egressd instances (one per cgroup) share an interface
//! without touching each other's filters, and an instance can find and replace its own
//! after a crash or a restart. Pinned mode: TCX links are pinned under `DIR/tc/IFINDEX`;
//! netlink filters outlive the process by themselves (they hold the program). `egressd
//! detach` ([`detach`]) removes both.
use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use egressd_common::programs;

/// `LOOPBACK_IFINDEX` (`include/net/net_namespace.h`): loopback is interface 1 in every
/// network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// Handle of this instance's netlink filter at its priority (`0xe9d5:1`, unlikely to be
/// another tool's: the kernel's `EEXIST` for it is taken as "already attached").
const FILTER_HANDLE: TcHandle = TcHandle::new(0xe9d5, 1);

/// How the program is attached to the interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// TCX links (`BPF_TCX_EGRESS`, Linux 6.6).
    Tcx,
    /// A `cls_bpf` filter in direct-action mode on the `clsact` qdisc, over netlink.
    Netlink,
}

impl Attach {
    /// `tcx` or `netlink`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// State of the fallback.
#[derive(Debug, Default)]
pub struct TcCover {
    /// Set by [`TcCover::start`]: the program is loaded and meant to judge.
    started: bool,
    /// Why it does not judge (`None` while it does, or before `start`).
    reason: Option<String>,
    /// TCX or netlink, once the first attachment told.
    attach: Option<Attach>,
    /// Interfaces it is attached to: ifindex -> name.
    attached: BTreeMap<u32, String>,
    /// Pinned mode: where TCX links are pinned (`DIR/tc`).
    pins: Option<PathBuf>,
    /// Netlink priority of this instance's filters.
    priority: u16,
}

/// Netlink filter priority of the instance enforcing `cgroup`: stable across restarts, in
/// `1..=0x3fff` (FNV-1a of the path). Lower runs first: before filters whose priority the
/// kernel chose (`0xc000` and down), so one that ends classification with `TC_ACT_OK`
/// cannot skip this one (which returns `TC_ACT_UNSPEC` for every frame it does not drop).
pub fn filter_priority(cgroup: &Path) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in cgroup.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    1 + (h % 0x3fff) as u16
}

/// Interfaces of the calling thread's network namespace but loopback, as (ifindex, name).
///
/// # Errors
/// `if_nameindex(3)` failed.
pub fn interfaces() -> std::io::Result<Vec<(u32, String)>> {
    // SAFETY: returns a heap array ending with a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: entries up to the terminating zero index are valid, with NUL-terminated names.
    unsafe {
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            if (*p).if_index != LOOPBACK_IFINDEX {
                out.push(((*p).if_index, name));
            }
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(out)
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    ebpf.program_mut(programs::TC_EGRESS)
        .with_context(|| {
            format!(
                "program {} missing from the eBPF object",
                programs::TC_EGRESS
            )
        })?
        .try_into()
        .with_context(|| format!("program {} has an unexpected type", programs::TC_EGRESS))
}

/// Where pinned mode keeps the TCX links under the pin directory `pin_root`: `DIR/tc`, one
/// pin per interface named by its index ([`link_pin`]).
pub fn pins_dir(pin_root: &Path) -> PathBuf {
    pin_root.join("tc")
}

/// Pin of the TCX link on interface `ifindex` under `dir` (`DIR/tc`).
fn link_pin(dir: &Path, ifindex: u32) -> PathBuf {
    dir.join(ifindex.to_string())
}

impl TcCover {
    /// Loads the program, points it at the enforced cgroup `cg` (`cgroup`, its path) and
    /// attaches it to every interface. `pin_root` is the pin directory in pinned mode.
    /// Failures are recorded ([`TcCover::coverage`]), never fatal: the other hooks enforce
    /// without it.
    pub fn start(&mut self, ebpf: &mut Ebpf, cg: &File, cgroup: &Path, pin_root: Option<&Path>) {
        self.started = true;
        self.priority = filter_priority(cgroup);
        let loaded = program(ebpf).and_then(|p| {
            p.load()
                .map_err(|e| anyhow!("{e}: {}", verifier_log(&e)))
                .context("the kernel refused the program")
        });
        if let Err(e) = loaded {
            self.fail(format!("tc/egress did not load: {e:#}"));
            return;
        }
        if let Err(e) = super::set_enforced_cgroup(ebpf, cg) {
            self.fail(format!(
                "writing the enforced cgroup for tc/egress failed: {e:#}"
            ));
            return;
        }
        if let Some(root) = pin_root {
            let dir = pins_dir(root);
            // 0700 like the pin directory's own `maps` and `links` (PinDir::prepare).
            // An existing one (an earlier build made it 0755) is narrowed too.
            let made = {
                use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .and_then(|()| {
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    })
            };
            if let Err(e) = made {
                self.fail(format!("creating {}: {e}", dir.display()));
                return;
            }
            self.pins = Some(dir);
        }
        let changes = self.rescan(ebpf);
        if self.attached.is_empty() && self.reason.is_none() {
            tracing::warn!("tc/egress: no interface besides loopback to attach to (yet)");
        }
        for c in changes {
            tracing::info!(change = %c, "tc/egress");
        }
    }

    fn fail(&mut self, why: String) {
        tracing::warn!(error = %why, "tc/egress fallback not in force");
        self.reason.get_or_insert(why);
    }

    /// Attaches to interfaces that appeared (or lost the attachment) since the last call,
    /// and forgets those that are gone. Returns one line per change (empty: none). Does
    /// nothing unless [`TcCover::start`] succeeded.
    pub fn rescan(&mut self, ebpf: &mut Ebpf) -> Vec<String> {
        let mut changes = Vec::new();
        if !self.started || self.reason.is_some() {
            return changes;
        }
        let ifaces = match interfaces() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "tc/egress: listing interfaces");
                return changes;
            }
        };
        // `egressd detach` while this daemon runs removes `DIR/tc` with its pins; the pin
        // directory itself is re-created by the tamper check.
        if let Some(dir) = &self.pins
            && !dir.is_dir()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(error = %e, dir = %dir.display(), "tc/egress: re-creating the pin directory");
        }
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|i| !ifaces.iter().any(|(j, _)| j == *i))
            .copied()
            .collect();
        for i in gone {
            if let Some(name) = self.attached.remove(&i) {
                if let Some(dir) = &self.pins {
                    let _ = std::fs::remove_file(link_pin(dir, i));
                }
                changes.push(format!("{name} (ifindex {i}) is gone"));
            }
        }
        for (i, name) in ifaces {
            let known = self.attached.get(&i) == Some(&name);
            match self.ensure(ebpf, &name, i, !known) {
                Ok(false) => {
                    // Already attached (a renamed interface keeps its ifindex).
                    self.attached.insert(i, name);
                }
                Ok(true) => {
                    changes.push(format!(
                        "{} {name} (ifindex {i}) via {}",
                        if known {
                            "attachment missing; re-attached to"
                        } else {
                            "attached to"
                        },
                        self.attach.map_or("?", Attach::label)
                    ));
                    self.attached.insert(i, name);
                }
                Err(e) => {
                    tracing::warn!(interface = %name, error = format!("{e:#}"), "tc/egress not attached");
                }
            }
        }
        changes
    }

    /// Makes sure the program is attached to `name`: a TCX link where the kernel has them
    /// (tried first, once), else the `clsact` qdisc and this instance's filter. `fresh`: the
    /// first time for this interface in this process (a netlink filter of an earlier run is
    /// replaced). `Ok(true)`: attached now; `Ok(false)`: it already was (the kernel refuses
    /// the same program twice on a TCX hook, and a second filter at the same priority and
    /// handle, with `EEXIST`: that is the check, it needs no privilege beyond attaching).
    fn ensure(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        ifindex: u32,
        fresh: bool,
    ) -> anyhow::Result<bool> {
        if self.attach != Some(Attach::Netlink) {
            let prog = program(ebpf)?;
            match prog.attach_with_options(
                name,
                TcAttachType::Egress,
                // First, so a program before it that returns TCX_PASS cannot skip it.
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            ) {
                Ok(id) => {
                    self.attach = Some(Attach::Tcx);
                    if let Some(dir) = &self.pins {
                        let link: FdLink = prog.take_link(id)?.try_into()?;
                        let path = link_pin(dir, ifindex);
                        // The new link runs before the old pin goes: no moment without either.
                        if path.exists() {
                            std::fs::remove_file(&path)
                                .with_context(|| format!("removing {}", path.display()))?;
                        }
                        link.pin(&path)
                            .with_context(|| format!("pinning {}", path.display()))?;
                    }
                    return Ok(true);
                }
                Err(e) if os_error(&e) == Some(libc::EEXIST) => {
                    self.attach = Some(Attach::Tcx);
                    return Ok(false);
                }
                Err(e) if self.attach == Some(Attach::Tcx) => {
                    return Err(anyhow!(e).context("attaching a TCX link"));
                }
                Err(e) => {
                    tracing::info!(error = %e, "no TCX links on this kernel: using clsact filters");
                    self.attach = Some(Attach::Netlink);
                }
            }
        }
        self.netlink_filter(ebpf, name, fresh)
    }

    /// Makes sure this instance's filter is on `name`: adds the `clsact` qdisc if missing,
    /// removes an earlier run's filter first when `replace` is set, then adds the filter.
    /// `Ok(true)`: it was added now; `Ok(false)`: it was already there (the kernel refuses a
    /// second filter at the same priority and handle, `EEXIST`).
    fn netlink_filter(&self, ebpf: &mut Ebpf, name: &str, replace: bool) -> anyhow::Result<bool> {
        let prio = self.priority;
        match tc::qdisc_add_clsact(name) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(anyhow!(e).context("adding the clsact qdisc")),
        }
        if replace {
            // A filter of an earlier run of this instance (a restart, a crash) still holds
            // its program: replaced, so the program and maps of this run judge.
            let old = SchedClassifierLink::attached(
                name,
                TcAttachType::Egress,
                prio,
                FILTER_HANDLE,
                None,
            )?;
            let _ = aya::programs::links::Link::detach(old);
        }
        let prog = program(ebpf)?;
        match prog.attach_with_options(
            name,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: prio,
                handle: FILTER_HANDLE,
                classid: None,
            }),
        ) {
            Ok(id) => {
                if self.pins.is_some() {
                    // The filter must outlive this process: dropping the link would delete it.
                    std::mem::forget(prog.take_link(id)?);
                }
                Ok(true)
            }
            Err(e) if os_error(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(anyhow!(e).context("adding the cls_bpf filter")),
        }
    }

    /// `None` when the fallback was not started (the LSM hooks judge); `Ok` with a
    /// description while it judges; `Err` with the reason it does not.
    pub fn coverage(&self) -> Option<Result<String, String>> {
        if !self.started {
            return None;
        }
        Some(match &self.reason {
            Some(r) => Err(r.clone()),
            None => Ok(format!(
                "attached via {} to {} interface(s) of egressd's network namespace ({})",
                self.attach.map_or("nothing yet", Attach::label),
                self.attached.len(),
                self.attached
                    .values()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
    }
}

/// The OS error code inside a program error (netlink or syscall), if any.
fn os_error(e: &aya::programs::ProgramError) -> Option<i32> {
    use aya::programs::ProgramError as P;
    match e {
        P::TcError(tc::TcError::NetlinkError(n)) | P::NetlinkError(n) => n.raw_os_error(),
        P::TcError(tc::TcError::IoError(io)) => io.raw_os_error(),
        P::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// The verifier log of a load error, if any.
fn verifier_log(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            crate::kernel::coverage::verifier_reason(&verifier_log.to_string())
        }
        _ => String::new(),
    }
}

/// `egressd detach`: removes this pin directory's TCX link pins (`DIR/tc`) and the netlink
/// filters of the instance that enforced `cgroup` from every interface of the calling
/// network namespace. Returns what was removed.
///
/// # Errors
/// A pin or filter that exists could not be removed.
pub fn detach(pin_root: &Path, cgroup: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let dir = pins_dir(pin_root);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            removed.push(e.path().display().to_string());
        }
        std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if let Some(cg) = cgroup {
        let prio = filter_priority(cg);
        for (_, name) in interfaces()? {
            let link = SchedClassifierLink::attached(
                &name,
                TcAttachType::Egress,
                prio,
                FILTER_HANDLE,
                None,
            )?;
            match aya::programs::links::Link::detach(link) {
                Ok(()) => removed.push(format!("tc/egress filter on {name}")),
                // No clsact qdisc, or no filter of this instance there.
                Err(e) if matches!(os_error(&e), Some(libc::ENOENT | libc::EINVAL)) => {}
                Err(e) => {
                    return Err(
                        anyhow!(e).context(format!("removing the tc/egress filter of {name}"))
                    );
                }
            }
        }
    }
    Ok(removed)
}
