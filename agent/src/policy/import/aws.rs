//! AWS `ip-ranges.json` (<https://ip-ranges.amazonaws.com/ip-ranges.json>, documented at
//! <https://docs.aws.amazon.com/vpc/latest/userguide/aws-ip-ranges.html>):
//!
//! ```json
//! {"syncToken": "1753388594", "createDate": "2025-07-24-20-23-14",
//!  "prefixes": [{"ip_prefix": "3.4.12.4/32", "region": "eu-west-1", "service": "AMAZON",
//!                "network_border_group": "eu-west-1"}],
//!  "ipv6_prefixes": [{"ipv6_prefix": "2a05:d07a:a000::/40", "region": "eu-south-1", ...}]}
//! ```
//!
//! Key: `region` (`GLOBAL` for global services). A prefix is listed once per service
//! (`AMAZON` and `EC2` both list EC2 ranges); the import deduplicates. Other fields are
//! ignored.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Format, ImportError, Parsed, Source, dated_version};

#[derive(Deserialize)]
struct File<'a> {
    #[serde(rename = "syncToken", borrow, default)]
    sync_token: Option<Cow<'a, str>>,
    #[serde(rename = "createDate", borrow, default)]
    create_date: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prefixes: Vec<V4<'a>>,
    #[serde(borrow, default)]
    ipv6_prefixes: Vec<V6<'a>>,
}

#[derive(Deserialize)]
struct V4<'a> {
    #[serde(borrow)]
    ip_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
}

#[derive(Deserialize)]
struct V6<'a> {
    #[serde(borrow)]
    ipv6_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
}

/// Read an AWS range file.
///
/// # Errors
/// JSON syntax, a missing `prefixes`, `ip_prefix`, `ipv6_prefix` or `region`, a field of the
/// wrong type; located by serde_json's line and column and the field path.
pub fn read<'a>(src: &Source<'a>) -> Result<Parsed<'a>, ImportError> {
    let file: File<'a> = src.json(Format::Aws)?;
    let mut entries = Vec::with_capacity(file.prefixes.len() + file.ipv6_prefixes.len());
    for (i, p) in file.prefixes.into_iter().enumerate() {
        entries.push(src.entry(p.ip_prefix, p.region, format!("prefixes[{i}].ip_prefix")));
    }
    for (i, p) in file.ipv6_prefixes.into_iter().enumerate() {
        let field = format!("ipv6_prefixes[{i}].ipv6_prefix");
        entries.push(src.entry(p.ipv6_prefix, p.region, field));
    }
    let version = dated_version(
        "createDate",
        src.stamp(Format::Aws, "createDate", file.create_date)?,
        src.stamp(Format::Aws, "syncToken", file.sync_token)?,
    );
    Ok(Parsed { entries, version })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn aws_reads_both_lists_with_offsets() {
        let text = r#"{"syncToken": "1", "createDate": "d",
  "prefixes": [{"ip_prefix": "3.4.12.4/32", "region": "eu-west-1", "service": "AMAZON"}],
  "ipv6_prefixes": [{"ipv6_prefix": "2a05::/40", "region": "GLOBAL"}]}"#;
        let src = Source {
            path: Path::new("a.json"),
            text,
        };
        let p = read(&src).expect("valid");
        assert_eq!(p.version.as_deref(), Some("createDate d, syncToken 1"));
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].text, "3.4.12.4/32");
        assert_eq!(p.entries[0].key, "eu-west-1");
        let e = src.err_at(p.entries[0].offset, "f", "m");
        assert_eq!((e.line, e.column), (2, 30));
        assert_eq!(p.entries[1].field, "ipv6_prefixes[0].ipv6_prefix");
    }

    #[test]
    fn aws_errors_are_located() {
        let text = "{\"prefixes\": [\n {\"ip_prefix\": \"1.0.0.0/8\"}\n]}";
        let e = read(&Source {
            path: Path::new("a.json"),
            text,
        })
        .expect_err("missing region");
        assert_eq!(e.line, 2, "{e}");
        assert_eq!(e.field, "prefixes[0]", "{e}");
        assert!(e.message.contains("missing field `region`"), "{e}");
        let text = "{\"prefixes\": [\n {\"ip_prefix\": 7, \"region\": \"x\"}\n]}";
        let e = read(&Source {
            path: Path::new("a.json"),
            text,
        })
        .expect_err("wrong type");
        assert_eq!(e.field, "prefixes[0].ip_prefix", "{e}");
        assert!(e.to_string().starts_with("a.json:2:"), "{e}");
    }
}
