//! The two halves of a start: [`Enforcer::prepare`] (maps created, programs loaded and
//! verified, nothing installed or attached) and [`Prepared::finish`] (the first policy
//! installed, then the hooks attached). The daemon runs the first half on another thread
//! while the policy compiles; the second keeps the fail-closed order of a start: nothing is
//! attached before the maps hold the whole policy.
use std::{os::unix::fs::MetadataExt as _, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use aya::maps::Array;
use egressd_common::maps;

use super::{Adoption, Capacity, Enforcer, Pins, Tables, map, pinned_maps};
use crate::{
    kernel::{hooks::HOOKS, pin::PinDir},
    policy::Policy,
};

/// An [`Enforcer`] whose maps exist and whose programs are loaded and verified, with no
/// policy installed and no hook attached: dropping it changes no enforcement (pinned maps
/// it created stay pinned, empty, and are emptied again before a later start fills them).
pub struct Prepared {
    enforcer: Enforcer,
    /// The map sizes it was loaded with.
    capacity: Capacity,
    /// Pinned: what was pinned before this start.
    adoption: Option<Adoption>,
    /// What the install needs from the policy alone, worked out while it loaded.
    tables: Option<Tables>,
}

impl Prepared {
    /// The map sizes the programs were loaded with (pinned maps keep the sizes they were
    /// pinned with).
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Hands the install what [`Tables::compile`] worked out of its policy while the
    /// programs loaded (it must be the policy given to [`Prepared::finish`]).
    pub fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = Some(tables);
        self
    }

    /// Installs `policy` as the next generation, then attaches every hook to `cgroup`
    /// (pinned: each pinned link gets the new program atomically). Returns the enforcer and,
    /// pinned, how it came to enforce.
    ///
    /// # Errors
    /// As [`Enforcer::install`] and [`Enforcer::attach`]; nothing is attached when the
    /// install fails.
    pub fn finish(
        self,
        policy: Arc<Policy>,
        cgroup: &Path,
    ) -> anyhow::Result<(Enforcer, Option<Adoption>)> {
        let mut e = self.enforcer;
        if !std::mem::take(&mut e.legacy_table) {
            e.install_with(policy, self.tables)?;
            e.attach(cgroup)?;
            return Ok((e, self.adoption));
        }
        // The pinned links run an older egressd's programs until `attach` hands them this
        // build's; they read the IPv4 trie or their own, stale, unpaged table (the pins
        // dropped): the trie until then, the table from the next generation on.
        let room = e.table_room.take();
        e.install_with(policy.clone(), self.tables)?;
        e.attach(cgroup)?;
        e.table_room = room;
        if room.is_some() {
            e.install_with(policy, None)?;
        }
        Ok((e, self.adoption))
    }
}

impl Enforcer {
    /// The first half of [`Enforcer::load`]: checks the privileges and `cgroup`, creates the
    /// maps with the sizes of `cap` and loads and verifies the programs.
    ///
    /// # Errors
    /// As [`Enforcer::load`], without the install and attach errors.
    pub fn prepare(cap: Capacity, cgroup: &Path) -> anyhow::Result<Prepared> {
        crate::kernel::privileges::check()?;
        crate::kernel::cgroup::validate(cgroup)?;
        Ok(Prepared {
            enforcer: Self::open_with(cap)?,
            capacity: cap,
            adoption: None,
            tables: None,
        })
    }

    /// Like [`Enforcer::load`], but pins maps and links under `dir` (mounting bpffs at
    /// `/sys/fs/bpf` when needed) and adopts what an earlier egressd pinned there: the
    /// pinned maps are reused (counters continue), the policy generation continues from the
    /// pinned one (`policy` is installed as the next generation into the idle set), and each
    /// pinned link gets the newly loaded program with one atomic `BPF_LINK_UPDATE`, so no
    /// connection is ever judged by no program. Dropping the result leaves enforcement in
    /// place; [`PinDir::remove_all`] (`egressd detach`) ends it.
    ///
    /// # Errors
    /// As [`Enforcer::load`]; pins of another layout version; pins whose map shape differs
    /// from this build's; links pinned for another cgroup.
    pub fn load_pinned(
        policy: Arc<Policy>,
        cgroup: &Path,
        dir: &PinDir,
    ) -> anyhow::Result<(Self, Adoption)> {
        let prepared = Self::prepare_pinned(Capacity::for_policy(&policy), cgroup, dir)?;
        let (e, adoption) = prepared.finish(policy, cgroup)?;
        Ok((e, adoption.unwrap_or_default()))
    }

