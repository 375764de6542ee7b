//! The maps of a policy set: filling them from a compiled policy (tries, tables, decision
//! entries, settings, packet-socket executables), clearing stale entries with batch
//! syscalls, and the shapes the pinned maps must have to be adopted.
use super::*;

/// Existing map pins under `DIR/maps` as (name, path), after checking that each has the
/// shape this build expects (map type, key and value sizes).
pub(super) fn pinned_maps(dir: &PinDir) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.maps_dir()) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("EGRESSD_") {
            continue;
        }
        let path = e.path();
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        if let Some((key, value)) = expected_shape(&name)
            && (info.key_size(), info.value_size()) != (key, value)
        {
            // Per-socket caches hold nothing that must survive: an older build's is replaced
            // (its sockets are judged again) instead of refusing the upgrade.
            // Likewise the suppression table: the counts it holds are also pending in
            // `UNREPORTED`, which the stop reports (and which it goes with, below).
            if name == maps::SOCKETS || name == maps::OWNERS || name == maps::SUPPRESS {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the old cache pin {}", path.display()))?;
                tracing::info!(pin = %path.display(), "replacing a per-socket cache of another shape");
                continue;
            }
            bail!(
                "pinned map {} has key/value sizes {}/{} but this egressd expects \
                 {key}/{value}: it was pinned with another layout; refusing to adopt it \
                 (`egressd detach --pin-dir {}` removes it)",
                path.display(),
                info.key_size(),
                info.value_size(),
                dir.root.display()
            );
        }
        // An older build's suppression table was shared by the CPUs (its taking of a count
        // could race): replaced like one of another shape.
        if name == maps::SUPPRESS
            && !matches!(info.map_type(), Ok(aya::maps::MapType::LruPerCpuHash))
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old suppression pin {}", path.display()))?;
            tracing::info!(pin = %path.display(), "replacing a suppression table of another type");
            continue;
        }
        // Scratch space holds nothing between runs of a program: an older build's (one slot
        // per CPU, a smaller value) is replaced.
        if name == maps::SCRATCH
            && (info.max_entries() != egressd_common::SCRATCH_SLOTS
                || info.value_size() != egressd_common::SCRATCH_BYTES)
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old scratch pin {}", path.display()))?;
            tracing::info!(pin = %path.display(), "replacing packet-hook scratch space of another shape");
            continue;
        }
        // An older build reserved fewer hook slots: its counters cannot count the newer
        // hooks, so the map is replaced (decision counters start again from zero).
        if name == maps::COUNTERS && info.max_entries() != egressd_common::COUNTER_SLOTS {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old counter pin {}", path.display()))?;
            tracing::warn!(
                pin = %path.display(),
                "the pinned decision counters have another number of hook slots: replaced, \
                 they start again from zero"
            );
            continue;
        }
        // The unpaged first level of an older build (64 MiB per set): its programs, until
        // their links get this build's, hold it by reference; nothing else reads it.
        if maps::LEGACY_TABLE24.contains(&name.as_str()) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old table pin {}", path.display()))?;
            tracing::info!(pin = %path.display(), "dropping the IPv4 table first level of an older egressd");
            continue;
        }
        // An older build kept no record of the overflow it reported, or made the map without
        // `BPF_F_MMAPABLE` (read in place every second): replaced (its pending suppressed
        // counts and unreported overflow are lost from the records, not from the counters).
        if name == maps::UNREPORTED
            && (info.max_entries() != egressd_common::unreported::SLOTS
                || info.map_flags() & crate::kernel::mmap::BPF_F_MMAPABLE == 0)
        {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old unreported pin {}", path.display()))?;
            tracing::warn!(
                pin = %path.display(),
                "the pinned unreported counts have another layout or are not mappable: replaced"
            );
            continue;
        }
        // An older build knew fewer fail-closed reasons: replaced likewise.
        if name == maps::FAILSAFE && info.max_entries() != egressd_common::failsafe::SLOTS {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the old fail-closed pin {}", path.display()))?;
            tracing::warn!(
                pin = %path.display(),
                "the pinned fail-closed counters have another number of reasons: replaced, \
                 they start again from zero"
            );
            continue;
        }
        out.push((name, path));
    }
    // The suppression table's counts are also pending in `UNREPORTED`, and the programs take
    // them out of it when an event carries them: kept over a new `UNREPORTED` (replaced above,
    // or its pin removed) they would be taken from a count that never held them, which wraps.
    // Dropped with it (those suppressed attempts are lost from the records, not the counters).
    if !out.iter().any(|(n, _)| n == maps::UNREPORTED)
        && let Some(i) = out.iter().position(|(n, _)| n == maps::SUPPRESS)
    {
        let (_, path) = out.remove(i);
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the suppression pin {}", path.display()))?;
        tracing::warn!(
            pin = %path.display(),
            "the pinned unreported counts were replaced or missing: dropped the pinned \
             suppression table with them"
        );
    }
    Ok(out)
}

