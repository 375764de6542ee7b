//! The verdict for one destination under the policy generation in force.
//!
//! Each policy set's maps are read by code of its own: the global lookup functions come in
//! pairs (`_a`, `_b`), the other reads go through small functions instantiated per set
//! (`SET`) and never inlined. The verifier inlines an array lookup, or calls the map's own
//! lookup directly, only at a call instruction that sees a single map; where the compiler
//! merged the lookups of set A and set B into one instruction with the map chosen at run
//! time, every lookup went through the generic `bpf_map_lookup_elem` helper and an indirect
//! call (`bpf_map_ptr_poisoned`, `kernel/bpf/verifier.c`): the range table's search made up
//! to 31 of them per IPv6 destination (about 12 in a bucket of a few ranges).
use aya_ebpf::maps::lpm_trie::Key;
use egressd_common::{
    MAX_ENTRIES, MAX_PORT_RULES, REGION_LOCAL, REGION_UNKNOWN, Verdict, action, failsafe, family,
    set_of,
    table::{CHUNK, CHUNK_ENTRIES, DIR_SHIFT, PAGE, PER_PAGE8, PER_PAGE24},
    table6::{self, IN_USE, SEARCH_STEPS, SUB_LEVELS},
    unwrap,
};

use crate::{
    addr::{self, Dest},
    maps::*,
};

/// What the policy says of a destination.
pub struct Decision {
    /// Generation that decided.
    pub generation: u64,
    /// Region id of the (unwrapped) destination.
    pub region: u32,
    /// Allow, Deny or Audit.
    pub verdict: Verdict,
    /// Id of the rule that decided, 0 for the allowlist or the default.
    pub rule: u32,
    /// [`failsafe`] reason when the kernel denied because it could not judge, else 0.
    pub reason: u32,
}

impl Decision {
    /// A denial the policy did not make: the kernel could not judge safely (`reason`, a
    /// [`failsafe`] code, is counted and reported).
    #[inline(always)]
    pub fn fail_closed(generation: u64, reason: u32) -> Self {
        crate::report::failsafe(reason);
        Decision {
            generation,
            region: REGION_UNKNOWN,
            verdict: Verdict::Deny,
            rule: 0,
            reason,
        }
    }
}

/// The `cut_established` setting of the set serving `generation` (true when unreadable:
/// re-judging is the safe side).
#[inline(always)]
pub fn cut_established(generation: u64) -> bool {
    EGRESSD_SETTINGS_V1
        .get(set_of(generation) as u32)
        .is_none_or(|s| s.cut_established != 0)
}

/// The generation in force (0 before the first policy: then set A, all zero, denies).
#[inline(always)]
pub fn generation() -> u64 {
    EGRESSD_GENERATION_V1.get(0).copied().unwrap_or(0)
}

/// Decides for `d` under `generation`; unwraps a NAT64 destination in place (RFC 6052: the
/// IPv4 address is the last 4 bytes of a /96).
#[inline(always)]
pub fn decide(d: &mut Dest, generation: u64) -> Decision {
    let set = set_of(generation);
    // Local before NAT64: a NAT64 address always goes to the translator, even one that
    // embeds 127.0.0.1, so only the region of the embedded address can allow it.
    if addr::is_local(d) {
        return Decision {
            generation,
            region: REGION_LOCAL,
            verdict: Verdict::Allow,
            rule: 0,
            reason: failsafe::NONE,
        };
    }
    unwrap_nat64(d, set);
    let e = match entry(d, set) {
        Ok(e) => e,
        Err(reason) => return Decision::fail_closed(generation, reason),
    };
    let (mut act, mut audit, mut rule) = (e.default_action, e.default_audit, e.default_rule);
    let n = e.n_rules as usize;
    // Bounded by MAX_PORT_RULES for the verifier; rules are in precedence order.
    for i in 0..MAX_PORT_RULES {
        if i >= n {
            break;
        }
        let r = &e.rules[i];
        if r.matches(d.protocol, d.port) {
            act = r.action;
            audit = r.audit;
            rule = r.rule;
            break;
        }
    }
    let verdict = verdict_of(act, audit);
    Decision {
        generation,
        region: e.region,
        verdict,
        rule,
        reason: failsafe::NONE,
    }
}

/// Unwraps a NAT64 destination of set `set` in place (RFC 6052: the IPv4 address is the
/// last 4 bytes of a /96).
#[inline(always)]
fn unwrap_nat64(d: &mut Dest, set: usize) {
    if d.family != family::INET6 {
        return;
    }
    let key = Key::new(128, d.addr);
    let nat64 = if set == 0 {
        nat64_in::<0>(&key)
    } else {
        nat64_in::<1>(&key)
    };
    if nat64 {
        let v4 = [d.addr[12], d.addr[13], d.addr[14], d.addr[15]];
        d.addr = [0; 16];
        d.addr[..4].copy_from_slice(&v4);
        d.family = family::INET;
        d.mapped = unwrap::NAT64;
    }
}

