//! Destination lookup in isolation: tiny `cgroup_skb` programs, assembled here, that do only
//! the lookup of the packet's destination, so `BPF_PROG_TEST_RUN` times one lookup and
//! nothing else:
//!
//! - `trivial`: `r0 = 1; exit` (the test-run overhead that the other figures subtract);
//! - `lpm4` / `lpm6`: one `bpf_map_lookup_elem` in a `BPF_MAP_TYPE_LPM_TRIE` holding the same
//!   prefixes as egressd's tries (what egressd does per decision today);
//! - `dir24`: egressd's IPv4 table (DIR-24-8, Gupta, Lin, McKeown 1998; compiled by
//!   [`Table4::compile`], what egressd loads with `ipv4_lookup = "table"` or, by default, from
//!   65,536 IPv4 prefixes): a 2^24-entry first level indexed by the top 24 bits, paged by /14:
//!   a directory of 16,384 entries, each an id (every /24 of the /14 decides alike) or the
//!   index of a 4 KiB page of 1,024 /24 entries; an entry is an id or the index of a
//!   256-entry second-level chunk for prefixes longer than /24. All are mmapable array maps
//!   of 4 KiB pages filled from userspace with one `memcpy`, so a lookup is at most three
//!   array lookups;
//! - `range6`: egressd's IPv6 range table ([`Table6::compile`], what egressd loads with
//!   `ipv6_lookup = "table"` or, by default, from 1,024 IPv6 prefixes): one index element
//!   per /16 and one per chunk level under a dense /16 (4 bits each, to /40), then a binary
//!   search (binary lifting, 22 steps, one array read per step that falls inside the
//!   bucket's ranges) over the sorted disjoint ranges, as `ebpf/src/decide.rs` does it
//!   (stream only).
//!
//! Each structure is timed two ways: one test run per destination (`repeat = 1`: a single
//! lookup with everything cold, test-run overhead included, see [`trivial`]), and a *stream*:
//! a program that looks up [`BATCH`] destinations per run from an array of [`STREAM`] distinct
//! destinations, advancing a cursor each run, so a repeated run walks every destination once
//! (the kernel's throughput benchmarks for the LPM trie measure it so, with random keys).
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    time::Instant,
};

use egressd::policy::{table::Table4, table6::Table6};
use egressd_common::table6::{CHUNK_ENTRIES, INDEX_ENTRIES, STRIDE, SUB_LEVELS};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::rawbpf::{self, F_MMAPABLE, F_NO_PREALLOC, Insn, MAP_ARRAY, MAP_LPM_TRIE, asm::*};

/// `bpf_map_lookup_elem`.
const MAP_LOOKUP: i32 = 1;
/// `bpf_skb_load_bytes`.
const SKB_LOAD_BYTES: i32 = 26;
/// Offsets of the destination address from the IP header (what a `cgroup_skb` program sees).
const V4_DST: i32 = 16;
const V6_DST: i32 = 24;
/// Bytes per array element (one page) in the DIR-24-8 maps.
const PAGE: usize = 4096;
/// First-level entries per page (`u32`).
const T24_PER_PAGE: usize = PAGE / 4;
/// Second-level entries per page (`u16`).
const T8_PER_PAGE: usize = PAGE / 2;

/// `r0 = 1; exit`.
pub fn trivial() -> io::Result<OwnedFd> {
    rawbpf::prog_load_skb("bench_trivial", &[mov_imm(0, 1), exit()])
}

/// Loads `len` destination bytes from `off` into the stack at `fp - len`, and leaves the
/// `BPF_PROG_TEST_RUN` context in r6. Jumps to the common exit on failure (the caller
/// patches the returned instruction index).
fn load_dst(off: i32, len: i32) -> Vec<Insn> {
    vec![
        mov_reg(6, 1),
        mov_reg(1, 6),
        mov_imm(2, off),
        mov_reg(3, 10),
        add_imm(3, -len),
        mov_imm(4, len),
        call(SKB_LOAD_BYTES),
    ]
}