/// (key size, value size) in bytes of the maps this build knows.
fn expected_shape(name: &str) -> Option<(u32, u32)> {
    let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    if maps::PREFIXES_V4.contains(&name) {
        Some((8, 4))
    } else if maps::PREFIXES_V6.contains(&name) || maps::NAT64.contains(&name) {
        Some((20, 4))
    } else if maps::ENTRIES.contains(&name) {
        Some((4, size(size_of::<Entry>())))
    } else if name == maps::SETTINGS {
        Some((4, size(size_of::<GlobalPolicy>())))
    } else if name == maps::GENERATION
        || name == maps::COUNTERS
        || name == maps::LOSS
        || name == maps::FAILSAFE
        || name == maps::UNREPORTED
    {
        Some((4, 8))
    } else if name == maps::SUMMARIES {
        Some((
            size(size_of::<egressd_common::SummaryKey>()),
            size(size_of::<egressd_common::SummaryState>()),
        ))
    } else if name == maps::SUMMARY_CONTROL {
        Some((4, size(size_of::<egressd_common::SummaryControl>())))
    } else if name == maps::SUMMARY_ZERO {
        Some((4, size(size_of::<egressd_common::SummaryState>())))
    } else if name == maps::FLOWS {
        Some((4, size(size_of::<FlowCounter>())))
    } else if name == maps::SOCKETS {
        Some((4, size(size_of::<egressd_common::SockVerdict>())))
    } else if name == maps::OWNERS {
        Some((4, size(size_of::<egressd_common::SockOwner>())))
    } else if name == maps::SUPPRESS {
        Some((
            size(size_of::<egressd_common::SuppressKey>()),
            size(size_of::<egressd_common::SuppressState>()),
        ))
    } else if maps::TABLE14.contains(&name)
        || maps::TABLE24.contains(&name)
        || maps::TABLE8.contains(&name)
    {
        Some((4, size(egressd_common::table::PAGE_BYTES)))
    } else {
        None
    }
}

/// Empties the LPM tries of set `set` (an adopted set whose contents are unknown).
pub(super) fn clear_set(ebpf: &mut Ebpf, set: usize) -> anyhow::Result<()> {
    {
        let trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map(ebpf, maps::PREFIXES_V4[set])?)?;
        let keys: Vec<Key<[u8; 4]>> = trie.keys().collect::<Result<_, _>>()?;
        let mut trie = trie;
        for k in &keys {
            let _ = trie.remove(k);
        }
    }
    for name in [maps::PREFIXES_V6[set], maps::NAT64[set]] {
        let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
        let keys: Vec<Key<[u8; 16]>> = trie.keys().collect::<Result<_, _>>()?;
        for k in &keys {
            let _ = trie.remove(k);
        }
    }
    Ok(())
}

/// Removes from set `set` every prefix `policy` does not hold (after a repair); with
/// `table`, every IPv4 prefix (the table serves IPv4).
pub(super) fn clear_stale(
    ebpf: &mut Ebpf,
    set: usize,
    policy: &Policy,
    table: bool,
    table6: bool,
) -> anyhow::Result<()> {
    let v4: &[(Ipv4Network, u32)] = if table { &[] } else { &policy.lpm_v4 };
    let keep4: HashSet<(u32, [u8; 4])> = v4
        .iter()
        .map(|(n, _)| (u32::from(n.prefix()), n.network().octets()))
        .collect();
    let mut trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map(ebpf, maps::PREFIXES_V4[set])?)?;
    let stale: Vec<Key<[u8; 4]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep4.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in &stale {
        let _ = trie.remove(k);
    }
    let v6: &[(Ipv6Network, u32)] = if table6 { &[] } else { &policy.lpm_v6 };
    let keep6: HashSet<(u32, [u8; 16])> = v6
        .iter()
        .map(|(n, _)| (u32::from(n.prefix()), n.network().octets()))
        .collect();
    let mut trie: LpmTrie<_, [u8; 16], u32> =
        LpmTrie::try_from(map(ebpf, maps::PREFIXES_V6[set])?)?;
    let stale: Vec<Key<[u8; 16]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep6.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in &stale {
        let _ = trie.remove(k);
    }
    let keep_nat64: HashSet<(u32, [u8; 16])> = policy
        .nat64
        .iter()
        .map(|n| (u32::from(n.prefix()), n.network().octets()))
        .collect();
    let mut nat64: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, maps::NAT64[set])?)?;
    let stale: Vec<Key<[u8; 16]>> = nat64
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep_nat64.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in &stale {
        let _ = nat64.remove(k);
    }
    Ok(())
}

