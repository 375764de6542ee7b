//! Compilation of a validated [`Config`] into the contents of the kernel maps, and the
//! userspace reference model of the kernel's decision ([`Policy::region_of`],
//! [`Policy::verdict`]) that tests compare the eBPF programs against.
//!
//! Pure: no I/O, no kernel. [`compile`] is infallible because [`crate::config::parse`] already
//! rejected everything that could make it fail, except limits only compilation sees (port
//! rules per prefix, distinct decision tables), which land in [`Policy::problems`]; the loader
//! refuses a policy with problems.
//!
//! # Precedence (documented in README.md, tested here and against the kernel)
//! Candidates for a destination are its region memberships (portless: allow if the region is
//! allowlisted, else deny) and the rules whose destinations contain it (specific if they
//! name a protocol or ports, and then only if those match). The candidate with the longest
//! prefix wins; at equal prefix a rule with ports beats one with a protocol only, which beats
//! one with neither (and region membership); at a full tie an
//! enforcing deny beats an auditing deny, which beats an allow. No candidate: the policy
//! `default`. A deny in audit mode (rule, else region, else policy `mode`) lets the
//! connection through and reports it.
//!
//! The policy layer, above [`crate::config`] and [`crate::base`] only (no kernel, no events,
//! so `explain`, the fuzz targets and the reference model run without privileges): this
//! compiler with [`entries`] (per-prefix decision tables), [`merge`], [`table`] and
//! [`table6`] (the lookup tables), [`ids`] (stable region and rule ids), [`explain`] and
//! [`import`] (`egressd regions import`).

mod entries;
pub mod explain;
pub mod ids;
pub mod import;
pub mod merge;
pub mod table;
pub mod table6;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egressd_common::{Entry, REGION_UNKNOWN, Verdict};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::{
    Action, Config, Established, Ipv4Lookup, Mode, Rule, Target, UNKNOWN_REGION_NAME, mask_u32,
    mask_u128,
};

/// A compiled policy: what the loader writes into the maps.
///
/// Invariants established by [`compile`] (the lookups rely on them; treat the fields as
/// read-only): `regions` and `allowed` have the same length, at most
/// [`egressd_common::MAX_REGIONS`]; `regions[0]` is `"unknown"` and `allowed[0]` is false;
/// `v4`/`v6` hold normalized prefixes (host bits zero), are sorted by (network address,
/// prefix length) and contain each prefix once; every region id in them is `1..regions.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// [`Config::mode`].
    pub mode: Mode,
    /// Region names indexed by region id; id 0 ([`REGION_UNKNOWN`]) is `"unknown"`. With
    /// [`compile`] the configured regions follow in file order (first region = id 1); with
    /// [`compile_with`] they sit at their assigned ids and unused ids hold `""`.
    pub regions: Vec<String>,
    /// Whether each region id is on the allowlist (value of the regions map); `allowed[0]`
    /// is always false.
    pub allowed: Vec<bool>,
    /// IPv4 LPM trie entries: (prefix, region id), sorted by (network, prefix length).
    pub v4: Vec<(Ipv4Network, u32)>,
    /// IPv6 LPM trie entries: (prefix, region id), sorted by (network, prefix length).
    pub v6: Vec<(Ipv6Network, u32)>,
    /// [`Config::nat64`]: /96 prefixes whose addresses are judged by their last 32 bits.
    pub nat64: Vec<Ipv6Network>,
    /// [`Config::established`].
    pub established: Established,
    /// [`Config::packet_sockets`].
    pub packet_sockets: crate::config::PacketSockets,
    /// [`Config::packet_exes`].
    pub packet_exes: Vec<(std::path::PathBuf, bool)>,
    /// [`Config::ipv4_lookup`].
    pub ipv4_lookup: Ipv4Lookup,
    /// [`Config::ipv6_lookup`].
    pub ipv6_lookup: crate::config::Ipv6Lookup,
    /// [`Config::default`].
    pub default: Action,
    /// [`Config::suppress_window_ms`].
    pub suppress_window_ms: u32,
    /// [`Config::summary_after`].
    pub summary_after: u32,
    /// Region modes by region id (`None`: the policy's).
    pub region_modes: Vec<Option<Mode>>,
    /// [`Config::rules`] in precedence (file) order, each with the id events carry
    /// ([`Rule::id`] replaced by the assigned id, see [`compile_with`]).
    pub rules: Vec<Rule>,
    /// Names of region ids that earlier policies of this daemon used and this one does not
    /// ([`crate::policy::ids`]): counters under them keep their label.
    pub retired_regions: std::collections::BTreeMap<u32, String>,
    /// Names of rule ids that earlier policies used and this one does not.
    pub retired_rules: std::collections::BTreeMap<u32, String>,
    /// Region ids taken over from a removed region: the loader zeroes their counters before
    /// it publishes this policy.
    pub reset_regions: Vec<u32>,
    /// Decision tables by entry id (value of the kernel's entries map); entry 0 decides
    /// destinations that no prefix covers.
    pub entries: Vec<Entry>,
    /// IPv4 LPM trie contents: (prefix, entry id), sorted by (network, prefix length); the
    /// region prefixes and every prefix a rule names.
    pub lpm_v4: Vec<(Ipv4Network, u32)>,
    /// IPv6 counterpart of `lpm_v4`.
    pub lpm_v6: Vec<(Ipv6Network, u32)>,
    /// IPv4 and IPv6 (prefix, entry id) pairs before [`merge`] joined those that decide the
    /// same (`lpm_v4` and `lpm_v6` hold what is left).
    pub lpm_unmerged: [usize; 2],
    /// Limits this policy exceeds (empty for a loadable policy), e.g. more than
    /// [`egressd_common::MAX_PORT_RULES`] port rules covering one prefix.
    pub problems: Vec<String>,
    /// 16 lowercase hex digits: FNV-1a 64 of the canonical policy text (see [`compile`]).
    /// Stable across Rust versions and platforms (std's `DefaultHasher` is not), so it can be
    /// logged and compared between hosts and releases.
    pub digest: String,
}

