//! The IPv6 lookup table: the address space cut into disjoint ranges, each deciding one entry
//! id, binary-searched among the ranges of the destination's bucket: its /16, or in a /16
//! holding more than [`DENSE`] ranges a longer prefix (/20, /24, ... /40) through chunks of
//! the index, one per [`STRIDE`] bits (the layout is `egressd_common::table6`; Little Snitch
//! for Linux searches sorted ranges too, DPDK's rte_fib6 indexes with multibit strides).
//!
//! A 128-bit address rules out a direct table like IPv4's DIR-24-8, and a multibit trie with
//! 8-bit strides down to every prefix's length costs a 2 KiB chunk per stride of every long
//! prefix (hundreds of MiB for 256k /32-/64 prefixes). Sorted ranges cost 24 bytes per range
//! (at most two per prefix plus one) and a 512 KiB index; the chunks (128 bytes each), one
//! per dense bucket and at most [`chunk_budget`] of them (one per 8 ranges of room, plus
//! 16), cut the search to a few ranges in one or two cache lines. They are small on
//! purpose: a lookup that misses the cache and the TLB on a large index costs more than
//! the search steps it saves.
//! A lookup reads one index element, one per chunk level, and about log2(ranges in the
//! bucket) + 1 ranges.
use std::{cmp::Reverse, collections::BinaryHeap};

use egressd_common::{
    table::PAGE_BYTES,
    table6::{
        CHUNK, CHUNK_ENTRIES, IN_USE, INDEX_ENTRIES, MAX_RANGES, Range6, SEARCH_STEPS, STRIDE,
        SUB_LEVELS, chunk_budget, index_entries,
    },
};
use ipnetwork::Ipv6Network;

/// A bucket with more ranges than this gets a chunk, while the budget lasts (a search of 8
/// takes 4 reads; a chunk, 1).
pub const DENSE: u32 = 8;

/// A compiled table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table6 {
    /// [`IN_USE`] flag (1), then per /16 bucket, then per chunk [`CHUNK_ENTRIES`] buckets: the
    /// index of the last range starting before the bucket (low 32 bits) and one past its last
    /// range (high 32 bits), or [`CHUNK`] | the chunk number.
    pub index: Vec<u64>,
    /// The ranges, ascending; the first starts at `::`.
    pub ranges: Vec<Range6>,
    /// Most chunks the index could have had: the maps' index must have room for that many.
    pub budget: u32,
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

/// First address of range `r`.
fn start(r: &Range6) -> u128 {
    (u128::from(r.hi) << 64) | u128::from(r.lo)
}

