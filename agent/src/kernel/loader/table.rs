//! The kernel side of the IPv4 lookup table ([`crate::policy::table`]): sizing its maps when
//! the programs are loaded (directory, a pool of /14 pages and the second-level chunks, each
//! to the policy), and copying a compiled table into a set's maps through `mmap`.
use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use egressd_common::{
    maps,
    table::{CHUNKS_PER_PAGE8, DIR_PAGES, DIR_SHIFT, MAX_CHUNKS, PAGE_BYTES, PAGES24},
    table6::{
        CHUNK_ENTRIES, INDEX_ENTRIES, MAX_CHUNKS as MAX_CHUNKS6, MAX_RANGES, chunk_budget,
        index_entries,
    },
};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::{
    config::{
        AUTO_TABLE_MIN_PREFIXES, AUTO_TABLE6_MIN_PREFIXES, Config, Ipv4Lookup, Ipv6Lookup, Target,
    },
    kernel::mmap::{Mapping, value_area},
    policy::{
        Policy,
        table::{Built, TableError, pages_needed, pages8},
        table6::set_bytes,
    },
};

/// IPv6 ranges a table gets beyond what the first policy needs, so that it can grow on
/// reload; and a quarter more on top.
const MIN_CHUNKS: usize = 4096;
/// IPv4 second-level chunks a table gets beyond what the first policy needs (128 KiB per
/// set), so that it can grow on reload; and a quarter more on top.
const MIN_CHUNKS4: usize = 256;
/// IPv4 pool pages (non-uniform /14s) a table gets beyond what the first policy needs
/// (128 KiB per set); and a quarter more on top.
const MIN_PAGES: usize = 32;

/// Kernel map sizes, fixed when the programs are loaded (array and trie sizes cannot change
/// afterwards; a policy that outgrows them needs a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Prefixes each LPM trie holds, per family (at least
    /// [`egressd_common::DEFAULT_MAX_PREFIXES`]).
    pub prefixes: usize,
    /// Second-level chunks of the IPv4 table of each set; `None`: no table, IPv4 is looked
    /// up in the trie.
    pub table_chunks: Option<usize>,
    /// Pool pages (non-uniform /14s, 4 KiB each) of the IPv4 table of each set, at most
    /// [`PAGES24`]; unused without a table.
    pub table_pages: usize,
    /// Ranges the IPv6 table of each set holds; `None`: no table, IPv6 is looked up in the
    /// trie.
    pub table6_ranges: Option<usize>,
}

impl Capacity {
    /// Tries only, each holding `prefixes`.
    pub fn tries(prefixes: usize) -> Self {
        Self {
            prefixes,
            table_chunks: None,
            table_pages: 0,
            table6_ranges: None,
        }
    }

    /// What `policy` asks for: its prefix counts, and a table when its `ipv4_lookup` says so
    /// (or, for `auto`, when it has at least [`AUTO_TABLE_MIN_PREFIXES`] IPv4 prefixes),
    /// with a quarter more chunks and pool pages than it needs plus 256 chunks and 32 pages
    /// (128 KiB each) so that it can grow on reload. Likewise an IPv6 table when `ipv6_lookup` says so (for `auto`, from
    /// [`AUTO_TABLE6_MIN_PREFIXES`] IPv6 prefixes), with room for a quarter more ranges than
    /// the policy can make (two per prefix plus one) plus 4096.
    pub fn for_policy(policy: &Policy) -> Self {
        let table = match policy.ipv4_lookup {
            Ipv4Lookup::Trie => false,
            Ipv4Lookup::Table => true,
            // Counted before merging: what the policy lists, as before merging existed.
            Ipv4Lookup::Auto => policy.lpm_unmerged[0] >= AUTO_TABLE_MIN_PREFIXES,
        };
        // Without the search in the programs (`TABLE6_IN_PROGRAMS`) there is no table to size.
        let table6 = egressd_common::TABLE6_IN_PROGRAMS
            && match policy.ipv6_lookup {
                Ipv6Lookup::Trie => false,
                Ipv6Lookup::Table => true,
                Ipv6Lookup::Auto => policy.lpm_unmerged[1] >= AUTO_TABLE6_MIN_PREFIXES,
            };
        Self::sized(
            policy.lpm_v4.len().max(policy.lpm_v6.len()),
            table.then(|| (chunks_needed(&policy.lpm_v4), pages_needed(&policy.lpm_v4))),
            table6.then_some(policy.lpm_v6.len()),
        )
    }

