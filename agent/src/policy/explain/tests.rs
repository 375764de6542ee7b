//! Unit tests of [`super`] (explain).
use std::path::Path;

use super::*;
use crate::config::parse;
use crate::policy::compile;

fn example() -> Policy {
    compile(
        &parse(
            Path::new("configs/example.toml"),
            include_str!("../../../../configs/example.toml"),
        )
        .expect("valid example"),
    )
}

fn d(s: &str) -> Destination {
    parse_destination(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn explain_parse_forms() {
    let v4: IpAddr = "198.18.1.2".parse().expect("ip");
    let v6: IpAddr = "2001:db8::1".parse().expect("ip");
    for (s, ip, port, proto) in [
        ("198.18.1.2", v4, None, None),
        ("198.18.1.2:443", v4, Some(443), None),
        ("198.18.1.2/udp", v4, None, Some(Proto::UDP)),
        ("198.18.1.2:53/UDP", v4, Some(53), Some(Proto::UDP)),
        ("2001:db8::1", v6, None, None),
        ("2001:db8::1/tcp", v6, None, Some(Proto::TCP)),
        ("[2001:db8::1]", v6, None, None),
        ("[2001:db8::1]:443", v6, Some(443), None),
        ("[2001:db8::1]:443/tcp", v6, Some(443), Some(Proto::TCP)),
        ("[2001:db8::1]/udp", v6, None, Some(Proto::UDP)),
        ("198.18.1.2:5000/SCTP", v4, Some(5000), Some(Proto(132))),
        ("198.18.1.2/icmp", v4, None, Some(Proto(1))),
        ("2001:db8::1/icmpv6", v6, None, Some(Proto(58))),
        ("198.18.1.2/proto-47", v4, None, Some(Proto(47))),
        ("198.18.1.2:9/udplite", v4, Some(9), Some(Proto(136))),
        ("198.18.1.2:65535", v4, Some(65535), None),
    ] {
        assert_eq!(d(s), Destination { ip, port, proto }, "{s}");
    }
    // Without brackets a trailing group is part of the IPv6 address.
    assert_eq!(
        d("2001:db8::1:443").ip,
        "2001:db8::1:443".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        d("::ffff:198.18.1.2").ip,
        "::ffff:198.18.1.2".parse::<IpAddr>().expect("ip")
    );
}

#[test]
fn explain_parse_errors() {
    for (s, msg) in [
        ("", "empty destination"),
        ("198.18.1.0/24", "looks like a prefix"),
        ("198.18.1.2/gre", "unknown protocol `gre`"),
        ("198.18.1.2/47", "write 198.18.1.2/proto-47"),
        ("198.18.1.2/proto-256", "invalid protocol number `256`"),
        ("198.18.1.2/proto-047", "invalid protocol number `047`"),
        ("198.18.1.2:80/icmp", "protocol icmp has no ports"),
        ("[2001:db8::1]:1/proto-47", "protocol proto-47 has no ports"),
        ("198.18.1.2:65536", "invalid port `65536`"),
        ("198.18.1.2:+80", "invalid port `+80`"),
        ("198.18.1.2:", "invalid port ``"),
        ("[2001:db8::1", "missing `]`"),
        ("[198.18.1.2]:80", "not an IPv6 address"),
        ("[2001:db8::1]443", "unexpected `443`"),
        ("fe80::1%eth0", "zone ids"),
        ("example.com:443", "not an IPv4 address"),
        ("example.com", "not an IP address"),
        ("198.18.1", "not an IP address"),
        ("1.2.3.4/", "unknown protocol ``"),
    ] {
        let e = parse_destination(s).expect_err(s);
        assert!(e.contains(msg), "{s}: {e}");
    }
}

#[test]
fn explain_takes_port_0() {
    // A policy's port range may start at 0, and `connect()` to port 0 reaches the hooks.
    assert_eq!(d("198.18.1.2:0/udp").port, Some(0));
    assert_eq!(d("198.18.1.2:0/udp").to_string(), "198.18.1.2:0/udp");
}

#[test]
fn explain_display_round_trips() {
    for s in [
        "198.18.1.2",
        "198.18.1.2:443/tcp",
        "[2001:db8::1]:53/udp",
        "2001:db8::1",
    ] {
        assert_eq!(d(s).to_string(), s);
    }
}

const NOTE_NO_RULES: &str = "note:        port and protocol do not change the verdict: no \
                                 rule of this policy names a protocol or ports\n";

#[test]
fn explain_example_allowed() {
    let e = explain(&example(), d("198.18.1.2:443/tcp"));
    assert_eq!(
        e.to_text(),
        format!(
            "destination: 198.18.1.2:443/tcp\n\
                 judged as:   198.18.1.2\n\
                 region:      eu (id 1), prefix 198.18.1.0/24\n\
                 mode:        enforce (policy)\n\
                 verdict:     allow\n\
                 why:         region `eu` is on the allowlist\n\
                 {NOTE_NO_RULES}"
        )
    );
    assert_eq!(
        e.to_json(),
        json!({
            "destination": {"ip": "198.18.1.2", "port": 443, "protocol": "tcp", "protocol_number": 6},
            "judged_ip": "198.18.1.2",
            "translation": "none",
            "nat64_prefix": null,
            "region": {"id": 1, "name": "eu", "prefix": "198.18.1.0/24", "allowlisted": true},
            "rule": null,
            "mode": "enforce",
            "mode_from": "policy",
            "verdict": "allow",
            "reason": "allowlisted",
            "why": "region `eu` is on the allowlist",
            "note": "port and protocol do not change the verdict: no rule of this policy \
                     names a protocol or ports",
        })
    );
}

#[test]
fn explain_example_denied_v6() {
    let e = explain(&example(), d("[2001:db8:2::2]:443/tcp"));
    assert_eq!(
        e.to_text(),
        format!(
            "destination: [2001:db8:2::2]:443/tcp\n\
                 judged as:   2001:db8:2::2\n\
                 region:      us (id 2), prefix 2001:db8:2::/48\n\
                 mode:        enforce (policy)\n\
                 verdict:     deny\n\
                 why:         region `us` is not on the allowlist (allowlist: eu); in enforce \
                 mode (the policy's) the connection fails with EPERM and is reported\n\
                 {NOTE_NO_RULES}"
        )
    );
    assert_eq!(e.reason, Reason::NotAllowlisted);
    assert_eq!(e.to_json()["region"]["prefix"], "2001:db8:2::/48");
}

#[test]
fn explain_example_unknown_loopback_mapped_nat64() {
    let p = example();
    let e = explain(&p, d("192.0.2.1"));
    assert_eq!(
        e.to_text(),
        "destination: 192.0.2.1\n\
             judged as:   192.0.2.1\n\
             region:      unknown (id 0), no prefix matches\n\
             mode:        enforce (policy)\n\
             verdict:     deny\n\
             why:         no region and no rule contains the address, so the policy default \
             `deny` applies; in enforce mode (the policy's) the connection fails with EPERM and \
             is reported\n"
    );
    assert_eq!(e.to_json()["reason"], "default");
    assert_eq!(e.to_json()["region"]["prefix"], serde_json::Value::Null);

    for (s, reason) in [
        ("127.0.0.1", Reason::Loopback),
        ("[::1]:22", Reason::Loopback),
        ("::ffff:127.0.0.1", Reason::Loopback),
        ("0.0.0.0", Reason::Unspecified),
        ("::", Reason::Unspecified),
    ] {
        let e = explain(&p, d(s));
        assert_eq!((e.reason, e.verdict), (reason, Verdict::Allow), "{s}");
        assert_eq!((e.region.as_str(), e.region_id), ("local", REGION_LOCAL));
        assert!(
            e.to_text().contains("region:      local (id 1023)\n"),
            "{s}"
        );
        assert_eq!(e.note(), None);
    }

    let e = explain(&p, d("[::ffff:198.18.2.2]:80"));
    assert_eq!(e.translation, Translation::Ipv4Mapped);
    assert_eq!(e.judged, "198.18.2.2".parse::<IpAddr>().expect("ip"));
    assert_eq!((e.region.as_str(), e.verdict), ("us", Verdict::Deny));
    assert!(
        e.to_text().contains(
            "why:         ::ffff:198.18.2.2 is IPv4-mapped and is judged as the IPv4 \
                 address 198.18.2.2; region `us` is not on the allowlist"
        ),
        "{}",
        e.to_text()
    );
    assert_eq!(e.to_json()["translation"], "ipv4_mapped");

    let e = explain(&p, d("64:ff9b::198.18.1.2"));
    assert_eq!(
        e.translation,
        Translation::Nat64("64:ff9b::/96".parse().expect("net"))
    );
    assert_eq!((e.region.as_str(), e.verdict), ("eu", Verdict::Allow));
    assert_eq!(e.prefix, Some("198.18.1.0/24".parse().expect("net")));
    let j = e.to_json();
    assert_eq!(
        (j["translation"].as_str(), j["nat64_prefix"].as_str()),
        (Some("nat64"), Some("64:ff9b::/96"))
    );
    assert!(e.why().starts_with(
        "64:ff9b::c612:102 is inside the NAT64 prefix 64:ff9b::/96 and is judged as the \
             IPv4 address it carries, 198.18.1.2; region `eu` is on the allowlist"
    ));
}

fn policy(text: &str) -> Policy {
    compile(&parse(Path::new("t.toml"), text).expect("valid"))
}

#[test]
fn explain_audit_nested_and_agrees_with_policy() {
    let p = policy(
        r#"
            mode = "audit"
            allowlist = ["a"]
            [regions.a]
            prefixes = ["10.0.0.0/8", "2001:db8::/32"]
            [regions.b]
            prefixes = ["10.1.0.0/16", "2001:db8:1::/48"]
            [regions.c]
            prefixes = ["10.1.2.0/24"]
            mode = "enforce"
        "#,
    );
    let e = explain(&p, d("10.1.3.3"));
    assert_eq!(e.prefix, Some("10.1.0.0/16".parse().expect("net")));
    assert_eq!((e.region.as_str(), e.verdict), ("b", Verdict::Audit));
    assert!(e.why().ends_with(
        "(allowlist: a); in audit mode (the policy's) the connection goes through and is \
             reported"
    ));
    let e = explain(&p, d("10.1.2.3"));
    assert_eq!((e.region.as_str(), e.verdict), ("c", Verdict::Deny));
    assert_eq!(
        (e.mode, e.mode_from.clone()),
        (Mode::Enforce, ModeFrom::Region("c".into()))
    );
    assert!(e.to_text().contains("mode:        enforce (region `c`)\n"));
    for (s, region, prefix) in [
        ("10.1.3.3", "b", Some("10.1.0.0/16")),
        ("10.2.0.1", "a", Some("10.0.0.0/8")),
        ("11.0.0.1", "unknown", None),
        ("2001:db8:1::9", "b", Some("2001:db8:1::/48")),
        ("2001:db8:2::9", "a", Some("2001:db8::/32")),
    ] {
        let e = explain(&p, d(s));
        assert_eq!(e.region, region, "{s}");
        assert_eq!(e.prefix.map(|n| n.to_string()).as_deref(), prefix, "{s}");
        assert_eq!(e.verdict, p.verdict(e.destination.ip), "{s}");
        assert_eq!(e.region_id, p.region_of(e.destination.ip), "{s}");
    }
    let p = policy("allowlist = []\n[regions.x]\nprefixes = [\"10.0.0.0/8\"]\n");
    assert!(
        explain(&p, d("10.0.0.1"))
            .why()
            .contains("(the allowlist is empty)")
    );
    let p = policy("allowlist = []\ndefault = \"allow\"\n");
    let e = explain(&p, d("10.0.0.1"));
    assert_eq!((e.reason, e.verdict), (Reason::Default, Verdict::Allow));
    assert_eq!(
        e.why(),
        "no region and no rule contains the address, so the policy default `allow` applies"
    );
}

const RULES: &str = r#"
        allowlist = ["eu"]
        [regions.eu]
        prefixes = ["198.18.1.0/24"]
        [regions.ntp]
        prefixes = ["198.18.9.0/24"]
        [regions.us]
        prefixes = ["198.18.2.0/24"]
        mode = "audit"
        [[rules]]
        name = "ntp"
        action = "allow"
        regions = ["ntp"]
        protocol = "udp"
        ports = 123
        [[rules]]
        name = "no-smtp"
        action = "deny"
        to = ["0.0.0.0/0"]
        protocol = "tcp"
        ports = "25-26"
        [[rules]]
        name = "us-web"
        action = "deny"
        regions = ["us"]
        protocol = "tcp"
        ports = 443
    "#;

#[test]
fn explain_rules() {
    let p = policy(RULES);
    let e = explain(&p, d("198.18.9.1:123/udp"));
    assert_eq!((e.reason, e.verdict), (Reason::Rule, Verdict::Allow));
    let r = e.rule.clone().expect("rule");
    assert_eq!(
        (r.name.as_str(), r.scope.as_str(), r.origin.as_str()),
        ("ntp", "udp port 123", "t.toml:10")
    );
    assert_eq!(r.via_region.as_deref(), Some("ntp"));
    assert_eq!(
        e.to_text(),
        "destination: 198.18.9.1:123/udp\n\
             judged as:   198.18.9.1\n\
             region:      ntp (id 2), prefix 198.18.9.0/24\n\
             rule:        ntp (id 1): allow udp port 123, t.toml:10\n\
             mode:        enforce (policy)\n\
             verdict:     allow\n\
             why:         rule `ntp` (allow udp port 123, t.toml:10) matches via region `ntp` \
             (198.18.9.0/24) and takes precedence (longest prefix, then a rule naming a protocol \
             or port, then deny over allow)\n"
    );
    // Same address, other port: the region (not allowlisted) decides.
    let e = explain(&p, d("198.18.9.1:124/udp"));
    assert_eq!(
        (e.reason, e.verdict),
        (Reason::NotAllowlisted, Verdict::Deny)
    );
    // A deny rule inside the allowlisted region: the /24 membership is longer than the
    // rule's /0, so the region wins.
    let e = explain(&p, d("198.18.1.7:25/tcp"));
    assert_eq!((e.reason, e.verdict), (Reason::Allowlisted, Verdict::Allow));
    // Outside every region, the /0 rule decides.
    let e = explain(&p, d("192.0.2.1:25/tcp"));
    assert_eq!((e.reason, e.verdict), (Reason::Rule, Verdict::Deny));
    let j = e.to_json();
    assert_eq!(j["rule"]["name"], "no-smtp");
    assert_eq!(j["rule"]["prefix"], "0.0.0.0/0");
    assert_eq!(j["rule"]["via_region"], serde_json::Value::Null);
    assert_eq!(j["rule"]["scope"], "tcp ports 25-26");
    // The us region is in audit mode; the rule has none, so the region's applies.
    let e = explain(&p, d("198.18.2.2:443/tcp"));
    assert_eq!((e.reason, e.verdict), (Reason::Rule, Verdict::Audit));
    assert_eq!(e.mode_from, ModeFrom::Region("us".into()));
    assert!(
        e.why().ends_with(
            "; in audit mode (region `us`'s) the connection goes through and is reported"
        )
    );
    // Without protocol and port the specific rules cannot match, and the note says so.
    let e = explain(&p, d("198.18.9.1"));
    assert_eq!(
        (e.reason, e.verdict),
        (Reason::NotAllowlisted, Verdict::Deny)
    );
    assert_eq!(
        e.note().as_deref(),
        Some(
            "judged without /PROTO and :PORT; rules that name a protocol or ports \
                 match only when those are given"
        )
    );
    // Every case agrees with the reference model.
    for s in [
        "198.18.9.1:123/udp",
        "198.18.9.1:123/tcp",
        "198.18.2.2:443/tcp",
        "198.18.2.2:443/udp",
        "192.0.2.1:26/tcp",
        "[::ffff:192.0.2.1]:25/tcp",
    ] {
        let e = explain(&p, d(s));
        let dd = e.destination;
        let want = p.decide(
            dd.ip,
            dd.proto.map_or(0, Proto::number),
            dd.port.unwrap_or(0),
        );
        assert_eq!(
            (e.verdict, e.region_id, e.rule.as_ref().map_or(0, |r| r.id)),
            (
                want.verdict,
                want.region,
                if want.rule == egressd_common::RULE_DEFAULT {
                    0
                } else {
                    want.rule
                }
            ),
            "{s}"
        );
    }
}
