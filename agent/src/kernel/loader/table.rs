//! The kernel side of the IPv4 lookup table ([`crate::policy::table`]): sizing its maps when
//! the programs are loaded, and copying a compiled table into a set's maps through `mmap`.
use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use egressd_common::{
    maps,
    table::{CHUNKS_PER_PAGE8, MAX_CHUNKS, PAGE_BYTES, PAGES24},
    table6::{INDEX_ENTRIES, MAX_RANGES},
};
use ipnetwork::Ipv4Network;

use crate::{
    config::{AUTO_TABLE_MIN_PREFIXES, AUTO_TABLE6_MIN_PREFIXES, Ipv4Lookup, Ipv6Lookup},
    policy::{Policy, table::pages8, table6::set_bytes},
};

/// Second-level chunks a table gets beyond what the first policy needs (2 MiB per set), so
/// that it can grow on reload; and a quarter more on top.
const MIN_CHUNKS: usize = 4096;

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
            table6_ranges: None,
        }
    }

    /// What `policy` asks for: its prefix counts, and a table when its `ipv4_lookup` says so
    /// (or, for `auto`, when it has at least [`AUTO_TABLE_MIN_PREFIXES`] IPv4 prefixes),
    /// with a quarter more chunks than it needs plus 4096 (2 MiB) so that it can grow on
    /// reload. Likewise an IPv6 table when `ipv6_lookup` says so (for `auto`, from
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
        Self {
            table6_ranges: table6.then(|| {
                let need = 2 * policy.lpm_v6.len() + 1;
                (need + need / 4 + MIN_CHUNKS).min(MAX_RANGES)
            }),
            prefixes: policy.lpm_v4.len().max(policy.lpm_v6.len()),
            table_chunks: table.then(|| {
                let need = chunks_needed(&policy.lpm_v4);
                (need + need / 4 + MIN_CHUNKS).min(MAX_CHUNKS as usize)
            }),
        }
    }

    /// Kernel memory of the tables of both sets in bytes (0 without a table).
    pub fn table_bytes(&self) -> usize {
        self.table_chunks
            .map_or(0, |c| 2 * (PAGES24 as usize + pages8(c)) * PAGE_BYTES)
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
        for set in 0..2 {
            loader.map_max_entries(maps::TABLE24[set], PAGES24);
            loader.map_max_entries(maps::TABLE8[set], pages);
        }
    }
    if let Some(b) = cap.table6_ranges {
        let ranges = u32::try_from(b).unwrap_or(u32::MAX);
        for set in 0..2 {
            loader.map_max_entries(maps::TABLE6_INDEX[set], INDEX_ENTRIES);
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

/// The IPv6 table ranges the loaded maps hold (`None`: no table), read from the maps.
pub fn loaded_ranges(ebpf: &Ebpf) -> anyhow::Result<Option<usize>> {
    for set in 0..2 {
        if elements(ebpf, maps::TABLE6_INDEX[set])? < INDEX_ENTRIES as usize {
            return Ok(None);
        }
    }
    let a = elements(ebpf, maps::TABLE6_RANGES[0])?;
    let b = elements(ebpf, maps::TABLE6_RANGES[1])?;
    Ok(Some(a.min(b)))
}

/// The table chunks the loaded maps hold (`None`: no table), read from the maps themselves
/// so that adopted pinned maps are described as they are.
pub fn loaded_chunks(ebpf: &Ebpf) -> anyhow::Result<Option<usize>> {
    let pages = |name: &str| -> anyhow::Result<usize> {
        match ebpf.map(name) {
            Some(aya::maps::Map::Array(data)) => Ok(data.info()?.max_entries() as usize),
            _ => bail!("map {name} missing from the eBPF object or not an array"),
        }
    };
    if pages(maps::TABLE24[0])? < PAGES24 as usize || pages(maps::TABLE24[1])? < PAGES24 as usize {
        return Ok(None);
    }
    let p8 = pages(maps::TABLE8[0])?.min(pages(maps::TABLE8[1])?);
    Ok(Some(p8 * CHUNKS_PER_PAGE8))
}

/// A shared mapping of a `BPF_F_MMAPABLE` array map (kernel doc: `BPF_F_MMAPABLE` in
/// `include/uapi/linux/bpf.h`), unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(ebpf: &Ebpf, name: &str, write: bool) -> anyhow::Result<Self> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            bail!("map {name} missing from the eBPF object or not an array");
        };
        // The kernel lays the elements out every `value_size` rounded up to 8 bytes, and
        // maps whole pages.
        let info = data.info()?;
        let len = (info.max_entries() as usize * (info.value_size() as usize).next_multiple_of(8))
            .next_multiple_of(PAGE_BYTES);
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps `len` bytes of the array (its whole value area) shared; the pointer
        // is only used within `len` and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of {name} ({len} bytes)"));
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Copies `bytes` to the start of array map `name` (the rest is left as it is: the table
/// never reads past what it wrote).
///
/// # Errors
/// The map is missing, cannot be mapped, or is smaller than `bytes`.
pub fn write(ebpf: &Ebpf, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let m = Mapping::new(ebpf, name, true)?;
    if bytes.len() > m.len {
        bail!(
            "{name} holds {} bytes, the table needs {}",
            m.len,
            bytes.len()
        );
    }
    // SAFETY: `bytes.len() <= m.len`, and the mapping does not alias `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.ptr.cast::<u8>(), bytes.len()) };
    Ok(())
}

/// Whether array map `name` starts with exactly `bytes`.
///
/// # Errors
/// The map is missing or cannot be mapped.
pub fn holds(ebpf: &Ebpf, name: &str, bytes: &[u8]) -> anyhow::Result<bool> {
    let m = Mapping::new(ebpf, name, false)?;
    if bytes.len() > m.len {
        return Ok(false);
    }
    // SAFETY: reads `bytes.len() <= m.len` bytes of the mapping.
    let have = unsafe { std::slice::from_raw_parts(m.ptr.cast::<u8>(), bytes.len()) };
    Ok(have == bytes)
}