    /// What [`Capacity::for_policy`] will ask for once `cfg` is compiled, known before the
    /// compile so that the programs can be loaded while it runs: the same choice of tables
    /// and sizes from the prefixes before merging (merging only removes prefixes and only
    /// joins two halves of a /24 or longer into their parent, so each size is at least the
    /// compiled policy's; [`Capacity::covers`] checks it). `None` when the choice of a table
    /// depends on how many rule prefixes repeat region prefixes (`auto` with a count
    /// between the two bounds): only the compile can tell.
    pub fn for_config(cfg: &Config) -> Option<Self> {
        let (mut v4, mut v6) = (0usize, 0usize);
        let (mut chunks, mut pages) = (HashSet::new(), HashSet::new());
        let mut count = |n: &IpNetwork, v4: &mut usize, v6: &mut usize| match n {
            IpNetwork::V4(n) => {
                *v4 += 1;
                if n.prefix() > 24 {
                    chunks.insert(u32::from(n.network()) >> 8);
                }
                if n.prefix() > 14 {
                    pages.insert(u32::from(n.network()) >> DIR_SHIFT);
                }
            }
            IpNetwork::V6(_) => *v6 += 1,
        };
        for n in cfg.regions.iter().flat_map(|r| &r.prefixes) {
            count(n, &mut v4, &mut v6);
        }
        // Region prefixes are distinct; a rule's prefix may repeat one of them.
        let (lo4, lo6) = (v4, v6);
        for t in cfg.rules.iter().flat_map(|r| &r.targets) {
            if let Target::Prefix(n) = t {
                count(n, &mut v4, &mut v6);
            }
        }
        let choose = |auto_min: usize, lo: usize, hi: usize| -> Option<bool> {
            if lo >= auto_min {
                Some(true)
            } else if hi < auto_min {
                Some(false)
            } else {
                None
            }
        };
        let table = match cfg.ipv4_lookup {
            Ipv4Lookup::Trie => false,
            Ipv4Lookup::Table => true,
            Ipv4Lookup::Auto => choose(AUTO_TABLE_MIN_PREFIXES, lo4, v4)?,
        };
        let table6 = egressd_common::TABLE6_IN_PROGRAMS
            && match cfg.ipv6_lookup {
                Ipv6Lookup::Trie => false,
                Ipv6Lookup::Table => true,
                Ipv6Lookup::Auto => choose(AUTO_TABLE6_MIN_PREFIXES, lo6, v6)?,
            };
        Some(Self::sized(
            v4.max(v6),
            table.then_some((chunks.len(), pages.len())),
            table6.then_some(v6),
        ))
    }

    /// The sizes for `prefixes` per trie, a table with room for `table` (second-level
    /// chunks, pool pages), an IPv6 table for `v6` prefixes: a quarter more and some on top,
    /// as [`Capacity::for_policy`] says.
    fn sized(prefixes: usize, table: Option<(usize, usize)>, v6: Option<usize>) -> Self {
        let slack = |need: usize, min: usize, max: usize| (need + need / 4 + min).min(max);
        Self {
            prefixes,
            table_chunks: table.map(|(c, _)| slack(c, MIN_CHUNKS4, MAX_CHUNKS as usize)),
            table_pages: table.map_or(0, |(_, p)| slack(p, MIN_PAGES, PAGES24 as usize)),
            table6_ranges: v6.map(Self::table6_ranges_for),
        }
    }

    /// Ranges the IPv6 table maps get for `v6` IPv6 prefixes: what they can make (two per
    /// prefix plus one), a quarter more and 4096 on top, at most [`MAX_RANGES`].
    pub fn table6_ranges_for(v6: usize) -> usize {
        let need = 2 * v6 + 1;
        (need + need / 4 + MIN_CHUNKS).min(MAX_RANGES)
    }

    /// Whether maps loaded with these sizes take a policy that asks for `need`: the same
    /// tables, each at least as large.
    pub fn covers(&self, need: &Self) -> bool {
        let at_least = |have: Option<usize>, want: Option<usize>| match (have, want) {
            (Some(h), Some(w)) => h >= w,
            (None, None) => true,
            _ => false,
        };
        self.prefixes >= need.prefixes
            && at_least(self.table_chunks, need.table_chunks)
            && (need.table_chunks.is_none() || self.table_pages >= need.table_pages)
            && at_least(self.table6_ranges, need.table6_ranges)
    }

