//! Tests of [`super`]: every bad input and its located message.
use super::policy::*;
use super::*;

const EXAMPLE: &str = include_str!("../../../configs/example.toml");

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.toml"), text)
}

/// Parse `text`, expect an error and check its line, field and a message fragment.
#[track_caller]
fn fails(text: &str, line: usize, field: &str, fragment: &str) -> ConfigError {
    let e = match p(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    };
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
    assert!(
        e.message.contains(fragment),
        "message {:?} lacks {fragment:?}",
        e.message
    );
    assert!(e.column >= 1, "{e}");
    e
}

fn region(name: &str, prefixes: &str) -> String {
    format!("[regions.{name}]\nprefixes = [{prefixes}]\n")
}

#[test]
fn config_example_parses() {
    let c = parse(Path::new("configs/example.toml"), EXAMPLE).expect("example is valid");
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.allowlist, vec!["eu".to_string()]);
    assert_eq!(c.cgroup, None);
    let names: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["eu", "us"]);
    let eu: Vec<String> = c.regions[0]
        .prefixes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(eu, ["198.18.1.0/24", "2001:db8:1::/48"]);
    let us: Vec<String> = c.regions[1]
        .prefixes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(us, ["198.18.2.0/24", "2001:db8:2::/48"]);
    assert!(c.regions[0].description.is_some());
}

#[test]
fn config_full_schema_and_file_order() {
    let text = "mode = \"audit\"\nallowlist = [\"zz\", \"aa\"]\ncgroup = \"/sys/fs/cgroup/app\"\n\
                [regions.zz]\nprefixes = [\"10.0.0.0/8\"]\ndescription = \"last alphabetically\"\n\
                [regions.aa]\nprefixes = [\"10.1.0.0/16\"]\n[regions.mm]\nprefixes = [\"::/0\"]\n";
    let c = p(text).expect("valid");
    assert_eq!(c.mode, Mode::Audit);
    assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/app")));
    let names: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["zz", "aa", "mm"]);
    assert_eq!(
        c.regions[0].description.as_deref(),
        Some("last alphabetically")
    );
    assert_eq!(c.allowlist, vec!["zz".to_string(), "aa".to_string()]);
    assert_eq!(c.path, PathBuf::from("test.toml"));
}

#[test]
fn config_defaults() {
    let c = p("allowlist = []\n").expect("valid");
    assert_eq!(c.mode, Mode::Enforce);
    assert!(c.regions.is_empty() && c.allowlist.is_empty() && c.cgroup.is_none());
}

#[test]
fn config_mode_display_and_serde() {
    assert_eq!(Mode::default(), Mode::Enforce);
    assert_eq!(Mode::Enforce.to_string(), "enforce");
    assert_eq!(Mode::Audit.to_string(), "audit");
    #[derive(Deserialize)]
    struct W {
        m: Mode,
    }
    let w: W = toml::from_str("m = \"audit\"").expect("valid");
    assert_eq!(w.m, Mode::Audit);
}

#[test]
fn config_dotted_and_inline_regions() {
    let text = "allowlist = [\"b\"]\n[regions]\nb.prefixes = [\"10.0.0.0/8\"]\n\
                a = { prefixes = [\"10.1.0.0/16\"] }\n";
    let c = p(text).expect("valid");
    let names: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
}

#[test]
fn config_error_display() {
    let e = ConfigError {
        file: PathBuf::from("/etc/egressd.toml"),
        line: 3,
        column: 7,
        field: "mode".into(),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "/etc/egressd.toml:3:7: mode: bad");
    let e = ConfigError {
        line: 0,
        column: 0,
        field: String::new(),
        ..e
    };
    assert_eq!(e.to_string(), "/etc/egressd.toml: bad");
}