/// The buckets of the `2^width` values of the `width` address bits above bit `shift` among
/// `ranges[first..end]`, which all start in one parent bucket: for each, the index of its
/// first range and one past its last (equal when no range starts in it).
fn split(ranges: &[Range6], first: usize, end: usize, shift: u32, width: u32) -> Vec<(u32, u32)> {
    let n = 1usize << width;
    // starts[v]: the first range whose bits are >= v.
    let mut starts = vec![end as u32; n + 1];
    let mut v = 0usize;
    for (k, r) in ranges.iter().enumerate().take(end).skip(first) {
        let bits = ((start(r) >> shift) as usize) & (n - 1);
        while v <= bits {
            starts[v] = k as u32;
            v += 1;
        }
    }
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// A bucket waiting for a chunk: (its range count, its index element (lowest first), its
/// prefix length, its first range).
type Dense = (u32, Reverse<usize>, u32, u32);

/// Appends the index element of the bucket of ranges `first..end` (prefix length `prefix`)
/// and queues it for a chunk when it is dense and a chunk level remains below it.
fn push_bucket(
    index: &mut Vec<u64>,
    dense: &mut BinaryHeap<Dense>,
    first: u32,
    end: u32,
    prefix: u32,
) {
    // The range before the bucket's first covers its start; range 0 starts at `::`, so the
    // bucket at `::` (the only one whose first range can be 0) starts with it.
    index.push(u64::from(first.saturating_sub(1)) | (u64::from(end) << 32));
    if end - first > DENSE && prefix < 16 + STRIDE * SUB_LEVELS {
        dense.push((end - first, Reverse(index.len() - 1), prefix, first));
    }
}

impl Table6 {
    /// Compiles `entries` (prefix, entry id; any order, each prefix once) with at most
    /// `budget` chunks (what the maps have room for: [`chunk_budget`] of their ranges when
    /// egressd sized them), given to the densest buckets first (ties: the lower index
    /// element), so the result depends only on the entries and the budget.
    ///
    /// # Errors
    /// [`TooManyRanges`] past [`MAX_RANGES`].
    pub fn compile(entries: &[(Ipv6Network, u32)], budget: u32) -> Result<Self, TooManyRanges> {
        let ranges: Vec<Range6> = {
            let r = ranges(entries);
            if r.len() > MAX_RANGES {
                return Err(TooManyRanges(r.len()));
            }
            r.iter()
                .map(|&(at, id)| Range6 {
                    hi: (at >> 64) as u64,
                    lo: at as u64,
                    id,
                    _pad: 0,
                })
                .collect()
        };
        let mut index = Vec::with_capacity(INDEX_ENTRIES as usize);
        index.push(1);
        debug_assert_eq!(IN_USE, 0);
        // The /16 buckets: the top 8 bits, then the next 8.
        let mut dense = BinaryHeap::new();
        for (first8, end8) in split(&ranges, 0, ranges.len(), 120, 8) {
            for (first, end) in split(&ranges, first8 as usize, end8 as usize, 112, 8) {
                push_bucket(&mut index, &mut dense, first, end, 16);
            }
        }
        debug_assert_eq!(index.len(), INDEX_ENTRIES as usize);
        let mut chunks = 0u32;
        while chunks < budget {
            let Some((_, Reverse(at), prefix, first)) = dense.pop() else {
                break;
            };
            let end = (index[at] >> 32) as u32;
            index[at] = CHUNK | u64::from(chunks);
            chunks += 1;
            let shift = 128 - prefix - STRIDE;
            for (sub_first, sub_end) in split(&ranges, first as usize, end as usize, shift, STRIDE)
            {
                push_bucket(&mut index, &mut dense, sub_first, sub_end, prefix + STRIDE);
            }
        }
        debug_assert_eq!(index.len(), index_entries(chunks) as usize);
        Ok(Self {
            index,
            ranges,
            budget,
        })
    }

    /// Chunks in the index.
    pub fn chunks(&self) -> usize {
        (self.index.len() - INDEX_ENTRIES as usize) / CHUNK_ENTRIES as usize
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
        let mut bucket = self.index[1 + (hi >> 48) as usize];
        let mut shift = 48 - STRIDE;
        for _ in 0..SUB_LEVELS {
            if bucket & CHUNK == 0 {
                break;
            }
            let chunk = bucket as u32 as usize;
            bucket = self.index[INDEX_ENTRIES as usize
                + chunk * CHUNK_ENTRIES as usize
                + ((hi >> shift) as usize & (CHUNK_ENTRIES as usize - 1))];
            shift = shift.wrapping_sub(STRIDE);
        }
        assert_eq!(bucket & CHUNK, 0, "chunks nest at most {SUB_LEVELS} deep");
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
/// whole pages, as `BPF_F_MMAPABLE` arrays are): the index with its [`chunk_budget`] chunks
/// and the ranges.
pub fn set_bytes(ranges: usize) -> usize {
    (index_entries(chunk_budget(ranges)) as usize * 8).next_multiple_of(PAGE_BYTES)
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
        let t = Table6::compile(&entries, 1 << 13).expect("fits");
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
        let empty = Table6::compile(&[], 16).expect("fits");
        assert_eq!(empty.len(), 1);
        assert_eq!(empty.lookup(Ipv6Addr::LOCALHOST), 0);
    }

    #[test]
    fn random_policies_match_brute_force() {
        let mut rng = fastrand::Rng::with_seed(0x7ab1e6);
        let (mut nested, mut exhausted) = (0, 0);
        for round in 0..30 {
            let mut entries = Vec::new();
            let mut seen = std::collections::HashSet::new();
            // Clustered in three /16s (one at `::`) so prefixes nest, touch and share buckets
            // at every chunk level.
            for id in 1..300u32 {
                let len = rng.u8(8..=128);
                let top: u128 = [0x2001, 0x2600, 0][rng.usize(..3)];
                let a = (top << 112) | (rng.u128(..) >> 16 >> rng.u32(0..40));
                let n = Ipv6Network::new(Ipv6Addr::from(a), len).expect("valid length");
                let n = Ipv6Network::new(n.network(), len).expect("valid length");
                if seen.insert(n) {
                    entries.push((n, id % 7));
                }
            }
            // No chunks (the layout of an index egressd sized before them), budgets that run
            // out, and one that does not.
            let budget = [0, 16, 48, 1 << 13][round % 4];
            let t = Table6::compile(&entries, budget).expect("fits");
            let unlimited = Table6::compile(&entries, 1 << 13).expect("fits").chunks();
            assert_eq!(
                t.chunks(),
                unlimited.min(budget as usize),
                "budget {budget}"
            );
            exhausted += usize::from(unlimited > budget as usize);
            nested += t.index[INDEX_ENTRIES as usize..]
                .iter()
                .filter(|e| *e & CHUNK != 0)
                .count();
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
        assert!(
            nested > 0,
            "no chunk under a chunk: the deeper levels went untested"
        );
        assert!(
            exhausted > 0,
            "no budget ran out: the densest-first choice went untested"
        );
    }

    #[test]
    fn dense_buckets_get_chunks_densest_first() {
        // 40 /48s in 2001:db8::/32 and 12 /48s in 2a00::/16, none adjacent (each makes two
        // ranges).
        let mut entries = Vec::new();
        for i in 0..40u128 {
            entries.push((
                Ipv6Network::new(Ipv6Addr::from((0x2001_0db8 << 96) | ((2 * i) << 80)), 48)
                    .expect("valid"),
                1,
            ));
        }
        for i in 0..12u128 {
            entries.push((
                Ipv6Network::new(Ipv6Addr::from((0x2a00 << 112) | (i << 96)), 48).expect("valid"),
                2,
            ));
        }
        let t = Table6::compile(&entries, 1 << 13).expect("fits");
        // The densest first: 2001::/16 (80 ranges), then its /20 2001::/20 and each longer
        // bucket down to 2001:db8::/32 and its /36 (80 ranges each); then 2a00::/16 (24), its
        // /20, /24 and /28 2a00::/28 (24 each); its /32s hold 2 each.
        assert_eq!(t.chunks(), 6 + 4);
        assert_eq!(t.index[1 + 0x2001], CHUNK);
        assert_eq!(t.index[1 + 0x2a00], CHUNK | 6);
        for (n, id) in &entries {
            assert_eq!(t.lookup(n.network()), *id);
        }
        assert_eq!(t.lookup("2001:db8:ffff::".parse().expect("valid")), 0);
    }
}
