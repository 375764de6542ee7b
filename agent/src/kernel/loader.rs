//! Loads the eBPF object, installs compiled [`Policy`]s into the maps, and attaches the hooks
//! to a cgroup v2 directory.
//!
//! Policies are double-buffered (sets A and B, see `egressd_common::maps`): [`Enforcer::install`]
//! fills the idle set completely, then publishes the new generation with one 8-byte map
//! write. A failure while filling leaves the published policy untouched. Programs are
//! attached only after the first policy is installed, so no connection is ever judged by a
//! half-loaded policy. Dropping the [`Enforcer`] detaches the programs (the links are file
//! descriptors it owns), unless it was loaded with a pin directory ([`Enforcer::load_pinned`]):
//! then maps and links are pinned on a bpffs and stay in force after the process exits, and
//! the next `load_pinned` on the same directory adopts them (same maps, the policy generation
//! continues, each link's program replaced atomically with `BPF_LINK_UPDATE`).
mod explain;
mod prepare;
mod sets;
mod table;
mod tamper;
pub mod tc;

use std::{
    collections::HashSet,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramError, links::FdLink},
};
use egressd_common::{
    DEFAULT_MAX_PREFIXES, Entry, FlowCounter, GlobalPolicy, maps, mode as kmode, set_of,
};
use ipnetwork::{Ipv4Network, Ipv6Network};

pub use self::prepare::Prepared;
pub use self::sets::Tables;
pub use self::table::{Capacity, Room4, Room6};
use crate::kernel::hooks::{HOOKS, Hook, LoadError, by_program};
use crate::kernel::offsets;
use crate::{
    config::{Established, Mode},
    kernel::pin::PinDir,
    policy::{
        Policy,
        table::{Built, Table4},
        table6::Table6,
    },
};
use explain::{explain_load, explain_program};
use sets::{
    Stale, clear_set, clear_stale, compile_table, compile_table6, fill_set, map, packet_exes,
    pinned_maps, plan_table, set_enforced_cgroup, settings_of, write_exes,
};

/// The eBPF object built by `build.rs` (empty when the build skipped it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egressd-ebpf"));

/// Loaded programs and their maps.
pub struct Enforcer {
    ebpf: Ebpf,
    generation: u64,
    /// Policy held by each set (index = set), to clear stale prefixes on the next install.
    sets: [Option<Arc<Policy>>; 2],
    /// Whether each set's IPv4 trie holds the prefixes of `sets` (false when the set uses
    /// the table: its trie is then empty).
    v4_in_trie: [bool; 2],
    /// Sets whose contents this process did not write completely (adopted from an earlier
    /// process, or left half-filled by a failed install): their tries are emptied before
    /// the next fill.
    unknown: [bool; 2],
    max_prefixes: u32,
    /// Room of each set's IPv4 table; `None`: no table.
    table_room: Option<table::Room4>,
    /// The pins held the first level of an older egressd, which its programs may still read
    /// until their links get this build's: the first install keeps IPv4 in the trie.
    legacy_table: bool,
    /// Whether each set's IPv6 trie holds the prefixes of `sets` (false when the set uses
    /// the IPv6 table).
    v6_in_trie: [bool; 2],
    /// Room of each set's IPv6 table; `None`: no table.
    table6_room: Option<table::Room6>,
    /// Why the kernel refused the programs with the IPv6 table (they were loaded without).
    table6_refused: Option<String>,
    /// Pinned mode: the pin directory and the cgroup.
    pins: Option<Pins>,
    /// Unpinned mode: the link of each attached hook (index into [`HOOKS`]), owned here so
    /// health and tamper checks can ask the kernel whether it is still attached; dropping
    /// them detaches.
    links: Vec<(usize, FdLink)>,
    /// The cgroup the hooks are attached to (set by [`Enforcer::attach`]).
    cgroup: Option<PathBuf>,
    /// Its id (the inode number of its directory) when the hooks were attached to it: a
    /// different one at the same path is a cgroup made anew ([`Enforcer::verify_and_repair`]).
    cgroup_id: u64,
    /// Waits out programs still reading the idle set before it is rewritten.
    quiescer: crate::kernel::quiesce::Quiescer,
    /// Descriptors of the counter maps ([`maps::COUNTERS`], [`maps::FLOWS`]), kept after
    /// [`Enforcer::take_readers`] so an install can zero a reclaimed region id's slots.
    counter_fds: [std::os::fd::OwnedFd; 2],
    /// State of the optional LSM hooks.
    lsm: LsmState,
    /// What [`maps::PACKET_EXES`] must hold (tamper checks compare it).
    exes: std::collections::HashMap<egressd_common::ExeKey, u8>,
    /// The `tc/egress` fallback for packet sockets, started where the LSM hooks do not run.
    tc: tc::TcCover,
    /// The route mirror, filled by [`Enforcer::attach`] before any hook runs and handed to
    /// its own thread by [`Enforcer::watch_routes`].
    routes: Option<crate::kernel::routes::RouteMirror>,
}