/// The (device, inode) grants of `policy`'s packet-socket executables, as the kernel names
/// them (`inode->i_sb->s_dev` is `major << 20 | minor`). A path that does not resolve is
/// logged and left out: a binary installed later needs a reload.
pub(super) fn packet_exes(
    policy: &Policy,
) -> std::collections::HashMap<egressd_common::ExeKey, u8> {
    let mut out = std::collections::HashMap::new();
    for (path, send) in &policy.packet_exes {
        match std::fs::metadata(path) {
            Ok(m) => {
                let dev = m.dev();
                let key = egressd_common::ExeKey {
                    dev: (libc::major(dev) << 20) | libc::minor(dev),
                    _pad: 0,
                    ino: m.ino(),
                };
                let grant = if *send {
                    egressd_common::exe::SEND
                } else {
                    egressd_common::exe::OPEN
                };
                let g = out.entry(key).or_insert(grant);
                *g = (*g).max(grant);
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "executable allowed to use packet sockets not found; left out until a reload"
            ),
        }
    }
    out
}

/// Makes [`maps::PACKET_EXES`] hold exactly `want`.
pub(super) fn write_exes(
    ebpf: &mut Ebpf,
    want: &std::collections::HashMap<egressd_common::ExeKey, u8>,
) -> anyhow::Result<()> {
    let mut exes: aya::maps::HashMap<_, egressd_common::ExeKey, u8> =
        aya::maps::HashMap::try_from(map(ebpf, maps::PACKET_EXES)?)?;
    let stale: Vec<egressd_common::ExeKey> = exes
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in &stale {
        let _ = exes.remove(k);
    }
    for (k, v) in want {
        exes.insert(k, v, 0)
            .context("writing the executables allowed to use packet sockets")?;
    }
    Ok(())
}

/// The settings value of a set that serves `policy` as `generation`.
pub(super) fn settings_of(policy: &Policy, generation: u64, v4_table: bool) -> GlobalPolicy {
    GlobalPolicy {
        generation,
        // Informational: the entries carry the effective mode of every decision.
        mode: match policy.mode {
            Mode::Enforce => kmode::ENFORCE,
            Mode::Audit => kmode::AUDIT,
        },
        cut_established: u8::from(policy.established == Established::Cut),
        v4_table: u8::from(v4_table),
        packet_sockets: policy.packet_sockets.verdict() as u8,
        suppress_ms: policy.suppress_window_ms,
    }
}

pub(super) fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// Points the packet-socket hooks (BPF LSM, `tc/egress`) at cgroup `cg`: slot 0 of
/// [`maps::LSM_CGROUP`], which they test the current task or the packet's socket against.
pub(super) fn set_enforced_cgroup(ebpf: &mut Ebpf, cg: &File) -> anyhow::Result<()> {
    let mut slot: aya::maps::CgroupArray<_> =
        aya::maps::CgroupArray::try_from(map(ebpf, maps::LSM_CGROUP)?)?;
    slot.set(0, cg.as_raw_fd(), 0)?;
    Ok(())
}

/// The IPv4 table of `policy` when the maps have one and it fits, else `None` (logged: IPv4
/// is then looked up in the trie, as fast as the trie is).
pub(super) fn compile_table(policy: &Policy, room: Option<table::Room4>) -> Option<Table4> {
    let room = room?;
    let t = Table4::compile(&policy.lpm_v4);
    let fits = table_fits(
        t.as_ref().map(|t| Built {
            pages: t.pages(),
            chunks: t.chunks(),
        }),
        room,
    );
    t.ok().filter(|_| fits)
}

/// Whether `policy`'s IPv4 table is to be used: the maps have one and it fits (else logged,
/// as by [`compile_table`]); [`fill_set`] then compiles it straight into the maps. With
/// `known`, what it fills was counted before ([`Tables`]).
pub(super) fn plan_table(
    policy: &Policy,
    room: Option<table::Room4>,
    known: Option<Result<Built, crate::policy::table::TableError>>,
) -> bool {
    room.is_some_and(|room| {
        table_fits(
            known.unwrap_or_else(|| table::built_of(&policy.lpm_v4)),
            room,
        )
    })
}

