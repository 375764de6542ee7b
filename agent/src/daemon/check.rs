//! What `egressd check --config FILE` prints for a valid configuration: a [`summary`] of the
//! compiled policy and the [`warnings`] worth an operator's attention. Errors are not here:
//! an invalid file never gets this far ([`crate::config::ConfigError`]).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::base::prefix::{mask_u32, mask_u128};
use crate::config::{Config, Mode, PacketSockets};
use crate::policy::{Policy, exact_v4, exact_v6};

/// How many "prefix of a non-allowlisted region inside an allowlisted one" warnings to list
/// before summarizing the rest in one line.
const MAX_NESTED_WARNINGS: usize = 10;

/// Multi-line, human-readable description of `policy` (compiled from `cfg`), ending in a
/// newline. Example:
///
/// ```text
/// config:    configs/example.toml
/// mode:      enforce (connections outside the allowlist fail with EPERM)
/// digest:    f042da125f5b1a59
/// regions:   2
///   id  region  allowed  ipv4  ipv6  description
///    1  eu      yes         1     1  EU datacenters
///    2  us      no          1     1  US datacenters
/// prefixes:  2 IPv4, 2 IPv6
/// lookup:    IPv4 in the LPM trie (ipv4_lookup = auto)
///            IPv6 in the LPM trie (ipv6_lookup = auto)
/// kernel:    2 IPv4, 2 IPv6 prefixes (0.0 % fewer than the 2, 2 before joining adjacent and nested prefixes that decide the same)
/// allowlist: eu
/// packets:   packet_sockets = deny (AF_PACKET/AF_XDP sockets of the cgroup refused with EPERM; BPF LSM, else per frame at tc/egress)
/// ```
///
/// Warnings are not included; print [`warnings`] separately.
pub fn summary(cfg: &Config, policy: &Policy) -> String {
    let mut out = String::new();
    let mode = match policy.mode {
        Mode::Enforce => "enforce (connections outside the allowlist fail with EPERM)",
        Mode::Audit => "audit (connections outside the allowlist are let through and reported)",
    };
    let _ = writeln!(out, "config:    {}", cfg.path.display());
    let _ = writeln!(out, "mode:      {mode}");
    // Regions and rules with a mode of their own: an enforce policy whose region audits
    // lets that region's connections through (found by QA: the line hid it).
    let own = |m: Option<Mode>| m.filter(|m| *m != cfg.mode);
    let name = |m: Mode| match m {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    for r in &cfg.regions {
        if let Some(m) = own(r.mode) {
            let _ = writeln!(out, "           region {} in {} mode", r.name, name(m));
        }
    }
    for r in &cfg.rules {
        if let Some(m) = own(r.mode) {
            let _ = writeln!(out, "           rule {} in {} mode", r.name, name(m));
        }
    }
    let _ = writeln!(out, "digest:    {}", policy.digest);
    let _ = writeln!(out, "regions:   {}", cfg.regions.len());

    let mut v4 = vec![0usize; policy.regions.len()];
    let mut v6 = vec![0usize; policy.regions.len()];
    for (_, id) in &policy.v4 {
        if let Some(c) = v4.get_mut(*id as usize) {
            *c += 1;
        }
    }
    for (_, id) in &policy.v6 {
        if let Some(c) = v6.get_mut(*id as usize) {
            *c += 1;
        }
    }

    if !cfg.regions.is_empty() {
        let id_w = (policy.regions.len() - 1).to_string().len().max(2);
        let name_w = cfg
            .regions
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let n_w = |counts: &[usize]| {
            counts
                .iter()
                .max()
                .map_or(0, |n| n.to_string().len())
                .max(4)
        };
        let (v4_w, v6_w) = (n_w(&v4), n_w(&v6));
        let _ = writeln!(
            out,
            "  {:>id_w$}  {:<name_w$}  allowed  {:>v4_w$}  {:>v6_w$}  description",
            "id", "region", "ipv4", "ipv6"
        );
        for (i, region) in cfg.regions.iter().enumerate() {
            let id = i + 1;
            let allowed = if policy.allowed.get(id).copied().unwrap_or(false) {
                "yes"
            } else {
                "no"
            };
            let line = format!(
                "  {id:>id_w$}  {:<name_w$}  {allowed:<7}  {:>v4_w$}  {:>v6_w$}  {}",
                region.name,
                v4.get(id).copied().unwrap_or(0),
                v6.get(id).copied().unwrap_or(0),
                region.description.as_deref().unwrap_or(""),
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let _ = writeln!(
        out,
        "prefixes:  {} IPv4, {} IPv6",
        policy.v4.len(),
        policy.v6.len()
    );
    // What `run` would size the maps for (pinned maps keep the size of their first start).
    let cap = crate::kernel::loader::Capacity::for_policy(policy);
    let how = match cap.table_chunks {
        Some(_) => format!(
            "IPv4 in the DIR-24-8 table, {:.1} MiB of kernel memory for both policy sets",
            cap.table_bytes() as f64 / f64::from(1 << 20)
        ),
        None => "IPv4 in the LPM trie".to_owned(),
    };
    let _ = writeln!(
        out,
        "lookup:    {how} (ipv4_lookup = {})",
        policy.ipv4_lookup.as_str()
    );
    let how6 = match cap.table6_ranges {
        Some(_) => format!(
            "IPv6 in the range table, {:.1} MiB of kernel memory for both policy sets",
            cap.table6_bytes() as f64 / f64::from(1 << 20)
        ),
        None => "IPv6 in the LPM trie".to_owned(),
    };
    let _ = writeln!(
        out,
        "           {how6} (ipv6_lookup = {})",
        policy.ipv6_lookup.as_str()
    );
    let [u4, u6] = policy.lpm_unmerged;
    let _ = writeln!(
        out,
        "kernel:    {} IPv4, {} IPv6 prefixes ({:.1} % fewer than the {u4}, {u6} before joining \
         adjacent and nested prefixes that decide the same)",
        policy.lpm_v4.len(),
        policy.lpm_v6.len(),
        percent_fewer(u4 + u6, policy.lpm_v4.len() + policy.lpm_v6.len()),
    );
    if cfg.allowlist.is_empty() {
        let _ = writeln!(out, "allowlist: (empty)");
    } else {
        let _ = writeln!(out, "allowlist: {}", cfg.allowlist.join(", "));
    }
    let packets = match policy.packet_sockets {
        PacketSockets::Deny => "refused with EPERM",
        PacketSockets::Audit => "let through and reported",
        PacketSockets::Allow => "let through",
    };
    let _ = writeln!(
        out,
        "packets:   packet_sockets = {} (AF_PACKET/AF_XDP sockets of the cgroup {packets}; \
         BPF LSM, else per frame at tc/egress)",
        policy.packet_sockets
    );
    if !policy.packet_exes.is_empty() {
        let list: Vec<String> = policy
            .packet_exes
            .iter()
            .map(|(p, send)| {
                format!(
                    "{} ({})",
                    p.display(),
                    if *send { "open, send" } else { "open" }
                )
            })
            .collect();
        let _ = writeln!(out, "  may use: {}", list.join(", "));
    }
    // Lines that only appear when the policy uses the feature, so a simple file stays short.
    if !cfg.rules.is_empty() {
        let _ = writeln!(out, "rules:     {}", cfg.rules.len());
        for r in &cfg.rules {
            let proto = r
                .protocol
                .map_or_else(|| "any".to_owned(), crate::base::protocol::name);
            let ports = r.ports.map_or_else(
                || "any".to_owned(),
                |(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                },
            );
            let mode = r
                .mode
                .map_or("", |m| if m == Mode::Audit { " (audit)" } else { "" });
            let _ = writeln!(
                out,
                "  {:>3}  {} {} protocol {proto} ports {ports}, {} destination(s){mode}  [{}]",
                r.id,
                r.name,
                r.action.as_str(),
                r.targets.len(),
                r.origin
            );
        }
    }
    if !cfg.rules.is_empty() || cfg.default != crate::config::Action::Deny {
        let _ = writeln!(
            out,
            "default:   {} (destinations in no region and under no rule)",
            cfg.default.as_str()
        );
    }
    if !cfg.drop_ins.is_empty() {
        let files: Vec<String> = cfg
            .drop_ins
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(out, "drop-ins:  {}", files.join(", "));
    }
    out
}

/// Limits the compiled policy exceeds: the loader refuses it, so `check` must fail too.
pub fn errors(policy: &Policy) -> &[String] {
    &policy.problems
}

/// Things that are valid but probably not what the operator meant, one sentence each, in a
/// stable order (empty: nothing to say):
/// - the allowlist is empty (everything but loopback is denied, or reported in audit mode);
/// - an allowlisted region contains `0.0.0.0/0` or `::/0` (allows all of a family);
/// - a prefix of a non-allowlisted region lies directly inside a prefix of an allowlisted one,
///   so the longest-prefix rule denies part of the allowlisted range (at most
///   10 listed, then one line counting the rest).
pub fn warnings(cfg: &Config, policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let outcome = match policy.mode {
        Mode::Enforce => "denied",
        Mode::Audit => "reported",
    };
    if cfg.allowlist.is_empty() {
        out.push(format!(
            "the allowlist is empty: every connection except to loopback will be {outcome}"
        ));
    }

    let allowed = |id: u32| policy.allowed.get(id as usize).copied().unwrap_or(false);
    for (n, id) in &policy.v4 {
        if n.prefix() == 0 && allowed(*id) {
            out.push(format!(
                "region `{}` is allowlisted and contains {n}: every IPv4 destination outside \
                 more specific regions is allowed",
                policy.region_name(*id)
            ));
        }
    }
    for (n, id) in &policy.v6 {
        if n.prefix() == 0 && allowed(*id) {
            out.push(format!(
                "region `{}` is allowlisted and contains {n}: every IPv6 destination outside \
                 more specific regions is allowed",
                policy.region_name(*id)
            ));
        }
    }

    // A NAT64 prefix overlapping a region: those addresses are judged by the IPv4 address
    // they end in (RFC 6052), not by the region (intended for a translator inside one's own
    // space; a surprise anywhere else).
    for (net, id) in &policy.v6 {
        for n64 in &policy.nat64 {
            if net.prefix() > 0 && (n64.contains(net.network()) || net.contains(n64.network())) {
                out.push(format!(
                    "region `{}` prefix {net} overlaps NAT64 prefix {n64}: destinations in \
                     {n64} are judged by the IPv4 address they end in, not as `{}`",
                    policy.region_name(*id),
                    policy.region_name(*id)
                ));
            }
        }
    }

    // The nearest enclosing prefix is what a lookup would fall back to without this one.
    let mut nested: Vec<String> = Vec::new();
    for_each_nested(&policy.v4, &allowed, |inner, id, outer, pid| {
        nested.push(nested_warning(policy, inner, id, outer, pid, outcome));
    });
    for_each_nested(&policy.v6, &allowed, |inner, id, outer, pid| {
        nested.push(nested_warning(policy, inner, id, outer, pid, outcome));
    });
    let more = nested.len().saturating_sub(MAX_NESTED_WARNINGS);
    out.extend(nested.into_iter().take(MAX_NESTED_WARNINGS));
    if more > 0 {
        out.push(format!(
            "... and {more} more prefixes of non-allowlisted regions inside allowlisted prefixes"
        ));
    }
    out
}

/// An address family's LPM entries, for [`for_each_nested`].
trait Family: Sized + std::fmt::Display {
    /// Address bits (32 or 128).
    const BITS: u8;
    /// The network address as an integer, and the prefix length.
    fn parts(&self) -> (u128, u8);
    /// `ADDR/LEN` of `net` cut to `len` bits and its region id, when `entries` list exactly
    /// that prefix.
    fn listed(entries: &[(Self, u32)], net: u128, len: u8) -> Option<(String, u32)>;
}

impl Family for Ipv4Network {
    const BITS: u8 = 32;
    fn parts(&self) -> (u128, u8) {
        (u128::from(u32::from(self.network())), self.prefix())
    }
    fn listed(entries: &[(Self, u32)], net: u128, len: u8) -> Option<(String, u32)> {
        // `net` came from `parts`, so it fits in 32 bits.
        let p = (net as u32) & mask_u32(len);
        exact_v4(entries, p, len).map(|pid| (format!("{}/{len}", Ipv4Addr::from(p)), pid))
    }
}

impl Family for Ipv6Network {
    const BITS: u8 = 128;
    fn parts(&self) -> (u128, u8) {
        (u128::from(self.network()), self.prefix())
    }
    fn listed(entries: &[(Self, u32)], net: u128, len: u8) -> Option<(String, u32)> {
        let p = net & mask_u128(len);
        exact_v6(entries, p, len).map(|pid| (format!("{}/{len}", Ipv6Addr::from(p)), pid))
    }
}

/// Calls `found(inner, id, outer, outer_id)` for every prefix of a region that is not
/// allowed whose nearest enclosing listed prefix (what a lookup would fall back to without
/// it) is of an allowed region, in `entries` order.
fn for_each_nested<N: Family>(
    entries: &[(N, u32)],
    allowed: &impl Fn(u32) -> bool,
    mut found: impl FnMut(&str, u32, &str, u32),
) {
    let mut lens = vec![false; usize::from(N::BITS) + 1];
    for (n, _) in entries {
        lens[usize::from(n.parts().1)] = true;
    }
    for (n, id) in entries {
        if allowed(*id) {
            continue;
        }
        let (net, len) = n.parts();
        let parent = (0..len)
            .rev()
            .filter(|l| lens[usize::from(*l)])
            .find_map(|l| N::listed(entries, net, l));
        if let Some((p, pid)) = parent.filter(|(_, pid)| allowed(*pid)) {
            found(&n.to_string(), *id, &p, pid);
        }
    }
}

fn nested_warning(
    policy: &Policy,
    inner: &str,
    id: u32,
    outer: &str,
    pid: u32,
    outcome: &str,
) -> String {
    // The inner region's own mode decides what "not allowed" means there.
    let outcome = match policy.region_modes.get(id as usize).copied().flatten() {
        Some(Mode::Audit) => "reported (region in audit mode)",
        Some(Mode::Enforce) => "denied",
        None => outcome,
    };
    format!(
        "{inner} (region `{}`, not allowlisted) lies inside {outer} (region `{}`, allowlisted): \
         connections to it will be {outcome} because the longest prefix wins",
        policy.region_name(id),
        policy.region_name(pid)
    )
}

/// How many percent fewer `after` is than `before` (0 when `before` is 0).
pub fn percent_fewer(before: usize, after: usize) -> f64 {
    if before == 0 {
        0.0
    } else {
        100.0 * (before.saturating_sub(after)) as f64 / before as f64
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;
    use crate::policy::compile;

    fn both(path: &str, text: &str) -> (Config, Policy) {
        let cfg = parse(Path::new(path), text).expect("valid config");
        let policy = compile(&cfg);
        (cfg, policy)
    }

    /// A region or rule whose mode differs from the policy's is named under `mode:`.
    #[test]
    fn summary_names_regions_and_rules_with_their_own_mode() {
        let (cfg, policy) = both(
            "p.toml",
            "allowlist = [\"eu\"]\n\
             [regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
             [regions.us]\nprefixes = [\"198.18.2.0/24\"]\nmode = \"audit\"\n\
             [[rules]]\nname = \"ntp\"\naction = \"deny\"\nto = [\"198.18.1.9/32\"]\n\
             mode = \"audit\"\n",
        );
        let s = summary(&cfg, &policy);
        assert!(s.contains("\n           region us in audit mode\n"), "{s}");
        assert!(s.contains("\n           rule ntp in audit mode\n"), "{s}");
        assert!(!s.contains("region eu"), "{s}");
    }

    #[test]
    fn check_summary_example() {
        let (cfg, policy) = both(
            "configs/example.toml",
            include_str!("../../../configs/example.toml"),
        );
        let expected = format!(
            "config:    configs/example.toml\n\
             mode:      enforce (connections outside the allowlist fail with EPERM)\n\
             digest:    {}\n\
             regions:   2\n  \
               id  region  allowed  ipv4  ipv6  description\n   \
                1  eu      yes         1     1  EU datacenters\n   \
                2  us      no          1     1  US datacenters\n\
             prefixes:  2 IPv4, 2 IPv6\n\
             lookup:    IPv4 in the LPM trie (ipv4_lookup = auto)\n           \
             IPv6 in the LPM trie (ipv6_lookup = auto)\n\
             kernel:    2 IPv4, 2 IPv6 prefixes (0.0 % fewer than the 2, 2 before joining \
             adjacent and nested prefixes that decide the same)\n\
             allowlist: eu\n\
             packets:   packet_sockets = deny (AF_PACKET/AF_XDP sockets of the cgroup refused \
             with EPERM; BPF LSM, else per frame at tc/egress)\n",
            policy.digest
        );
        assert_eq!(summary(&cfg, &policy), expected);
        assert!(warnings(&cfg, &policy).is_empty());
    }

    #[test]
    fn check_summary_audit_empty_allowlist_wide_columns() {
        let text = r#"
            mode = "audit"
            allowlist = []
            [regions.a-rather-long-region-name]
            prefixes = ["10.0.0.0/8"]
            [regions.b]
            prefixes = ["::/0"]
        "#;
        let (cfg, policy) = both("t.toml", text);
        let expected = format!(
            "config:    t.toml\n\
             mode:      audit (connections outside the allowlist are let through and reported)\n\
             digest:    {}\n\
             regions:   2\n  \
               id  region                     allowed  ipv4  ipv6  description\n   \
                1  a-rather-long-region-name  no          1     0\n   \
                2  b                          no          0     1\n\
             prefixes:  1 IPv4, 1 IPv6\n\
             lookup:    IPv4 in the LPM trie (ipv4_lookup = auto)\n           \
             IPv6 in the LPM trie (ipv6_lookup = auto)\n\
             kernel:    1 IPv4, 1 IPv6 prefixes (0.0 % fewer than the 1, 1 before joining \
             adjacent and nested prefixes that decide the same)\n\
             allowlist: (empty)\n\
             packets:   packet_sockets = audit (AF_PACKET/AF_XDP sockets of the cgroup let \
             through and reported; BPF LSM, else per frame at tc/egress)\n",
            policy.digest
        );
        assert_eq!(summary(&cfg, &policy), expected);
        assert_eq!(
            warnings(&cfg, &policy),
            ["the allowlist is empty: every connection except to loopback will be reported"]
        );
    }

    #[test]
    fn check_warns_of_a_nat64_prefix_inside_a_region() {
        let (cfg, policy) = both(
            "t.toml",
            "allowlist = [\"eu\"]\nnat64_prefixes = [\"2001:db8:2::/96\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n[regions.us]\nprefixes = [\"2001:db8:2::/48\"]\n",
        );
        let w = warnings(&cfg, &policy);
        assert!(
            w.iter()
                .any(|l| l.contains("overlaps NAT64 prefix 2001:db8:2::/96")),
            "{w:?}"
        );
    }

    #[test]
    fn check_summary_names_the_table_and_its_memory() {
        let (cfg, policy) = both(
            "t.toml",
            "ipv4_lookup = \"table\"\nallowlist = []\n[regions.a]\nprefixes = [\"10.0.0.0/25\"]\n",
        );
        let s = summary(&cfg, &policy);
        // 2 x 4 KiB x (16 directory pages + (1 needed + 32 spare) pool pages + (1 needed
        // + 256 spare chunks) x 512 B in 33 pages + 3 map headers): 680 KiB.
        assert!(
            s.contains(
                "lookup:    IPv4 in the DIR-24-8 table, 0.7 MiB of kernel memory for both \
                 policy sets (ipv4_lookup = table)\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn check_summary_names_the_ipv6_table_and_the_merging() {
        let (cfg, policy) = both(
            "t.toml",
            "ipv6_lookup = \"table\"\nallowlist = []\n[regions.a]\nprefixes = [\
             \"2001:db8::/33\", \"2001:db8:8000::/33\", \"2001:db8:1::/48\", \
             \"10.0.0.0/25\", \"10.0.0.128/25\"]\n",
        );
        let s = summary(&cfg, &policy);
        // 2 x (512 KiB + 8 B index, 528 chunks of 128 B and (3 + 4096 spare) x 24 B of ranges,
        // in whole pages).
        let lookup6 = if egressd_common::TABLE6_IN_PROGRAMS {
            "IPv6 in the range table, 1.3 MiB of kernel memory for both policy sets"
        } else {
            "IPv6 in the LPM trie"
        };
        assert!(
            s.contains(&format!(
                "           {lookup6} (ipv6_lookup = table)\n\
                 kernel:    1 IPv4, 1 IPv6 prefixes (60.0 % fewer than the 2, 3 before \
                 joining adjacent and nested prefixes that decide the same)\n"
            )),
            "{s}"
        );
    }

    #[test]
    fn check_summary_no_regions() {
        let (cfg, policy) = both("t.toml", "allowlist = []\n");
        let s = summary(&cfg, &policy);
        assert!(
            s.contains(
                "regions:   0\nprefixes:  0 IPv4, 0 IPv6\n\
                 lookup:    IPv4 in the LPM trie (ipv4_lookup = auto)\n           \
                 IPv6 in the LPM trie (ipv6_lookup = auto)\n\
                 kernel:    0 IPv4, 0 IPv6 prefixes (0.0 % fewer than the 0, 0 before joining \
                 adjacent and nested prefixes that decide the same)\nallowlist: (empty)\n"
            ),
            "{s}"
        );
        assert_eq!(
            warnings(&cfg, &policy),
            ["the allowlist is empty: every connection except to loopback will be denied"]
        );
    }

    #[test]
    fn check_warns_allowlisted_default_route() {
        let (cfg, policy) = both(
            "t.toml",
            "allowlist = [\"world\"]\n[regions.world]\nprefixes = [\"0.0.0.0/0\", \"::/0\"]\n",
        );
        let w = warnings(&cfg, &policy);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("region `world` is allowlisted and contains 0.0.0.0/0"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("region `world` is allowlisted and contains ::/0"),
            "{w:?}"
        );
    }

    #[test]
    fn check_warns_denied_prefix_inside_allowed() {
        let text = r#"
            allowlist = ["eu"]
            [regions.eu]
            prefixes = ["198.18.0.0/16", "2001:db8::/32"]
            [regions.us]
            prefixes = ["198.18.2.0/24", "2001:db8:2::/48", "203.0.113.0/24"]
            [regions.eu-edge]
            prefixes = ["198.18.3.0/24"]
        "#;
        let (cfg, policy) = both("t.toml", text);
        assert_eq!(
            warnings(&cfg, &policy),
            [
                "198.18.2.0/24 (region `us`, not allowlisted) lies inside 198.18.0.0/16 \
                 (region `eu`, allowlisted): connections to it will be denied because the \
                 longest prefix wins",
                "198.18.3.0/24 (region `eu-edge`, not allowlisted) lies inside 198.18.0.0/16 \
                 (region `eu`, allowlisted): connections to it will be denied because the \
                 longest prefix wins",
                "2001:db8:2::/48 (region `us`, not allowlisted) lies inside 2001:db8::/32 \
                 (region `eu`, allowlisted): connections to it will be denied because the \
                 longest prefix wins",
            ]
        );
    }

    #[test]
    fn check_nested_uses_nearest_parent_and_is_capped() {
        // us /24 inside a not-allowlisted /20 inside the allowlisted /16: the /20 is the
        // nearest parent, so only the /20 is reported.
        let text = r#"
            allowlist = ["eu"]
            [regions.eu]
            prefixes = ["10.0.0.0/16"]
            [regions.mid]
            prefixes = ["10.0.0.0/20"]
            [regions.us]
            prefixes = ["10.0.1.0/24"]
        "#;
        let (cfg, policy) = both("t.toml", text);
        let w = warnings(&cfg, &policy);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("10.0.0.0/20 (region `mid`"), "{w:?}");

        let hosts: Vec<String> = (1..=15).map(|i| format!("\"10.0.0.{i}\"")).collect();
        let text = format!(
            "allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"10.0.0.0/24\"]\n\
             [regions.us]\nprefixes = [{}]\n",
            hosts.join(", ")
        );
        let (cfg, policy) = both("t.toml", &text);
        let w = warnings(&cfg, &policy);
        assert_eq!(w.len(), MAX_NESTED_WARNINGS + 1, "{w:?}");
        assert_eq!(
            w[MAX_NESTED_WARNINGS],
            "... and 5 more prefixes of non-allowlisted regions inside allowlisted prefixes"
        );
    }
}