/// Whether `key` (a /128) is in a NAT64 prefix of set `SET`. Not inlined, one copy per set:
/// see the module doc.
#[inline(never)]
fn nat64_in<const SET: usize>(key: &Key<[u8; 16]>) -> bool {
    if SET == 0 {
        EGRESSD_NAT64_A_V1.get(key).is_some()
    } else {
        EGRESSD_NAT64_B_V1.get(key).is_some()
    }
}

/// The verdict for the next hop of a raw socket that writes its own IP header (the address
/// the kernel routes by, which the header need not name): local and unspecified addresses
/// are allowed, NAT64 addresses unwrapped, anything else judged as a routing-header hop
/// ([`hop`]): the prefix's decision for all traffic, since the header's protocol and ports
/// are the packet hook's to judge.
#[inline(always)]
pub fn next_hop(d: &mut Dest, generation: u64) -> Decision {
    if addr::is_local(d) {
        return Decision {
            generation,
            region: REGION_LOCAL,
            verdict: Verdict::Allow,
            rule: 0,
            reason: failsafe::NONE,
        };
    }
    unwrap_nat64(d, set_of(generation));
    hop(d, generation)
}

/// The verdict for an intermediate hop of a routing header or source route: the default
/// decision of its prefix, or a fail-closed deny when the prefix has protocol/port rules
/// (the hop's traffic is not judged rule by rule: strict, and cheap for the verifier).
#[inline(always)]
pub fn hop(d: &Dest, generation: u64) -> Decision {
    let e = match entry(d, set_of(generation)) {
        Ok(e) => e,
        Err(reason) => return Decision::fail_closed(generation, reason),
    };
    if e.n_rules != 0 {
        return Decision::fail_closed(generation, failsafe::ROUTE_HOP_RULES);
    }
    Decision {
        generation,
        region: e.region,
        verdict: verdict_of(e.default_action, e.default_audit),
        rule: e.default_rule,
        reason: failsafe::NONE,
    }
}

/// The decision table of `d`'s longest prefix in set `set`; a [`failsafe`] reason when the
/// maps are inconsistent (an id outside the table is a corrupt map, never "the default").
#[inline(always)]
fn entry(d: &Dest, set: usize) -> Result<&'static egressd_common::Entry, u32> {
    let id = lookup(d, set)?;
    let e = if set == 0 {
        entry_in::<0>(id)
    } else {
        entry_in::<1>(id)
    };
    match e {
        Some(e) if id < MAX_ENTRIES => Ok(e),
        _ => Err(failsafe::BAD_ENTRY),
    }
}

/// Entry `id` of set `SET`'s decision table. Not inlined, one copy per set: see the module doc.
#[inline(never)]
fn entry_in<const SET: usize>(id: u32) -> Option<&'static egressd_common::Entry> {
    if SET == 0 {
        EGRESSD_ENTRIES_A_V1.get(id)
    } else {
        EGRESSD_ENTRIES_B_V1.get(id)
    }
}

/// The verdict of an [`action`] code and its audit flag.
#[inline(always)]
fn verdict_of(act: u8, audit: u8) -> Verdict {
    if act == action::ALLOW {
        Verdict::Allow
    } else if audit != 0 {
        Verdict::Audit
    } else {
        Verdict::Deny
    }
}

/// [`egressd_lookup_a`] result bit: the maps are inconsistent; the low 32 bits are the
/// [`failsafe`] reason.
const LOOKUP_FAILED: u64 = 1 << 32;

/// Longest-prefix match in set `set`: the entry id, 0 when no prefix covers `d`; a
/// [`failsafe`] reason when the maps are inconsistent. By the global function of the set,
/// [`egressd_lookup_a`] or [`egressd_lookup_b`].
#[inline(always)]
fn lookup(d: &Dest, set: usize) -> Result<u32, u32> {
    let a = &d.addr;
    let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let family = u64::from(d.family);
    let r = if set == 0 {
        egressd_lookup_a(family, hi, lo)
    } else {
        egressd_lookup_b(family, hi, lo)
    };
    if r & LOOKUP_FAILED != 0 {
        Err(r as u32)
    } else {
        Ok(r as u32)
    }
}

