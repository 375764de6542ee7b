//! The IPv4 lookup table: a DIR-24-8 multibit table (Gupta, Lin, McKeown, "Routing lookups in
//! hardware at memory access speeds", INFOCOM 1998) compiled from the policy's LPM entries,
//! its first level paged by /14.
//!
//! The kernel's LPM trie walks about one node per distinguishing bit, a dependent cache miss
//! each once it outgrows the caches (~2.7 us at 1M prefixes, docs/benchmarks.md). The table
//! answers any IPv4 longest-prefix match in at most three array reads: a 64 KiB directory
//! of the 16,384 /14s, a 4 KiB page of 1,024 /24 entries for each /14 that is not uniform
//! (only those take memory), and 512 bytes per /24 that holds a longer prefix. The layout is
//! `egressd_common::table`.
use std::collections::HashSet;

use egressd_common::table::{
    CHUNK, CHUNK_ENTRIES, DIR_SHIFT, MAX_CHUNKS, PAGE, PAGE_BYTES, PAGES24, PER_PAGE24, Page24,
};

use ipnetwork::Ipv4Network;

/// A compiled table (host byte order throughout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table4 {
    /// Directory, indexed by the top 14 bits of the address: 2^14 entries, each an entry id
    /// (every /24 of the /14 reads it) or [`PAGE`] | the index of the /14's page in `pool`.
    pub dir: Vec<u32>,
    /// Pages of the non-uniform /14s, 1,024 entries each, indexed by bits 8..18 of the
    /// address: an entry id, or [`CHUNK`] | chunk index.
    pub pool: Vec<u32>,
    /// Second level: 256 entry ids per chunk, indexed by the last 8 bits.
    pub t8: Vec<u16>,
}

/// How much of each level a compiled table fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Built {
    /// Pool pages (non-uniform /14s), at most [`PAGES24`].
    pub pages: usize,
    /// Second-level chunks (/24s holding more than one decision).
    pub chunks: usize,
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
        let mut dir: Vec<u32> = Vec::with_capacity(PAGES24 as usize);
        let mut pool: Vec<u32> = Vec::new();
        let mut t8: Vec<u16> = Vec::new();
        build(
            entries,
            &mut |id, n| dir.extend(std::iter::repeat_n(id, n)),
            &mut |page| pool.extend_from_slice(page),
            &mut |chunk| t8.extend_from_slice(chunk),
        )?;
        Ok(Self { dir, pool, t8 })
    }

    /// Pool pages.
    pub fn pages(&self) -> usize {
        self.pool.len() / PER_PAGE24
    }

    /// Second-level chunks.
    pub fn chunks(&self) -> usize {
        self.t8.len() / CHUNK_ENTRIES
    }

    /// The entry id of `addr`, as the kernel reads it; `None` where the kernel fails closed
    /// (`failsafe::NO_PAGE`): an entry names a page or chunk the table does not hold.
    pub fn lookup(&self, addr: std::net::Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        let d = *self.dir.get((a >> DIR_SHIFT) as usize)?;
        if d & PAGE == 0 {
            return Some(d);
        }
        let page = (d & !PAGE) as usize;
        let e = *self
            .pool
            .get(page * PER_PAGE24 + ((a >> 8) as usize) % PER_PAGE24)?;
        if e & CHUNK == 0 {
            return Some(e);
        }
        let i8 = (e & !CHUNK) as usize * CHUNK_ENTRIES + (a & 0xff) as usize;
        self.t8.get(i8).map(|x| u32::from(*x))
    }

    /// The directory as bytes in host byte order (what the map pages hold).
    pub fn dir_bytes(&self) -> &[u8] {
        // SAFETY: `u32` has no padding or invalid bit patterns; the length is in bytes.
        unsafe { std::slice::from_raw_parts(self.dir.as_ptr().cast(), self.dir.len() * 4) }
    }

    /// The pool as bytes in host byte order.
    pub fn pool_bytes(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.pool.as_ptr().cast(), self.pool.len() * 4) }
    }

    /// The second level as bytes in host byte order.
    pub fn t8_bytes(&self) -> &[u8] {
        // SAFETY: as above, for `u16`.
        unsafe { std::slice::from_raw_parts(self.t8.as_ptr().cast(), self.t8.len() * 2) }
    }
}