/// What an install works out from the policy alone, before it touches a map: the IPv4
/// table's chunk count and the IPv6 table. The daemon computes them while the programs
/// load ([`super::Prepared::finish`] hands them to the install).
pub struct Tables {
    chunks: Option<Result<Built, crate::policy::table::TableError>>,
    table6: Option<Result<Table6, crate::policy::table6::TooManyRanges>>,
}

impl Tables {
    /// The tables of `policy` that maps of `cap` have.
    pub fn compile(policy: &Policy, cap: Capacity) -> Self {
        Self {
            chunks: cap.table_chunks.map(|_| table::built_of(&policy.lpm_v4)),
            // The chunks `table::size_maps` makes room for.
            table6: cap
                .table6_ranges
                .map(|r| Table6::compile(&policy.lpm_v6, egressd_common::table6::chunk_budget(r))),
        }
    }

    /// What the IPv4 table fills, if counted.
    pub(super) fn chunks(&mut self) -> Option<Result<Built, crate::policy::table::TableError>> {
        self.chunks.take()
    }

    /// The IPv6 table, if compiled.
    pub(super) fn table6(
        &mut self,
    ) -> Option<Result<Table6, crate::policy::table6::TooManyRanges>> {
        self.table6.take()
    }
}

/// Whether a table that fills `built` (or the error compiling it) fits maps of `room`;
/// logs why not.
fn table_fits<E: std::fmt::Display>(built: Result<Built, E>, room: table::Room4) -> bool {
    match built {
        Ok(b) if room.holds(b) => true,
        Ok(b) => {
            tracing::warn!(
                chunks = b.chunks,
                pages = b.pages,
                capacity_chunks = room.chunks,
                capacity_pages = room.pages,
                "the policy needs more IPv4 table chunks or pages than the maps hold; IPv4 \
                 lookups of this generation use the LPM trie (restart egressd to size the \
                 table anew)"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "IPv4 table not usable; IPv4 lookups use the LPM trie");
            false
        }
    }
}

/// The IPv6 table of `policy` when the maps have one and it fits, else `None` (logged: IPv6
/// is then looked up in the trie).
pub(super) fn compile_table6(
    policy: &Policy,
    room: Option<super::table::Room6>,
    known: Option<Result<Table6, crate::policy::table6::TooManyRanges>>,
) -> Option<Table6> {
    let super::table::Room6 {
        ranges: capacity,
        chunks,
    } = room?;
    // A table compiled for other maps may have more chunks than these hold, and the tamper
    // check compares the maps with a compile for these.
    let known = known.filter(|k| k.as_ref().is_ok_and(|t| t.budget == chunks));
    match known.unwrap_or_else(|| Table6::compile(&policy.lpm_v6, chunks)) {
        Ok(t) if t.len() <= capacity => Some(t),
        Ok(t) => {
            tracing::warn!(
                ranges = t.len(),
                capacity,
                "the policy makes more IPv6 ranges than the table maps hold; IPv6 lookups of \
                 this generation use the LPM trie (restart egressd to size the table anew)"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "IPv6 table not usable; IPv6 lookups use the LPM trie");
            None
        }
    }
}

/// What a set's maps hold before a fill, so that only stale prefixes are deleted.
#[derive(Clone, Copy, Default)]
pub(super) struct Stale<'a> {
    /// The policy the set held (`None`: nothing, or unknown and cleared).
    pub(super) old: Option<&'a Policy>,
    /// The same when its IPv4 trie holds its prefixes (`None` when empty).
    pub(super) v4: Option<&'a Policy>,
    /// The same when its IPv6 trie holds its prefixes.
    pub(super) v6: Option<&'a Policy>,
}