/// The longest-prefix match of [`lookup`] in set A for the address `hi`:`lo` (bytes 0..8
/// and 8..16 in network order, read as big-endian `u64`s; IPv4 in the first 4 bytes) of
/// `family` ([`family::INET`] or [`family::INET6`]): the entry id, or [`LOOKUP_FAILED`] with
/// a [`failsafe`] reason.
///
/// A global function (exported by the linker, see `build.rs`): the verifier checks its
/// branches (IPv4 table or trie, IPv6 range table or trie) once, instead of at each of the
/// up to five lookups of a packet (its destination and the hops of a routing header) in
/// every combination (in a 6.1 VM under emulation, `cgroup_skb/egress` had not passed the
/// verifier after 57 s; with this function, 3.2 s). One per set, so that every map lookup
/// in it names one map (see the module doc).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_lookup_a(family: u64, hi: u64, lo: u64) -> u64 {
    longest_prefix::<0>(family, hi, lo)
}

/// [`egressd_lookup_a`] for set B.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_lookup_b(family: u64, hi: u64, lo: u64) -> u64 {
    longest_prefix::<1>(family, hi, lo)
}

/// The body of [`egressd_lookup_a`] for set `SET`.
#[inline(always)]
fn longest_prefix<const SET: usize>(family: u64, hi: u64, lo: u64) -> u64 {
    let r = if family as u8 == family::INET {
        longest_prefix4::<SET>((hi >> 32) as u32)
    } else {
        longest_prefix6::<SET>(hi, lo)
    };
    match r {
        Ok(id) => u64::from(id),
        Err(reason) => LOOKUP_FAILED | u64::from(reason),
    }
}

/// IPv4 longest-prefix match of `a` (host byte order) in set `SET`: the table or the trie.
#[inline(always)]
fn longest_prefix4<const SET: usize>(a: u32) -> Result<u32, u32> {
    if EGRESSD_SETTINGS_V1
        .get(SET as u32)
        .is_some_and(|s| s.v4_table != 0)
    {
        return table4::<SET>(a);
    }
    let key = Key::new(32, a.to_be_bytes());
    let hit = if SET == 0 {
        EGRESSD_PREFIXES_V4_A_V1.get(&key)
    } else {
        EGRESSD_PREFIXES_V4_B_V1.get(&key)
    };
    Ok(hit.copied().unwrap_or(0))
}

/// IPv6 longest-prefix match of `hi`:`lo` (host byte order halves) in set `SET`: the set's
/// range table when it has one, else the trie.
#[inline(always)]
fn longest_prefix6<const SET: usize>(hi: u64, lo: u64) -> Result<u32, u32> {
    if TABLE6_IN_PROGRAMS && let Some(id) = table6::<SET>(hi, lo)? {
        return Ok(id);
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&hi.to_be_bytes());
    addr[8..].copy_from_slice(&lo.to_be_bytes());
    let key = Key::new(128, addr);
    let hit = if SET == 0 {
        EGRESSD_PREFIXES_V6_A_V1.get(&key)
    } else {
        EGRESSD_PREFIXES_V6_B_V1.get(&key)
    };
    Ok(hit.copied().unwrap_or(0))
}

/// IPv4 lookup in set `SET`'s table: at most three array reads (directory, page, chunk),
/// whatever the number of prefixes (layout in `egressd_common::table`). A missing page or
/// chunk (a map smaller than an entry promises) is [`failsafe::NO_PAGE`], never the
/// default decision.
#[inline(always)]
fn table4<const SET: usize>(a: u32) -> Result<u32, u32> {
    let (dir, t24, t8) = if SET == 0 {
        (
            &EGRESSD_TABLE14_A_V1,
            &EGRESSD_TABLE24_A_V2,
            &EGRESSD_TABLE8_A_V1,
        )
    } else {
        (
            &EGRESSD_TABLE14_B_V1,
            &EGRESSD_TABLE24_B_V2,
            &EGRESSD_TABLE8_B_V1,
        )
    };
    let i14 = a >> DIR_SHIFT;
    let Some(page) = dir.get(i14 / PER_PAGE24 as u32) else {
        return Err(failsafe::NO_PAGE);
    };
    let d = page[(i14 as usize) % PER_PAGE24];
    if d & PAGE == 0 {
        // Uniform /14: no /24 in it differs.
        return Ok(d);
    }
    let Some(page) = t24.get(d & !PAGE) else {
        return Err(failsafe::NO_PAGE);
    };
    let e = page[((a >> 8) as usize) % PER_PAGE24];
    if e & CHUNK == 0 {
        return Ok(e);
    }
    let i8 = (e & !CHUNK) as usize * CHUNK_ENTRIES + (a & 0xff) as usize;
    let Some(page) = t8.get((i8 / PER_PAGE8) as u32) else {
        return Err(failsafe::NO_PAGE);
    };
    Ok(u32::from(page[i8 % PER_PAGE8]))
}

/// Whether the programs look IPv6 up in the range table (the userspace side holds the same
/// switch, `egressd_common::TABLE6_IN_PROGRAMS`).
const TABLE6_IN_PROGRAMS: bool = egressd_common::TABLE6_IN_PROGRAMS;