    /// Kernel memory of the IPv4 tables of both sets in bytes (0 without a table): per set
    /// the directory (64 KiB), the pool pages and the second-level pages, and a page for
    /// each of the three maps' headers (the kernel's account, `memlock` in the maps'
    /// fdinfo).
    pub fn table_bytes(&self) -> usize {
        self.table_chunks.map_or(0, |c| {
            2 * (DIR_PAGES as usize + self.table_pages.max(1) + pages8(c) + 3) * PAGE_BYTES
        })
    }

    /// Kernel memory of the IPv6 tables of both sets in bytes (0 without a table).
    pub fn table6_bytes(&self) -> usize {
        self.table6_ranges.map_or(0, |b| 2 * set_bytes(b))
    }
}

/// Second-level chunks `entries` need: one per /24 holding a prefix longer than /24.
pub fn chunks_needed(entries: &[(Ipv4Network, u32)]) -> usize {
    entries
        .iter()
        .filter(|(n, _)| n.prefix() > 24)
        .map(|(n, _)| u32::from(n.network()) >> 8)
        .collect::<HashSet<_>>()
        .len()
}

/// Sets the table maps' sizes on `loader` for `cap`; without a table they keep their one page.
pub fn size_maps(loader: &mut aya::EbpfLoader<'_>, cap: Capacity) {
    if let Some(chunks) = cap.table_chunks {
        let pages = u32::try_from(pages8(chunks)).unwrap_or(u32::MAX);
        let pool = u32::try_from(cap.table_pages.clamp(1, PAGES24 as usize)).unwrap_or(1);
        for set in 0..2 {
            loader.map_max_entries(maps::TABLE14[set], DIR_PAGES);
            loader.map_max_entries(maps::TABLE24[set], pool);
            loader.map_max_entries(maps::TABLE8[set], pages);
        }
    }
    if let Some(b) = cap.table6_ranges {
        let ranges = u32::try_from(b).unwrap_or(u32::MAX);
        let index = index_entries(chunk_budget(b));
        for set in 0..2 {
            loader.map_max_entries(maps::TABLE6_INDEX[set], index);
            loader.map_max_entries(maps::TABLE6_RANGES[set], ranges);
        }
    }
}

/// Array map `name`'s element count.
fn elements(ebpf: &Ebpf, name: &str) -> anyhow::Result<usize> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(data)) => Ok(data.info()?.max_entries() as usize),
        _ => bail!("map {name} missing from the eBPF object or not an array"),
    }
}

/// Room of the loaded IPv6 table maps, read from the maps themselves so that adopted
/// pinned maps are described as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room6 {
    /// Ranges each set's table holds.
    pub ranges: usize,
    /// Index chunks each set's table holds (0 in maps sized by an egressd without chunks).
    pub chunks: u32,
}

/// The IPv6 table room of the loaded maps (`None`: no table).
pub fn loaded_room6(ebpf: &Ebpf) -> anyhow::Result<Option<Room6>> {
    let mut index = usize::MAX;
    for set in 0..2 {
        index = index.min(elements(ebpf, maps::TABLE6_INDEX[set])?);
    }
    if index < INDEX_ENTRIES as usize {
        return Ok(None);
    }
    let a = elements(ebpf, maps::TABLE6_RANGES[0])?;
    let b = elements(ebpf, maps::TABLE6_RANGES[1])?;
    let chunks = (index - INDEX_ENTRIES as usize) / CHUNK_ENTRIES as usize;
    Ok(Some(Room6 {
        ranges: a.min(b),
        chunks: u32::try_from(chunks).unwrap_or(u32::MAX).min(MAX_CHUNKS6),
    }))
}

/// Room of the loaded IPv4 table maps, read from the maps themselves so that adopted
/// pinned maps are described as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room4 {
    /// Pool pages each set's table holds.
    pub pages: usize,
    /// Second-level chunks each set's table holds.
    pub chunks: usize,
}

impl Room4 {
    /// Whether a table that fills `built` fits.
    pub fn holds(&self, built: Built) -> bool {
        built.pages <= self.pages && built.chunks <= self.chunks
    }
}

