//! The IPv4 lookup table: a DIR-24-8 multibit table (Gupta, Lin, McKeown, "Routing lookups in
//! hardware at memory access speeds", INFOCOM 1998) compiled from the policy's LPM entries.
//!
//! The kernel's LPM trie walks about one node per distinguishing bit, a dependent cache miss
//! each once it outgrows the caches (~2.7 us at 1M prefixes, docs/benchmarks.md). The table
//! answers any IPv4 longest-prefix match in at most two array reads, at a fixed 64 MiB for
//! the first level plus 512 bytes per /24 that holds a longer prefix. The layout is
//! `egressd_common::table`.
use egressd_common::table::{CHUNK, CHUNK_ENTRIES, MAX_CHUNKS, PAGE_BYTES};

use ipnetwork::Ipv4Network;

/// A compiled table. `t24` has 2^24 entries; `t8` has `chunks() * 256`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table4 {
    /// First level, indexed by the top 24 bits of the address (host byte order): an entry
    /// id, or [`CHUNK`] | chunk index.
    pub t24: Vec<u32>,
    /// Second level: 256 entry ids per chunk, indexed by the last 8 bits.
    pub t8: Vec<u16>,
}

/// Why a policy does not fit a table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// An entry id above `u16::MAX` (the second level stores `u16`).
    #[error("entry id {0} does not fit the table's 16-bit second level")]
    EntryId(u32),
    /// More /24s hold a longer prefix than [`MAX_CHUNKS`].
    #[error("{0} /24s hold a longer prefix; the table holds at most {MAX_CHUNKS}")]
    Chunks(usize),
}

impl Table4 {
    /// Compiles `entries` (prefix, entry id), any order, each prefix once. The longest
    /// prefix covering an address decides it; addresses no prefix covers read entry 0.
    ///
    /// # Errors
    /// [`TableError`] when the entries do not fit the layout.
    pub fn compile(entries: &[(Ipv4Network, u32)]) -> Result<Self, TableError> {
        let mut t24: Vec<u32> = Vec::with_capacity(1 << 24);
        let mut t8: Vec<u16> = Vec::new();
        build(
            entries,
            &mut |id, n| t24.extend(std::iter::repeat_n(id, n)),
            &mut |chunk| t8.extend_from_slice(chunk),
        )?;
        Ok(Self { t24, t8 })
    }

    /// Second-level chunks.
    pub fn chunks(&self) -> usize {
        self.t8.len() / CHUNK_ENTRIES
    }

    /// The entry id of `addr`, as the kernel reads it.
    pub fn lookup(&self, addr: std::net::Ipv4Addr) -> u32 {
        let a = u32::from(addr);
        let e = self.t24[(a >> 8) as usize];
        if e & CHUNK == 0 {
            e
        } else {
            u32::from(self.t8[(e & !CHUNK) as usize * CHUNK_ENTRIES + (a & 0xff) as usize])
        }
    }

    /// The first level as bytes in host byte order (what the map pages hold).
    pub fn t24_bytes(&self) -> &[u8] {
        // SAFETY: `u32` has no padding or invalid bit patterns; the length is in bytes.
        unsafe { std::slice::from_raw_parts(self.t24.as_ptr().cast(), self.t24.len() * 4) }
    }

    /// The second level as bytes in host byte order.
    pub fn t8_bytes(&self) -> &[u8] {
        // SAFETY: as above, for `u16`.
        unsafe { std::slice::from_raw_parts(self.t8.as_ptr().cast(), self.t8.len() * 2) }
    }
}

/// Builds the table of `entries` (prefix, entry id; each prefix once, any order; sorted by
/// (network, length) costs no copy) front to back, without holding it: `t24(value, n)`
/// receives the first level in order, `n` equal elements at a time, `t8(chunk)` each
/// second-level chunk in order. A /24 gets a chunk when it holds more than one decision,
/// numbered in address order. Returns the chunks.
///
/// # Errors
/// [`TableError`] when the entries do not fit the layout (then the sinks got part of it).
pub fn build(
    entries: &[(Ipv4Network, u32)],
    t24: &mut dyn FnMut(u32, usize),
    t8: &mut dyn FnMut(&[u16]),
) -> Result<usize, TableError> {
    if let Some((_, id)) = entries.iter().find(|(_, id)| *id > u32::from(u16::MAX)) {
        return Err(TableError::EntryId(*id));
    }
    let key = |(n, _): &(Ipv4Network, u32)| (u32::from(n.network()), n.prefix());
    let sorted: Vec<(Ipv4Network, u32)>;
    let entries = if entries.is_sorted_by_key(key) {
        entries
    } else {
        let mut v = entries.to_vec();
        v.sort_unstable_by_key(key);
        sorted = v;
        &sorted
    };
    let mut b = Builder {
        t24,
        t8,
        block: [0; CHUNK_ENTRIES],
        chunks: 0,
    };
    // Open prefixes, outermost first: (one past the last address, entry id).
    let mut open: Vec<(u64, u32)> = Vec::new();
    let mut pos = 0u64;
    for (net, id) in entries {
        let start = u64::from(u32::from(net.network()));
        while let Some(&(end, _)) = open.last() {
            if end > start {
                break;
            }
            let id = open.last().map_or(0, |o| o.1);
            b.segment(pos, end, id)?;
            pos = pos.max(end);
            open.pop();
        }
        b.segment(pos, start, open.last().map_or(0, |o| o.1))?;
        pos = start;
        open.push((start + (1u64 << (32 - u32::from(net.prefix()))), *id));
    }
    while let Some(&(end, id)) = open.last() {
        b.segment(pos, end, id)?;
        pos = pos.max(end);
        open.pop();
    }
    b.segment(pos, 1 << 32, 0)?;
    Ok(b.chunks)
}

