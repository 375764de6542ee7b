//! Unit tests of [`super`] (import).
use super::*;

#[test]
fn import_parse_prefix() {
    assert_eq!(
        parse_prefix("10.0.0.0/8", false),
        Ok(("10.0.0.0/8".parse().expect("net"), false))
    );
    assert_eq!(
        parse_prefix("2001:db8::1", false),
        Ok(("2001:db8::1/128".parse().expect("net"), false))
    );
    let e = parse_prefix("10.0.0.1/8", false).expect_err("host bits");
    assert!(e.contains("network would be 10.0.0.0/8"), "{e}");
    assert_eq!(
        parse_prefix("10.0.0.1/8", true),
        Ok(("10.0.0.0/8".parse().expect("net"), true))
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0/8",
        "",
        "x",
        "::/129",
        "10.0.0.0/255.0.0.0",
    ] {
        assert!(parse_prefix(bad, true).is_err(), "{bad}");
    }
    assert!(parse_prefix("::ffff:10.0.0.0/104", true).is_err());
}

#[test]
fn import_detect_format() {
    assert_eq!(
        detect_format("{\"prefixes\":[{\"ip_prefix\":\"1.0.0.0/8\"}]}"),
        Some(Format::Aws)
    );
    assert_eq!(
        detect_format(" \n{\"prefixes\":[{\"ipv6Prefix\":\"::/0\"}]}"),
        Some(Format::Gcp)
    );
    assert_eq!(
        detect_format("{\"values\":[{\"properties\":{\"addressPrefixes\":[]}}]}"),
        Some(Format::Azure)
    );
    assert_eq!(
        detect_format("{\"regions\":[{\"cidrs\":[]}]}"),
        Some(Format::Oracle)
    );
    assert_eq!(
        detect_format("# c\n1.0.0.0/8,DE,,,\n"),
        Some(Format::Geofeed)
    );
    assert_eq!(detect_format("{}"), None);
    assert_eq!(
        detect_format("{\"ip_prefix\":1, \"cidrs\":2}"),
        None,
        "ambiguous"
    );
}

#[test]
fn import_line_col() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\né", 4), (2, 1));
}

#[test]
fn import_toml_string() {
    assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
}