/// Whether the LSM hooks (packet sockets, raw next hops) run, and why not.
#[derive(Clone, Debug, Default)]
struct LsmState {
    /// Loaded into the kernel (verifier passed).
    loaded: bool,
    /// Attached: both LSM hooks judge.
    attached: bool,
    /// Why they do not run (`None` while they do, or before `attach`).
    reason: Option<String>,
}

/// Pinned-mode state of an [`Enforcer`].
struct Pins {
    dir: PinDir,
    cgroup: PathBuf,
    /// Recorded in the pinned state until the next install ([`Enforcer::set_fallback`]).
    fallback: Option<crate::kernel::pin::PinnedFallback>,
    /// Calls of [`Enforcer::verify_and_repair`] so far (large policies are compared with
    /// the maps only every [`LARGE_CHECK_EVERY`] calls).
    checks: u64,
}

/// Policies with more prefixes than this, or whose IPv4 is in the table, are compared with
/// the maps less often, since the comparison reads every trie entry or the whole table.
const LARGE_POLICY: usize = 100_000;
/// See [`Pins::checks`].
const LARGE_CHECK_EVERY: u64 = 40;

/// How [`Enforcer::load_pinned`] came to enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Adoption {
    /// True when pinned links of an earlier egressd were adopted (no detach, no gap).
    pub adopted: bool,
    /// Generation that was in force before this process installed its policy (0: none).
    pub previous_generation: u64,
}

/// Maps that outlive the programs, so events and counters can still be read after detaching.
pub struct Readers {
    /// Deny/audit events ([`egressd_common::Event`] records).
    pub events: RingBuf<MapData>,
    /// Per-CPU decision counters, see [`egressd_common::counter_index`].
    pub counters: PerCpuArray<MapData, u64>,
    /// Per-CPU packet and byte counters, see [`egressd_common::flow_index`].
    pub flows: PerCpuArray<MapData, FlowCounter>,
    /// Per-CPU kernel-side event loss, see [`egressd_common::loss`].
    pub loss: PerCpuArray<MapData, u64>,
    /// Per-CPU fail-closed denials, see [`egressd_common::failsafe`].
    pub failsafe: PerCpuArray<MapData, u64>,
    /// Aggregated attempts ([`maps::SUMMARIES`]).
    pub summaries:
        aya::maps::HashMap<MapData, egressd_common::SummaryKey, egressd_common::SummaryState>,
    /// Summary interval and record budget ([`maps::SUMMARY_CONTROL`]).
    pub summary_control: Array<MapData, egressd_common::SummaryControl>,
    /// Attempts no record carries yet ([`maps::UNREPORTED`]), mapped.
    pub unreported: crate::kernel::mmap::U64Array,
}

impl Enforcer {
    /// Loads, installs `policy` (generation 1), and attaches every hook to `cgroup`.
    ///
    /// Errors name what is missing: privileges, a kernel feature (map or program type), or
    /// the verifier's log when a program is rejected.
    pub fn load(policy: Arc<Policy>, cgroup: &Path) -> anyhow::Result<Self> {
        let prepared = Self::prepare(Capacity::for_policy(&policy), cgroup)?;
        Ok(prepared.finish(policy, cgroup)?.0)
    }

    /// Loads the object and its programs into the kernel without attaching them (tests run
    /// them with `BPF_PROG_TEST_RUN`). The LPM tries hold at least `prefixes` entries each
    /// (and at least [`DEFAULT_MAX_PREFIXES`]); a later policy may not exceed that.
    pub fn open(prefixes: usize) -> anyhow::Result<Self> {
        Self::open_in(Capacity::tries(prefixes), None)
    }

    /// Loads like [`Enforcer::open`] with the map sizes of `cap` (an IPv4 table when
    /// `cap.table_chunks` is set: per set a 64 KiB directory, 4 KiB per pool page and 512
    /// bytes per chunk, see [`Capacity::table_bytes`]).
    pub fn open_with(cap: Capacity) -> anyhow::Result<Self> {
        Self::open_in(cap, None)
    }

    /// Loads like [`Enforcer::open`]; with `pins`, every `EGRESSD_*` map is backed by its pin
    /// under `DIR/maps` (an existing pin is reused, with its contents; a missing one is
    /// created and pinned).
    fn open_in(cap: Capacity, pins: Option<&PinDir>) -> anyhow::Result<Self> {
        match Self::open_once(cap, pins) {
            // Probing the kernel: a verifier that cannot take the IPv6 range search (its
            // budget) refuses the programs; without the table the verifier drops that code.
            Err(e) if cap.table6_ranges.is_some() && format!("{e:#}").contains("verifier") => {
                let why = format!("{e:#}");
                tracing::warn!(
                    error = why,
                    "the kernel's verifier refused the programs with the IPv6 range table; \
                     IPv6 lookups use the LPM trie"
                );
                let mut me = Self::open_once(
                    Capacity {
                        table6_ranges: None,
                        ..cap
                    },
                    pins,
                )?;
                me.table6_refused = Some(why);
                Ok(me)
            }
            Ok(mut me) if cap.table6_ranges.is_some() && !egressd_common::TABLE6_IN_PROGRAMS => {
                me.table6_refused = Some(
                    "the programs of this build do not look IPv6 up in the range table \
                     (egressd_common::TABLE6_IN_PROGRAMS)"
                        .to_owned(),
                );
                Ok(me)
            }
            other => other,
        }
    }

