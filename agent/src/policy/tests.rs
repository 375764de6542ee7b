//! Unit tests of [`super`] (policy).
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
    let p = policy(include_str!("../../../configs/example.toml"));
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
    let p = policy(include_str!("../../../configs/example.toml"));
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
        policy(include_str!("../../../configs/example.toml")).digest,
        "f042da125f5b1a59"
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
            mode: None,
            origin: String::new(),
            name: format!("r{r}"),
            description: None,
            prefixes: (0..100u32)
                .flat_map(|i| {
                    let n = r * 100 + i;
                    [
                        IpNetwork::V4(Ipv4Network::from(Ipv4Addr::from(0x0a00_0000 + n))),
                        IpNetwork::V6(
                            Ipv6Network::new(
                                Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(n) << 64)),
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
        packet_sockets: crate::config::PacketSockets::Deny,
        packet_exes: Vec::new(),
        ipv4_lookup: crate::config::Ipv4Lookup::Auto,
        ipv6_lookup: crate::config::Ipv6Lookup::Auto,
        nat64: vec![crate::config::WELL_KNOWN_NAT64],
        default: Action::Deny,
        suppress_window_ms: 0,
        summary_after: 0,
        regions,
        rules: Vec::new(),
        drop_ins: Vec::new(),
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

const RULES_TEXT: &str = concat!(
    "allowlist = [\"eu\"]\n",
    "[regions.eu]\nprefixes = [\"198.18.0.0/16\"]\n",
    "[regions.us]\nprefixes = [\"198.18.2.0/24\"]\nmode = \"audit\"\n",
    "[regions.ntp]\nprefixes = [\"198.18.9.9/32\"]\n",
    "[[rules]]\nname = \"ntp\"\naction = \"allow\"\nregions = [\"ntp\"]\nprotocol = \"udp\"\nports = 123\n",
    "[[rules]]\nname = \"no-smtp\"\naction = \"deny\"\nto = [\"0.0.0.0/0\"]\nprotocol = \"tcp\"\nports = 25\n",
    "[[rules]]\nname = \"smtp-relay\"\naction = \"allow\"\nto = [\"198.18.1.25/32\"]\n",
    "[[rules]]\nname = \"tie\"\naction = \"allow\"\nto = [\"198.18.3.0/24\"]\nprotocol = \"tcp\"\nports = \"1-1000\"\n",
    "[[rules]]\nname = \"tie-deny\"\naction = \"deny\"\nto = [\"198.18.3.0/24\"]\nprotocol = \"tcp\"\nports = 22\nmode = \"audit\"\n",
    "[[rules]]\nname = \"tie-deny-enforce\"\naction = \"deny\"\nto = [\"198.18.3.0/24\"]\nprotocol = \"tcp\"\nports = 22\n",
);

fn rules_policy() -> Policy {
    compile(&crate::config::parse(std::path::Path::new("t.toml"), RULES_TEXT).expect("valid"))
}

#[test]
fn policy_precedence() {
    let p = rules_policy();
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let d = |a: &str, proto: u8, port: u16| p.decide(ip(a), proto, port);
    // Region allowlist.
    assert_eq!(d("198.18.1.1", 6, 443).verdict, Verdict::Allow);
    // A port rule at a shorter prefix (/0) loses to nothing longer that is portless? No:
    // eu's /16 is portless and longer than /0, so eu wins for tcp/25.
    assert_eq!(d("198.18.1.1", 6, 25).verdict, Verdict::Allow);
    // Outside any region the /0 port rule applies to tcp/25 only; the default denies rest.
    assert_eq!(d("203.0.113.1", 6, 25).rule, p.rules[1].id);
    assert_eq!(d("203.0.113.1", 6, 25).verdict, Verdict::Deny);
    assert_eq!(d("203.0.113.1", 6, 443).rule, egressd_common::RULE_DEFAULT);
    // The most specific prefix wins: the /32 relay is portless allow.
    assert_eq!(d("198.18.1.25", 6, 25).verdict, Verdict::Allow);
    assert_eq!(d("198.18.1.25", 6, 25).rule, 3);
    // Region mode audit: us denials are reported, not enforced.
    assert_eq!(d("198.18.2.2", 6, 443).verdict, Verdict::Audit);
    // ntp: udp/123 allowed, anything else at that /32 denied (ntp is not allowlisted).
    assert_eq!(d("198.18.9.9", 17, 123).verdict, Verdict::Allow);
    assert_eq!(d("198.18.9.9", 17, 124).verdict, Verdict::Deny);
    assert_eq!(d("198.18.9.9", 6, 123).verdict, Verdict::Deny);
    // At equal prefix a port rule beats the portless region decision (eu allows /16,
    // but 198.18.3.0/24 only has port rules: for ports 1-1000 they decide, else eu).
    assert_eq!(d("198.18.3.3", 6, 80).verdict, Verdict::Allow);
    assert_eq!(d("198.18.3.3", 6, 2000).verdict, Verdict::Allow);
    // Full tie: enforcing deny beats auditing deny beats allow.
    assert_eq!(d("198.18.3.3", 6, 22).verdict, Verdict::Deny);
    assert_eq!(d("198.18.3.3", 6, 22).rule, 6);
}

#[test]
fn policy_stable_ids_change_labels_not_decisions() {
    // Ids from a table that saw other names first: regions and rules sit at other ids
    // (with gaps), but the verdicts, the precedence (file order) and the digest are
    // those of the positional compile.
    let base = rules_policy();
    let cfg = crate::config::parse(
        Path::new("t.toml"),
        concat!(
            "allowlist = []\n[regions.old]\nprefixes = [\"192.0.2.0/24\"]\n",
            "[regions.us]\nprefixes = [\"192.0.3.0/24\"]\n",
            "[[rules]]\nname = \"tie-deny\"\naction = \"deny\"\nto = [\"192.0.2.0/24\"]\n",
        ),
    )
    .expect("valid");
    let mut table = crate::policy::ids::IdTable::default();
    let first = table.assign(&cfg).expect("ids");
    table.commit(&first);
    let rules_cfg = crate::config::parse(Path::new("t.toml"), RULES_TEXT).expect("valid");
    let a = table.assign(&rules_cfg).expect("ids");
    let p = compile_with(&rules_cfg, &a);
    assert_eq!(p.digest, base.digest);
    assert_eq!(p.region_name(2), "us");
    assert_eq!(p.region_name(1), "old", "a removed region keeps its label");
    assert_eq!(p.region_count(), 3);
    assert_eq!(p.region_labels()[..4], ["unknown", "old", "us", "eu"]);
    assert_eq!(p.rule_name(1), Some("tie-deny"));
    for a in [
        "198.18.1.1",
        "203.0.113.1",
        "198.18.1.25",
        "198.18.2.2",
        "198.18.3.3",
    ] {
        for (proto, port) in [(6, 25), (6, 443), (17, 123), (6, 22), (6, 80)] {
            let (d, b) = (
                p.decide(ip(a), proto, port),
                base.decide(ip(a), proto, port),
            );
            assert_eq!(d.verdict, b.verdict, "{a} {proto}/{port}");
            assert_eq!(
                p.rule_name(d.rule),
                base.rule_name(b.rule),
                "{a} {proto}/{port}"
            );
            assert_eq!(
                p.region_name(d.region),
                base.region_name(b.region),
                "{a} {proto}/{port}"
            );
        }
    }
    // `tie-deny` has id 1 now, below every other rule's, yet `smtp-relay` and `tie` keep
    // the precedence of their place in the file (checked through the names above).
    assert_eq!(p.rules[4].id, 1);
    // The kernel's tables name the same regions and rules.
    let e = &p.entries[exact_v4(&p.lpm_v4, u32::from(Ipv4Addr::new(198, 18, 2, 0)), 24)
        .expect("us prefix") as usize];
    assert_eq!(p.region_name(e.region), "us");
    // Two rules tied on everything: the first in the file decides, whatever the ids.
    let two = |names: [&str; 2]| {
        let mut t = String::from("allowlist = []\n");
        for n in names {
            t.push_str(&format!(
                "[[rules]]\nname = \"{n}\"\naction = \"deny\"\nto = [\"192.0.2.0/24\"]\n"
            ));
        }
        crate::config::parse(Path::new("t.toml"), &t).expect("valid")
    };
    let mut t = crate::policy::ids::IdTable::default();
    let seen = t.assign(&two(["a", "b"])).expect("ids");
    t.commit(&seen);
    let swapped = two(["b", "a"]);
    let p = compile_with(&swapped, &t.assign(&swapped).expect("ids"));
    let d = p.decide(ip("192.0.2.1"), 6, 80);
    assert_eq!((d.rule, p.rule_name(d.rule)), (2, Some("b")));
    let e = p.entries[exact_v4(&p.lpm_v4, u32::from(Ipv4Addr::new(192, 0, 2, 0)), 24)
        .expect("rule prefix") as usize];
    assert_eq!(e.default_rule, 2);
}

#[test]
fn policy_entries_mirror_the_model() {
    // The compiled tables, evaluated as the kernel does, agree with the model.
    let p = rules_policy();
    let kernel = |a: &str, proto: u8, port: u16| {
        let addr = match ip(a) {
            IpAddr::V4(v) => v,
            IpAddr::V6(_) => unreachable!(),
        };
        let id = (0..=32u8)
            .rev()
            .find_map(|len| exact_v4(&p.lpm_v4, u32::from(addr) & mask_u32(len), len))
            .unwrap_or(0);
        let e = p.entries[id as usize];
        let r = e.rules[..e.n_rules as usize]
            .iter()
            .find(|r| r.matches(proto, port));
        let (act, audit) = r.map_or((e.default_action, e.default_audit), |r| (r.action, r.audit));
        match (act, audit) {
            (1, _) => Verdict::Allow,
            (_, 0) => Verdict::Deny,
            _ => Verdict::Audit,
        }
    };
    for a in [
        "198.18.1.1",
        "203.0.113.1",
        "198.18.1.25",
        "198.18.2.2",
        "198.18.9.9",
        "198.18.3.3",
        "10.0.0.1",
    ] {
        for (proto, port) in [
            (6, 25),
            (6, 443),
            (17, 123),
            (17, 124),
            (6, 22),
            (6, 80),
            (6, 2000),
            (1, 0),
        ] {
            assert_eq!(
                kernel(a, proto, port),
                p.decide(ip(a), proto, port).verdict,
                "{a} {proto}/{port}"
            );
        }
    }
    // Identical tables are shared: far fewer entries than prefixes.
    assert!(p.entries.len() <= p.lpm_v4.len() + 1);
}

#[test]
fn policy_too_many_port_rules_is_a_problem() {
    let mut text = String::from("allowlist = []\n");
    for port in 1..=17 {
        text.push_str(&format!("[[rules]]\naction = \"allow\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"tcp\"\nports = {port}\n"));
    }
    let p = compile(&crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid"));
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(
        p.problems[0].contains("17 port rules apply to 10.0.0.0/8"),
        "{:?}",
        p.problems
    );
    // Says where to look: the first rules with file and line, and how many more.
    assert!(
        p.problems[0].ends_with(
            ": rule at t.toml:2, rule at t.toml:7, rule at t.toml:12, rule at t.toml:17 and \
             13 more"
        ),
        "{:?}",
        p.problems
    );
}

#[test]
fn policy_too_many_port_rules_names_them() {
    let mut text = String::from("allowlist = []\n");
    for port in 1..=17 {
        text.push_str(&format!("[[rules]]\nname = \"p{port}\"\naction = \"allow\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"tcp\"\nports = {port}\n"));
    }
    let p = compile(&crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid"));
    assert!(
        p.problems[0].ends_with(
            ": `p1` (t.toml:2), `p2` (t.toml:8), `p3` (t.toml:14), `p4` (t.toml:20) and 13 more"
        ),
        "{:?}",
        p.problems
    );
}

#[test]
fn policy_port_rules_naming_a_region_are_counted_not_copied_past_the_limit() {
    // 300 prefixes and 40 port rules naming their region: the count is exact, the
    // problem names the first prefixes, and only KEEP rules per prefix were built.
    let mut text = String::from("allowlist = []\n[regions.big]\nprefixes = [");
    for i in 0..300 {
        text.push_str(&format!("\"10.{}.{}.0/24\",", i / 256, i % 256));
    }
    text.push_str("]\n[regions.small]\nprefixes = [\"192.0.2.0/24\"]\n");
    for port in 1..=40 {
        text.push_str(&format!(
                "[[rules]]\naction = \"deny\"\nregions = [\"big\"]\nprotocol = \"tcp\"\nports = {port}\n"
            ));
    }
    // Inherited past the limit: a rule-only prefix inside one with 20 port rules.
    for port in 1..=20 {
        text.push_str(&format!(
                "[[rules]]\naction = \"deny\"\nto = [\"172.16.0.0/12\"]\nprotocol = \"udp\"\nports = {port}\n"
            ));
    }
    text.push_str(
        "[[rules]]\naction = \"allow\"\nto = [\"172.16.1.0/24\"]\nprotocol = \"udp\"\nports = 53\n",
    );
    let p = compile(&crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid"));
    assert_eq!(p.problems.len(), 10, "{:?}", p.problems);
    assert!(
        p.problems[0].starts_with("40 port rules apply to 10.0.0.0/24 "),
        "{:?}",
        p.problems
    );
    let p2 = {
        let t = text.replacen("regions = [\"big\"]", "regions = [\"small\"]", 40);
        compile(&crate::config::parse(std::path::Path::new("t.toml"), &t).expect("valid"))
    };
    assert!(
        p2.problems
            .iter()
            .any(|m| m.starts_with("40 port rules apply to 192.0.2.0/24 ")),
        "{:?}",
        p2.problems
    );
    assert!(
        p2.problems
            .iter()
            .any(|m| m.starts_with("20 port rules apply to 172.16.0.0/12 ")),
        "{:?}",
        p2.problems
    );
    assert!(
        p2.problems
            .iter()
            .any(|m| m.starts_with("21 port rules apply to 172.16.1.0/24 ")),
        "{:?}",
        p2.problems
    );
    for e in p.entries.iter().chain(&p2.entries) {
        assert!(usize::from(e.n_rules) <= egressd_common::MAX_PORT_RULES);
    }
    // At the limit exactly, no problem, and the tables still agree with the model.
    let mut ok = String::from(
        "allowlist = [\"big\"]\n[regions.big]\nprefixes = [\"10.0.0.0/24\", \"10.0.1.0/24\"]\n",
    );
    for port in 1..=16 {
        ok.push_str(&format!(
                "[[rules]]\naction = \"deny\"\nregions = [\"big\"]\nprotocol = \"tcp\"\nports = {port}\n"
            ));
    }
    let p = compile(&crate::config::parse(std::path::Path::new("t.toml"), &ok).expect("valid"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.decide(ip("10.0.1.1"), 6, 16).verdict, Verdict::Deny);
    assert_eq!(p.decide(ip("10.0.1.1"), 6, 17).verdict, Verdict::Allow);
    // The two /24s decide the same: merged into their /23.
    assert_eq!(p.lpm_v4.len(), 1);
    assert_eq!(p.lpm_unmerged, [2, 0]);
    let id = lpm_v4(&p.lpm_v4, Ipv4Addr::new(10, 0, 1, 1));
    assert_eq!(p.entries[id as usize].n_rules, 16);
}

#[test]
fn policy_ports_beat_protocol_only_beat_portless() {
    let text = concat!(
        "allowlist = []\ndefault = \"allow\"\n",
        "[[rules]]\naction = \"deny\"\nto = [\"0.0.0.0/0\"]\nprotocol = \"udp\"\n",
        "[[rules]]\naction = \"allow\"\nto = [\"0.0.0.0/0\"]\nprotocol = \"udp\"\nports = 53\n",
        "[[rules]]\naction = \"deny\"\nto = [\"0.0.0.0/0\"]\n",
    );
    let p = compile(&crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid"));
    assert_eq!(p.decide(ip("203.0.113.1"), 17, 53).verdict, Verdict::Allow);
    assert_eq!(p.decide(ip("203.0.113.1"), 17, 54).rule, 1);
    assert_eq!(p.decide(ip("203.0.113.1"), 6, 53).rule, 3);
    assert_eq!(
        p.decide(ip("2001:db8::1"), 6, 53).rule,
        egressd_common::RULE_DEFAULT
    );
}

/// The digest's IPv4 lines are written without `fmt`: byte for byte what `writeln!` writes.
#[test]
fn digest_v4_lines_are_those_of_writeln() {
    use std::fmt::Write as _;
    let mut rng = fastrand::Rng::with_seed(0xd16e);
    for _ in 0..20_000 {
        let len = rng.u8(0..=32);
        let n = Ipv4Network::new(Ipv4Addr::from(rng.u32(..)), len).expect("valid length");
        let n = Ipv4Network::new(n.network(), len).expect("valid length");
        let id = if rng.bool() {
            rng.u32(..)
        } else {
            rng.u32(..300)
        };
        let mut fast = super::Fnv1a64::default();
        fast.v4_line(&n, id);
        let mut slow = super::Fnv1a64::default();
        let _ = writeln!(slow, "v4 {n} {id}");
        assert_eq!(fast.0, slow.0, "{n} {id}");
    }
}