/// A bare LPM trie with `entries` for one family: (prefix length, address bytes, region).
pub struct Trie {
    map: OwnedFd,
    /// Time to create and fill it with one update per prefix.
    pub fill_ns: u64,
    addr_len: usize,
}

impl Trie {
    /// Creates the trie and inserts every prefix.
    pub fn new(addr_len: usize, entries: &[(u8, Vec<u8>, u32)]) -> io::Result<Self> {
        let t = Instant::now();
        let key_size = 4 + addr_len;
        let max = u32::try_from(entries.len().max(1)).map_err(io::Error::other)?;
        let map = rawbpf::map_create(
            MAP_LPM_TRIE,
            u32::try_from(key_size).map_err(io::Error::other)?,
            4,
            max,
            F_NO_PREALLOC,
        )?;
        let mut key = vec![0u8; key_size];
        for (len, addr, region) in entries {
            key[..4].copy_from_slice(&u32::from(*len).to_ne_bytes());
            key[4..].copy_from_slice(addr);
            rawbpf::map_update(map.as_fd(), &key, &region.to_ne_bytes())?;
        }
        Ok(Self {
            map,
            fill_ns: u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
            addr_len,
        })
    }

    /// A program doing one lookup of the packet's destination in this trie.
    pub fn program(&self) -> io::Result<OwnedFd> {
        let (off, len, name) = if self.addr_len == 4 {
            (V4_DST, 4, "bench_lpm4")
        } else {
            (V6_DST, 16, "bench_lpm6")
        };
        let key = -(len + 4);
        let key_off = i16::try_from(key).map_err(io::Error::other)?;
        let mut p = load_dst(off, len);
        // 7: on error go to the exit (index 16 relative to here: patched below).
        p.push(jne_imm(0, 0, 8));
        p.push(st_w(10, key_off, len * 8));
        p.extend(ld_map_fd(1, self.map.as_raw_fd()));
        p.push(mov_reg(2, 10));
        p.push(add_imm(2, key));
        p.push(call(MAP_LOOKUP));
        p.push(jeq_imm(0, 0, 1));
        p.push(ldx_w(0, 0, 0));
        p.push(mov_imm(0, 1));
        p.push(exit());
        debug_assert_eq!(p.len(), 18);
        rawbpf::prog_load_skb(name, &p)
    }
}

/// The DIR-24-8 table for IPv4 with its first level paged by /14, compiled in userspace and
/// copied into three mmapable arrays as egressd does.
pub struct Dir24 {
    dir: OwnedFd,
    pool: OwnedFd,
    tbl8: OwnedFd,
    /// Userspace compile time (painting the prefixes into the tables).
    pub compile_ns: u64,
    /// Map creation plus copy into the kernel.
    pub load_ns: u64,
    /// Second-level chunks (one per /24 holding a longer prefix).
    pub chunks: usize,
    /// Pool pages (one per /14 whose /24s differ).
    pub pages: usize,
    /// Kernel memory of the three maps' value areas in bytes.
    pub bytes: u64,
}

impl Dir24 {
    /// Compiles `prefixes` with egressd's table compiler ([`Table4::compile`], the product's
    /// IPv4 lookup), checks it against `expect` (address, region id from egressd's reference
    /// model), and loads it into three mmapable arrays as egressd does.
    pub fn new(prefixes: &[(Ipv4Network, u32)], expect: &[(Ipv4Addr, u32)]) -> io::Result<Self> {
        let t = Instant::now();
        let table = Table4::compile(prefixes).map_err(io::Error::other)?;
        let compile_ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for (a, want) in expect {
            let got = table.lookup(*a);
            if got != Some(*want) {
                return Err(io::Error::other(format!(
                    "the IPv4 table gives region {got:?} for {a}, the reference model {want}"
                )));
            }
        }
        let (d, p8, t8) = (table.dir_bytes(), table.pool_bytes(), table.t8_bytes());
        let t = Instant::now();
        let dir = mmap_array(d)?;
        let pool = mmap_array(p8)?;
        let tbl8 = mmap_array(t8)?;
        let load_ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let pages = |b: usize| b.div_ceil(PAGE).max(1) as u64 * PAGE as u64;
        Ok(Self {
            dir,
            pool,
            tbl8,
            compile_ns,
            load_ns,
            chunks: table.chunks(),
            pages: table.pages(),
            bytes: pages(d.len()) + pages(p8.len()) + pages(t8.len()),
        })
    }