/// The IPv4 table room of the loaded maps (`None`: no table, the directories are not
/// [`DIR_PAGES`] long).
pub fn loaded_room4(ebpf: &Ebpf) -> anyhow::Result<Option<Room4>> {
    let dirs = elements(ebpf, maps::TABLE14[0])?.min(elements(ebpf, maps::TABLE14[1])?);
    if dirs < DIR_PAGES as usize {
        return Ok(None);
    }
    let pages = elements(ebpf, maps::TABLE24[0])?.min(elements(ebpf, maps::TABLE24[1])?);
    let p8 = elements(ebpf, maps::TABLE8[0])?.min(elements(ebpf, maps::TABLE8[1])?);
    Ok(Some(Room4 {
        pages,
        chunks: p8 * CHUNKS_PER_PAGE8,
    }))
}

/// The kernel's account of the memory of the IPv4 table maps of both sets in bytes: the
/// sum of their `memlock` (`/proc/self/fdinfo`: `bpf_map_memory_usage()` since 6.4,
/// earlier an estimate from the map's sizes).
///
/// # Errors
/// A map is missing, or its fdinfo unreadable or without `memlock`.
pub fn table_memory(ebpf: &Ebpf) -> anyhow::Result<u64> {
    let mut sum = 0u64;
    for set in 0..2 {
        for name in [maps::TABLE14[set], maps::TABLE24[set], maps::TABLE8[set]] {
            let (fd, _) = array(ebpf, name)?;
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                .with_context(|| format!("reading the fdinfo of {name}"))?;
            let memlock = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .with_context(|| format!("no memlock in the fdinfo of {name}"))?;
            sum += memlock;
        }
    }
    Ok(sum)
}

/// Array map `name`'s descriptor and the bytes of its value area (whole pages).
fn array(ebpf: &Ebpf, name: &str) -> anyhow::Result<(std::os::fd::RawFd, usize)> {
    let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
        bail!("map {name} missing from the eBPF object or not an array");
    };
    Ok((data.fd().as_fd().as_raw_fd(), value_area(&data.info()?)))
}

/// All of array map `name`, mapped (writable with `write`).
fn whole(ebpf: &Ebpf, name: &str, write: bool) -> anyhow::Result<Mapping> {
    let (fd, len) = array(ebpf, name)?;
    Mapping::window(fd, name, 0, len, write)
}

/// Bytes of a map written at a time by [`Stream`]: the process maps (and so counts as
/// resident) one window of each map, not the 64 MiB of a first level.
const WINDOW: usize = 1 << 20;

/// Writes an array map's value area front to back through a moving window.
struct Stream<'a> {
    name: &'a str,
    fd: std::os::fd::RawFd,
    len: usize,
    window: Option<(Mapping, usize)>,
    /// Bytes written.
    pos: usize,
    error: Option<anyhow::Error>,
}

impl<'a> Stream<'a> {
    fn new(ebpf: &Ebpf, name: &'a str) -> anyhow::Result<Self> {
        let (fd, len) = array(ebpf, name)?;
        Ok(Self {
            name,
            fd,
            len,
            window: None,
            pos: 0,
            error: None,
        })
    }

    /// The mapped bytes from the current position to the end of its window (mapping the
    /// window first); `None` after an error.
    fn room(&mut self) -> Option<&mut [u8]> {
        if self.error.is_some() {
            return None;
        }
        if self.pos >= self.len {
            self.error = Some(anyhow::anyhow!(
                "{} holds {} bytes, the table needs more",
                self.name,
                self.len
            ));
            return None;
        }
        let start = self.pos / WINDOW * WINDOW;
        if self.window.as_ref().is_none_or(|(_, at)| *at != start) {
            self.window = None;
            let len = WINDOW.min(self.len - start);
            match Mapping::window(self.fd, self.name, start, len, true) {
                Ok(m) => self.window = Some((m, start)),
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
        let (m, at) = self.window.as_ref()?;
        let off = self.pos - at;
        // SAFETY: `off < m.len()` (the window holds `pos`); the mapping is writable, page
        // aligned, and nothing else in the process refers to it.
        Some(unsafe { std::slice::from_raw_parts_mut(m.ptr().add(off), m.len() - off) })
    }

    /// Writes `n` copies of `value` (host byte order; the position is 4-byte aligned).
    fn fill_u32(&mut self, value: u32, mut n: usize) {
        while n > 0 {
            let Some(room) = self.room() else { return };
            let k = n.min(room.len() / 4);
            for slot in room[..k * 4].chunks_exact_mut(4) {
                slot.copy_from_slice(&value.to_ne_bytes());
            }
            self.pos += k * 4;
            n -= k;
        }
    }

    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(room) = self.room() else { return };
            let n = bytes.len().min(room.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.pos += n;
            bytes = &bytes[n..];
        }
    }

    fn finish(self) -> anyhow::Result<usize> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.pos),
        }
    }
}

