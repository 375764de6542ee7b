//! Google Cloud `cloud.json` (<https://www.gstatic.com/ipranges/cloud.json>, documented at
//! <https://cloud.google.com/compute/docs/faq#find_ip_range>):
//!
//! ```json
//! {"syncToken": "1753409788780", "creationTime": "2025-07-24T19:16:28.780563",
//!  "prefixes": [{"ipv4Prefix": "34.1.208.0/20", "service": "Google Cloud",
//!                "scope": "africa-south1"},
//!               {"ipv6Prefix": "2600:1900:8000::/44", "service": "Google Cloud",
//!                "scope": "africa-south1"}]}
//! ```
//!
//! Key: `scope` (`europe-west1`, ..., `global`). Each entry has exactly one of
//! `ipv4Prefix` and `ipv6Prefix`.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Format, ImportError, Parsed, Source, dated_version};

#[derive(Deserialize)]
struct File<'a> {
    #[serde(rename = "syncToken", borrow, default)]
    sync_token: Option<Cow<'a, str>>,
    #[serde(rename = "creationTime", borrow, default)]
    creation_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prefixes: Vec<Prefix<'a>>,
}

#[derive(Deserialize)]
struct Prefix<'a> {
    #[serde(rename = "ipv4Prefix", borrow, default)]
    ipv4: Option<Cow<'a, str>>,
    #[serde(rename = "ipv6Prefix", borrow, default)]
    ipv6: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scope: Cow<'a, str>,
}

/// Read a Google Cloud range file.
///
/// # Errors
/// JSON syntax, a missing `prefixes` or `scope`, an entry with neither or both of
/// `ipv4Prefix` and `ipv6Prefix`, a field of the wrong type; located.
pub fn read<'a>(src: &Source<'a>) -> Result<Parsed<'a>, ImportError> {
    let file: File<'a> = src.json(Format::Gcp)?;
    let mut entries = Vec::with_capacity(file.prefixes.len());
    for (i, p) in file.prefixes.into_iter().enumerate() {
        let (text, name) = match (p.ipv4, p.ipv6) {
            (Some(t), None) => (t, "ipv4Prefix"),
            (None, Some(t)) => (t, "ipv6Prefix"),
            (v4, _) => {
                let msg = if v4.is_some() {
                    "both `ipv4Prefix` and `ipv6Prefix` in one entry"
                } else {
                    "missing field `ipv4Prefix` or `ipv6Prefix`"
                };
                // The scope string is the nearest position we have.
                return Err(src.err_at(
                    src.offset_of(&p.scope),
                    format!("prefixes[{i}]"),
                    format!("not a valid gcp range file: {msg}"),
                ));
            }
        };
        entries.push(src.entry(text, p.scope, format!("prefixes[{i}].{name}")));
    }
    let version = dated_version(
        "creationTime",
        src.stamp(Format::Gcp, "creationTime", file.creation_time)?,
        src.stamp(Format::Gcp, "syncToken", file.sync_token)?,
    );
    Ok(Parsed { entries, version })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn gcp_reads_v4_and_v6() {
        let text = r#"{"prefixes": [{"ipv4Prefix": "34.1.208.0/20", "scope": "a"},
 {"ipv6Prefix": "2600:1900::/44", "scope": "b", "service": "Google Cloud"}]}"#;
        let p = read(&Source {
            path: Path::new("g.json"),
            text,
        })
        .expect("valid");
        assert_eq!(p.version, None);
        let got: Vec<(&str, &str, &str)> = p
            .entries
            .iter()
            .map(|e| (&*e.text, &*e.key, e.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("34.1.208.0/20", "a", "prefixes[0].ipv4Prefix"),
                ("2600:1900::/44", "b", "prefixes[1].ipv6Prefix")
            ]
        );
    }

    #[test]
    fn gcp_entry_without_prefix() {
        let text = "{\"prefixes\": [\n{\"scope\": \"a\"}]}";
        let e = read(&Source {
            path: Path::new("g.json"),
            text,
        })
        .expect_err("no prefix");
        assert_eq!((e.line, e.field.as_str()), (2, "prefixes[0]"), "{e}");
        assert!(e.message.contains("missing field `ipv4Prefix`"), "{e}");
    }
}
