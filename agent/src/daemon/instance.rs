//! One daemon per cgroup: a second `egressd run` on a cgroup that one already enforces
//! refuses to start, naming the other (two daemons would both attach, and the stricter
//! verdict of either would win while each reports only its own).
//!
//! Two checks, before anything is loaded:
//!
//! 1. A lock the kernel releases when its holder dies: `flock(LOCK_EX | LOCK_NB)` on
//!    `RUN_DIR/<cgroup id>.lock` ([`DEFAULT_RUN_DIR`], `run --run-dir`), a file in a
//!    root-owned directory opened as [`crate::base::safefs`] says. The holder writes its pid, pin
//!    directory, configuration and cgroup into it; the refusal quotes them. A `kill -9`, a
//!    crash or an exit releases it, so a restart never waits for a stale lock.
//! 2. The cgroup's attached programs (`BPF_PROG_QUERY` per hook): an egressd program
//!    (`egressd_*`) attached by something that holds no lock here (an egressd of another
//!    run directory or an older version, or pinned links of another pin directory whose
//!    daemon is gone) also refuses the start. Programs that the links pinned in this run's
//!    own `--pin-dir` run are not counted: adopting them is the restart path.
use std::{
    ffi::OsStr,
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{base::safefs::TrustedDir, kernel::hooks::HOOKS, kernel::pin::PinDir};

/// Where the per-cgroup locks live by default.
pub const DEFAULT_RUN_DIR: &str = "/run/egressd";

/// The held lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct Claim {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Claims `cgroup` for this process: takes its lock in `run_dir` and checks that no other
/// egressd's programs are attached to it (those of `pins`' own pinned links aside).
///
/// # Errors
/// Another live egressd holds the lock (the error names its pid, pin directory and
/// configuration); egressd programs that this run would not adopt are attached to the
/// cgroup (named by program id); the run directory is not trusted or cannot be created.
pub fn claim(
    cgroup: &Path,
    pins: Option<&PinDir>,
    run_dir: &Path,
    config: &Path,
) -> anyhow::Result<Claim> {
    let cgroup_id = std::fs::metadata(cgroup)
        .with_context(|| format!("reading cgroup {}", cgroup.display()))?
        .ino();
    let dir = TrustedDir::create(run_dir)
        .with_context(|| format!("run directory {}", run_dir.display()))?;
    let name = format!("{cgroup_id}.lock");
    let path = run_dir.join(&name);
    let mut file = dir
        .append(OsStr::new(&name), crate::base::safefs::FILE_MODE)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let mut holder = String::new();
        if let Ok(mut f) = dir.read(OsStr::new(&name)) {
            let _ = f.read_to_string(&mut holder);
        }
        let holder = holder.trim().replace('\n', ", ");
        bail!(
            "another egressd already enforces cgroup {} ({}; lock {}); stop it first, or run \
             this one on another cgroup",
            cgroup.display(),
            if holder.is_empty() {
                "it has not said who it is yet".to_owned()
            } else {
                holder
            },
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| {
            writeln!(
                file,
                "pid {}\npin dir {}\nconfig {}\ncgroup {}",
                std::process::id(),
                pins.map_or_else(|| "none".to_owned(), |p| p.root.display().to_string()),
                config.display(),
                cgroup.display()
            )
        })
        .with_context(|| format!("writing {}", path.display()))?;
    // Links of an egressd that just died may take a moment to go (their release is
    // deferred on some kernels): look again for a second before refusing.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let foreign = foreign_programs(cgroup, pins)?;
        if foreign.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = foreign
                .iter()
                .map(|(hook, id, name)| format!("{name} (id {id}) at {hook}"))
                .collect();
            bail!(
                "egressd programs are already attached to cgroup {}: {}; no egressd holds its \
                 lock ({}), so they belong to an egressd of another run directory or version, \
                 or to links pinned in another pin directory (`bpftool cgroup show {}`, \
                 `egressd detach --pin-dir DIR`); refusing to attach a second set",
                cgroup.display(),
                list.join(", "),
                path.display(),
                cgroup.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Claim { _file: file, path })
}

/// Egressd programs attached to `cgroup` that are not run by the links pinned in `pins`, as
/// (hook, program id, program name).
fn foreign_programs(
    cgroup: &Path,
    pins: Option<&PinDir>,
) -> anyhow::Result<Vec<(&'static str, u32, String)>> {
    let cg = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let adoptable: Vec<u32> = pins
        .map(|dir| {
            HOOKS
                .iter()
                .filter_map(|h| {
                    let fd = crate::kernel::pin::obj_get(&dir.link(h.program)).ok()?;
                    crate::kernel::pin::link_state(fd.as_fd())
                        .ok()
                        .map(|s| s.program_id)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut attached = Vec::new();
    // LSM programs are global, not attached to the cgroup: nothing to ask it about them.
    for h in HOOKS.iter().filter(|h| h.on_cgroup()) {
        for id in crate::kernel::pin::attached_programs(cg.as_fd(), h.attach_type)
            .with_context(|| format!("querying the programs attached to {}", cgroup.display()))?
        {
            if !adoptable.contains(&id) {
                attached.push((h.name, id));
            }
        }
    }
    if attached.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        // The kernel keeps 15 characters of a program's name.
        if !name.starts_with("egressd_") {
            continue;
        }
        for (hook, id) in attached.iter().filter(|(_, id)| *id == info.id()) {
            out.push((*hook, *id, name.to_owned()));
        }
    }
    Ok(out)
}
