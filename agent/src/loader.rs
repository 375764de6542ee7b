//! Loads the eBPF object, installs compiled [`Policy`]s into the maps, and attaches the hooks
//! to a cgroup v2 directory.
//!
//! Policies are double-buffered (sets A and B, see `egressd_common::maps`): [`Enforcer::install`]
//! fills the idle set completely, then publishes the new generation with one 8-byte map
//! write. A failure while filling leaves the published policy untouched. Programs are
//! attached only after the first policy is installed, so no connection is ever judged by a
//! half-loaded policy. Dropping the [`Enforcer`] detaches the programs (the links are file
//! descriptors it owns).
use std::{
    collections::HashSet,
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError},
};
use egressd_common::{
    DEFAULT_MAX_PREFIXES, Entry, FlowCounter, GlobalPolicy, maps, mode as kmode, programs, set_of,
};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{
    config::{Established, Mode},
    policy::Policy,
};

/// The eBPF object built by `build.rs` (empty when the build skipped it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egressd-ebpf"));

/// Socket-address hooks: (program name, hook name).
const SOCK_HOOKS: [(&str, &str); 4] = [
    (programs::CONNECT4, "cgroup/connect4"),
    (programs::CONNECT6, "cgroup/connect6"),
    (programs::SENDMSG4, "cgroup/sendmsg4"),
    (programs::SENDMSG6, "cgroup/sendmsg6"),
];

/// Packet hooks: (program name, hook name, attach type).
const SKB_HOOKS: [(&str, &str, CgroupSkbAttachType); 2] = [
    (
        programs::SKB_EGRESS,
        "cgroup_skb/egress",
        CgroupSkbAttachType::Egress,
    ),
    (
        programs::SKB_INGRESS,
        "cgroup_skb/ingress",
        CgroupSkbAttachType::Ingress,
    ),
];

/// Loaded programs and their maps.
pub struct Enforcer {
    ebpf: Ebpf,
    generation: u64,
    /// Policy held by each set (index = set), to clear stale prefixes on the next install.
    sets: [Option<Arc<Policy>>; 2],
    max_prefixes: u32,
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
}

impl Enforcer {
    /// Loads, installs `policy` (generation 1), and attaches every hook to `cgroup`.
    ///
    /// Errors name what is missing: privileges, a kernel feature (map or program type), or
    /// the verifier's log when a program is rejected.
    pub fn load(policy: Arc<Policy>, cgroup: &Path) -> anyhow::Result<Self> {
        crate::privileges::check()?;
        crate::cgroup::validate(cgroup)?;
        let mut e = Self::open(policy.lpm_v4.len().max(policy.lpm_v6.len()))?;
        e.install(policy)?;
        e.attach(cgroup)?;
        Ok(e)
    }

