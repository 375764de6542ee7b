//! The IPv6 lookup table: the address space cut into disjoint ranges, each deciding one entry
//! id, binary-searched among the ranges that start in the destination's /16 (the layout is
//! `egressd_common::table6`; Little Snitch for Linux searches sorted ranges too).
//!
//! A 128-bit address rules out a direct table like IPv4's DIR-24-8, and a multibit trie with
//! 8-bit strides costs a 1 KiB chunk per stride of every long prefix (hundreds of MiB for
//! 256k /32-/64 prefixes). Sorted ranges cost 24 bytes per range (at most two per prefix
//! plus one) and a 512 KiB index; a lookup reads one index element and does about
//! log2(ranges in the /16) range reads.
use egressd_common::{
    table::PAGE_BYTES,
    table6::{IN_USE, INDEX_ENTRIES, MAX_RANGES, Range6, SEARCH_STEPS},
};
use ipnetwork::Ipv6Network;

/// A compiled table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table6 {
    /// [`IN_USE`] flag (1), then per /16 bucket: the index of the last range starting before
    /// it (low 32 bits) and one past its last range (high 32 bits).
    pub index: Vec<u64>,
    /// The ranges, ascending; the first starts at `::`.
    pub ranges: Vec<Range6>,
}

/// Why a policy does not fit the table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the IPv6 prefixes make {0} ranges; the table holds at most {MAX_RANGES}")]
pub struct TooManyRanges(pub usize);

/// The disjoint ranges of `entries` (prefix, entry id; each prefix once, any order) as
/// (first address, entry id), ascending, starting at `::`, adjacent ranges with the same id
/// joined. Addresses no prefix covers read entry 0.
pub fn ranges(entries: &[(Ipv6Network, u32)]) -> Vec<(u128, u32)> {
    let mut sorted: Vec<(u128, u8, u32)> = entries
        .iter()
        .map(|(n, id)| (u128::from(n.network()), n.prefix(), *id))
        .collect();
    sorted.sort_unstable_by_key(|&(net, len, _)| (net, len));
    let mut out: Vec<(u128, u32)> = vec![(0, 0)];
    let emit = |out: &mut Vec<(u128, u32)>, at: u128, id: u32| {
        let n = out.len();
        if out[n - 1].0 == at {
            out[n - 1].1 = id;
            if n >= 2 && out[n - 2].1 == id {
                out.pop();
            }
        } else if out[n - 1].1 != id {
            out.push((at, id));
        }
    };
    // Open prefixes, outermost first: (last address, entry id).
    let mut open: Vec<(u128, u32)> = Vec::new();
    let close_until = |out: &mut Vec<(u128, u32)>, open: &mut Vec<(u128, u32)>, at: u128| {
        while let Some(&(last, _)) = open.last() {
            if last >= at {
                break;
            }
            open.pop();
            if last != u128::MAX {
                emit(out, last + 1, open.last().map_or(0, |o| o.1));
            }
        }
    };
    for (net, len, id) in sorted {
        close_until(&mut out, &mut open, net);
        emit(&mut out, net, id);
        let last = net | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        open.push((last, id));
    }
    close_until(&mut out, &mut open, u128::MAX);
    // Whatever is still open ends at the last address.
    out
}

impl Table6 {
    /// Compiles `entries` (prefix, entry id; any order, each prefix once).
    ///
    /// # Errors
    /// [`TooManyRanges`] past [`MAX_RANGES`].
    pub fn compile(entries: &[(Ipv6Network, u32)]) -> Result<Self, TooManyRanges> {
        let r = ranges(entries);
        if r.len() > MAX_RANGES {
            return Err(TooManyRanges(r.len()));
        }
        let ranges: Vec<Range6> = r
            .iter()
            .map(|&(at, id)| Range6 {
                hi: (at >> 64) as u64,
                lo: at as u64,
                id,
                _pad: 0,
            })
            .collect();
        // starts[b]: the first range whose top 16 bits are >= b (b = 0..=65536).
        let mut starts = vec![0u32; (1 << 16) + 1];
        let mut bucket = 0usize;
        for (k, &(at, _)) in r.iter().enumerate() {
            let top = (at >> 112) as usize;
            while bucket <= top {
                starts[bucket] = k as u32;
                bucket += 1;
            }
        }
        for s in &mut starts[bucket..] {
            *s = r.len() as u32;
        }
        let mut index = Vec::with_capacity(INDEX_ENTRIES as usize);
        index.push(1);
        for b in 0..1 << 16 {
            // Range 0 starts at `::`, so every bucket but the first starts after it.
            let base = starts[b].saturating_sub(1);
            index.push(u64::from(base) | (u64::from(starts[b + 1]) << 32));
        }
        debug_assert_eq!(index.len(), INDEX_ENTRIES as usize);
        debug_assert_eq!(IN_USE, 0);
        Ok(Self { index, ranges })
    }