/// Compile `cfg` into map contents, with ids in file order
/// ([`crate::policy::ids::IdTable::positional`]): what `check`, `explain` and the tests use.
///
/// The digest covers what the kernel sees and nothing cosmetic: the mode, each region's
/// position, name and allowlist flag, the rules in order, and the sorted (prefix, region
/// position) entries. Descriptions, comments, prefix order inside a region and the order of
/// the allowlist do not change it; reordering regions does. It never depends on the ids a
/// daemon assigned ([`compile_with`]), so `check` and `run` agree on it.
pub fn compile(cfg: &Config) -> Policy {
    compile_with(cfg, &crate::policy::ids::IdTable::positional(cfg))
}

/// Compile `cfg` with the region and rule ids of `ids` (from [`crate::policy::ids::IdTable::assign`]
/// for `cfg`): what the daemon installs, so that counters and events keep their names across
/// reloads. Region ids may then have gaps: `regions[id]` is `""` for an id this policy does
/// not use (its name, if it had one, is in `retired_regions`). Precedence among rules is
/// their order in `cfg`, whatever their ids.
pub fn compile_with(cfg: &Config, ids: &crate::policy::ids::Assignment) -> Policy {
    debug_assert_eq!(ids.region_ids.len(), cfg.regions.len());
    debug_assert_eq!(ids.rule_ids.len(), cfg.rules.len());
    let len = ids.region_ids.iter().max().map_or(1, |m| *m as usize + 1);
    let mut regions = vec![String::new(); len];
    let mut allowed = vec![false; len];
    let mut region_modes: Vec<Option<Mode>> = vec![None; len];
    regions[0] = UNKNOWN_REGION_NAME.to_string();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (pos, region) in (1u32..).zip(&cfg.regions) {
        let id = ids.region_ids[pos as usize - 1];
        regions[id as usize] = region.name.clone();
        allowed[id as usize] = cfg.allowlist.contains(&region.name);
        region_modes[id as usize] = region.mode;
        for prefix in &region.prefixes {
            // Positions first, for the digest; ids once it is computed.
            match prefix {
                IpNetwork::V4(n) => v4.push((*n, pos)),
                IpNetwork::V6(n) => v6.push((*n, pos)),
            }
        }
    }
    v4.sort_unstable_by_key(|(n, id)| (u32::from(n.network()), n.prefix(), *id));
    v6.sort_unstable_by_key(|(n, id)| (u128::from(n.network()), n.prefix(), *id));

    // Hashed as it is written: the text of a large policy is tens of megabytes.
    let mut canonical = Fnv1a64::default();
    let _ = write!(
        canonical,
        "egressd-policy-v1\nmode {}\nestablished {}\n",
        cfg.mode,
        cfg.established.as_str()
    );
    for n in &cfg.nat64 {
        let _ = writeln!(canonical, "nat64 {n}");
    }
    let _ = writeln!(canonical, "default {}", cfg.default.as_str());
    // Only when it is not the mode's default, so digests of earlier policies stay as they
    // were (the default follows from the mode, which is digested).
    if cfg.packet_sockets != crate::config::PacketSockets::default_for(cfg.mode) {
        let _ = writeln!(canonical, "packet-sockets {}", cfg.packet_sockets);
    }
    for (path, send) in &cfg.packet_exes {
        let grant = if *send { "send" } else { "open" };
        let _ = writeln!(canonical, "packet-exe {grant} {}", path.display());
    }
    for r in &cfg.regions {
        if let Some(m) = r.mode {
            let _ = writeln!(canonical, "region-mode {} {m}", r.name);
        }
    }
    for (pos, r) in (1u32..).zip(&cfg.rules) {
        let _ = writeln!(
            canonical,
            "rule {pos} {} {:?} {:?} {:?} {:?}",
            r.action.as_str(),
            r.protocol,
            r.ports,
            r.mode,
            r.targets
        );
    }
    let _ = writeln!(canonical, "region 0 {UNKNOWN_REGION_NAME} deny");
    for (pos, r) in (1u32..).zip(&cfg.regions) {
        let verdict = if cfg.allowlist.contains(&r.name) {
            "allow"
        } else {
            "deny"
        };
        let _ = writeln!(canonical, "region {pos} {} {verdict}", r.name);
    }
    for (n, id) in &v4 {
        canonical.v4_line(n, *id);
    }
    for (n, id) in &v6 {
        let _ = writeln!(canonical, "v6 {n} {id}");
    }

    // Positions to ids: the order is that of the prefixes, which are distinct.
    for (_, id) in v4.iter_mut() {
        *id = ids.region_ids[*id as usize - 1];
    }
    for (_, id) in v6.iter_mut() {
        *id = ids.region_ids[*id as usize - 1];
    }
    let rules = cfg
        .rules
        .iter()
        .zip(&ids.rule_ids)
        .map(|(r, id)| Rule {
            id: *id,
            ..r.clone()
        })
        .collect();
    let mut policy = Policy {
        mode: cfg.mode,
        regions,
        allowed,
        v4,
        v6,
        nat64: cfg.nat64.clone(),
        established: cfg.established,
        packet_sockets: cfg.packet_sockets,
        packet_exes: cfg.packet_exes.clone(),
        ipv4_lookup: cfg.ipv4_lookup,
        ipv6_lookup: cfg.ipv6_lookup,
        default: cfg.default,
        suppress_window_ms: cfg.suppress_window_ms,
        summary_after: cfg.summary_after,
        region_modes,
        rules,
        retired_regions: ids.retired_regions.clone(),
        retired_rules: ids.retired_rules.clone(),
        reset_regions: ids.reset_regions.clone(),
        entries: Vec::new(),
        lpm_v4: Vec::new(),
        lpm_v6: Vec::new(),
        lpm_unmerged: [0, 0],
        problems: Vec::new(),
        digest: format!("{:016x}", canonical.0),
    };
    entries::build(&mut policy);
    policy
}