    /// Loads the object and its programs into the kernel without attaching them (tests run
    /// them with `BPF_PROG_TEST_RUN`). The LPM tries hold at least `prefixes` entries each
    /// (and at least [`DEFAULT_MAX_PREFIXES`]); a later policy may not exceed that.
    pub fn open(prefixes: usize) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            return Err(anyhow!(
                "this egressd binary was built without its eBPF programs (AYA_BUILD_SKIP); \
                 rebuild it with the eBPF toolchain (`cargo xtask setup`)"
            ));
        }
        crate::privileges::check()?;
        let max = u32::try_from(prefixes)
            .unwrap_or(u32::MAX)
            .max(DEFAULT_MAX_PREFIXES);
        let mut loader = EbpfLoader::new();
        for name in maps::PREFIXES_V4.iter().chain(&maps::PREFIXES_V6) {
            loader.map_max_entries(name, max);
        }
        let mut ebpf = loader.load(OBJECT).map_err(explain_load)?;
        for (name, hook) in SOCK_HOOKS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|e| explain_program(hook, e))?;
        }
        for (name, hook, _) in SKB_HOOKS {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|e| explain_program(hook, e))?;
        }
        Ok(Self {
            ebpf,
            generation: 0,
            sets: [None, None],
            max_prefixes: max,
        })
    }

    /// Attaches every hook to `cgroup` through bpf_links, so programs of other tools on the
    /// same cgroup keep running and any of them can deny.
    pub fn attach(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        if self.generation == 0 {
            bail!("refusing to attach before a policy is installed");
        }
        let cg =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        // With bpf_link (Linux >= 5.7, what aya uses) cgroup attachments always coexist with
        // other programs, and the kernel rejects any flag: pass the default.
        for (name, hook) in SOCK_HOOKS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            prog.attach(&cg, CgroupAttachMode::Single)
                .map_err(|e| explain_program(hook, e))
                .with_context(|| format!("attaching {hook} to {}", cgroup.display()))?;
            tracing::info!(hook, cgroup = %cgroup.display(), "attached");
        }
        for (name, hook, kind) in SKB_HOOKS {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            prog.attach(&cg, kind, CgroupAttachMode::Single)
                .map_err(|e| explain_program(hook, e))
                .with_context(|| format!("attaching {hook} to {}", cgroup.display()))?;
            tracing::info!(hook, cgroup = %cgroup.display(), "attached");
        }
        Ok(())
    }

    /// Policy generation in force (0 before the first install).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Installs `policy` as generation `generation() + 1`: fills the idle set (removing the
    /// prefixes it held), then publishes the generation. Returns the new generation.
    ///
    /// Errors (a map update failing, more prefixes than the tries hold) leave the policy in
    /// force unchanged.
    pub fn install(&mut self, policy: Arc<Policy>) -> anyhow::Result<u64> {
        if !policy.problems.is_empty() {
            bail!(
                "the policy cannot be loaded: {}",
                policy.problems.join("; ")
            );
        }
        let max = self.max_prefixes as usize;
        if policy.lpm_v4.len() > max || policy.lpm_v6.len() > max {
            bail!(
                "the policy has {} IPv4 and {} IPv6 prefixes but the maps hold {max} per \
                 family; restart egressd to load it",
                policy.lpm_v4.len(),
                policy.lpm_v6.len()
            );
        }
        let next = self.generation + 1;
        let set = set_of(next);
        let old = self.sets[set].take();
        fill_set(&mut self.ebpf, set, old.as_deref(), &policy, next)?;
        let mut generation: Array<_, u64> =
            Array::try_from(map(&mut self.ebpf, maps::GENERATION)?)?;
        generation
            .set(0, next, 0)
            .context("publishing the policy generation")?;
        self.sets[set] = Some(policy);
        self.generation = next;
        Ok(next)
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
        })
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// Makes set `set` hold exactly `new` for generation `generation`; `old` is what it held.
fn fill_set(
    ebpf: &mut Ebpf,
    set: usize,
    old: Option<&Policy>,
    new: &Policy,
    generation: u64,
) -> anyhow::Result<()> {
    let fd4 = trie_fd(ebpf, maps::PREFIXES_V4[set])?;
    let fd6 = trie_fd(ebpf, maps::PREFIXES_V6[set])?;
    {
        let name = maps::PREFIXES_V4[set];
        let mut trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
        let keep: HashSet<Ipv4Network> = new.lpm_v4.iter().map(|(n, _)| *n).collect();
        let stale: Vec<Key<[u8; 4]>> = old
            .map_or(&[][..], |p| &p.lpm_v4)
            .iter()
            .filter(|(n, _)| !keep.contains(n))
            .map(|(n, _)| key4(n))
            .collect();
        if !delete_batch(fd4, &stale) {
            for k in &stale {
                let _ = trie.remove(k);
            }
        }
        let keys: Vec<Key<[u8; 4]>> = new.lpm_v4.iter().map(|(n, _)| key4(n)).collect();
        let values: Vec<u32> = new.lpm_v4.iter().map(|(_, e)| *e).collect();
        if !update_batch(fd4, &keys, &values).with_context(|| format!("filling {name}"))? {
            for (net, entry) in &new.lpm_v4 {
                trie.insert(&key4(net), entry, 0)
                    .with_context(|| format!("inserting {net} into {name}"))?;
            }
        }
    }
    {
        let name = maps::PREFIXES_V6[set];
        let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
        let keep: HashSet<Ipv6Network> = new.lpm_v6.iter().map(|(n, _)| *n).collect();
        let stale: Vec<Key<[u8; 16]>> = old
            .map_or(&[][..], |p| &p.lpm_v6)
            .iter()
            .filter(|(n, _)| !keep.contains(n))
            .map(|(n, _)| key6(n))
            .collect();
        if !delete_batch(fd6, &stale) {
            for k in &stale {
                let _ = trie.remove(k);
            }
        }
        let keys: Vec<Key<[u8; 16]>> = new.lpm_v6.iter().map(|(n, _)| key6(n)).collect();
        let values: Vec<u32> = new.lpm_v6.iter().map(|(_, e)| *e).collect();
        if !update_batch(fd6, &keys, &values).with_context(|| format!("filling {name}"))? {
            for (net, entry) in &new.lpm_v6 {
                trie.insert(&key6(net), entry, 0)
                    .with_context(|| format!("inserting {net} into {name}"))?;
            }
        }
    }
    {
        let name = maps::NAT64[set];
        let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
        for net in old.map_or(&[][..], |p| &p.nat64) {
            if !new.nat64.contains(net) {
                let _ = trie.remove(&key6(net));
            }
        }
        for net in &new.nat64 {
            trie.insert(&key6(net), 1, 0)
                .with_context(|| format!("inserting {net} into {name}"))?;
        }
    }
    let name = maps::ENTRIES[set];
    let mut entries: Array<_, Entry> = Array::try_from(map(ebpf, name)?)?;
    for (id, e) in new.entries.iter().enumerate() {
        let id = u32::try_from(id)?;
        entries
            .set(id, *e, 0)
            .with_context(|| format!("setting entry {id} in {name}"))?;
    }
    let mut settings: Array<_, GlobalPolicy> = Array::try_from(map(ebpf, maps::SETTINGS)?)?;
    let value = GlobalPolicy {
        generation,
        // Informational: the entries carry the effective mode of every decision.
        mode: match new.mode {
            Mode::Enforce => kmode::ENFORCE,
            Mode::Audit => kmode::AUDIT,
        },
        cut_established: u8::from(new.established == Established::Cut),
        _pad: [0; 2],
        suppress_ms: new.suppress_window_ms,
    };
    settings.set(u32::try_from(set)?, value, 0)?;
    Ok(())
}

