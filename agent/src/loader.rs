//! Loads the eBPF object, fills the maps from a compiled [`Policy`], and attaches the socket
//! hooks to a cgroup v2 directory.
//!
//! Order matters: every map is filled before the first program is attached, so no connection
//! is ever judged by a half-loaded policy. Dropping the [`Enforcer`] detaches the programs
//! (the links are file descriptors owned by it).
use std::{fs::File, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use egressd_common::{
    DEFAULT_MAX_PREFIXES, GlobalPolicy, RegionPolicy, maps, mode as kmode, programs,
};

use crate::{config::Mode, policy::Policy};

/// The eBPF object built by `build.rs` (empty when the build skipped it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egressd-ebpf"));

/// Hooks in attach order: (program name, human name).
const HOOKS: [(&str, &str); 4] = [
    (programs::CONNECT4, "cgroup/connect4"),
    (programs::CONNECT6, "cgroup/connect6"),
    (programs::SENDMSG4, "cgroup/sendmsg4"),
    (programs::SENDMSG6, "cgroup/sendmsg6"),
];

/// Loaded and attached programs plus their maps.
pub struct Enforcer {
    ebpf: Ebpf,
    generation: u64,
}

/// Maps that outlive the programs, so events and counters can still be read after detaching.
pub struct Readers {
    /// Deny/audit events ([`egressd_common::Event`] records).
    pub events: RingBuf<MapData>,
    /// Per-CPU attempt counters, see [`egressd_common::counter_index`].
    pub counters: PerCpuArray<MapData, u64>,
    /// Per-CPU kernel-side event loss, see [`egressd_common::loss`].
    pub loss: PerCpuArray<MapData, u64>,
}

impl Enforcer {
    /// Loads the object, fills the maps with `policy` (generation 1), and attaches every hook
    /// to `cgroup` through a bpf_link, so other cgroup programs (systemd's, a CNI's) keep
    /// working alongside and a verdict of any of them can deny.
    ///
    /// Errors name what is missing: privileges, a kernel feature (map or program type), or
    /// the verifier's log when a program is rejected.
    pub fn load(policy: &Policy, cgroup: &Path) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            return Err(anyhow!(
                "this egressd binary was built without its eBPF programs (AYA_BUILD_SKIP); \
                 rebuild it with the eBPF toolchain (`cargo xtask setup`)"
            ));
        }
        crate::privileges::check()?;
        crate::cgroup::validate(cgroup)?;
        let cap = |n: usize| {
            u32::try_from(n)
                .unwrap_or(u32::MAX)
                .max(DEFAULT_MAX_PREFIXES)
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::PREFIXES_V4, cap(policy.v4.len()))
            .map_max_entries(maps::PREFIXES_V6, cap(policy.v6.len()))
            .load(OBJECT)
            .map_err(explain_load)?;
        let generation = 1;
        fill(&mut ebpf, policy, generation)?;
        let cg =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for (name, hook) in HOOKS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
            prog.load().map_err(|e| explain_program(hook, e))?;
            // With bpf_link (Linux >= 5.7, what aya uses) cgroup attachments always coexist
            // with other programs, and the kernel rejects any flag: pass the default.
            prog.attach(&cg, CgroupAttachMode::Single)
                .map_err(|e| explain_program(hook, e))
                .with_context(|| format!("attaching {hook} to {}", cgroup.display()))?;
            tracing::info!(hook, cgroup = %cgroup.display(), "attached");
        }
        Ok(Self { ebpf, generation })
    }

    /// Policy generation currently in the kernel.
    pub fn generation(&self) -> u64 {
        self.generation
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
            loss: PerCpuArray::try_from(take(maps::LOSS)?)?,
        })
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// Writes prefixes, regions and the global policy into the (not yet attached) maps.
fn fill(ebpf: &mut Ebpf, policy: &Policy, generation: u64) -> anyhow::Result<()> {
    let mut v4: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map(ebpf, maps::PREFIXES_V4)?)?;
    for (net, region) in &policy.v4 {
        v4.insert(
            &Key::new(u32::from(net.prefix()), net.network().octets()),
            region,
            0,
        )
        .with_context(|| format!("inserting {net} into {}", maps::PREFIXES_V4))?;
    }
    let mut v6: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, maps::PREFIXES_V6)?)?;
    for (net, region) in &policy.v6 {
        v6.insert(
            &Key::new(u32::from(net.prefix()), net.network().octets()),
            region,
            0,
        )
        .with_context(|| format!("inserting {net} into {}", maps::PREFIXES_V6))?;
    }
    let mut regions: Array<_, RegionPolicy> = Array::try_from(map(ebpf, maps::REGIONS)?)?;
    for (id, allowed) in policy.allowed.iter().enumerate() {
        let id = u32::try_from(id)?;
        let value = RegionPolicy {
            allowed: u8::from(*allowed),
            _pad: [0; 7],
        };
        regions
            .set(id, value, 0)
            .with_context(|| format!("setting region {id} in {}", maps::REGIONS))?;
    }
    let mut global: Array<_, GlobalPolicy> = Array::try_from(map(ebpf, maps::GLOBAL)?)?;
    let mode = match policy.mode {
        Mode::Enforce => kmode::ENFORCE,
        Mode::Audit => kmode::AUDIT,
    };
    global.set(
        0,
        GlobalPolicy {
            generation,
            mode,
            _pad: [0; 7],
        },
        0,
    )?;
    Ok(())
}

/// Turns a load failure into one that names the missing kernel feature.
fn explain_load(e: EbpfError) -> anyhow::Error {
    let hint = match &e {
        EbpfError::MapError(MapError::CreateError { name, io_error }) => {
            let feature = if name == maps::EVENTS {
                "BPF_MAP_TYPE_RINGBUF (Linux >= 5.8)"
            } else if name.starts_with("EGRESSD_PREFIXES") {
                "BPF_MAP_TYPE_LPM_TRIE (Linux >= 4.11)"
            } else {
                "BPF maps (CONFIG_BPF_SYSCALL)"
            };
            Some(format!(
                "creating map {name} failed ({io_error}): the kernel lacks {feature}, or the \
                 memory cgroup limit is too low"
            ))
        }
        _ => None,
    };
    let e = anyhow::Error::new(e);
    match hint {
        Some(h) => e.context(h),
        None => e.context("loading the eBPF object"),
    }
}

/// Adds what a program load/attach failure means: the verifier log is part of `e`'s text.
fn explain_program(hook: &str, e: ProgramError) -> anyhow::Error {
    let hint = match &e {
        ProgramError::LoadError { .. } => format!(
            "the kernel rejected the {hook} program (verifier log above); this needs \
             CONFIG_CGROUP_BPF and Linux >= 5.8"
        ),
        ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EINVAL) => {
            format!(
                "{hook}: the kernel refused the attachment (EINVAL): it lacks this attach \
                 type (CONFIG_CGROUP_BPF, Linux >= 5.7 for links) or the cgroup is not v2"
            )
        }
        _ => format!("{hook} failed"),
    };
    anyhow::Error::new(e).context(hint)
}