    /// One attempt of [`Enforcer::open_in`].
    fn open_once(cap: Capacity, pins: Option<&PinDir>) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            return Err(anyhow!(
                "this egressd binary was built without its eBPF programs (AYA_BUILD_SKIP); \
                 rebuild it with the eBPF toolchain (`cargo xtask setup`)"
            ));
        }
        crate::kernel::privileges::check()?;
        let max = u32::try_from(cap.prefixes)
            .unwrap_or(u32::MAX)
            .max(DEFAULT_MAX_PREFIXES);
        // Where start-up time goes (`EGRESSD_LOG=egressd::kernel::loader=debug`): under
        // emulation, parsing the kernel's BTF and verifying programs take seconds.
        let t = std::time::Instant::now();
        let mut loader = EbpfLoader::new();
        tracing::debug!(ms = t.elapsed().as_millis(), "kernel BTF read (aya)");
        // The LSM programs read kernel structures at offsets from the kernel's BTF; without
        // them the programs load (all zero, `valid` 0) but are not attached.
        let (offsets, offsets_error) = match offsets::kernel_offsets() {
            Ok(o) => (o, None),
            Err(e) => (
                egressd_common::KernelOffsets::default(),
                Some(format!("{e:#}")),
            ),
        };
        loader.override_global(egressd_common::KERNEL_OFFSETS, &offsets, true);
        let table6_enabled =
            u32::from(egressd_common::TABLE6_IN_PROGRAMS && cap.table6_ranges.is_some());
        for name in maps::PREFIXES_V4.iter().chain(&maps::PREFIXES_V6) {
            loader.map_max_entries(name, max);
        }
        table::size_maps(&mut loader, cap);
        let mut max = max;
        let pinned: Vec<(String, PathBuf)> = match pins {
            Some(dir) => pinned_maps(dir)?,
            None => Vec::new(),
        };
        for (name, path) in &pinned {
            if maps::PREFIXES_V4[0] == name {
                max = aya::maps::MapInfo::from_pin(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .max_entries();
            }
            loader.map_pin_path(name, path.as_path());
        }
        let t = std::time::Instant::now();
        let mut ebpf = loader.load(OBJECT).map_err(explain_load)?;
        tracing::debug!(ms = t.elapsed().as_millis(), "object loaded, maps created");
        if let Some(dir) = pins {
            for (name, m) in ebpf.maps() {
                let path = dir.map(name);
                if name.starts_with("EGRESSD_") && !path.exists() {
                    m.pin(&path)
                        .with_context(|| format!("pinning {name} at {}", path.display()))?;
                }
            }
        }
        let mut lsm = LsmState {
            loaded: offsets_error.is_none(),
            attached: false,
            reason: offsets_error.map(|e| format!("kernel structure offsets unknown: {e}")),
        };
        let mut btf = None;
        for hook in &HOOKS {
            let t = std::time::Instant::now();
            let loaded = hook.load(&mut ebpf, &mut btf);
            tracing::debug!(
                hook = hook.name,
                ms = t.elapsed().as_millis(),
                "program loaded (verified)"
            );
            match loaded {
                Ok(()) => {}
                // Optional: the socket hooks enforce without them (see `LsmState`).
                Err(e) if !hook.on_cgroup() => {
                    let e = match e {
                        LoadError::Kernel(ProgramError::LoadError {
                            io_error,
                            verifier_log,
                        }) if verifier_log.to_string().trim().is_empty() => {
                            anyhow!(
                                "the kernel refused to load it before verification ({io_error}): \
                                 it offers no BPF LSM programs to egressd"
                            )
                        }
                        e => explain_program(hook, e),
                    };
                    tracing::warn!(
                        hook = hook.name,
                        error = format!("{e:#}"),
                        "LSM program not loaded"
                    );
                    lsm.loaded = false;
                    lsm.reason
                        .get_or_insert(format!("{} did not load: {e:#}", hook.name));
                }
                Err(e) => return Err(explain_program(hook, e)),
            }
        }
        let table_room = table::loaded_room4(&ebpf)?;
        // Pinned maps may hold a table that these programs, loaded without it, never read.
        let table6_room = table::loaded_room6(&ebpf)?.filter(|_| table6_enabled == 1);
        let dup = |name: &str| -> anyhow::Result<std::os::fd::OwnedFd> {
            match ebpf.map(name) {
                Some(aya::maps::Map::PerCpuArray(m)) => Ok(m.fd().as_fd().try_clone_to_owned()?),
                _ => bail!("map {name} missing from the eBPF object"),
            }
        };
        let counter_fds = [dup(maps::COUNTERS)?, dup(maps::FLOWS)?];
        if cap.table_chunks.is_some() && table_room.is_none() {
            tracing::warn!(
                "the pinned IPv4 table maps were created without a table (the maps of the \
                 first pinned start are kept across restarts); IPv4 lookups use the LPM trie \
                 until `egressd detach` and a new start"
            );
        }
        if cap.table6_ranges.is_some() && table6_room.is_some_and(|r| r.chunks == 0) {
            tracing::info!(
                "the pinned IPv6 table index has no room for chunks (pinned by an earlier \
                 egressd): IPv6 lookups search whole /16s, slower at large policies, until \
                 `egressd detach` and a new start"
            );
        }
        if cap.table6_ranges.is_some() && table6_room.is_none() {
            tracing::warn!(
                "the pinned IPv6 table maps were created without a table; IPv6 lookups use \
                 the LPM trie until `egressd detach` and a new start"
            );
        }
        Ok(Self {
            ebpf,
            generation: 0,
            sets: [None, None],
            v4_in_trie: [false; 2],
            unknown: [false; 2],
            max_prefixes: max,
            table_room,
            legacy_table: false,
            v6_in_trie: [false; 2],
            table6_room,
            table6_refused: None,
            pins: None,
            links: Vec::new(),
            cgroup: None,
            cgroup_id: 0,
            quiescer: crate::kernel::quiesce::Quiescer::new()?,
            counter_fds,
            lsm,
            exes: std::collections::HashMap::new(),
            tc: tc::TcCover::default(),
            routes: None,
        })
    }

    /// Attach state per hook, as (hook name, attached). Unpinned, the links are
    /// descriptors this process owns, so every hook is attached once [`Enforcer::attach`]
    /// returned; pinned, each pinned link is asked whether it is attached to the cgroup and
    /// runs this process's program.
    pub fn hook_states(&self) -> Vec<(&'static str, bool)> {
        let mut states = self.cgroup_and_lsm_states();
        if let Some(tc) = self.tc.coverage() {
            // In force once started without error, also with no interface to attach to yet.
            states.push(("tc/egress", tc.is_ok()));
        }
        states
    }

    fn cgroup_and_lsm_states(&self) -> Vec<(&'static str, bool)> {
        // The LSM hooks count once they run; where they cannot, coverage says so instead.
        let in_force = |h: &&Hook| h.on_cgroup() || self.lsm.attached;
        let hooks = HOOKS.iter().filter(in_force).map(|h| (h.program, h.name));
        let Some(pins) = &self.pins else {
            // Ask the kernel which programs run at each hook of the cgroup: a link detached
            // behind egressd's back (`bpftool link detach`) still exists but runs nowhere.
            let cg = self.cgroup.as_ref().and_then(|p| File::open(p).ok());
            return HOOKS
                .iter()
                .enumerate()
                .filter(|(_, h)| in_force(h))
                .map(|(i, h)| {
                    if !h.on_cgroup() {
                        // A global link: it runs this program for as long as it exists.
                        let want = self.program_id(h.program).ok();
                        let ok = self.links.iter().any(|(j, l)| {
                            *j == i && l.info().is_ok_and(|info| Some(info.program_id()) == want)
                        });
                        return (h.name, ok);
                    }
                    let attached = cg.as_ref().is_some_and(|cg| {
                        let want = self.program_id(h.program).ok();
                        crate::kernel::pin::attached_programs(cg.as_fd(), h.attach_type)
                            .is_ok_and(|ids| want.is_some_and(|w| ids.contains(&w)))
                    });
                    (h.name, attached)
                })
                .collect();
        };
        let cgroup_id = std::fs::metadata(&pins.cgroup).map_or(0, |m| m.ino());
        hooks
            .map(|(name, hook)| {
                let global = by_program(name).is_some_and(|h| !h.on_cgroup());
                let ok = crate::kernel::pin::obj_get(&pins.dir.link(name))
                    .and_then(|fd| crate::kernel::pin::link_state(fd.as_fd()))
                    .is_ok_and(|st| {
                        (global || st.cgroup_id == cgroup_id)
                            && self.program_id(name).is_ok_and(|id| id == st.program_id)
                    });
                (hook, ok)
            })
            .collect()
    }

    /// The pin directory, in pinned mode.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pins.as_ref().map(|p| &p.dir)
    }

    /// Program id of hook program `name` (for tamper checks: what each link must run).
    pub fn program_id(&self, name: &str) -> anyhow::Result<u32> {
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?;
        Ok(prog.info()?.id())
    }

    /// Attaches hook program `name` to `cg` anew and pins its link at `path`.
    /// Attaches `hook`'s program to `cg` and returns its link (owned by the caller: dropping
    /// it detaches, pinning it keeps it).
    fn attach_link(&mut self, hook: &Hook, cg: &File) -> anyhow::Result<FdLink> {
        hook.attach(&mut self.ebpf, cg, true)
            .map_err(|e| explain_program(hook, e))?
            .context("the attached link was not returned")
    }

    fn attach_one(&mut self, hook: &Hook, cg: &File, path: &Path) -> anyhow::Result<()> {
        let link = self.attach_link(hook, cg)?;
        link.pin(path)
            .with_context(|| format!("pinning {} at {}", hook.name, path.display()))?;
        Ok(())
    }

    /// Records generation, digest and cgroup in the pinned state (pinned mode only).
    fn write_state(&self, policy: &Policy) -> anyhow::Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let state = crate::kernel::pin::PinnedState {
            cgroup: pins.cgroup.display().to_string(),
            generation: self.generation,
            digest: policy.digest.clone(),
            mode: policy.mode.to_string(),
            regions: policy.region_labels(),
            prefixes_v4: policy.v4.len(),
            prefixes_v6: policy.v6.len(),
            version: env!("CARGO_PKG_VERSION").into(),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            fallback: pins.fallback.clone(),
        };
        pins.dir.write_state(&state)
    }

    /// Records in the pinned state (for `egressd status`) that the policy in force is the
    /// last good one, kept because the files on disk were invalid; `None`: it is not. The
    /// next [`Enforcer::install`] clears it. Unpinned: nothing to record.
    ///
    /// # Errors
    /// Writing the pinned state fails.
    pub fn set_fallback(
        &mut self,
        fallback: Option<crate::kernel::pin::PinnedFallback>,
    ) -> anyhow::Result<()> {
        let Some(pins) = self.pins.as_mut() else {
            return Ok(());
        };
        pins.fallback = fallback;
        match self.sets[set_of(self.generation)].clone() {
            Some(policy) => self.write_state(&policy),
            None => Ok(()),
        }
    }

    /// Before any program of this run can aggregate: the summary control names this
    /// layout ([`egressd_common::SUMMARY_LAYOUT_DRAINED`]) and the policy's record budget.
    /// A fresh control (zeros) read as an older build's would make the first drain count
    /// the keys aggregated since the attach as reported, and give no budget until then. An
    /// older build's table that holds keys keeps its layout for the drainer to judge.
    fn prepare_summaries(&mut self) -> anyhow::Result<()> {
        let budget = self.sets[set_of(self.generation)]
            .as_ref()
            .map_or(egressd_common::DEFAULT_SUMMARY_AFTER, |p| p.summary_after);
        let empty = {
            let table: aya::maps::HashMap<
                _,
                egressd_common::SummaryKey,
                egressd_common::SummaryState,
            > = aya::maps::HashMap::try_from(map(&mut self.ebpf, maps::SUMMARIES)?)?;
            table.keys().next().is_none()
        };
        let mut control: Array<_, egressd_common::SummaryControl> =
            Array::try_from(map(&mut self.ebpf, maps::SUMMARY_CONTROL)?)?;
        let now = control.get(&0, 0)?;
        let layout = if empty {
            egressd_common::SUMMARY_LAYOUT_DRAINED
        } else {
            now.layout
        };
        control.set(
            0,
            egressd_common::SummaryControl {
                epoch: now.epoch,
                records_per_key: budget,
                layout,
            },
            0,
        )?;
        Ok(())
    }

    /// Attaches every hook to `cgroup` through bpf_links, so programs of other tools on the
    /// same cgroup keep running and any of them can deny.
    pub fn attach(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        if self.generation == 0 {
            bail!("refusing to attach before a policy is installed");
        }
        self.prepare_summaries()?;
        let cg =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        self.cgroup_id = cg.metadata()?.ino();
        // The next-hop check denies what the mirror does not route: filled before any hook
        // is attached (or, adopting pins, before the new programs replace the old ones).
        let mut routes = crate::kernel::routes::RouteMirror::open(&self.ebpf)?;
        let n = routes.sync()?;
        tracing::info!(routes = n, "route mirror filled");
        self.routes = Some(routes);
        if let Some(dir) = self.pins.as_ref().map(|p| p.dir.clone()) {
            self.lsm_prepare(&cg)?;
            for spec in &HOOKS {
                let (name, hook) = (spec.program, spec.name);
                let path = dir.link(name);
                if !spec.on_cgroup() {
                    if self.lsm.reason.is_none() {
                        // No BPF_LINK_UPDATE for tracing links: the new one runs before the
                        // old pin goes, so there is no moment without either.
                        if let Err(e) = self.replace_global(spec, &cg, &path) {
                            self.lsm_failed(spec, &e);
                        }
                    }
                    continue;
                }
                let adopted = crate::kernel::pin::obj_get(&path)
                    .and_then(|fd| Ok((crate::kernel::pin::link_state(fd.as_fd())?, fd)));
                match adopted {
                    Ok((st, fd)) if st.cgroup_id != 0 => {
                        let prog = self.program_fd(name)?;
                        crate::kernel::pin::link_update(fd.as_fd(), prog)
                            .with_context(|| format!("adopting {}", path.display()))?;
                        tracing::info!(hook, link = st.link_id, "adopted pinned link");
                    }
                    _ => {
                        if path.exists() {
                            std::fs::remove_file(&path)
                                .with_context(|| format!("removing {}", path.display()))?;
                        }
                        self.attach_one(spec, &cg, &path)?;
                        tracing::info!(hook, cgroup = %cgroup.display(), pin = %path.display(), "attached and pinned");
                    }
                }
            }
            self.lsm.attached = self.lsm.reason.is_none();
            if !self.lsm.attached {
                self.tc.start(&mut self.ebpf, &cg, cgroup, Some(&dir.root));
            }
            return Ok(());
        }
        self.lsm_prepare(&cg)?;
        for (i, hook) in HOOKS.iter().enumerate() {
            if !hook.on_cgroup() {
                if self.lsm.reason.is_some() {
                    continue;
                }
                match hook.attach(&mut self.ebpf, &cg, true) {
                    Ok(Some(link)) => {
                        self.links.push((i, link));
                        tracing::info!(hook = hook.name, "attached (BPF LSM)");
                    }
                    Ok(None) => {}
                    Err(e) => self.lsm_failed(hook, &explain_program(hook, e)),
                }
                continue;
            }
            let link = self
                .attach_link(hook, &cg)
                .with_context(|| format!("attaching {} to {}", hook.name, cgroup.display()))?;
            self.links.push((i, link));
            tracing::info!(hook = hook.name, cgroup = %cgroup.display(), "attached");
        }
        self.cgroup = Some(cgroup.to_path_buf());
        if self.lsm.reason.is_some() {
            // Half of the LSM cover is no cover to report: drop what did attach.
            self.links.retain(|(i, _)| HOOKS[*i].on_cgroup());
        }
        self.lsm.attached = self.lsm.reason.is_none();
        if !self.lsm.attached {
            self.tc.start(&mut self.ebpf, &cg, cgroup, None);
        }
        Ok(())
    }

    /// Keeps the route mirror current from rtnetlink notifications on a thread of its own
    /// (call after [`Enforcer::attach`], once; the thread runs until the process exits).
    ///
    /// # Errors
    /// Not attached, or the netlink socket cannot be opened.
    pub fn watch_routes(&mut self) -> anyhow::Result<()> {
        let routes = self
            .routes
            .take()
            .context("the route mirror was not filled")?;
        routes.watch()?;
        Ok(())
    }

    /// The `tc/egress` fallback: `None` where it was not started (the LSM hooks judge
    /// packet sockets), `Ok` with where it is attached, `Err` with why it does not judge.
    pub fn tc_coverage(&self) -> Option<Result<String, String>> {
        self.tc.coverage()
    }

    /// Attaches `tc/egress` to interfaces that appeared since the last call (and again
    /// where its attachment was removed); one line per change. Nothing where it was not
    /// started.
    pub fn tc_rescan(&mut self) -> Vec<String> {
        self.tc.rescan(&mut self.ebpf)
    }

    /// Decides whether the LSM hooks can run (loaded, BPF LSM active) and, if so, points
    /// them at the enforced cgroup `cg`. Records the reason when they cannot.
    fn lsm_prepare(&mut self, cg: &File) -> anyhow::Result<()> {
        if self.lsm.reason.is_none() && !self.lsm.loaded {
            self.lsm.reason = Some("the LSM programs did not load".into());
        }
        if self.lsm.reason.is_none() {
            match crate::kernel::coverage::bpf_lsm_active() {
                crate::kernel::coverage::Probe::Yes => {}
                crate::kernel::coverage::Probe::No => {
                    self.lsm.reason = Some(
                        "the BPF LSM is not active (`bpf` missing from /sys/kernel/security/lsm; \
                         boot with lsm=...,bpf)"
                            .into(),
                    );
                }
                crate::kernel::coverage::Probe::Unknown => {
                    self.lsm.reason =
                        Some("cannot read /sys/kernel/security/lsm (securityfs)".into());
                }
            }
        }
        if self.lsm.reason.is_some() {
            return Ok(());
        }
        // Not fatal either: without the cgroup the LSM hooks stay detached.
        if let Err(e) = set_enforced_cgroup(&mut self.ebpf, cg) {
            self.lsm.reason = Some(format!(
                "writing the enforced cgroup for the LSM programs failed: {e:#}"
            ));
        }
        Ok(())
    }

    /// Records that LSM hook `hook` could not attach (the others enforce on).
    fn lsm_failed(&mut self, hook: &Hook, e: &anyhow::Error) {
        tracing::warn!(
            hook = hook.name,
            error = format!("{e:#}"),
            "LSM hook not attached"
        );
        self.lsm
            .reason
            .get_or_insert(format!("{} did not attach: {e:#}", hook.name));
    }

    /// Attaches global hook `hook` anew and pins its link at `path` in place of what is
    /// there (the old link is released once its pin is gone and nobody holds it).
    fn replace_global(&mut self, hook: &Hook, cg: &File, path: &Path) -> anyhow::Result<()> {
        let link = hook
            .attach(&mut self.ebpf, cg, true)
            .map_err(|e| explain_program(hook, e))?
            .context("the attached link was not returned")?;
        if path.exists() {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        link.pin(path)
            .with_context(|| format!("pinning {} at {}", hook.name, path.display()))?;
        tracing::info!(hook = hook.name, pin = %path.display(), "attached and pinned (BPF LSM)");
        Ok(())
    }

    /// Why the LSM programs did not load (`None`: they passed the verifier), whether or not
    /// the BPF LSM is active.
    pub fn lsm_load_error(&self) -> Option<&str> {
        if self.lsm.loaded {
            None
        } else {
            Some(self.lsm.reason.as_deref().unwrap_or("not loaded"))
        }
    }

    /// Whether the LSM hooks judge (packet sockets, raw next hops), else why not.
    pub fn lsm_coverage(&self) -> Result<(), String> {
        if self.lsm.attached {
            Ok(())
        } else {
            Err(self
                .lsm
                .reason
                .clone()
                .unwrap_or_else(|| "the LSM programs are not attached".into()))
        }
    }

    /// Policy generation in force (0 before the first install).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How IPv4 destinations are looked up under the generation in force: `"table"` or
    /// `"trie"` (also before the first install).
    pub fn ipv4_lookup(&self) -> &'static str {
        let set = set_of(self.generation);
        if self.sets[set].is_some() && !self.v4_in_trie[set] {
            "table"
        } else {
            "trie"
        }
    }

    /// How IPv6 destinations are looked up under the generation in force: `"table"` or
    /// `"trie"` (also before the first install).
    pub fn ipv6_lookup(&self) -> &'static str {
        let set = set_of(self.generation);
        if self.sets[set].is_some() && !self.v6_in_trie[set] {
            "table"
        } else {
            "trie"
        }
    }

    /// The kernel's account of the IPv4 table maps of both sets in bytes (`memlock` in
    /// their fdinfo; a few pages when the maps were loaded without a table).
    ///
    /// # Errors
    /// A map's fdinfo is unreadable.
    pub fn table_memory(&self) -> anyhow::Result<u64> {
        table::table_memory(&self.ebpf)
    }

    /// The room of each set's IPv4 table maps (`None`: loaded without a table).
    pub fn table_room(&self) -> Option<Room4> {
        self.table_room
    }

    /// Why the kernel's verifier refused the programs with the IPv6 range table, when the
    /// map sizes asked for one (the programs were then loaded without it: IPv6 is looked up
    /// in the LPM trie); `None` otherwise.
    pub fn table6_refused(&self) -> Option<&str> {
        self.table6_refused.as_deref()
    }

    /// Installs `policy` as generation `generation() + 1`: fills the idle set (removing the
    /// prefixes it held), then publishes the generation. Returns the new generation.
    ///
    /// Errors (a map update failing, more prefixes than the tries hold) leave the policy in
    /// force unchanged.
    pub fn install(&mut self, policy: Arc<Policy>) -> anyhow::Result<u64> {
        self.install_with(policy, None)
    }

    /// [`Enforcer::install`] with what `tables` worked out of `policy` beforehand.
    fn install_with(&mut self, policy: Arc<Policy>, tables: Option<Tables>) -> anyhow::Result<u64> {
        let mut tables = tables;
        if !policy.problems.is_empty() {
            bail!(
                "the policy cannot be loaded: {}",
                policy.problems.join("; ")
            );
        }
        let max = self.max_prefixes as usize;
        // With the table, the IPv4 trie stays empty: only the table's room limits IPv4.
        let table = plan_table(
            &policy,
            self.table_room,
            tables.as_mut().and_then(Tables::chunks),
        );
        let table6 = compile_table6(
            &policy,
            self.table6_room,
            tables.as_mut().and_then(Tables::table6),
        );
        let v4_in_trie = if table { 0 } else { policy.lpm_v4.len() };
        let v6_in_trie = if table6.is_some() {
            0
        } else {
            policy.lpm_v6.len()
        };
        if v4_in_trie > max || v6_in_trie > max {
            let how = if self.pins.is_some() {
                "the maps are pinned, so a restart keeps their size: run `egressd detach` \
                 and start again (enforcement pauses in between)"
            } else {
                "restart egressd to load it"
            };
            bail!(
                "the policy has {} IPv4 and {} IPv6 prefixes but the maps hold {max} per \
                 family; {how}",
                policy.lpm_v4.len(),
                policy.lpm_v6.len()
            );
        }
        let next = self.generation + 1;
        let set = set_of(next);
        // The idle set last served generation `next - 2`: no program may still read it
        // when it is rewritten (A, B, A reloads in quick succession).
        self.quiescer.wait()?;
        let old = self.sets[set].take();
        let unknown = self.unknown[set];
        if unknown {
            // This set holds what an earlier process, or a failed fill, wrote.
            clear_set(&mut self.ebpf, set)?;
            self.unknown[set] = false;
            self.v4_in_trie[set] = false;
            self.v6_in_trie[set] = false;
        }
        // After a clear there is nothing stale to remove.
        let old = old.filter(|_| !unknown);
        let stale = Stale {
            old: old.as_deref(),
            v4: old.as_deref().filter(|_| self.v4_in_trie[set]),
            v6: old.as_deref().filter(|_| self.v6_in_trie[set]),
        };
        let filled = fill_set(
            &mut self.ebpf,
            set,
            stale,
            &policy,
            next,
            table,
            table6.as_ref(),
        );
        let (used_table, used_table6) = match filled {
            Ok(t) => t,
            Err(e) => {
                self.unknown[set] = true;
                return Err(e);
            }
        };
        self.v4_in_trie[set] = !used_table;
        self.v6_in_trie[set] = !used_table6;
        // A region id taken over from a removed region starts from zero (see crate::policy::ids);
        // no generation in force counts under it.
        if let Err(e) = self.reset_regions(&policy.reset_regions) {
            self.unknown[set] = true;
            return Err(e.context("zeroing the counters of a reclaimed region id"));
        }
        self.exes = packet_exes(&policy);
        write_exes(&mut self.ebpf, &self.exes)?;
        let mut generation: Array<_, u64> =
            Array::try_from(map(&mut self.ebpf, maps::GENERATION)?)?;
        generation
            .set(0, next, 0)
            .context("publishing the policy generation")?;
        self.generation = next;
        // A policy installed from the files on disk: no fallback any more.
        if let Some(pins) = self.pins.as_mut() {
            pins.fallback = None;
        }
        if let Err(e) = self.write_state(&policy) {
            tracing::warn!(error = format!("{e:#}"), "writing the pinned state");
        }
        self.sets[set] = Some(policy);
        Ok(next)
    }

    /// Zeroes every counter slot (all hooks, directions and verdicts, every CPU) of the
    /// region ids `ids`.
    fn reset_regions(&self, ids: &[u32]) -> anyhow::Result<()> {
        use egressd_common::{HOOK_SLOTS, VERDICT_COUNT, counter_index, flow_index};
        if ids.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let open = |fd: &std::os::fd::OwnedFd| -> anyhow::Result<aya::maps::Map> {
            Ok(aya::maps::Map::PerCpuArray(MapData::from_fd(
                fd.try_clone()?,
            )?))
        };
        let mut counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(open(&self.counter_fds[0])?)?;
        let mut flows: PerCpuArray<MapData, FlowCounter> =
            PerCpuArray::try_from(open(&self.counter_fds[1])?)?;
        for &id in ids {
            for verdict in 0..VERDICT_COUNT {
                for hook in 0..HOOK_SLOTS {
                    let zero = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
                    counters.set(counter_index(hook, id, verdict), zero, 0)?;
                }
                for direction in 0..2 {
                    let zero =
                        aya::maps::PerCpuValues::try_from(vec![FlowCounter::default(); cpus])?;
                    flows.set(flow_index(direction, id, verdict), zero, 0)?;
                }
            }
            tracing::info!(region = id, "region id reclaimed: its counters were zeroed");
        }
        Ok(())
    }

    /// Room of the IPv6 range table maps (`None`: IPv6 is looked up in the LPM trie): the
    /// ranges and index chunks each policy set can hold, read from the loaded maps.
    pub fn table6_room(&self) -> Option<table::Room6> {
        self.table6_room
    }

    /// A loaded program by name, e.g. to run it with `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&self, name: &str) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        let prog = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?;
        let fd = prog
            .fd()
            .with_context(|| format!("program {name} is not loaded"))?;
        Ok(fd.as_fd())
    }

    /// Moves the event and counter maps out, so they stay readable after the programs are
    /// detached (by dropping `self`). Call once.
    pub fn take_readers(&mut self) -> anyhow::Result<Readers> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Readers {
            events: RingBuf::try_from(take(maps::EVENTS)?)?,
            counters: PerCpuArray::try_from(take(maps::COUNTERS)?)?,
            flows: PerCpuArray::try_from(take(maps::FLOWS)?)?,
            loss: PerCpuArray::try_from(take(maps::LOSS)?)?,
            failsafe: PerCpuArray::try_from(take(maps::FAILSAFE)?)?,
            summaries: aya::maps::HashMap::try_from(take(maps::SUMMARIES)?)?,
            summary_control: Array::try_from(take(maps::SUMMARY_CONTROL)?)?,
            unreported: match take(maps::UNREPORTED)? {
                aya::maps::Map::Array(data) => {
                    crate::kernel::mmap::U64Array::new(data, maps::UNREPORTED)?
                }
                _ => bail!("map {} is not an array", maps::UNREPORTED),
            },
        })
    }
}