/// FNV-1a, 64-bit (<http://www.isthe.com/chongo/tech/comp/fnv/>) of the text written to it:
/// tiny, dependency-free and fixed by its specification. Not collision resistant; it
/// identifies, it does not protect.
struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    fn bytes(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.0 = bytes
            .iter()
            .fold(self.0, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    }

    /// `v4 {net} {id}\n`, as `writeln!` writes it, without the formatting machinery (a
    /// million of them in a large policy).
    fn v4_line(&mut self, net: &Ipv4Network, id: u32) {
        let mut buf = [0u8; 40];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        let digits = |n: u32, put: &mut dyn FnMut(&[u8])| {
            let mut d = [0u8; 10];
            let mut i = d.len();
            let mut n = n;
            loop {
                i -= 1;
                d[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            put(&d[i..]);
        };
        put(b"v4 ");
        for (i, o) in net.network().octets().iter().enumerate() {
            if i > 0 {
                put(b".");
            }
            digits(u32::from(*o), &mut put);
        }
        put(b"/");
        digits(u32::from(net.prefix()), &mut put);
        put(b" ");
        digits(id, &mut put);
        put(b"\n");
        self.bytes(&buf[..at]);
    }
}

/// [`Fnv1a64`] of `bytes`: also names the files kept per cgroup, per policy file and per
/// fetched URL (an id, not a protection).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a64::default();
    h.bytes(bytes);
    h.0
}

impl std::fmt::Write for Fnv1a64 {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

impl Policy {
    /// Region id of `ip` by longest-prefix match, as the kernel's LPM tries answer it.
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is looked up as the IPv4 address.
    /// Returns [`REGION_UNKNOWN`] (0) when no prefix matches.
    ///
    /// Cost: one binary search per prefix length (33 for IPv4, 129 for IPv6), so a lookup in a
    /// 100k-prefix policy takes microseconds.
    pub fn region_of(&self, ip: IpAddr) -> u32 {
        match self.judged_addr(ip) {
            IpAddr::V4(a) => lpm_v4(&self.v4, a),
            IpAddr::V6(a) => lpm_v6(&self.v6, a),
        }
    }

    /// The address the kernel looks up for destination `ip`: IPv4-mapped (`::ffff:a.b.c.d`)
    /// and NAT64 (`<nat64 /96>::a.b.c.d`, RFC 6052) addresses become the IPv4 address they
    /// carry; every other address is itself.
    pub fn judged_addr(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(a) if self.nat64.iter().any(|n| n.contains(a)) => {
                let o = a.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            }
            other => other,
        }
    }

    /// What the kernel decides for a connection to `ip` with no protocol or port (rules that
    /// name a protocol or ports do not apply): see [`Policy::decide`].
    pub fn verdict(&self, ip: IpAddr) -> Verdict {
        self.decide(ip, 0, 0).verdict
    }

    /// The reference model of the kernel's decision for `ip`, IP protocol `protocol` (IANA
    /// number, 0 for none) and destination port `port` (host byte order, 0 for none).
    ///
    /// Loopback (127.0.0.0/8, `::1`, `::ffff:127.x.y.z`) and unspecified (`0.0.0.0`, `::`,
    /// `::ffff:0.0.0.0`) destinations are allowed; otherwise the precedence of the module
    /// documentation applies, evaluated directly over the configuration (not over the
    /// compiled tables the kernel uses), so tests can compare the two.
    pub fn decide(&self, ip: IpAddr, protocol: u8, port: u16) -> Decision {
        let canonical = ip.to_canonical();
        if canonical.is_loopback() || canonical.is_unspecified() {
            let local = egressd_common::REGION_LOCAL;
            return Decision {
                region: local,
                verdict: Verdict::Allow,
                rule: 0,
            };
        }
        let addr = self.judged_addr(ip);
        let region = self.region_of(addr);
        // (prefix length, specific, rank, rule id preference) of the best candidate so far.
        let mut best: Option<(Rank, Action, bool, u32)> = None;
        // `order`: the rule's 1-based position in the files, 0 for region membership.
        let mut offer =
            |len: u8, specific: u8, action: Action, audit: bool, rule: u32, order: u32| {
                let rank = match (action, audit) {
                    (Action::Deny, false) => 2,
                    (Action::Deny, true) => 1,
                    (Action::Allow, _) => 0,
                };
                // Earlier rules first, region membership (0) last.
                let pref = if order == 0 { 0 } else { u32::MAX - order };
                let key = (len, specific, rank, pref);
                if best.as_ref().is_none_or(|(k, ..)| key > *k) {
                    best = Some((key, action, audit, rule));
                }
            };
        // Region memberships: every region prefix containing the address.
        for (len, id) in self.memberships(addr) {
            let allow = self.allowed.get(id as usize).copied().unwrap_or(false);
            let action = if allow { Action::Allow } else { Action::Deny };
            offer(len, 0, action, self.audit_of(None, Some(id)), 0, 0);
        }
        for (order, r) in (1u32..).zip(&self.rules) {
            if r.is_specific() {
                let proto_ok = r.protocol.is_none_or(|p| p == protocol);
                let port_ok = r.ports.is_none_or(|(lo, hi)| lo <= port && port <= hi);
                if !(proto_ok && port_ok) {
                    continue;
                }
            }
            for t in &r.targets {
                match t {
                    Target::Prefix(net) => {
                        if net.contains(addr) {
                            offer(
                                net.prefix(),
                                r.specificity(),
                                r.action,
                                self.audit_of(r.mode, None),
                                r.id,
                                order,
                            );
                        }
                    }
                    Target::Region(name) => {
                        let Some(id) = self.regions.iter().position(|n| n == name) else {
                            continue;
                        };
                        let id = id as u32;
                        for (len, rid) in self.memberships(addr) {
                            if rid == id {
                                let audit = self.audit_of(r.mode, Some(id));
                                offer(len, r.specificity(), r.action, audit, r.id, order);
                            }
                        }
                    }
                }
            }
        }
        let (action, audit, rule) = match best {
            Some((_, a, audit, rule)) => (a, audit, rule),
            None => (
                self.default,
                self.mode == Mode::Audit,
                egressd_common::RULE_DEFAULT,
            ),
        };
        let verdict = match (action, audit) {
            (Action::Allow, _) => Verdict::Allow,
            (Action::Deny, true) => Verdict::Audit,
            (Action::Deny, false) => Verdict::Deny,
        };
        Decision {
            region,
            verdict,
            rule,
        }
    }

    /// Whether a deny is reported as audit: the rule's mode, else the region's, else the
    /// policy's.
    pub(crate) fn audit_of(&self, rule: Option<Mode>, region: Option<u32>) -> bool {
        let region_mode =
            region.and_then(|id| self.region_modes.get(id as usize).copied().flatten());
        rule.or(region_mode).unwrap_or(self.mode) == Mode::Audit
    }

    /// (prefix length, region id) of every region prefix that contains `addr` (already
    /// judged: IPv4-mapped and NAT64 unwrapped).
    pub fn memberships(&self, addr: IpAddr) -> Vec<(u8, u32)> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                (0..=32u8)
                    .filter_map(|len| {
                        exact_v4(&self.v4, a & mask_u32(len), len).map(|id| (len, id))
                    })
                    .collect()
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                (0..=128u8)
                    .filter_map(|len| {
                        exact_v6(&self.v6, a & mask_u128(len), len).map(|id| (len, id))
                    })
                    .collect()
            }
        }
    }

    /// Name of rule `id`, `None` for 0 (allowlist or default) or an unknown id.
    /// Also names rules of earlier policies (`retired_rules`).
    pub fn rule_name(&self, id: u32) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.as_str())
            .or_else(|| self.retired_rules.get(&id).map(String::as_str))
    }

    /// Name of region `id`, also of a region earlier policies had (`retired_regions`);
    /// `"unknown"` for [`REGION_UNKNOWN`] and for ids without a name.
    pub fn region_name(&self, id: u32) -> &str {
        match self.regions.get(id as usize) {
            Some(n) if !n.is_empty() => n,
            _ => self
                .retired_regions
                .get(&id)
                .map_or(UNKNOWN_REGION_NAME, String::as_str),
        }
    }

    /// Number of configured regions (ids with a name in this policy, "unknown" aside).
    pub fn region_count(&self) -> usize {
        self.regions
            .iter()
            .skip(1)
            .filter(|n| !n.is_empty())
            .count()
    }

    /// Every region name by id (index = id, `""` for ids without a name), retired names
    /// included: what names the counters.
    pub fn region_labels(&self) -> Vec<String> {
        let len = self
            .retired_regions
            .keys()
            .next_back()
            .map_or(0, |m| *m as usize + 1)
            .max(self.regions.len());
        (0..len)
            .map(|id| match self.regions.get(id) {
                Some(n) if !n.is_empty() => n.clone(),
                _ => self
                    .retired_regions
                    .get(&(id as u32))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// Precedence of a candidate: (prefix length, specificity, action rank, rule preference by
/// position);
/// larger wins.
type Rank = (u8, u8, u8, u32);

/// What the model (or the kernel) decides for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Region id reported (of the longest region prefix containing the destination).
    pub region: u32,
    /// Allow, Deny or Audit.
    pub verdict: Verdict,
    /// Rule that decided; 0 for the allowlist or the default.
    pub rule: u32,
}

/// Region id of the exact entry `network/len` in a table sorted by (network, length).
pub(crate) fn exact_v4(table: &[(Ipv4Network, u32)], network: u32, len: u8) -> Option<u32> {
    table
        .binary_search_by(|(n, _)| (u32::from(n.network()), n.prefix()).cmp(&(network, len)))
        .ok()
        .map(|i| table[i].1)
}

/// IPv6 counterpart of [`exact_v4`].
pub(crate) fn exact_v6(table: &[(Ipv6Network, u32)], network: u128, len: u8) -> Option<u32> {
    table
        .binary_search_by(|(n, _)| (u128::from(n.network()), n.prefix()).cmp(&(network, len)))
        .ok()
        .map(|i| table[i].1)
}

fn lpm_v4(table: &[(Ipv4Network, u32)], a: Ipv4Addr) -> u32 {
    let a = u32::from(a);
    (0..=32u8)
        .rev()
        .find_map(|len| exact_v4(table, a & mask_u32(len), len))
        .unwrap_or(REGION_UNKNOWN)
}

fn lpm_v6(table: &[(Ipv6Network, u32)], a: Ipv6Addr) -> u32 {
    let a = u128::from(a);
    (0..=128u8)
        .rev()
        .find_map(|len| exact_v6(table, a & mask_u128(len), len))
        .unwrap_or(REGION_UNKNOWN)
}

#[cfg(test)]
mod tests;
