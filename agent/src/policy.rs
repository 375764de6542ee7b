//! Compilation of a validated [`Config`] into the contents of the kernel maps, and the
//! userspace reference model of the kernel's decision ([`Policy::region_of`],
//! [`Policy::verdict`]) that tests compare the eBPF programs against.
//!
//! Pure: no I/O, no kernel. [`compile`] is infallible because [`crate::config::parse`] already
//! rejected everything that could make it fail.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egressd_common::{REGION_UNKNOWN, Verdict};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::{Config, Established, Mode, UNKNOWN_REGION_NAME, mask_u32, mask_u128};

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
    /// Region names indexed by region id; id 0 ([`REGION_UNKNOWN`]) is `"unknown"`, the
    /// configured regions follow in file order (first region = id 1).
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
    /// 16 lowercase hex digits: FNV-1a 64 of the canonical policy text (see [`compile`]).
    /// Stable across Rust versions and platforms (std's `DefaultHasher` is not), so it can be
    /// logged and compared between hosts and releases.
    pub digest: String,
}

/// Compile `cfg` into map contents.
///
/// Region ids follow file order. The digest covers what the kernel sees and nothing
/// cosmetic: the mode, each region's id, name and allowlist flag, and the sorted
/// (prefix, region id) entries. Descriptions, comments, prefix order inside a region and
/// the order of the allowlist do not change it; reordering regions does (ids change).
pub fn compile(cfg: &Config) -> Policy {
    let mut regions = Vec::with_capacity(cfg.regions.len() + 1);
    let mut allowed = Vec::with_capacity(cfg.regions.len() + 1);
    regions.push(UNKNOWN_REGION_NAME.to_string());
    allowed.push(false);
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (id, region) in (1u32..).zip(&cfg.regions) {
        regions.push(region.name.clone());
        allowed.push(cfg.allowlist.contains(&region.name));
        for prefix in &region.prefixes {
            match prefix {
                IpNetwork::V4(n) => v4.push((*n, id)),
                IpNetwork::V6(n) => v6.push((*n, id)),
            }
        }
    }
    v4.sort_unstable_by_key(|(n, id)| (u32::from(n.network()), n.prefix(), *id));
    v6.sort_unstable_by_key(|(n, id)| (u128::from(n.network()), n.prefix(), *id));

    let mut canonical = format!(
        "egressd-policy-v1\nmode {}\nestablished {}\n",
        cfg.mode,
        cfg.established.as_str()
    );
    for n in &cfg.nat64 {
        let _ = writeln!(canonical, "nat64 {n}");
    }
    for (id, (name, allow)) in regions.iter().zip(&allowed).enumerate() {
        let verdict = if *allow { "allow" } else { "deny" };
        let _ = writeln!(canonical, "region {id} {name} {verdict}");
    }
    for (n, id) in &v4 {
        let _ = writeln!(canonical, "v4 {n} {id}");
    }
    for (n, id) in &v6 {
        let _ = writeln!(canonical, "v6 {n} {id}");
    }

    Policy {
        mode: cfg.mode,
        regions,
        allowed,
        v4,
        v6,
        nat64: cfg.nat64.clone(),
        established: cfg.established,
        digest: format!("{:016x}", fnv1a64(canonical.as_bytes())),
    }
}