/// Builds the table of `entries` (prefix, entry id; each prefix once, any order; sorted by
/// (network, length) costs no copy) front to back, without holding it: `dir(value, n)`
/// receives the directory in order, `n` equal elements at a time, `pool(page)` each page of
/// a non-uniform /14 in order, `t8(chunk)` each second-level chunk in order. A /14 gets a
/// page when its /24 entries differ, a /24 a chunk when it holds more than one decision,
/// both numbered in address order.
///
/// # Errors
/// [`TableError`] when the entries do not fit the layout (then the sinks got part of it).
pub fn build(
    entries: &[(Ipv4Network, u32)],
    dir: &mut dyn FnMut(u32, usize),
    pool: &mut dyn FnMut(&Page24),
    t8: &mut dyn FnMut(&[u16]),
) -> Result<Built, TableError> {
    let mut pager = Pager {
        dir,
        pool,
        page: [0; PER_PAGE24],
        fill: 0,
        pages: 0,
    };
    let chunks = build24(entries, &mut |id, n| pager.run(id, n), t8)?;
    Ok(Built {
        pages: pager.pages,
        chunks,
    })
}

/// Cuts the 2^24 /24 entries [`build24`] emits into /14 pages: a page whose entries are one
/// id (no chunk) becomes that id in the directory, any other a pool page.
struct Pager<'a> {
    dir: &'a mut dyn FnMut(u32, usize),
    pool: &'a mut dyn FnMut(&Page24),
    /// The /14 being assembled, `fill` entries so far.
    page: Page24,
    fill: usize,
    pages: usize,
}

impl Pager<'_> {
    /// The next `n` /24 entries read `id`.
    fn run(&mut self, id: u32, mut n: usize) {
        while n > 0 {
            // Whole /14s of one id skip the page (chunk ids come one at a time).
            if self.fill == 0 && n >= PER_PAGE24 {
                let k = n / PER_PAGE24;
                (self.dir)(id, k);
                n -= k * PER_PAGE24;
                continue;
            }
            let k = n.min(PER_PAGE24 - self.fill);
            self.page[self.fill..self.fill + k].fill(id);
            self.fill += k;
            n -= k;
            if self.fill == PER_PAGE24 {
                let first = self.page[0];
                if first & CHUNK == 0 && self.page.iter().all(|x| *x == first) {
                    (self.dir)(first, 1);
                } else {
                    // At most 2^14 pages: the index fits below the flag.
                    (self.dir)(PAGE | self.pages as u32, 1);
                    (self.pool)(&self.page);
                    self.pages += 1;
                }
                self.fill = 0;
            }
        }
    }
}