    /// The lookup program: at most three array lookups.
    pub fn program(&self) -> io::Result<OwnedFd> {
        let mut a = Asm::new();
        a.extend(load_dst(V4_DST, 4));
        a.jump(jne_imm(0, 0, 0), "next");
        a.push(ldx_w(9, 10, -4)); // destination, network order
        a.push(be32(9)); // host order
        dir24_lookup(&mut a, self);
        a.label("next");
        a.push(mov_imm(0, 1));
        a.push(exit());
        rawbpf::prog_load_skb("bench_dir24", &a.finish()?)
    }
}

/// One level of the IPv4 table: looks up the page whose index is in r1, then its entry
/// `(r9 >> shift) & 1023` into r1; jumps to "next" when the page is missing (r0 null) or
/// the entry's top bit is clear (an entry id), else leaves the low 31 bits (the next level's
/// index) in r1. Uses the stack at fp-12.
fn flagged_entry(a: &mut Asm, map: &OwnedFd, shift: i32) {
    a.push(stx_w(10, -12, 1));
    a.map_lookup(map, -12);
    a.jump(jeq_imm(0, 0, 0), "next");
    a.push(mov_reg(1, 9));
    a.push(rsh_imm(1, shift));
    a.push(and_imm(1, (T24_PER_PAGE - 1) as i32));
    a.push(lsh_imm(1, 2));
    a.push(add_reg(0, 1));
    a.push(ldx_w(1, 0, 0));
    a.push(mov_reg(2, 1));
    a.push(rsh_imm(2, 31));
    a.jump(jeq_imm(2, 0, 0), "next");
    a.push(and_imm(1, 0x7fff_ffff));
}

/// The IPv4 table lookup of the address in r9 (host order) as the product's kernel code does
/// it (directory, page, chunk); the entry ends in r1; jumps to "next" when done. Uses the
/// stack at fp-12.
fn dir24_lookup(a: &mut Asm, d: &Dir24) {
    // Directory page = ip >> 18 >> 10, entry (ip >> 18) & 1023.
    a.push(mov_reg(1, 9));
    a.push(rsh_imm(1, 28));
    flagged_entry(a, &d.dir, 18);
    // A pool page: its entry (ip >> 8) & 1023.
    flagged_entry(a, &d.pool, 8);
    a.push(lsh_imm(1, 8));
    a.push(mov_reg(3, 9));
    a.push(and_imm(3, 0xff));
    a.push(or_reg(1, 3));
    a.push(mov_reg(9, 1));
    a.push(rsh_imm(1, 11)); // page of 2048 u16
    a.push(stx_w(10, -12, 1));
    a.map_lookup(&d.tbl8, -12);
    a.jump(jeq_imm(0, 0, 0), "next");
    a.push(and_imm(9, (T8_PER_PAGE - 1) as i32));
    a.push(lsh_imm(9, 1));
    a.push(add_reg(0, 9));
    a.push(ldx_h(1, 0, 0));
}

/// An array map of 4 KiB pages holding `bytes` (zero-padded), filled through `mmap`.
fn mmap_array(bytes: &[u8]) -> io::Result<OwnedFd> {
    let pages = bytes.len().div_ceil(PAGE).max(1);
    let map = rawbpf::map_create(
        MAP_ARRAY,
        4,
        PAGE as u32,
        u32::try_from(pages).map_err(io::Error::other)?,
        F_MMAPABLE,
    )?;
    let len = pages * PAGE;
    // SAFETY: mapping a BPF_F_MMAPABLE array of exactly `len` bytes, shared, then copying
    // into it within bounds and unmapping; nothing else aliases the mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len());
        libc::munmap(p, len);
    }
    Ok(map)
}