/// FNV-1a, 64-bit (<http://www.isthe.com/chongo/tech/comp/fnv/>): tiny, dependency-free and
/// fixed by its specification. Not collision resistant; it identifies, it does not protect.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
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

    /// What the kernel decides for a connection to `ip`: loopback (127.0.0.0/8, `::1`,
    /// `::ffff:127.x.y.z`) and unspecified (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) destinations
    /// are [`Verdict::Allow`]; so is a destination in an allowlisted region. Anything else is
    /// [`Verdict::Deny`] in enforce mode and [`Verdict::Audit`] in audit mode.
    pub fn verdict(&self, ip: IpAddr) -> Verdict {
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() {
            return Verdict::Allow;
        }
        let region = self.region_of(ip) as usize;
        if self.allowed.get(region).copied().unwrap_or(false) {
            return Verdict::Allow;
        }
        match self.mode {
            Mode::Enforce => Verdict::Deny,
            Mode::Audit => Verdict::Audit,
        }
    }

    /// Name of region `id`; `"unknown"` for [`REGION_UNKNOWN`] and for ids out of range.
    pub fn region_name(&self, id: u32) -> &str {
        self.regions
            .get(id as usize)
            .map_or(UNKNOWN_REGION_NAME, String::as_str)
    }
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
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Region, parse};

    fn policy(text: &str) -> Policy {
        compile(&parse(Path::new("test.toml"), text).expect("valid config"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    const NESTED: &str = r#"
        allowlist = ["a"]
        [regions.a]
        prefixes = ["10.1.0.0/16", "2001:db8::/32"]
        [regions.b]
        prefixes = ["10.1.2.0/24", "2001:db8:1::/48"]
    "#;

    #[test]
    fn policy_example_layout() {
        let p = policy(include_str!("../../configs/example.toml"));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.regions, ["unknown", "eu", "us"]);
        assert_eq!(p.allowed, [false, true, false]);
        let v4: Vec<(String, u32)> = p.v4.iter().map(|(n, id)| (n.to_string(), *id)).collect();
        assert_eq!(
            v4,
            [
                ("198.18.1.0/24".to_string(), 1),
                ("198.18.2.0/24".to_string(), 2)
            ]
        );
        let v6: Vec<(String, u32)> = p.v6.iter().map(|(n, id)| (n.to_string(), *id)).collect();
        assert_eq!(
            v6,
            [
                ("2001:db8:1::/48".to_string(), 1),
                ("2001:db8:2::/48".to_string(), 2)
            ]
        );
        assert_eq!(p.regions[REGION_UNKNOWN as usize], "unknown");
    }

    #[test]
    fn policy_example_verdicts() {
        let p = policy(include_str!("../../configs/example.toml"));
        for (addr, region, verdict) in [
            ("198.18.1.2", 1, Verdict::Allow),
            ("2001:db8:1::2", 1, Verdict::Allow),
            ("198.18.2.2", 2, Verdict::Deny),
            ("2001:db8:2::2", 2, Verdict::Deny),
            ("198.18.3.2", 0, Verdict::Deny),
            ("::ffff:198.18.1.2", 1, Verdict::Allow),
            ("::ffff:198.18.2.2", 2, Verdict::Deny),
        ] {
            assert_eq!(p.region_of(ip(addr)), region, "{addr}");
            assert_eq!(p.verdict(ip(addr)), verdict, "{addr}");
        }
    }

    #[test]
    fn policy_sorted_by_network_then_length() {
        let p = policy(
            r#"allowlist = []
            [regions.a]
            prefixes = ["10.2.0.0/16", "10.0.0.0/8", "10.0.0.0/16", "9.0.0.0/8", "::/0", "::/1"]"#,
        );
        let v4: Vec<String> = p.v4.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            v4,
            ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "10.2.0.0/16"]
        );
        let v6: Vec<String> = p.v6.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(v6, ["::/0", "::/1"]);
    }

    #[test]
    fn policy_nested_prefixes_longest_wins() {
        let p = policy(NESTED);
        assert_eq!(p.region_of(ip("10.1.2.3")), 2);
        assert_eq!(p.region_of(ip("10.1.2.0")), 2);
        assert_eq!(p.region_of(ip("10.1.2.255")), 2);
        assert_eq!(p.region_of(ip("10.1.3.0")), 1);
        assert_eq!(p.region_of(ip("10.1.1.255")), 1);
        assert_eq!(p.region_of(ip("10.1.255.255")), 1);
        assert_eq!(p.region_of(ip("10.2.0.0")), 0);
        assert_eq!(p.region_of(ip("2001:db8:1::5")), 2);
        assert_eq!(p.region_of(ip("2001:db8:2::5")), 1);
        assert_eq!(p.region_of(ip("2001:db9::5")), 0);
        assert_eq!(p.verdict(ip("10.1.2.3")), Verdict::Deny);
        assert_eq!(p.verdict(ip("10.1.3.3")), Verdict::Allow);
    }

    #[test]
    fn policy_default_routes_and_host_prefixes() {
        let p = policy(
            r#"allowlist = ["all"]
            [regions.all]
            prefixes = ["0.0.0.0/0", "::/0"]
            [regions.host]
            prefixes = ["192.0.2.7/32", "2001:db8::7/128", "255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]"#,
        );
        assert_eq!(p.region_of(ip("192.0.2.7")), 2);
        assert_eq!(p.region_of(ip("192.0.2.6")), 1);
        assert_eq!(p.region_of(ip("192.0.2.8")), 1);
        assert_eq!(p.region_of(ip("255.255.255.255")), 2);
        assert_eq!(p.region_of(ip("0.0.0.1")), 1);
        assert_eq!(p.region_of(ip("2001:db8::7")), 2);
        assert_eq!(p.region_of(ip("2001:db8::6")), 1);
        assert_eq!(
            p.region_of(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            2
        );
        assert_eq!(p.region_of(ip("::2")), 1);
        assert_eq!(p.verdict(ip("192.0.2.7")), Verdict::Deny);
        assert_eq!(p.verdict(ip("8.8.8.8")), Verdict::Allow);
    }

    #[test]
    fn policy_mapped_addresses_use_ipv4_table() {
        // A ::/0 region must not capture mapped destinations: they are judged as IPv4.
        let p = policy(
            r#"allowlist = ["v4"]
            [regions.v4]
            prefixes = ["198.18.1.0/24"]
            [regions.v6]
            prefixes = ["::/0"]"#,
        );
        assert_eq!(p.region_of(ip("::ffff:198.18.1.9")), 1);
        assert_eq!(p.verdict(ip("::ffff:198.18.1.9")), Verdict::Allow);
        assert_eq!(p.region_of(ip("::ffff:198.18.2.9")), 0);
        assert_eq!(p.verdict(ip("::ffff:198.18.2.9")), Verdict::Deny);
        // IPv4-compatible (deprecated ::a.b.c.d) is plain IPv6.
        assert_eq!(p.region_of(ip("::198.18.1.9")), 2);
    }

    #[test]
    fn policy_loopback_and_unspecified_always_allowed() {
        let p = policy("allowlist = []\n[regions.all]\nprefixes = [\"0.0.0.0/0\", \"::/0\"]\n");
        for a in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
        ] {
            assert_eq!(p.verdict(ip(a)), Verdict::Allow, "{a}");
        }
        for a in ["128.0.0.1", "::2", "0.0.0.1", "::ffff:0.0.0.1", "10.0.0.1"] {
            assert_eq!(p.verdict(ip(a)), Verdict::Deny, "{a}");
        }
    }

    #[test]
    fn policy_audit_mode() {
        let p = policy(&format!("mode = \"audit\"\n{NESTED}"));
        assert_eq!(p.mode, Mode::Audit);
        assert_eq!(p.verdict(ip("10.1.2.3")), Verdict::Audit);
        assert_eq!(p.verdict(ip("192.0.2.1")), Verdict::Audit);
        assert_eq!(p.verdict(ip("10.1.3.3")), Verdict::Allow);
        assert_eq!(p.verdict(ip("127.0.0.1")), Verdict::Allow);
    }

    #[test]
    fn policy_unknown_region() {
        let p = policy(NESTED);
        assert_eq!(p.region_of(ip("192.0.2.1")), REGION_UNKNOWN);
        assert_eq!(p.verdict(ip("192.0.2.1")), Verdict::Deny);
        assert_eq!(p.region_name(0), "unknown");
        assert_eq!(p.region_name(1), "a");
        assert_eq!(p.region_name(2), "b");
        assert_eq!(p.region_name(3), "unknown");
        assert_eq!(p.region_name(u32::MAX), "unknown");
        let empty = policy("allowlist = []\n");
        assert_eq!(empty.regions, ["unknown"]);
        assert_eq!(empty.region_of(ip("10.0.0.1")), 0);
        assert_eq!(empty.verdict(ip("10.0.0.1")), Verdict::Deny);
    }

    #[test]
    fn policy_digest_is_stable_and_canonical() {
        let base = policy(NESTED);
        assert_eq!(base.digest.len(), 16);
        assert!(
            base.digest
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // Pinned: a change here changes every deployed digest; bump "egressd-policy-v1" instead.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            policy(include_str!("../../configs/example.toml")).digest,
            "3fb60c46ec413f16"
        );
        // Cosmetic changes keep the digest.
        let cosmetic = policy(
            r#"
            # comment
            allowlist = ["a"]
            [regions.a]
            description = "ignored"
            prefixes = ["2001:db8::/32", "10.1.0.0/16"]
            [regions.b]
            prefixes = ["2001:db8:1::/48", "10.1.2.0/24"]
        "#,
        );
        assert_eq!(cosmetic.digest, base.digest);
        // What the kernel sees changes it.
        assert_ne!(
            policy(&format!("mode = \"audit\"\n{NESTED}")).digest,
            base.digest
        );
        assert_ne!(
            policy(&NESTED.replace("[\"a\"]", "[\"a\", \"b\"]")).digest,
            base.digest
        );
        assert_ne!(
            policy(&NESTED.replace("10.1.2.0/24", "10.1.3.0/24")).digest,
            base.digest
        );
        assert_ne!(
            policy(&NESTED.replace("regions.b", "regions.c")).digest,
            base.digest
        );
    }

    #[test]
    fn policy_large_lookup_is_fast() {
        // 100k /32s and 100k /64s in 1000 regions (built directly: parse is not under test).
        let regions: Vec<Region> = (0..1000u32)
            .map(|r| Region {
                name: format!("r{r}"),
                description: None,
                prefixes: (0..100u32)
                    .flat_map(|i| {
                        let n = r * 100 + i;
                        [
                            IpNetwork::V4(Ipv4Network::from(Ipv4Addr::from(0x0a00_0000 + n))),
                            IpNetwork::V6(
                                Ipv6Network::new(
                                    Ipv6Addr::from(
                                        (0x2001_0db8_u128 << 96) | (u128::from(n) << 64),
                                    ),
                                    64,
                                )
                                .expect("valid"),
                            ),
                        ]
                    })
                    .collect(),
            })
            .collect();
        let cfg = Config {
            path: "big.toml".into(),
            mode: Mode::Enforce,
            allowlist: vec!["r7".into()],
            cgroup: None,
            established: Established::Cut,
            nat64: vec![crate::config::WELL_KNOWN_NAT64],
            regions,
        };
        let p = compile(&cfg);
        assert_eq!((p.v4.len(), p.v6.len()), (100_000, 100_000));
        let start = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(p.region_of(ip("10.0.2.188")), 8); // n = 700: region r7, id 8
            assert_eq!(p.region_of(ip("2001:db8:0:2bc::1")), 8);
            assert_eq!(p.region_of(ip("11.0.0.0")), 0);
            assert_eq!(p.region_of(ip("2001:db9::")), 0);
        }
        // 400 lookups; generous bound so an unoptimized build on a busy CI host passes.
        assert!(
            start.elapsed() < std::time::Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn policy_nat64_is_judged_as_embedded_ipv4() {
        let text = "allowlist = [\"eu\"]\nnat64_prefixes = [\"2001:db8:64::/96\"]\n\
                    [regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
                    [regions.us]\nprefixes = [\"198.18.2.0/24\", \"64:ff9b::/96\"]\n";
        let c = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        let p = compile(&c);
        assert_eq!(p.nat64.len(), 2);
        // The NAT64 prefix wins over a region prefix that covers the same IPv6 range.
        assert_eq!(p.region_name(p.region_of(ip("64:ff9b::c612:102"))), "eu");
        assert_eq!(p.verdict(ip("64:ff9b::198.18.1.2")), Verdict::Allow);
        assert_eq!(p.verdict(ip("64:ff9b::198.18.2.2")), Verdict::Deny);
        assert_eq!(p.verdict(ip("2001:db8:64::198.18.1.9")), Verdict::Allow);
        assert_eq!(p.verdict(ip("2001:db8:64::1:198.18.1.9")), Verdict::Deny);
    }
}