    /// Ranges in the table.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the table has no range (never: range 0 starts at `::`).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The entry id of `addr`, as the kernel reads it (the same search).
    pub fn lookup(&self, addr: std::net::Ipv6Addr) -> u32 {
        let a = u128::from(addr);
        let (hi, lo) = ((a >> 64) as u64, a as u64);
        let bucket = self.index[1 + (hi >> 48) as usize];
        let mut base = bucket as u32 as usize;
        let end = (bucket >> 32) as usize;
        // Binary lifting, as the kernel does it (see `ebpf/src/decide.rs`).
        for s in (0..SEARCH_STEPS).rev() {
            let probe = base + (1 << s);
            if probe < end {
                let r = &self.ranges[probe];
                if r.hi < hi || (r.hi == hi && r.lo <= lo) {
                    base = probe;
                }
            }
        }
        self.ranges[base].id
    }

    /// The index as bytes in host byte order (what the map holds).
    pub fn index_bytes(&self) -> &[u8] {
        // SAFETY: `u64` has no padding or invalid bit patterns; the length is in bytes.
        unsafe {
            std::slice::from_raw_parts(
                self.index.as_ptr().cast(),
                std::mem::size_of_val(&self.index[..]),
            )
        }
    }

    /// The ranges as bytes in host byte order.
    pub fn ranges_bytes(&self) -> &[u8] {
        // SAFETY: `Range6` is `repr(C)` with its padding written out as a field (zero).
        unsafe {
            std::slice::from_raw_parts(
                self.ranges.as_ptr().cast(),
                std::mem::size_of_val(&self.ranges[..]),
            )
        }
    }
}

/// Kernel memory of one set's table for `ranges` ranges, in bytes (each map rounded up to
/// whole pages, as `BPF_F_MMAPABLE` arrays are).
pub fn set_bytes(ranges: usize) -> usize {
    (INDEX_ENTRIES as usize * 8).next_multiple_of(PAGE_BYTES)
        + (ranges * std::mem::size_of::<Range6>()).next_multiple_of(PAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn net(s: &str) -> Ipv6Network {
        s.parse().expect("valid CIDR")
    }

    fn reference(entries: &[(Ipv6Network, u32)], a: Ipv6Addr) -> u32 {
        entries
            .iter()
            .filter(|(n, _)| n.contains(a))
            .max_by_key(|(n, _)| n.prefix())
            .map_or(0, |(_, id)| *id)
    }

    #[test]
    fn nested_prefixes_and_edges() {
        let entries = vec![
            (net("2001:db8::/32"), 1),
            (net("2001:db8:1::/48"), 2),
            (net("2001:db8:1:2::/64"), 3),
            (net("2001:db8:1:2::1/128"), 4),
            (net("ffff:ffff:ffff:ffff::/64"), 5),
            (net("::/0"), 6),
        ];
        let t = Table6::compile(&entries).expect("fits");
        for (a, want) in [
            ("2001:db8:1:2::1", 4),
            ("2001:db8:1:2::2", 3),
            ("2001:db8:1:3::", 2),
            ("2001:db8:2::", 1),
            ("2001:db9::", 6),
            ("::", 6),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 5),
            ("ffff:ffff:ffff:fffe::1", 6),
        ] {
            let a: Ipv6Addr = a.parse().expect("valid address");
            assert_eq!(t.lookup(a), want, "{a}");
        }
        let empty = Table6::compile(&[]).expect("fits");
        assert_eq!(empty.len(), 1);
        assert_eq!(empty.lookup(Ipv6Addr::LOCALHOST), 0);
    }

    #[test]
    fn random_policies_match_brute_force() {
        let mut rng = fastrand::Rng::with_seed(0x7ab1e6);
        for _ in 0..30 {
            let mut entries = Vec::new();
            let mut seen = std::collections::HashSet::new();
            // Clustered in two /16s so prefixes nest, touch and share buckets.
            for id in 1..300u32 {
                let len = rng.u8(8..=128);
                let top: u128 = if rng.bool() { 0x2001 } else { 0x2600 };
                let a = (top << 112) | (rng.u128(..) >> 16 >> rng.u32(0..40));
                let n = Ipv6Network::new(Ipv6Addr::from(a), len).expect("valid length");
                let n = Ipv6Network::new(n.network(), len).expect("valid length");
                if seen.insert(n) {
                    entries.push((n, id % 7));
                }
            }
            let t = Table6::compile(&entries).expect("fits");
            for _ in 0..2000 {
                let (n, _) = entries[rng.usize(..entries.len())];
                let host = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                let a = Ipv6Addr::from(u128::from(n.network()) | (rng.u128(..) & host));
                assert_eq!(t.lookup(a), reference(&entries, a), "{a}");
                let last = Ipv6Addr::from(u128::from(n.network()) | host);
                assert_eq!(t.lookup(last), reference(&entries, last), "{last}");
                let b = Ipv6Addr::from(rng.u128(..));
                assert_eq!(t.lookup(b), reference(&entries, b), "{b}");
            }
        }
    }
}