/// [`build`]'s state: the /24 being assembled when a segment ends inside one.
struct Builder<'a> {
    t24: &'a mut dyn FnMut(u32, usize),
    t8: &'a mut dyn FnMut(&[u16]),
    /// Entry ids of the addresses of the current /24 (ids fit 16 bits, checked first).
    block: [u16; CHUNK_ENTRIES],
    chunks: usize,
}

impl Builder<'_> {
    /// Addresses `start..end` (`end` exclusive, up to 2^32) read `id`; segments come in
    /// address order without gaps.
    fn segment(&mut self, start: u64, end: u64, id: u32) -> Result<(), TableError> {
        let mut a = start;
        while a < end {
            if a & 0xff == 0 && end - a >= 256 {
                let n = (end - a) >> 8;
                (self.t24)(id, n as usize);
                a += n << 8;
                continue;
            }
            let block_end = (a | 0xff) + 1;
            let upto = end.min(block_end);
            // Ids were checked to fit 16 bits.
            self.block[(a & 0xff) as usize..=((upto - 1) & 0xff) as usize].fill(id as u16);
            a = upto;
            if a == block_end {
                let first = self.block[0];
                if self.block.iter().all(|x| *x == first) {
                    (self.t24)(u32::from(first), 1);
                } else {
                    if self.chunks >= MAX_CHUNKS as usize {
                        return Err(TableError::Chunks(self.chunks + 1));
                    }
                    (self.t24)(CHUNK | self.chunks as u32, 1);
                    (self.t8)(&self.block);
                    self.chunks += 1;
                }
            }
        }
        Ok(())
    }
}

/// Second-level pages needed for `chunks` chunks.
pub fn pages8(chunks: usize) -> usize {
    (chunks * CHUNK_ENTRIES * 2).div_ceil(PAGE_BYTES).max(1)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("valid CIDR")
    }

    /// Longest match by brute force over the entries.
    fn reference(entries: &[(Ipv4Network, u32)], a: Ipv4Addr) -> u32 {
        entries
            .iter()
            .filter(|(n, _)| n.contains(a))
            .max_by_key(|(n, _)| n.prefix())
            .map_or(0, |(_, id)| *id)
    }

    #[test]
    fn nested_prefixes_longest_wins_in_any_order() {
        // A /32 inside a /28 inside a /24 inside a /16 inside a /8, listed longest first.
        let entries = vec![
            (net("10.1.2.3/32"), 5),
            (net("10.1.2.0/28"), 4),
            (net("10.1.2.0/24"), 3),
            (net("10.1.0.0/16"), 2),
            (net("10.0.0.0/8"), 1),
            (net("192.0.2.128/25"), 6),
        ];
        let t = Table4::compile(&entries).expect("fits");
        for (a, want) in [
            ("10.1.2.3", 5),
            ("10.1.2.4", 4),
            ("10.1.2.16", 3),
            ("10.1.3.1", 2),
            ("10.2.0.1", 1),
            ("11.0.0.1", 0),
            ("192.0.2.200", 6),
            ("192.0.2.1", 0),
        ] {
            let a: Ipv4Addr = a.parse().expect("valid address");
            assert_eq!(t.lookup(a), want, "{a}");
        }
        assert_eq!(t.chunks(), 2);
    }

    #[test]
    fn random_policies_match_brute_force() {
        let mut rng = fastrand::Rng::with_seed(0xd124);
        for _ in 0..20 {
            let mut entries: Vec<(Ipv4Network, u32)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            // Prefixes clustered in 10.0.0.0/12 so they nest and share /24s.
            for id in 1..300u32 {
                let len = rng.u8(8..=32);
                let a = 0x0a00_0000 | (rng.u32(..) & 0x000f_ffff);
                let n = Ipv4Network::new(Ipv4Addr::from(a), len).expect("valid length");
                let n = Ipv4Network::new(n.network(), len).expect("valid length");
                if seen.insert(n) {
                    entries.push((n, id));
                }
            }
            let t = Table4::compile(&entries).expect("fits");
            for _ in 0..2000 {
                let (n, _) = entries[rng.usize(..entries.len())];
                let host = if n.prefix() == 32 {
                    0
                } else {
                    rng.u32(..) >> n.prefix()
                };
                let a = Ipv4Addr::from(u32::from(n.network()) | host);
                assert_eq!(t.lookup(a), reference(&entries, a), "{a}");
                let b = Ipv4Addr::from(rng.u32(..));
                assert_eq!(t.lookup(b), reference(&entries, b), "{b}");
            }
        }
    }

    #[test]
    fn entry_ids_beyond_16_bits_are_refused() {
        let e = Table4::compile(&[(net("10.0.0.0/25"), 70_000)]).expect_err("too large");
        assert_eq!(e, TableError::EntryId(70_000));
    }

    #[test]
    fn pages_round_up() {
        assert_eq!(pages8(0), 1);
        assert_eq!(pages8(8), 1);
        assert_eq!(pages8(9), 2);
    }
}