/// Compiles `entries`' IPv4 table ([`crate::policy::table::build`]) straight into set
/// `set`'s maps ([`maps::TABLE14`], [`maps::TABLE24`], [`maps::TABLE8`]), one window at a
/// time (no copy of the table in the process). Returns what it filled.
///
/// # Errors
/// A map is missing, cannot be mapped, or is too small; the entries do not fit a table.
pub fn write_table4(
    ebpf: &Ebpf,
    set: usize,
    entries: &[(Ipv4Network, u32)],
) -> anyhow::Result<Built> {
    let mut dir = Stream::new(ebpf, maps::TABLE14[set])?;
    let mut pool = Stream::new(ebpf, maps::TABLE24[set])?;
    let mut t8 = Stream::new(ebpf, maps::TABLE8[set])?;
    let built = crate::policy::table::build(
        entries,
        &mut |id, n| dir.fill_u32(id, n),
        &mut |page| {
            // SAFETY: `u32` has no padding or invalid bit patterns; the length is in bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts(page.as_ptr().cast::<u8>(), PAGE_BYTES) };
            pool.write(bytes);
        },
        &mut |chunk| {
            // SAFETY: as above, for `u16`.
            let bytes =
                unsafe { std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), chunk.len() * 2) };
            t8.write(bytes);
        },
    )?;
    dir.finish()?;
    pool.finish()?;
    t8.finish()?;
    Ok(built)
}

/// What `entries`' IPv4 table fills ([`crate::policy::table::build`] with nothing kept).
///
/// # Errors
/// The entries do not fit a table.
pub fn built_of(entries: &[(Ipv4Network, u32)]) -> Result<Built, TableError> {
    crate::policy::table::build(entries, &mut |_, _| {}, &mut |_| {}, &mut |_| {})
}

/// Copies `bytes` to the start of array map `name` (the rest is left as it is: the table
/// never reads past what it wrote).
///
/// # Errors
/// The map is missing, cannot be mapped, or is smaller than `bytes`.
pub fn write(ebpf: &Ebpf, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let m = whole(ebpf, name, true)?;
    if bytes.len() > m.len() {
        bail!(
            "{name} holds {} bytes, the table needs {}",
            m.len(),
            bytes.len()
        );
    }
    // SAFETY: `bytes.len() <= m.len()`, and the mapping does not alias `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.ptr(), bytes.len()) };
    Ok(())
}