/// [`egressd_table6_lookup_a`] result bit: the set does not use the table.
const TABLE6_UNUSED: u64 = 1 << 32;
/// [`egressd_table6_lookup_a`] result bit: an element is missing ([`failsafe::NO_PAGE`]).
const TABLE6_NO_PAGE: u64 = 1 << 33;

/// IPv6 lookup in set `SET`'s range table: `None` when the set does not use it (IPv6 is then
/// in the LPM trie); a missing element is [`failsafe::NO_PAGE`], never the default decision.
#[inline(always)]
fn table6<const SET: usize>(hi: u64, lo: u64) -> Result<Option<u32>, u32> {
    let r = if SET == 0 {
        egressd_table6_lookup_a(hi, lo)
    } else {
        egressd_table6_lookup_b(hi, lo)
    };
    if r & TABLE6_NO_PAGE != 0 {
        Err(failsafe::NO_PAGE)
    } else if r & TABLE6_UNUSED != 0 {
        Ok(None)
    } else {
        Ok(Some(r as u32))
    }
}

/// The range-table search for address `hi`:`lo` (host byte order halves) in set A: the
/// entry id, or [`TABLE6_UNUSED`] / [`TABLE6_NO_PAGE`]. One index read for the /16, one
/// more per chunk level under it (at most [`SUB_LEVELS`]), then a binary search over the
/// bucket's range starts: [`SEARCH_STEPS`] steps of at most one array read each (layout in
/// `egressd_common::table6`).
///
/// A global function (exported by the linker, see `build.rs`, so its BTF linkage is global):
/// the verifier checks it once, on its own, instead of again on every path of every program
/// that reaches it, where its 22 steps would exceed 5.10's budget of 1M instructions. One per
/// set, so that every map lookup in it names one map (see the module doc).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_table6_lookup_a(hi: u64, lo: u64) -> u64 {
    table6_search::<0>(hi, lo)
}

/// [`egressd_table6_lookup_a`] for set B.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn egressd_table6_lookup_b(hi: u64, lo: u64) -> u64 {
    table6_search::<1>(hi, lo)
}

/// The body of [`egressd_table6_lookup_a`] for set `SET`.
#[inline(always)]
fn table6_search<const SET: usize>(hi: u64, lo: u64) -> u64 {
    let (index, ranges) = if SET == 0 {
        (&EGRESSD_TABLE6_INDEX_A_V1, &EGRESSD_TABLE6_RANGES_A_V1)
    } else {
        (&EGRESSD_TABLE6_INDEX_B_V1, &EGRESSD_TABLE6_RANGES_B_V1)
    };
    if index.get(IN_USE).is_none_or(|f| *f != 1) {
        return TABLE6_UNUSED;
    }
    let Some(top) = index.get(1 + (hi >> 48) as u32) else {
        return TABLE6_NO_PAGE;
    };
    let mut bucket = *top;
    // A dense bucket points to a chunk indexed by the next `STRIDE` bits.
    let mut shift = 48 - table6::STRIDE;
    for _ in 0..SUB_LEVELS {
        if bucket & table6::CHUNK == 0 {
            break;
        }
        // A chunk number the layout cannot hold (or stray high bits) is a damaged index:
        // fail closed rather than read another bucket's element.
        let chunk = bucket as u32;
        if bucket >> 32 != table6::CHUNK >> 32 || chunk >= table6::MAX_CHUNKS {
            return TABLE6_NO_PAGE;
        }
        // No overflow: chunk < 2^19.
        let at = table6::INDEX_ENTRIES
            + chunk * table6::CHUNK_ENTRIES
            + (((hi >> shift) as u32) & (table6::CHUNK_ENTRIES - 1));
        let Some(sub) = index.get(at) else {
            return TABLE6_NO_PAGE;
        };
        bucket = *sub;
        shift = shift.wrapping_sub(table6::STRIDE);
    }
    if bucket & table6::CHUNK != 0 {
        // Deeper than the layout allows: a damaged index, never the default decision.
        return TABLE6_NO_PAGE;
    }
    // Range `base` starts before the bucket (or is the one at `::`), so at or before the
    // address; ranges from `end` on start in a later bucket.
    let mut base = bucket as u32;
    let end = (bucket >> 32) as u32;
    // Binary lifting: the last range below `end` starting at or before the address, found by
    // trying steps of 2^21 down to 1.
    let mut step = 1u32 << (SEARCH_STEPS - 1);
    for _ in 0..SEARCH_STEPS {
        let probe = base + step;
        if probe < end {
            let Some(r) = ranges.get(probe) else {
                return TABLE6_NO_PAGE;
            };
            if r.hi < hi || (r.hi == hi && r.lo <= lo) {
                base = probe;
            }
        }
        step >>= 1;
    }
    match ranges.get(base) {
        Some(r) => u64::from(r.id),
        None => TABLE6_NO_PAGE,
    }
}