/// egressd's IPv6 range table, compiled in userspace and copied into two mmapable arrays
/// (index and ranges) laid out as the product's maps.
pub struct Range6 {
    index: OwnedFd,
    ranges: OwnedFd,
    /// Userspace compile time.
    pub compile_ns: u64,
    /// Map creation plus copy into the kernel.
    pub load_ns: u64,
    /// Ranges in the table.
    pub len: usize,
    /// Chunks in its index.
    pub chunks: usize,
    /// Kernel memory of both maps in bytes.
    pub bytes: u64,
}

impl Range6 {
    /// Compiles `prefixes` with [`Table6::compile`], checks it against `expect` (address,
    /// region id from egressd's reference model), and loads it as egressd does.
    pub fn new(prefixes: &[(Ipv6Network, u32)], expect: &[(Ipv6Addr, u32)]) -> io::Result<Self> {
        let t = Instant::now();
        // The chunk room the daemon's maps get for these prefixes.
        let capacity = egressd::kernel::loader::Capacity::table6_ranges_for(prefixes.len());
        let budget = egressd_common::table6::chunk_budget(capacity);
        let table = Table6::compile(prefixes, budget).map_err(io::Error::other)?;
        let compile_ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for (a, want) in expect {
            let got = table.lookup(*a);
            if got != *want {
                return Err(io::Error::other(format!(
                    "the IPv6 table gives region {got} for {a}, the reference model {want}"
                )));
            }
        }
        let t = Instant::now();
        let index = mmap_elements(table.index_bytes(), 8)?;
        let ranges = mmap_elements(table.ranges_bytes(), 24)?;
        let load_ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let pages = |b: usize| b.div_ceil(PAGE).max(1) as u64 * PAGE as u64;
        Ok(Self {
            index,
            ranges,
            compile_ns,
            load_ns,
            len: table.len(),
            chunks: table.chunks(),
            bytes: pages(table.index_bytes().len()) + pages(table.ranges_bytes().len()),
        })
    }
}

/// An mmapable array of `value_size`-byte elements holding `bytes`, filled through `mmap`.
fn mmap_elements(bytes: &[u8], value_size: usize) -> io::Result<OwnedFd> {
    let n = (bytes.len() / value_size).max(1);
    let map = rawbpf::map_create(
        MAP_ARRAY,
        4,
        u32::try_from(value_size).map_err(io::Error::other)?,
        u32::try_from(n).map_err(io::Error::other)?,
        F_MMAPABLE,
    )?;
    let len = (n * value_size).next_multiple_of(PAGE);
    // SAFETY: as in `mmap_array`: a shared mapping of the whole array, written within bounds.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len());
        libc::munmap(p, len);
    }
    Ok(map)
}

/// Trie entries of IPv4 prefixes.
pub fn entries_v4(v4: &[(Ipv4Network, u32)]) -> Vec<(u8, Vec<u8>, u32)> {
    v4.iter()
        .map(|(n, r)| (n.prefix(), n.network().octets().to_vec(), *r))
        .collect()
}

/// Trie entries of IPv6 prefixes.
pub fn entries_v6(v6: &[(Ipv6Network, u32)]) -> Vec<(u8, Vec<u8>, u32)> {
    v6.iter()
        .map(|(n, r)| (n.prefix(), n.network().octets().to_vec(), *r))
        .collect()
}