/// Whether array map `name` starts with exactly `bytes`.
///
/// # Errors
/// The map is missing or cannot be mapped.
pub fn holds(ebpf: &Ebpf, name: &str, bytes: &[u8]) -> anyhow::Result<bool> {
    let m = whole(ebpf, name, false)?;
    if bytes.len() > m.len() {
        return Ok(false);
    }
    // SAFETY: reads `bytes.len() <= m.len()` bytes of the mapping.
    let have = unsafe { std::slice::from_raw_parts(m.ptr(), bytes.len()) };
    Ok(have == bytes)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::Capacity;
    use crate::{config::parse, policy::compile};

    /// A policy of `v4` and `v6` prefixes in two regions (/26s, four to a /24, that merge into
    /// /24s; /64s), `rules` rule prefixes repeating region prefixes, and `lookup`.
    fn text(v4: usize, v6: usize, rules: usize, lookup: &str) -> String {
        let mut t =
            format!("mode = \"enforce\"\nallowlist = [\"a\"]\n{lookup}\n[regions.a]\nprefixes = [");
        t.push_str("\"2001:db9::/32\",");
        for i in 0..v4 {
            let c = i / 4;
            let _ = write!(t, "\"10.{}.{}.{}/26\",", c / 256, c % 256, (i % 4) * 64);
        }
        t.push_str("]\n[regions.b]\nprefixes = [\"192.0.2.0/24\",");
        for i in 0..v6 {
            let _ = write!(t, "\"2001:db8:{:x}:{:x}::/64\",", i / 65536, i % 65536);
        }
        t.push_str("]\n");
        for i in 0..rules {
            let _ = write!(
                t,
                "[[rules]]\nname = \"r{i}\"\naction = \"deny\"\nto = [\"2001:db8:0:{i:x}::/64\"]\n"
            );
        }
        t
    }

    fn both(text: &str) -> (Option<Capacity>, Capacity) {
        let cfg = parse(std::path::Path::new("t.toml"), text).expect("valid config");
        (
            Capacity::for_config(&cfg),
            Capacity::for_policy(&compile(&cfg)),
        )
    }

    /// The sizes taken from the configuration before the compile hold the compiled policy,
    /// with the same tables: merged /26s, rule prefixes repeating region prefixes.
    #[test]
    fn sizes_from_the_configuration_cover_the_compiled_policy() {
        for (v4, v6, rules, lookup) in [
            (0, 0, 0, ""),
            (
                3000,
                2000,
                0,
                "ipv4_lookup = \"table\"\nipv6_lookup = \"table\"",
            ),
            (3000, 2000, 3, "ipv4_lookup = \"table\""),
            (100, 1500, 0, ""),
            (100, 10, 2, "ipv4_lookup = \"trie\"\nipv6_lookup = \"trie\""),
        ] {
            let (early, need) = both(&text(v4, v6, rules, lookup));
            let early = early.expect("known before the compile");
            assert!(
                early.covers(&need),
                "{v4} {v6} {rules} {lookup}: {early:?} does not cover {need:?}"
            );
            assert_eq!(early.table_chunks.is_some(), need.table_chunks.is_some());
            if need.table_chunks.is_some() {
                assert!(early.table_pages >= need.table_pages, "{early:?} {need:?}");
            }
            assert_eq!(early.table6_ranges.is_some(), need.table6_ranges.is_some());
        }
    }

    /// `auto` with a count that rule prefixes may or may not raise past the threshold is
    /// left to the compile; without rules it is known.
    #[test]
    fn auto_near_the_threshold_waits_for_the_compile() {
        // Region `a` holds one IPv6 prefix besides these.
        let min = crate::config::AUTO_TABLE6_MIN_PREFIXES - 1;
        assert!(both(&text(0, min - 1, 1, "")).0.is_none());
        let (early, need) = both(&text(0, min - 1, 0, ""));
        assert_eq!(early.map(|e| e.table6_ranges.is_some()), Some(false));
        assert!(need.table6_ranges.is_none());
        let (early, need) = both(&text(0, min, 0, ""));
        assert!(early.is_some_and(|e| e.covers(&need)));
        assert!(need.table6_ranges.is_some() == egressd_common::TABLE6_IN_PROGRAMS);
    }

    #[test]
    fn covers_asks_for_the_same_tables() {
        let small = Capacity::tries(10);
        let table = Capacity {
            table_chunks: Some(5000),
            ..Capacity::tries(10)
        };
        assert!(table.covers(&table));
        assert!(!small.covers(&table));
        assert!(!table.covers(&small));
        assert!(!Capacity::tries(9).covers(&small));
        assert!(
            !Capacity {
                table_chunks: Some(4999),
                ..table
            }
            .covers(&table)
        );
        let paged = Capacity {
            table_pages: 40,
            ..table
        };
        assert!(paged.covers(&table));
        assert!(!table.covers(&paged));
        // Pages do not matter without a table.
        assert!(small.covers(&Capacity {
            table_pages: 40,
            ..small
        }));
    }

    /// A small policy's table costs its pages and the spare, not the 2 x 64 MiB of an
    /// unpaged first level; a policy touching every /14 gets a pool of every page.
    #[test]
    fn table_memory_is_sized_to_the_policy() {
        let (_, need) = both(&text(100, 0, 0, "ipv4_lookup = \"table\""));
        // 100 /26s merge into 25 /24s in 10.0.0.0/14, and 192.0.2.0/24: two pages, no chunk.
        assert_eq!(need.table_pages, 2 + 32);
        assert_eq!(need.table_chunks, Some(256));
        // 2 x 4 KiB x (16 directory + 34 pool + 32 second-level pages + 3 map headers).
        assert_eq!(need.table_bytes(), 2 * 4096 * (16 + 34 + 32 + 3));
        assert!(need.table_bytes() < 1 << 20);
        let every: Vec<(ipnetwork::Ipv4Network, u32)> = (0..super::PAGES24)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(i << super::DIR_SHIFT);
                (ipnetwork::Ipv4Network::new(a, 24).expect("valid"), 1)
            })
            .collect();
        let cap = Capacity::sized(0, Some((0, super::pages_needed(&every))), None);
        assert_eq!(cap.table_pages, super::PAGES24 as usize);
    }
}