    /// The first half of [`Enforcer::load_pinned`]: the pins checked and adopted, the maps
    /// missing from them created with the sizes of `cap` and pinned, the programs loaded and
    /// verified, the generation to continue from read; nothing installed, no link touched.
    ///
    /// # Errors
    /// As [`Enforcer::load_pinned`], without the install and attach errors.
    pub fn prepare_pinned(cap: Capacity, cgroup: &Path, dir: &PinDir) -> anyhow::Result<Prepared> {
        crate::kernel::privileges::check()?;
        crate::kernel::cgroup::validate(cgroup)?;
        dir.prepare()?;
        dir.check_layout()?;
        let cgroup_id = std::fs::metadata(cgroup)
            .with_context(|| format!("reading {}", cgroup.display()))?
            .ino();
        for hook in HOOKS.iter().filter(|h| h.on_cgroup()) {
            let path = dir.link(hook.program);
            if !path.exists() {
                continue;
            }
            let fd = crate::kernel::pin::obj_get(&path)?;
            let st = crate::kernel::pin::link_state(std::os::fd::AsFd::as_fd(&fd))?;
            if st.cgroup_id != 0 && st.cgroup_id != cgroup_id {
                bail!(
                    "{} is attached to another cgroup (id {}) than {} (id {cgroup_id}); run \
                     `egressd detach --pin-dir {}` first or use another --pin-dir",
                    path.display(),
                    st.cgroup_id,
                    cgroup.display(),
                    dir.root.display()
                );
            }
        }
        // Any map pinned before this start may hold what an earlier process wrote, also one
        // that failed before publishing a generation (a half-filled set): both sets are
        // emptied before they are filled.
        let legacy_table = maps::LEGACY_TABLE24.iter().any(|n| dir.map(n).exists());
        let pinned = pinned_maps(dir)?;
        let had_pins = !pinned.is_empty();
        let is_pinned = |name: &str| pinned.iter().any(|(n, _)| n == name);
        // Cached socket verdicts and the packet hooks' handshake memo (in the scratch map)
        // carry the generation they were judged under. A generation map recreated under a
        // surviving cache would count from 1 again and make old verdicts look current: both
        // go with it (their sockets are judged again).
        if !is_pinned(maps::GENERATION) {
            for cache in [maps::SOCKETS, maps::SCRATCH]
                .into_iter()
                .filter(|m| is_pinned(m))
            {
                let path = dir.map(cache);
                std::fs::remove_file(&path).with_context(|| {
                    format!(
                        "removing the verdict cache pin {} (its generation map is gone)",
                        path.display()
                    )
                })?;
                tracing::warn!(
                    pin = %path.display(),
                    "the pinned generation map was missing: dropped this pinned cache of \
                     verdicts, every socket is judged again"
                );
            }
        }
        let mut e = Self::open_in(cap, Some(dir))?;
        let generation: Array<_, u64> = Array::try_from(map(&mut e.ebpf, maps::GENERATION)?)?;
        // Generations only grow: continue from the larger of the map's value and the one the
        // pinned state recorded (the map may have been recreated or rewritten).
        let recorded = dir.read_state().map_or(0, |s| s.generation);
        let previous = generation.get(&0, 0).unwrap_or(0).max(recorded);
        e.generation = previous;
        let adopted = dir.has_links();
        e.unknown = [had_pins || previous > 0; 2];
        e.legacy_table = legacy_table && adopted;
        e.pins = Some(Pins {
            dir: dir.clone(),
            cgroup: cgroup.to_path_buf(),
            fallback: None,
            checks: 0,
        });
        Ok(Prepared {
            enforcer: e,
            capacity: cap,
            adoption: Some(Adoption {
                adopted,
                previous_generation: previous,
            }),
            tables: None,
        })
    }
}