/// The unpaged first level of `entries`: `t24(value, n)` receives the 2^24 /24 entries in
/// order, `n` equal elements at a time, `t8(chunk)` each second-level chunk in order.
/// Returns the chunks.
fn build24(
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

/// At most the pool pages `entries` need, without compiling: one per /14 holding a prefix
/// longer than /14 (a /14 holding none reads one entry throughout, from the longest prefix
/// covering it).
pub fn pages_needed(entries: &[(Ipv4Network, u32)]) -> usize {
    entries
        .iter()
        .filter(|(n, _)| n.prefix() > 14)
        .map(|(n, _)| u32::from(n.network()) >> DIR_SHIFT)
        .collect::<HashSet<_>>()
        .len()
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
            assert_eq!(t.lookup(a), Some(want), "{a}");
        }
        assert_eq!(t.chunks(), 2);
        // 10.0.0.0/14 (10.1/16 inside) and 192.0.0.0/14 differ inside; the rest is uniform.
        assert_eq!(t.pages(), 2);
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
            assert!(t.pages() <= pages_needed(&entries));
            assert_eq!(t.dir.len(), PAGES24 as usize);
            for _ in 0..2000 {
                let (n, _) = entries[rng.usize(..entries.len())];
                let host = if n.prefix() == 32 {
                    0
                } else {
                    rng.u32(..) >> n.prefix()
                };
                let a = Ipv4Addr::from(u32::from(n.network()) | host);
                assert_eq!(t.lookup(a), Some(reference(&entries, a)), "{a}");
                let b = Ipv4Addr::from(rng.u32(..));
                assert_eq!(t.lookup(b), Some(reference(&entries, b)), "{b}");
            }
        }
    }

    /// /14s that read one id throughout take no page, whatever prefixes make them so; a
    /// /14 with any difference inside gets the next page, in address order.
    #[test]
    fn uniform_fourteens_take_no_page() {
        let entries = vec![
            // Whole /14s: a /8, a /14, two /15 halves of one /14 with the same id.
            (net("10.0.0.0/8"), 1),
            (net("172.16.0.0/14"), 2),
            (net("192.168.0.0/15"), 3),
            (net("192.170.0.0/15"), 3),
            // Inside /14s: a /16 in 10.4.0.0/14, a /24 and a /28 in 203.0.112.0/14.
            (net("10.5.0.0/16"), 4),
            (net("203.0.113.0/24"), 5),
            (net("203.1.0.16/28"), 6),
        ];
        let t = Table4::compile(&entries).expect("fits");
        let dir =
            |a: &str| t.dir[(u32::from(a.parse::<Ipv4Addr>().expect("valid")) >> 18) as usize];
        assert_eq!(dir("10.0.0.0"), 1);
        assert_eq!(dir("10.255.0.0"), 1);
        assert_eq!(dir("172.17.0.0"), 2);
        assert_eq!(dir("192.168.0.0"), 3);
        assert_eq!(dir("192.171.255.255"), 3);
        assert_eq!(dir("8.8.8.8"), 0);
        assert_eq!(dir("10.4.0.0"), PAGE);
        assert_eq!(dir("203.0.0.0"), PAGE | 1);
        assert_eq!((t.pages(), t.chunks()), (2, 1));
        assert_eq!(t.pool.len(), 2 * PER_PAGE24);
        // Page 0 is 10.4.0.0/14: 10.4/16 reads 1, 10.5/16 reads 4.
        assert_eq!(t.pool[0], 1);
        assert_eq!(t.pool[256], 4);
        // Page 1 is 203.0.0.0/14: 203.1.0.0/24 points to chunk 0.
        assert_eq!(t.pool[PER_PAGE24 + 256], CHUNK);
        assert_eq!(t.lookup("203.1.0.20".parse().expect("valid")), Some(6));
        assert_eq!(t.lookup("203.0.113.9".parse().expect("valid")), Some(5));
        // An upper bound: the two /15s count, though together they make a uniform /14.
        assert_eq!(pages_needed(&entries), 3);
    }

    /// A directory entry or page entry naming a page or chunk the table does not hold is a
    /// miss (the kernel's `failsafe::NO_PAGE`), never entry 0.
    #[test]
    fn missing_pages_fail_closed() {
        let mut t =
            Table4::compile(&[(net("10.1.2.0/25"), 7), (net("10.9.0.0/16"), 3)]).expect("fits");
        assert_eq!((t.pages(), t.chunks()), (2, 1));
        let (inner, other) = (
            "10.1.2.1".parse().expect("valid"),
            "10.9.0.1".parse().expect("valid"),
        );
        assert_eq!(t.lookup(inner), Some(7));
        t.t8.clear();
        assert_eq!(t.lookup(inner), None);
        assert_eq!(t.lookup(other), Some(3));
        t.pool.truncate(PER_PAGE24);
        assert_eq!(t.lookup(other), None);
        assert_eq!(t.lookup("11.0.0.1".parse().expect("valid")), Some(0));
    }

    /// The streaming build hands out the same levels as the compile, and counts them.
    #[test]
    fn build_counts_what_it_emits() {
        let entries = vec![
            (net("10.1.2.0/25"), 7),
            (net("10.9.0.0/16"), 3),
            (net("0.0.0.0/1"), 2),
        ];
        let (mut dir, mut pages, mut chunks) = (0usize, 0usize, 0usize);
        let built = build(
            &entries,
            &mut |_, n| dir += n,
            &mut |_| pages += 1,
            &mut |_| chunks += 1,
        )
        .expect("fits");
        assert_eq!(dir, PAGES24 as usize);
        assert_eq!(built, Built { pages, chunks });
        assert_eq!(
            built,
            Built {
                pages: 2,
                chunks: 1
            }
        );
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