/// Raw descriptor of LPM trie `name`, valid while `ebpf` lives.
fn trie_fd(ebpf: &Ebpf, name: &str) -> anyhow::Result<RawFd> {
    match ebpf.map(name) {
        Some(aya::maps::Map::LpmTrie(data)) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => bail!("map {name} missing from the eBPF object or not an LPM trie"),
    }
}

/// `BPF_MAP_DELETE_BATCH` of `keys`; false when it did not delete them all (the caller then
/// deletes one by one, ignoring keys already gone).
fn delete_batch<K: Copy>(fd: RawFd, keys: &[K]) -> bool {
    if keys.is_empty() {
        return true;
    }
    let Ok(count) = u32::try_from(keys.len()) else {
        return false;
    };
    let Ok(map_fd) = u32::try_from(fd) else {
        return false;
    };
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: 0,
        count,
        map_fd,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: as in `update_batch`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    r == 0 && attr.count == count
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `BPF_MAP_UPDATE_BATCH` (`include/uapi/linux/bpf.h`): one syscall for all elements,
/// several times faster than one `BPF_MAP_UPDATE_ELEM` each for a large policy. Returns
/// `Ok(false)` when the kernel does not support batch updates for this map type (then the
/// caller inserts one by one), an error when it failed part way.
fn update_batch<K: Copy, V: Copy>(fd: RawFd, keys: &[K], values: &[V]) -> anyhow::Result<bool> {
    if keys.is_empty() {
        return Ok(true);
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len().min(values.len()))?,
        map_fd: u32::try_from(fd)?,
        elem_flags: 0,
        flags: 0,
    };
    let want = attr.count;
    // SAFETY: `attr` is a valid bpf_attr prefix; keys and values outlive the call and hold
    // `count` elements of the map's key and value sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    let unsupported = matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    );
    if unsupported && attr.count == 0 {
        return Ok(false);
    }
    Err(anyhow!(
        "BPF_MAP_UPDATE_BATCH stored {} of {want} elements: {err}",
        attr.count
    ))
}

fn key4(net: &Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

fn key6(net: &Ipv6Network) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

/// Turns a load failure into one that names the missing kernel feature.
fn explain_load(e: EbpfError) -> anyhow::Error {
    let hint = match &e {
        EbpfError::MapError(MapError::CreateError { name, io_error }) => {
            let feature = if name == maps::EVENTS {
                "BPF_MAP_TYPE_RINGBUF (Linux >= 5.8)"
            } else if name.starts_with("EGRESSD_PREFIXES") || name.starts_with("EGRESSD_NAT64") {
                "BPF_MAP_TYPE_LPM_TRIE (Linux >= 4.11)"
            } else if name == maps::SOCKETS {
                "BPF_MAP_TYPE_LRU_HASH (Linux >= 4.10)"
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