/// A random address inside a random prefix of `v4` (`rng` seeded by the caller).
pub fn sample_v4(rng: &mut fastrand::Rng, v4: &[(Ipv4Network, u32)]) -> Option<Ipv4Addr> {
    let (n, _) = v4.get(rng.usize(..v4.len().max(1)))?;
    let host = if n.prefix() == 32 {
        0
    } else {
        rng.u32(..) & (u32::MAX >> n.prefix())
    };
    Some(Ipv4Addr::from(u32::from(n.network()) | host))
}

/// A random address inside a random prefix of `v6`.
pub fn sample_v6(rng: &mut fastrand::Rng, v6: &[(Ipv6Network, u32)]) -> Option<Ipv6Addr> {
    let (n, _) = v6.get(rng.usize(..v6.len().max(1)))?;
    let host = if n.prefix() == 128 {
        0
    } else {
        rng.u128(..) & (u128::MAX >> n.prefix())
    };
    Some(Ipv6Addr::from(u128::from(n.network()) | host))
}

/// Destinations looked up per run of a stream program.
pub const BATCH: i32 = 64;
/// Distinct destinations of a stream (a power of two).
pub const STREAM: u32 = 1 << 18;

/// What a stream program looks up.
pub enum Stream<'a> {
    /// Only reads the destinations (the loop's own cost, subtracted from the others).
    Empty,
    /// An LPM trie (`addr_len` 4 or 16).
    Trie(&'a Trie),
    /// The IPv4 table.
    Table(&'a Dir24),
    /// The IPv6 range table.
    Range6(&'a Range6),
}

/// Stack slots of the range search: the address halves (host order), the search's base and
/// end, the probe, and the 4-byte map key.
const R6_HI: i16 = -24;
const R6_LO: i16 = -32;
const R6_BASE: i16 = -40;
const R6_END: i16 = -48;
const R6_PROBE: i16 = -56;
const R6_KEY: i32 = -12;

/// Labels of the search steps (the assembler's labels are static strings).
const R6_STEPS: [&str; 22] = [
    "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13", "s14",
    "s15", "s16", "s17", "s18", "s19", "s20", "s21",
];
const R6_TAKE: [&str; 22] = [
    "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12", "t13", "t14",
    "t15", "t16", "t17", "t18", "t19", "t20", "t21",
];

/// The range table lookup of the destination at r0 (16 bytes, network order), as the
/// product's kernel code does it; jumps to "next" when done.
fn range6_lookup(a: &mut Asm, t: &Range6) {
    let key = i16::try_from(R6_KEY).unwrap_or(-12);
    a.push(ldx_dw(1, 0, 0));
    a.push(be64(1));
    a.push(stx_dw(10, R6_HI, 1));
    a.push(ldx_dw(1, 0, 8));
    a.push(be64(1));
    a.push(stx_dw(10, R6_LO, 1));
    // The set's flag, then the /16's index element.
    a.push(st_w(10, key, 0));
    a.map_lookup(&t.index, R6_KEY);
    a.jump(jeq_imm(0, 0, 0), "next");
    a.push(ldx_dw(1, 0, 0));
    a.jump(jne_imm(1, 1, 0), "next");
    a.push(ldx_dw(1, 10, R6_HI));
    a.push(rsh_imm(1, 48));
    a.push(add_imm(1, 1));
    a.push(stx_w(10, key, 1));
    a.map_lookup(&t.index, R6_KEY);
    a.jump(jeq_imm(0, 0, 0), "next");
    a.push(ldx_dw(1, 0, 0));
    // Chunk levels: while the element is `CHUNK | c`, read element
    // `INDEX_ENTRIES + c * CHUNK_ENTRIES + the next STRIDE bits`.
    for level in 0..SUB_LEVELS {
        a.push(mov_reg(2, 1));
        a.push(rsh_imm(2, 63));
        a.jump(jeq_imm(2, 0, 0), "r6_bucket");
        a.push(lsh_imm(1, 32));
        a.push(rsh_imm(1, 32 - STRIDE as i32));
        a.push(add_imm(1, INDEX_ENTRIES as i32));
        a.push(ldx_dw(2, 10, R6_HI));
        a.push(rsh_imm(2, (48 - STRIDE * (level + 1)) as i32));
        a.push(and_imm(2, CHUNK_ENTRIES as i32 - 1));
        a.push(add_reg(1, 2));
        a.push(stx_w(10, key, 1));
        a.map_lookup(&t.index, R6_KEY);
        a.jump(jeq_imm(0, 0, 0), "next");
        a.push(ldx_dw(1, 0, 0));
    }
    a.push(mov_reg(2, 1));
    a.push(rsh_imm(2, 63));
    a.jump(jne_imm(2, 0, 0), "next");
    a.label("r6_bucket");
    a.push(mov_reg(2, 1));
    a.push(lsh_imm(1, 32));
    a.push(rsh_imm(1, 32));
    a.push(stx_dw(10, R6_BASE, 1));
    a.push(rsh_imm(2, 32));
    a.push(stx_dw(10, R6_END, 2));
    for s in (0..22usize).rev() {
        a.push(ldx_dw(1, 10, R6_BASE));
        a.push(add_imm(1, 1 << s));
        a.push(ldx_dw(2, 10, R6_END));
        a.jump(jge_reg(1, 2, 0), R6_STEPS[s]);
        a.push(stx_dw(10, R6_PROBE, 1));
        a.push(stx_w(10, key, 1));
        a.map_lookup(&t.ranges, R6_KEY);
        a.jump(jeq_imm(0, 0, 0), "next");
        a.push(ldx_dw(1, 0, 0));
        a.push(ldx_dw(2, 10, R6_HI));
        a.jump(jgt_reg(1, 2, 0), R6_STEPS[s]);
        a.jump(jgt_reg(2, 1, 0), R6_TAKE[s]);
        a.push(ldx_dw(1, 0, 8));
        a.push(ldx_dw(2, 10, R6_LO));
        a.jump(jgt_reg(1, 2, 0), R6_STEPS[s]);
        a.label(R6_TAKE[s]);
        a.push(ldx_dw(1, 10, R6_PROBE));
        a.push(stx_dw(10, R6_BASE, 1));
        a.label(R6_STEPS[s]);
    }
    a.push(ldx_dw(1, 10, R6_BASE));
    a.push(stx_w(10, key, 1));
    a.map_lookup(&t.ranges, R6_KEY);
    a.jump(jeq_imm(0, 0, 0), "next");
    a.push(ldx_w(1, 0, 16));
}

/// Instructions with forward jumps to labels, patched by [`Asm::finish`].
struct Asm {
    p: Vec<Insn>,
    /// (instruction index, label).
    jumps: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn new() -> Self {
        Self {
            p: Vec::new(),
            jumps: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn push(&mut self, i: Insn) {
        self.p.push(i);
    }
    fn extend(&mut self, i: impl IntoIterator<Item = Insn>) {
        self.p.extend(i);
    }
    /// A jump instruction whose offset is the distance to `label`.
    fn jump(&mut self, i: Insn, label: &'static str) {
        self.jumps.push((self.p.len(), label));
        self.p.push(i);
    }
    /// `r0 = bpf_map_lookup_elem(map, fp + key_off)`, the key already on the stack.
    fn map_lookup(&mut self, map: &OwnedFd, key_off: i32) {
        self.extend(ld_map_fd(1, map.as_raw_fd()));
        self.push(mov_reg(2, 10));
        self.push(add_imm(2, key_off));
        self.push(call(MAP_LOOKUP));
    }
    fn label(&mut self, label: &'static str) {
        self.labels.push((label, self.p.len()));
    }
    fn finish(mut self) -> io::Result<Vec<Insn>> {
        for (at, label) in &self.jumps {
            let Some((_, to)) = self.labels.iter().find(|(l, _)| l == label) else {
                return Err(io::Error::other(format!("no label {label}")));
            };
            let off = i16::try_from(*to as i64 - *at as i64 - 1).map_err(io::Error::other)?;
            self.p[*at].set_off(off);
        }
        Ok(self.p)
    }
}

/// Destinations of a stream and its cursor.
pub struct StreamMaps {
    dsts: OwnedFd,
    cursor: OwnedFd,
    addr_len: usize,
}

impl StreamMaps {
    /// An array of [`STREAM`] destinations (network byte order, `addr_len` bytes each),
    /// cycled from `addrs`.
    pub fn new(addr_len: usize, addrs: &[Vec<u8>]) -> io::Result<Self> {
        if addrs.is_empty() {
            return Err(io::Error::other("no destinations"));
        }
        let dsts = rawbpf::map_create(
            MAP_ARRAY,
            4,
            u32::try_from(addr_len).map_err(io::Error::other)?,
            STREAM,
            0,
        )?;
        for i in 0..STREAM {
            let a = &addrs[i as usize % addrs.len()];
            rawbpf::map_update(dsts.as_fd(), &i.to_ne_bytes(), a)?;
        }
        let cursor = rawbpf::map_create(MAP_ARRAY, 4, 4, 1, 0)?;
        Ok(Self {
            dsts,
            cursor,
            addr_len,
        })
    }

    /// The stream program for `what`: per run, [`BATCH`] lookups of the next destinations.
    pub fn program(&self, what: &Stream<'_>) -> io::Result<OwnedFd> {
        let mut a = Asm::new();
        // r8 = cursor; cursor = (cursor + BATCH) % STREAM.
        a.push(st_w(10, -4, 0));
        a.map_lookup(&self.cursor, -4);
        a.jump(jeq_imm(0, 0, 0), "exit");
        a.push(ldx_w(8, 0, 0));
        a.push(mov_reg(1, 8));
        a.push(add_imm(1, BATCH));
        a.push(and_imm(1, (STREAM - 1) as i32));
        a.push(stx_w(0, 0, 1));
        a.push(mov_imm(7, 0));
        a.label("loop");
        a.jump(jge_imm(7, BATCH, 0), "exit");
        // r0 = &dsts[(r8 + r7) % STREAM]
        a.push(mov_reg(1, 8));
        a.push(add_reg(1, 7));
        a.push(and_imm(1, (STREAM - 1) as i32));
        a.push(stx_w(10, -8, 1));
        a.map_lookup(&self.dsts, -8);
        a.jump(jeq_imm(0, 0, 0), "exit");
        match what {
            Stream::Empty => {
                a.push(ldx_w(1, 0, 0));
            }
            Stream::Trie(t) => {
                if t.addr_len != self.addr_len {
                    return Err(io::Error::other("trie and destinations differ in family"));
                }
                // Key at fp-40: prefix length, then the address.
                let len = i32::try_from(self.addr_len * 8).map_err(io::Error::other)?;
                a.push(st_w(10, -40, len));
                for w in 0..(self.addr_len / 4) as i16 {
                    a.push(ldx_w(1, 0, 4 * w));
                    a.push(stx_w(10, -36 + 4 * w, 1));
                }
                a.map_lookup(&t.map, -40);
                a.jump(jeq_imm(0, 0, 0), "next");
                a.push(ldx_w(1, 0, 0));
            }
            Stream::Table(d) => {
                if self.addr_len != 4 {
                    return Err(io::Error::other("the table is IPv4 only"));
                }
                a.push(ldx_w(9, 0, 0));
                a.push(be32(9));
                dir24_lookup(&mut a, d);
            }
            Stream::Range6(t) => {
                if self.addr_len != 16 {
                    return Err(io::Error::other("the range table is IPv6 only"));
                }
                range6_lookup(&mut a, t);
            }
        }
        a.label("next");
        a.push(add_imm(7, 1));
        a.jump(ja(0), "loop");
        a.label("exit");
        a.push(mov_imm(0, 1));
        a.push(exit());
        rawbpf::prog_load_skb("bench_stream", &a.finish()?)
    }
}