#[test]
fn config_load_missing_file() {
    let path = Path::new("/nonexistent/egressd/config.toml");
    let e = load(path).expect_err("no such file");
    assert_eq!((e.line, e.column, e.field.as_str()), (0, 0, ""));
    assert_eq!(e.file, path);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/egressd/config.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn config_load_reads_file() {
    // In a directory of its own: as root, a policy directly in /tmp (writable by
    // others) is refused.
    let t = crate::base::safefs::tests::Tmp::new("config");
    let path = t.0.join("egressd.toml");
    std::fs::write(&path, EXAMPLE).expect("write temp file");
    let c = load(&path);
    assert_eq!(c.expect("valid").path, path);
}

#[test]
fn config_malformed_cidr() {
    let head = "allowlist = []\n[regions.us]\nprefixes = [\n  \"198.18.2.0/24\",\n  ";
    let e = fails(
        &format!("{head}\"198.18.1.0/33\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "out of range",
    );
    assert_eq!(e.column, 3);
    assert_eq!(
        e.to_string(),
        "test.toml:5:3: regions.us.prefixes[1]: malformed prefix `198.18.1.0/33`: \
         prefix length /33 is out of range for IPv4 (0-32)"
    );
    fails(
        &format!("{head}\"198.18.1/24\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not an IP address",
    );
    fails(
        &format!("{head}\"nonsense\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not an IP address",
    );
    fails(
        &format!("{head}\"2001:db8::/129\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "out of range for IPv6",
    );
    fails(
        &format!("{head}\"10.0.0.0/\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not a number",
    );
    fails(
        &format!("{head}\"10.0.0.0/255.0.0.0\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not a number",
    );
    fails(
        &format!("{head}\"10.0.0.0/-8\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not a number",
    );
    fails(
        &format!("{head}\" 10.0.0.0/8\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not an IP address",
    );
    fails(
        &format!("{head}\"fe80::1%eth0\",\n]\n"),
        5,
        "regions.us.prefixes[1]",
        "not an IP address",
    );
}

#[test]
fn config_host_bits_set() {
    let text = format!("allowlist = []\n{}", region("eu", "\"198.18.1.1/24\""));
    fails(
        &text,
        3,
        "regions.eu.prefixes[0]",
        "the network would be 198.18.1.0/24",
    );
    let text = format!("allowlist = []\n{}", region("eu", "\"2001:db8:1::1/48\""));
    fails(
        &text,
        3,
        "regions.eu.prefixes[0]",
        "the network would be 2001:db8:1::/48",
    );
}

#[test]
fn config_bare_address_is_host_prefix() {
    let text = format!(
        "allowlist = []\n{}",
        region("eu", "\"198.18.1.7\", \"2001:db8::7\", \"0.0.0.0/0\"")
    );
    let c = p(&text).expect("valid");
    let got: Vec<String> = c.regions[0]
        .prefixes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(got, ["198.18.1.7/32", "2001:db8::7/128", "0.0.0.0/0"]);
    // A bare address and its explicit /32 are the same prefix.
    let text = format!(
        "allowlist = []\n{}",
        region("eu", "\"198.18.1.7\", \"198.18.1.7/32\"")
    );
    fails(&text, 3, "regions.eu.prefixes[1]", "listed twice");
}

#[test]
fn config_mapped_prefix_rejected() {
    let text = format!(
        "allowlist = []\n{}",
        region("eu", "\"::ffff:198.18.1.0/120\"")
    );
    fails(
        &text,
        3,
        "regions.eu.prefixes[0]",
        "write 198.18.1.0/24 instead",
    );
}

#[test]
fn config_empty_region() {
    let text =
        "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\n[regions.us]\nprefixes = []\n";
    fails(
        text,
        5,
        "regions.us.prefixes",
        "region `us` has no prefixes",
    );
    let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\n[regions.us]\ndescription = \"x\"\n";
    fails(
        text,
        4,
        "regions.us.prefixes",
        "region `us` has no prefixes",
    );
}

#[test]
fn config_duplicate_region() {
    let text = format!(
        "allowlist = []\n{}{}{}",
        region("eu", "\"10.0.0.0/8\""),
        region("us", "\"11.0.0.0/8\""),
        region("eu", "\"12.0.0.0/8\"")
    );
    let e = fails(
        &text,
        6,
        "regions.eu",
        "duplicate region `eu` (first defined on line 2)",
    );
    assert_eq!(e.column, 10);
}

#[test]
fn config_duplicate_key() {
    let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\nprefixes = []\n";
    fails(
        text,
        4,
        "regions.eu.prefixes",
        "duplicate key `prefixes` (first defined on line 3)",
    );
    fails(
        "allowlist = []\nallowlist = []\n",
        2,
        "allowlist",
        "duplicate key `allowlist`",
    );
    // In the second element of an array of tables: that element's field and line.
    let text = "allowlist = []\n[[rules]]\naction = \"allow\"\nto = [\"10.0.0.0/8\"]\n\
                [[rules]]\naction = \"deny\"\nto = [\"10.1.0.0/16\"]\naction = \"allow\"\n";
    fails(
        text,
        8,
        "rules[1].action",
        "duplicate key `action` (first defined on line 6)",
    );
}

#[test]
fn config_syntax_error() {
    let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"\n";
    let e = fails(text, 3, "regions.eu.prefixes", "unclosed array");
    assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
    fails("allowlist = [] x\n", 1, "allowlist", "");
}

#[test]
fn config_unknown_region_in_allowlist() {
    let text = format!(
        "allowlist = [\"eu\", \"asia\"]\n{}{}",
        region("eu", "\"10.0.0.0/8\""),
        region("us", "\"11.0.0.0/8\"")
    );
    let e = fails(
        &text,
        1,
        "allowlist[1]",
        "unknown region `asia` (defined: eu, us)",
    );
    assert_eq!(e.column, 20);
    fails(
        "allowlist = [\"eu\"]\n",
        1,
        "allowlist[0]",
        "no regions are defined",
    );
    let text = format!(
        "allowlist = [\"unknown\"]\n{}",
        region("eu", "\"10.0.0.0/8\"")
    );
    fails(&text, 1, "allowlist[0]", "reserved");
}

#[test]
fn config_many_errors_are_located_and_listings_bounded() {
    // 25 regions: the message lists 20 and counts the rest; every unknown and duplicate
    // allowlist entry on one long line is located by column (the first is reported).
    let mut text = String::from("allowlist = [");
    for i in 0..2000 {
        text.push_str(&format!("\"r{}\", ", i % 1000));
    }
    text.push_str("\"é\", \"x\"]\n");
    for i in 0..25 {
        text.push_str(&region(&format!("r{i}"), &format!("\"10.{i}.0.0/16\"")));
    }
    let e = fails(
        &text,
        1,
        "allowlist[25]",
        "unknown region `r25` (defined: r0, r1",
    );
    assert!(e.message.ends_with(", r19 and 5 more)"), "{}", e.message);
    assert_eq!(e.column, 14 + 10 * 6 + 15 * 7);
    // Duplicates: the first repeated entry is named.
    let text = format!(
        "allowlist = [\"a\", \"b\", \"a\"]\n{}{}",
        region("a", "\"10.0.0.0/8\""),
        region("b", "\"11.0.0.0/8\"")
    );
    fails(&text, 1, "allowlist[2]", "duplicate allowlist entry `a`");
}

#[test]
fn config_duplicate_allowlist_entry() {
    let text = format!(
        "allowlist = [\n  \"eu\",\n  \"eu\",\n]\n{}",
        region("eu", "\"10.0.0.0/8\"")
    );
    fails(
        &text,
        3,
        "allowlist[1]",
        "duplicate allowlist entry `eu` (already listed)",
    );
}

#[test]
fn config_same_prefix_twice_in_region() {
    let text = format!(
        "allowlist = []\n{}",
        region("eu", "\"10.0.0.0/8\", \"10.1.0.0/16\", \"10.0.0.0/8\"")
    );
    fails(
        &text,
        3,
        "regions.eu.prefixes[2]",
        "prefix 10.0.0.0/8 is listed twice in region `eu`",
    );
}

#[test]
fn config_same_prefix_in_two_regions() {
    let text = format!(
        "allowlist = []\n{}{}",
        region("eu", "\"10.0.0.0/8\", \"2001:db8::/32\""),
        region("us", "\"2001:db8::/32\"")
    );
    let e = fails(
        &text,
        5,
        "regions.us.prefixes[0]",
        "prefix 2001:db8::/32 is in two regions: `eu`",
    );
    assert!(e.message.contains("and `us`"), "{e}");
    assert!(
        e.message.contains("regions.eu.prefixes[1] on line 3"),
        "{e}"
    );
}

#[test]
fn config_nested_prefixes_in_different_regions_are_fine() {
    let text = format!(
        "allowlist = []\n{}{}",
        region("wide", "\"10.0.0.0/8\", \"::/0\""),
        region("narrow", "\"10.1.0.0/16\", \"2001:db8::/32\"")
    );
    p(&text).expect("nested prefixes are valid");
}

#[test]
fn config_region_names() {
    let long = "a".repeat(64);
    let quoted_long = format!("\"{long}\"");
    // (key as written in TOML, field path in the error)
    for (key, field) in [
        ("EU", "regions.EU"),
        ("-eu", "regions.-eu"),
        ("_eu", "regions._eu"),
        ("\"e.u\"", "regions.\"e.u\""),
        ("\"eu west\"", "regions.\"eu west\""),
        ("\"\"", "regions.\"\""),
        (quoted_long.as_str(), &format!("regions.{long}")),
    ] {
        let text = format!("allowlist = []\n[regions.{key}]\nprefixes = [\"10.0.0.0/8\"]\n");
        let e = fails(&text, 2, field, "invalid region name");
        assert_eq!(e.column, 10, "{e}");
    }
    for good in ["eu", "0", "eu-west_1", &"a".repeat(63)] {
        p(&format!(
            "allowlist = []\n{}",
            region(good, "\"10.0.0.0/8\"")
        ))
        .expect(good);
    }
    fails(
        &format!("allowlist = []\n{}", region("unknown", "\"10.0.0.0/8\"")),
        2,
        "regions.unknown",
        "region name `unknown` is reserved",
    );
}

#[test]
fn config_too_many_regions() {
    let mut text = String::from("allowlist = []\n");
    for i in 0..MAX_CONFIG_REGIONS {
        text.push_str(&format!(
            "r{i}.prefixes = [\"10.{}.{}.0/24\"]\n",
            i / 256,
            i % 256
        ));
    }
    let text = text.replacen("allowlist = []\n", "allowlist = []\n[regions]\n", 1);
    let c = p(&text).expect("MAX_REGIONS - 2 regions fit");
    assert_eq!(c.regions.len(), 1022);
    let text = format!("{text}extra.prefixes = [\"11.0.0.0/8\"]\n");
    fails(
        &text,
        1025,
        "regions.extra",
        "too many regions: 1023 defined, at most 1022",
    );
}

#[test]
fn config_unknown_fields() {
    fails(
        "allowlist = []\nmdoe = \"audit\"\n",
        2,
        "mdoe",
        "unknown field `mdoe`",
    );
    let text =
        "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\nprefix = [\"11.0.0.0/8\"]\n";
    fails(text, 4, "regions.eu.prefix", "unknown field `prefix`");
    let text = "allowlist = []\n[regions]\neu = { prefixes = [\"10.0.0.0/8\"], x = 1 }\n";
    fails(text, 3, "regions.eu.x", "unknown field `x`");
}

#[test]
fn config_bad_mode() {
    let e = fails(
        "mode = \"Enforce\"\nallowlist = []\n",
        1,
        "mode",
        "invalid mode `Enforce`: expected `enforce` or `audit`",
    );
    assert_eq!(e.column, 8);
    fails("allowlist = []\nmode = 1\n", 2, "mode", "invalid type");
}

#[test]
fn config_missing_allowlist() {
    let e = fails(
        "mode = \"audit\"\n",
        1,
        "allowlist",
        "missing field `allowlist`",
    );
    assert_eq!(e.column, 1);
    fails("", 1, "allowlist", "missing field `allowlist`");
}

#[test]
fn config_wrong_types() {
    fails(
        "allowlist = [\"eu\", 1]\n",
        1,
        "allowlist[1]",
        "invalid type: integer",
    );
    fails("allowlist = \"eu\"\n", 1, "allowlist", "invalid type");
    let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\", 3]\n";
    fails(text, 3, "regions.eu.prefixes[1]", "invalid type: integer");
    fails(
        "allowlist = []\nregions = 1\n",
        2,
        "regions",
        "invalid type",
    );
    fails(
        "allowlist = []\n[regions]\neu = 1\n",
        3,
        "regions.eu",
        "invalid type",
    );
}

#[test]
fn config_cgroup_must_be_absolute() {
    fails(
        "allowlist = []\ncgroup = \"sys/fs/cgroup\"\n",
        2,
        "cgroup",
        "absolute path",
    );
    fails(
        "allowlist = []\ncgroup = \"\"\n",
        2,
        "cgroup",
        "absolute path",
    );
}

#[test]
fn config_empty_allowlist_is_valid() {
    let c = p(&format!(
        "allowlist = []\n{}",
        region("eu", "\"10.0.0.0/8\"")
    ))
    .expect("valid");
    assert!(c.allowlist.is_empty());
}

#[test]
fn config_first_error_in_file_order() {
    // Both the allowlist (line 1) and the prefix (line 3) are wrong: the earlier one wins.
    let text = format!("allowlist = [\"nope\"]\n{}", region("eu", "\"10.0.0.1/8\""));
    fails(&text, 1, "allowlist[0]", "unknown region `nope`");
}

#[test]
fn config_columns_count_characters() {
    let text = "allowlist = []\n[regions.eu]\ndescription = \"é\"; prefixes = [\"x\"]\n";
    // Not valid TOML (`;`), but the column must be in characters either way.
    let e = p(text).expect_err("invalid");
    assert_eq!((e.line, e.column), (3, 18), "{e}");
    assert_eq!(line_col("é\né", 5), (2, 2));
    assert_eq!(line_col("é\né", 4), (2, 1)); // inside a character: its start
    assert_eq!(line_col("ab", 99), (1, 3));
}

#[test]
fn config_errors_speak_plainly() {
    fails(
        "[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n",
        1,
        "allowlist",
        "missing field `allowlist`",
    );
    fails(
        "allowlist = []\nsuppress_window_ms = \"1000\"\n",
        2,
        "suppress_window_ms",
        "invalid type: string \"1000\", expected an integer",
    );
    fails(
        "allowlist = []\nsuppress_window_ms = 100000000000000000000\n",
        2,
        "suppress_window_ms",
        "integer 100000000000000000000 is out of range",
    );
}

#[test]
fn config_summary_after() {
    let c = p("allowlist = []\n").expect("valid");
    assert_eq!(c.summary_after, egressd_common::DEFAULT_SUMMARY_AFTER);
    let c = p("allowlist = []\nsummary_after = 0\n").expect("valid");
    assert_eq!(c.summary_after, 0);
    fails(
        "allowlist = []\nsummary_after = -1\n",
        2,
        "summary_after",
        "invalid record budget -1",
    );
    fails(
        "allowlist = []\nsummary_after = 1000001\n",
        2,
        "summary_after",
        "invalid record budget 1000001",
    );
}

#[test]
fn config_ipv4_lookup() {
    let base = "allowlist = []\n";
    assert_eq!(p(base).expect("defaults").ipv4_lookup, Ipv4Lookup::Auto);
    for (v, want) in [
        ("auto", Ipv4Lookup::Auto),
        ("trie", Ipv4Lookup::Trie),
        ("table", Ipv4Lookup::Table),
    ] {
        let c = p(&format!("{base}ipv4_lookup = \"{v}\"\n")).expect("valid");
        assert_eq!(c.ipv4_lookup, want);
        let c = p(&format!("{base}ipv6_lookup = \"{v}\"\n")).expect("valid");
        assert_eq!(c.ipv6_lookup.as_str(), want.as_str());
        assert_eq!(want.as_str(), v);
    }
    fails(
        &format!("{base}ipv4_lookup = \"hash\"\n"),
        2,
        "ipv4_lookup",
        "expected `auto`, `trie` or `table`",
    );
}

#[test]
fn config_nat64_limit_is_the_kernel_map_size() {
    let base = "allowlist = []\n";
    let list = |n: u32| {
        (0..n)
            .map(|i| format!("\"2001:db8:{i:x}::/96\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = egressd_common::MAX_NAT64 - 1;
    let c = p(&format!("{base}nat64_prefixes = [{}]\n", list(max))).expect("fits");
    assert_eq!(c.nat64.len(), egressd_common::MAX_NAT64 as usize);
    let e = p(&format!("{base}nat64_prefixes = [{}]\n", list(max + 1))).expect_err("one too many");
    let text = e.to_string();
    assert!(
        text.contains(&format!("nat64_prefixes[{max}]")) && text.contains("too many NAT64"),
        "{text}"
    );
}

#[test]
fn config_packet_sockets() {
    let base = "allowlist = []\n";
    assert_eq!(
        p(base).expect("defaults").packet_sockets,
        PacketSockets::Deny
    );
    let c = p(&format!("mode = \"audit\"\n{base}")).expect("audit");
    assert_eq!(c.packet_sockets, PacketSockets::Audit);
    let c = p(&format!(
        "{base}packet_sockets = \"allow\"\npacket_socket_open = [\"/usr/bin/tcpdump\"]\n\
         packet_socket_send = [\"/usr/sbin/dhclient\"]\n"
    ))
    .expect("valid");
    assert_eq!(c.packet_sockets, PacketSockets::Allow);
    assert_eq!(
        c.packet_exes,
        vec![
            (PathBuf::from("/usr/bin/tcpdump"), false),
            (PathBuf::from("/usr/sbin/dhclient"), true)
        ]
    );
    fails(
        &format!("{base}packet_sockets = \"block\"\n"),
        2,
        "packet_sockets",
        "expected `deny`, `audit` or `allow`",
    );
    fails(
        &format!("{base}packet_socket_open = [\"tcpdump\"]\n"),
        2,
        "packet_socket_open[0]",
        "absolute path",
    );
    fails(
        &format!(
            "{base}packet_socket_open = [\"/usr/bin/x\"]\npacket_socket_send = [\"/usr/bin/x\"]\n"
        ),
        3,
        "packet_socket_send[0]",
        "listed twice",
    );
}

#[test]
fn config_established_and_nat64() {
    let base = "allowlist = []\n";
    let c = p(base).expect("defaults");
    assert_eq!(c.established, Established::Cut);
    assert_eq!(c.nat64, vec![WELL_KNOWN_NAT64]);
    let c = p(&format!(
        "{base}established = \"keep\"\nnat64_prefixes = [\"2001:db8:64::/96\"]\n"
    ))
    .expect("valid");
    assert_eq!(c.established, Established::Keep);
    assert_eq!(c.nat64.len(), 2);
    fails(
        &format!("{base}established = \"drop\"\n"),
        2,
        "established",
        "expected `cut` or `keep`",
    );
    fails(
        &format!("{base}nat64_prefixes = [\"2001:db8:64::/64\"]\n"),
        2,
        "nat64_prefixes[0]",
        "must be an IPv6 /96",
    );
    fails(
        &format!("{base}nat64_prefixes = [\"2001:db8:64::1/96\"]\n"),
        2,
        "nat64_prefixes[0]",
        "host bits set",
    );
    fails(
        &format!("{base}nat64_prefixes = [\"198.18.0.0/15\"]\n"),
        2,
        "nat64_prefixes[0]",
        "must be an IPv6 /96",
    );
}

#[test]
fn config_rules_parse() {
    let c = p(concat!(
        "allowlist = [\"eu\"]\n",
        "default = \"allow\"\n",
        "[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\nmode = \"audit\"\n",
        "[[rules]]\nname = \"ntp\"\naction = \"allow\"\nregions = [\"eu\"]\nprotocol = \"udp\"\nports = 123\n",
        "[[rules]]\naction = \"deny\"\nto = [\"0.0.0.0/0\", \"::/0\"]\nprotocol = \"tcp\"\nports = \"25-26\"\nmode = \"audit\"\n",
    ))
    .expect("valid");
    assert_eq!(c.default, Action::Allow);
    assert_eq!(c.regions[0].mode, Some(Mode::Audit));
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.rules[0].name, "ntp");
    assert_eq!(
        (c.rules[0].protocol, c.rules[0].ports),
        (Some(17), Some((123, 123)))
    );
    assert_eq!(c.rules[0].targets, vec![Target::Region("eu".into())]);
    assert_eq!(
        (c.rules[1].id, c.rules[1].ports, c.rules[1].mode),
        (2, Some((25, 26)), Some(Mode::Audit))
    );
    assert_eq!(c.rules[1].name, "rule at test.toml:12");
}

/// Two rules of one name would share one id (ids are assigned by name) and be reported as
/// each other by events and `explain`.
#[test]
fn duplicate_rule_names_are_refused() {
    let text = "allowlist = []\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
                [[rules]]\nname = \"a\"\naction = \"deny\"\nto = [\"198.18.7.0/24\"]\n\
                [[rules]]\nname = \"a\"\naction = \"allow\"\nto = [\"198.18.8.0/24\"]\n";
    fails(
        text,
        9,
        "rules[1].name",
        "duplicate rule name `a` (first at test.toml:4)",
    );
}

#[test]
fn config_rule_errors() {
    let base = "allowlist = []\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n[[rules]]\n";
    fails(
        &format!("{base}action = \"drop\"\nto = [\"10.0.0.0/8\"]\n"),
        5,
        "rules[0].action",
        "expected `allow` or `deny`",
    );
    fails(
        &format!("{base}action = \"deny\"\n"),
        4,
        "rules[0]",
        "a rule needs destinations",
    );
    fails(
        &format!("{base}action = \"deny\"\nregions = [\"mars\"]\n"),
        6,
        "rules[0].regions[0]",
        "unknown region `mars`",
    );
    fails(
        &format!("{base}action = \"deny\"\nto = [\"10.0.0.1/8\"]\n"),
        6,
        "rules[0].to[0]",
        "host bits",
    );
    fails(
        &format!("{base}action = \"deny\"\nto = [\"10.0.0.0/8\"]\nports = 25\n"),
        7,
        "rules[0].ports",
        "ports need",
    );
    fails(
        &format!(
            "{base}action = \"deny\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"tcp\"\nports = \"30-20\"\n"
        ),
        8,
        "rules[0].ports",
        "start above end",
    );
    fails(
        &format!("{base}action = \"deny\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"gre\"\n"),
        7,
        "rules[0].protocol",
        "unknown protocol",
    );
    // 0 would read as "any protocol" in a naive kernel table: never accepted.
    for p in [0, 43, 44, 51, 60] {
        fails(
            &format!("{base}action = \"allow\"\nto = [\"10.0.0.0/8\"]\nprotocol = {p}\n"),
            7,
            "rules[0].protocol",
            "never the upper-layer protocol",
        );
    }
    fails(
        &format!("{base}action = \"deny\"\nto = [\"10.0.0.0/8\"]\nmode = \"loud\"\n"),
        7,
        "rules[0].mode",
        "invalid mode",
    );
    fails(
        "allowlist = []\ndefault = \"maybe\"\n",
        2,
        "default",
        "expected `deny` or `allow`",
    );
}

#[test]
fn config_drop_ins_merge_and_conflict() {
    let main = Path::new("/etc/egressd/egressd.toml");
    let text = "allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n";
    let a = (
        PathBuf::from("/etc/egressd/policy.d/10-ntp.toml"),
        "allowlist = [\"ntp\"]\n[regions.ntp]\nprefixes = [\"198.18.9.0/24\"]\n[[rules]]\naction = \"deny\"\nregions = [\"eu\"]\nprotocol = \"tcp\"\nports = 25\n".to_owned(),
    );
    let c = parse_set(main, text, std::slice::from_ref(&a)).expect("valid");
    assert_eq!(c.allowlist, ["eu", "ntp"]);
    assert_eq!(c.regions.len(), 2);
    assert_eq!(c.rules[0].origin, "/etc/egressd/policy.d/10-ntp.toml:4");
    // The same region in two files.
    let b = (
        PathBuf::from("/etc/egressd/policy.d/20-dup.toml"),
        "[regions.ntp]\nprefixes = [\"198.18.8.0/24\"]\n".to_owned(),
    );
    let e = parse_set(main, text, &[a.clone(), b.clone()]).expect_err("conflict");
    assert_eq!((e.file.as_path(), e.line), (b.0.as_path(), 1));
    assert!(
        e.message.contains(
            "duplicate region `ntp` (first defined in /etc/egressd/policy.d/10-ntp.toml:2)"
        ),
        "{e}"
    );
    // The same prefix in two files' regions.
    let c2 = (
        PathBuf::from("/etc/egressd/policy.d/30-x.toml"),
        "[regions.x]\nprefixes = [\"198.18.1.0/24\"]\n".to_owned(),
    );
    let e = parse_set(main, text, &[c2]).expect_err("conflict");
    assert!(e.message.contains("/etc/egressd/egressd.toml:3"), "{e}");
    // Main-file-only settings in a drop-in.
    let d = (
        PathBuf::from("/etc/egressd/policy.d/40-mode.toml"),
        "mode = \"audit\"\n".to_owned(),
    );
    let e = parse_set(main, text, &[d]).expect_err("main only");
    assert!(
        e.message
            .contains("only be set in the main configuration file"),
        "{e}"
    );
    let d = (
        PathBuf::from("/etc/egressd/policy.d/41-lookup.toml"),
        "ipv4_lookup = \"table\"\n".to_owned(),
    );
    let e = parse_set(main, text, &[d]).expect_err("main only");
    assert!(e.message.contains("`ipv4_lookup` may only be set"), "{e}");
    let d = (
        PathBuf::from("/etc/egressd/policy.d/42-nested.toml"),
        "[regions.x]\nprefixes = [\"10.9.0.0/16\"]\nipv4_lookup = \"table\"\n".to_owned(),
    );
    let e = parse_set(main, text, &[d]).expect_err("unknown region field");
    assert_eq!(e.field, "regions.x.ipv4_lookup", "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
    // An allowlist entry naming a region of another drop-in is fine; an unknown one is not.
    let f = (
        PathBuf::from("/etc/egressd/policy.d/50-al.toml"),
        "allowlist = [\"mars\"]\n".to_owned(),
    );
    let e = parse_set(main, text, &[f]).expect_err("unknown");
    assert_eq!((e.line, e.field.as_str()), (1, "allowlist[0]"));
}

#[test]
fn config_load_reads_the_drop_in_directory() {
    let dir = std::env::temp_dir().join(format!("egressd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policy.d")).expect("mkdir");
    std::fs::write(dir.join("egressd.toml"), "allowlist = [\"eu\"]\n").expect("write");
    std::fs::write(
        dir.join("policy.d/eu.toml"),
        "[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n",
    )
    .expect("write");
    std::fs::write(dir.join("policy.d/ignored.txt"), "not toml").expect("write");
    std::fs::write(dir.join("policy.d/.editor-swap.toml"), "not toml").expect("write");
    let c = load(&dir.join("egressd.toml")).expect("valid");
    assert_eq!(c.regions[0].name, "eu");
    assert_eq!(c.drop_ins, vec![dir.join("policy.d/eu.toml")]);
    // A dangling link named *.toml is an error, not a silent skip.
    std::os::unix::fs::symlink(dir.join("nowhere.toml"), dir.join("policy.d/zz.toml"))
        .expect("symlink");
    let e = load(&dir.join("egressd.toml")).expect_err("dangling");
    assert_eq!(e.file, dir.join("policy.d/zz.toml"));
    std::fs::remove_file(dir.join("policy.d/zz.toml")).expect("rm");
    std::fs::write(
        dir.join("egressd.toml"),
        "allowlist = [\"eu\"]\ndrop_in_dir = \"nowhere\"\n",
    )
    .expect("write");
    let e = load(&dir.join("egressd.toml")).expect_err("missing dir");
    assert_eq!((e.line, e.field.as_str()), (2, "drop_in_dir"));
    // A copy of the main file elsewhere (Ansible's `validate` temporary file), checked
    // with the drop-in directory it will run with; the override wins over `drop_in_dir`.
    let copy_dir = std::env::temp_dir().join(format!("egressd-cfg-copy-{}", std::process::id()));
    std::fs::create_dir_all(&copy_dir).expect("mkdir");
    let copy = copy_dir.join("policy.toml");
    std::fs::write(&copy, "allowlist = [\"eu\"]\ndrop_in_dir = \"nowhere\"\n").expect("write");
    load(&copy).expect_err("no drop-ins beside the copy");
    let c = load_with_drop_ins(&copy, &dir.join("policy.d")).expect("valid");
    assert_eq!(c.regions[0].name, "eu");
    let e = load_with_drop_ins(&copy, &dir.join("absent")).expect_err("absent");
    assert_eq!(e.file, dir.join("absent"));
    assert!(e.message.contains("cannot read drop-in directory"), "{e}");
    let _ = std::fs::remove_dir_all(&copy_dir);
    // `policy.d` swapped for a link whose target is missing: an error, where no `policy.d`
    // at all means no drop-ins (before, both meant no drop-ins: their rules vanished).
    std::fs::write(dir.join("egressd.toml"), "allowlist = []\n").expect("write");
    std::fs::rename(dir.join("policy.d"), dir.join("policy.d.old")).expect("mv");
    load(&dir.join("egressd.toml")).expect("no policy.d: no drop-ins");
    std::os::unix::fs::symlink(dir.join("policy.d.v2"), dir.join("policy.d")).expect("ln");
    let e = load(&dir.join("egressd.toml")).expect_err("dangling policy.d");
    assert_eq!(e.file, dir.join("policy.d"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 22 item 3: as root, a drop-in directory (or policy file) an unprivileged user
/// can write is refused, naming it, instead of loading the user's allow rule; so is a
/// file the user owns.
#[test]
fn config_untrusted_policy_files_are_refused_as_root() {
    use crate::base::safefs::tests::{Tmp, as_nobody, root};
    use std::os::unix::fs::PermissionsExt as _;
    if !root() {
        eprintln!("not root: egressd trusts any policy file when it is not root");
        return;
    }
    let t = Tmp::new("policy");
    std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let main = t.0.join("policy.toml");
    std::fs::write(
        &main,
        "allowlist = []\n[regions.us]\nprefixes = [\"198.18.2.0/24\"]\n",
    )
    .expect("write");
    let d = t.0.join("policy.d");
    std::fs::create_dir(&d).expect("mkdir");
    load(&main).expect("trusted files");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let evil = d.join("evil.toml");
    as_nobody(&[
        "sh",
        "-c",
        &format!("echo 'allowlist = [\"us\"]' > {}", evil.display()),
    ]);
    let e = load(&main).expect_err("world-writable policy.d");
    assert_eq!(e.file, d);
    assert!(e.message.contains("writable by others"), "{e}");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let e = load(&main).expect_err("a drop-in nobody owns");
    assert_eq!(e.file, evil);
    assert!(e.message.contains("owned by uid 65534"), "{e}");
    std::fs::remove_file(&evil).expect("rm");
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o646)).expect("chmod");
    let e = load(&main).expect_err("world-writable main file");
    assert_eq!(e.file, main);
    assert!(e.message.contains("0646"), "{e}");
}

fn out(text: &str) -> Output {
    parse_all(Path::new("test.toml"), text)
        .map(|(_, o)| o)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn config_output_defaults() {
    let o = out("allowlist = []\n");
    assert_eq!(o, Output::default());
    assert_eq!(o.sinks, vec![SinkConfig::stdout()]);
    assert_eq!(o.heartbeat_secs, 60);
}

#[test]
fn config_output_full() {
    let text = "allowlist = []\nheartbeat_secs = 0\n\
                [host]\nlabels = { site = \"fra1\", role = \"storage\" }\n\
                [[sinks]]\ntype = \"stdout\"\n\
                [[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"/var/log/e.json\"\nformat = \"ecs\"\n\
                when_full = \"drop_newest\"\n\
                [[sinks]]\nname = \"siem\"\ntype = \"syslog\"\ntransport = \"tls\"\n\
                address = \"siem.example.com:6514\"\nformat = \"cef\"\nca = \"/etc/ca.pem\"\n\
                cert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\nfacility = \"local4\"\nqueue = 5\n\
                spool_max_bytes = 1000\nspool_fsync = \"interval\"\nretry_max_ms = 1000\n\
                [[sinks]]\nname = \"udp\"\ntype = \"syslog\"\ntransport = \"udp\"\n\
                address = \"[2001:db8::1]:514\"\nspool_max_bytes = 0\n";
    let o = out(text);
    assert_eq!(o.heartbeat_secs, 0);
    assert_eq!(o.chain_key_file, None);
    // Removed at the end of the test.
    let dir = crate::base::safefs::tests::Tmp::new("cfg-key");
    let key = dir.0.join("chain.key");
    std::fs::write(&key, [7u8; 32]).expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let keyed = out(&format!(
        "allowlist = []\nchain_key_file = \"{}\"\n",
        key.display()
    ));
    assert_eq!(keyed.chain_key_file.as_deref(), Some(key.as_path()));
    // What `run` would refuse, `check` and a reload refuse, located.
    for (bytes, mode, says) in [
        (32, 0o644, "readable by its owner only"),
        (8, 0o600, "8 bytes"),
    ] {
        std::fs::write(&key, vec![7u8; bytes]).expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
        let e = parse_all(
            Path::new("t.toml"),
            &format!("allowlist = []\nchain_key_file = \"{}\"\n", key.display()),
        )
        .expect_err("bad key");
        assert!(
            e.to_string().contains("t.toml:2:18: chain_key_file: ") && e.to_string().contains(says),
            "{e}"
        );
    }
    let e = parse_all(
        Path::new("t.toml"),
        "allowlist = []\nchain_key_file = \"/nonexistent/k\"\n",
    )
    .expect_err("missing");
    assert!(
        e.to_string().contains("t.toml:2:18: chain_key_file: "),
        "{e}"
    );
    let e = parse_all(
        Path::new("t.toml"),
        "allowlist = []\nchain_key_file = \"k\"\n",
    )
    .expect_err("relative");
    assert!(
        e.to_string()
            .contains("t.toml:2:18: chain_key_file: `chain_key_file` must be an absolute"),
        "{e}"
    );
    assert_eq!(o.host_labels.get("site").map(String::as_str), Some("fra1"));
    let names: Vec<&str> = o.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["stdout", "archive", "siem", "udp"]);
    assert_eq!(o.sinks[1].format, Format::Ecs);
    assert!(o.sinks[1].spool.is_none());
    let SinkKind::Syslog(s) = &o.sinks[2].kind else {
        panic!("syslog expected")
    };
    assert_eq!(s.transport, SyslogTransport::Tls);
    assert_eq!(s.facility, 20);
    assert_eq!(
        s.client_auth,
        Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem")))
    );
    assert_eq!(o.sinks[2].queue, 5);
    assert_eq!(o.sinks[0].when_full, WhenFull::DropNewest);
    assert_eq!(o.sinks[1].when_full, WhenFull::DropNewest);
    assert_eq!(o.sinks[2].when_full, WhenFull::Block);
    assert_eq!(
        o.sinks[2].spool,
        Some(SpoolConfig {
            dir: PathBuf::from("/var/lib/egressd/spool/siem"),
            max_bytes: 1000,
            fsync: Fsync::Interval,
        })
    );
    assert!(
        o.sinks[3].spool.is_none(),
        "spool_max_bytes = 0 disables it"
    );
    assert_eq!(
        host_port("[2001:db8::1]:514"),
        Some(("2001:db8::1".into(), 514))
    );
    assert_eq!(
        host_port("a.example:6514"),
        Some(("a.example".into(), 6514))
    );
    for bad in ["x", "x:0", "x:65536", ":514", "2001:db8::1:514", "[x]:1"] {
        assert_eq!(host_port(bad), None, "{bad}");
    }
}

#[test]
fn config_output_errors() {
    let base = "allowlist = []\n";
    fails(
        &format!("{base}heartbeat_secs = -1\n"),
        2,
        "heartbeat_secs",
        "0 (off)",
    );
    // A period past an hour would let `audit verify` accept that long a silence.
    fails(
        &format!("{base}heartbeat_secs = 3601\n"),
        2,
        "heartbeat_secs",
        "up to 3600",
    );
    fails(
        &format!("{base}[host]\nlabels = {{ \"bad key\" = \"x\" }}\n"),
        3,
        "host.labels.\"bad key\"",
        "invalid label name",
    );
    fails(
        &format!("{base}[host]\nlabel = 1\n"),
        3,
        "host.label",
        "unknown field",
    );
    let sink = |body: &str| format!("{base}[[sinks]]\n{body}");
    fails(
        &sink("type = \"kafka\"\n"),
        3,
        "sinks[0].type",
        "unknown sink type",
    );
    fails(
        &sink("name = \"x\"\n"),
        2,
        "sinks[0].type",
        "missing field `type`",
    );
    fails(
        &sink("type = \"stdout\"\nformat = \"xml\"\n"),
        4,
        "sinks[0].format",
        "unknown format",
    );
    fails(
        &sink("type = \"file\"\n"),
        2,
        "sinks[0].path",
        "needs `path`",
    );
    fails(
        &sink("type = \"file\"\npath = \"rel.log\"\n"),
        4,
        "sinks[0].path",
        "absolute",
    );
    fails(
        &sink("type = \"syslog\"\n"),
        2,
        "sinks[0].address",
        "needs `address",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"host\"\n"),
        4,
        "sinks[0].address",
        "invalid address",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"h:1\"\ntransport = \"quic\"\n"),
        5,
        "sinks[0].transport",
        "unknown transport",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"h:1\"\nca = \"/ca.pem\"\n"),
        5,
        "sinks[0].ca",
        "only applies to `transport = \"tls\"`",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"h:1\"\ntransport = \"tls\"\ncert = \"/c.pem\"\n"),
        6,
        "sinks[0].cert",
        "needs `key`",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"h:1\"\nfacility = \"local9\"\n"),
        5,
        "sinks[0].facility",
        "unknown facility",
    );
    fails(
        &sink("type = \"syslog\"\naddress = \"h:1\"\nspool_fsync = \"sometimes\"\n"),
        5,
        "sinks[0].spool_fsync",
        "expected \"batch\" or \"interval\"",
    );
    fails(
        &sink("type = \"stdout\"\nwhen_full = \"drop_oldest\"\n"),
        4,
        "sinks[0].when_full",
        "expected \"block\" or \"drop_newest\"",
    );
    fails(
        &sink("type = \"stdout\"\naddress = \"h:1\"\n"),
        4,
        "sinks[0].address",
        "only applies to syslog",
    );
    fails(
        &sink("type = \"stdout\"\nqueue = 0\n"),
        4,
        "sinks[0].queue",
        "at least 1",
    );
    fails(
        &sink("type = \"stdout\"\nbogus = 1\n"),
        4,
        "sinks[0].bogus",
        "unknown field",
    );
    fails(
        &format!("{base}[[sinks]]\ntype = \"stdout\"\n[[sinks]]\ntype = \"stdout\"\n"),
        4,
        "sinks[1].name",
        "duplicate sink name `stdout`",
    );
    // `parse` (and so `egressd check`) reports output errors too.
    assert!(p(&sink("type = \"kafka\"\n")).is_err());
}

/// 1-based (line, column) of byte `offset`; the column counts characters.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    crate::base::located::line_col(text, offset)
}