/// Makes set `set` hold exactly `new` for generation `generation`: `stale` says what its
/// maps hold; with `table`, IPv4 is looked up in its table (compiled here straight into the
/// maps, [`plan_table`] said it fits) and `table6` is the compiled IPv6 table of `new` when
/// IPv6 is looked up in its table (a family's trie is then left empty).
/// Returns whether each table is used.
pub(super) fn fill_set(
    ebpf: &mut Ebpf,
    set: usize,
    stale: Stale<'_>,
    new: &Policy,
    generation: u64,
    table: bool,
    table6: Option<&Table6>,
) -> anyhow::Result<(bool, bool)> {
    let (old, old_v4, old_v6) = (stale.old, stale.v4, stale.v6);
    let fd4 = trie_fd(ebpf, maps::PREFIXES_V4[set])?;
    let fd6 = trie_fd(ebpf, maps::PREFIXES_V6[set])?;
    {
        let name = maps::PREFIXES_V4[set];
        let mut trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
        let want: &[(Ipv4Network, u32)] = if table { &[] } else { &new.lpm_v4 };
        let stale: Vec<Key<[u8; 4]>> = match old_v4 {
            None => Vec::new(),
            Some(p) => {
                let keep: HashSet<Ipv4Network> = want.iter().map(|(n, _)| *n).collect();
                p.lpm_v4
                    .iter()
                    .filter(|(n, _)| !keep.contains(n))
                    .map(|(n, _)| key4(n))
                    .collect()
            }
        };
        if !crate::kernel::batch::delete(fd4, &stale) {
            for k in &stale {
                let _ = trie.remove(k);
            }
        }
        let keys: Vec<Key<[u8; 4]>> = want.iter().map(|(n, _)| key4(n)).collect();
        let values: Vec<u32> = want.iter().map(|(_, e)| *e).collect();
        if !crate::kernel::batch::update(fd4, &keys, &values)
            .with_context(|| format!("filling {name}"))?
        {
            for (net, entry) in want {
                trie.insert(&key4(net), entry, 0)
                    .with_context(|| format!("inserting {net} into {name}"))?;
            }
        }
    }
    {
        let name = maps::PREFIXES_V6[set];
        let want: &[(Ipv6Network, u32)] = if table6.is_some() { &[] } else { &new.lpm_v6 };
        let stale: Vec<Key<[u8; 16]>> = match old_v6 {
            None => Vec::new(),
            Some(p) => {
                let keep: HashSet<Ipv6Network> = want.iter().map(|(n, _)| *n).collect();
                p.lpm_v6
                    .iter()
                    .filter(|(n, _)| !keep.contains(n))
                    .map(|(n, _)| key6(n))
                    .collect()
            }
        };
        if !crate::kernel::batch::delete(fd6, &stale) {
            let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
            for k in &stale {
                let _ = trie.remove(k);
            }
        }
        let keys: Vec<Key<[u8; 16]>> = want.iter().map(|(n, _)| key6(n)).collect();
        let values: Vec<u32> = want.iter().map(|(_, e)| *e).collect();
        // The kernel fills the IPv6 trie while this thread writes the IPv4 table: each is
        // about a third of the start-up with a million prefixes.
        let started = std::time::Instant::now();
        let shared: &Ebpf = ebpf;
        let (batched, written) = std::thread::scope(|s| {
            let trie = s.spawn(|| {
                let r = crate::kernel::batch::update(fd6, &keys, &values);
                (r, started.elapsed())
            });
            let written = if table {
                table::write_table4(shared, set, &new.lpm_v4).map(Some)
            } else {
                Ok(None)
            };
            let table_took = started.elapsed();
            (trie.join(), written.map(|c| (c, table_took)))
        });
        let (batched, trie_took) = batched.map_err(|_| anyhow!("filling {name} panicked"))?;
        if let (Some(built), table_took) = written? {
            tracing::debug!(
                chunks = built.chunks,
                pages = built.pages,
                ms = table_took.as_millis(),
                "IPv4 table written"
            );
        }
        tracing::debug!(
            prefixes = want.len(),
            ms = trie_took.as_millis(),
            "IPv6 trie filled"
        );
        if !batched.with_context(|| format!("filling {name}"))? {
            let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(map(ebpf, name)?)?;
            for (net, entry) in want {
                trie.insert(&key6(net), entry, 0)
                    .with_context(|| format!("inserting {net} into {name}"))?;
            }
        }
    }
    // The index last: its first word switches the set to the table.
    match table6 {
        Some(t) => {
            table::write(ebpf, maps::TABLE6_RANGES[set], t.ranges_bytes())?;
            table::write(ebpf, maps::TABLE6_INDEX[set], t.index_bytes())?;
        }
        None => table::write(ebpf, maps::TABLE6_INDEX[set], &0u64.to_ne_bytes())?,
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
    let value = settings_of(new, generation, table);
    settings.set(u32::try_from(set)?, value, 0)?;
    Ok((table, table6.is_some()))
}

/// Raw descriptor of LPM trie `name`, valid while `ebpf` lives.
fn trie_fd(ebpf: &Ebpf, name: &str) -> anyhow::Result<RawFd> {
    match ebpf.map(name) {
        Some(aya::maps::Map::LpmTrie(data)) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => bail!("map {name} missing from the eBPF object or not an LPM trie"),
    }
}

fn key4(net: &Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

fn key6(net: &Ipv6Network) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}
