//! Oracle Cloud `public_ip_ranges.json`
//! (<https://docs.oracle.com/iaas/tools/public_ip_ranges.json>, documented at
//! <https://docs.oracle.com/en-us/iaas/Content/General/Concepts/addressranges.htm>):
//!
//! ```json
//! {"last_updated_timestamp": "2025-07-21T07:13:25.457838",
//!  "regions": [{"region": "us-ashburn-1",
//!               "cidrs": [{"cidr": "129.80.0.0/16", "tags": ["OCI"]}]}]}
//! ```
//!
//! Key: `regions[].region` (`eu-frankfurt-1`, ...).

use std::borrow::Cow;

use serde::Deserialize;

use super::{Format, ImportError, Parsed, Source};

#[derive(Deserialize)]
struct File<'a> {
    #[serde(borrow, default)]
    last_updated_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    regions: Vec<Region<'a>>,
}

#[derive(Deserialize)]
struct Region<'a> {
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    cidrs: Vec<Cidr<'a>>,
}

#[derive(Deserialize)]
struct Cidr<'a> {
    #[serde(borrow)]
    cidr: Cow<'a, str>,
}

/// Read an Oracle Cloud range file.
///
/// # Errors
/// JSON syntax, a missing `regions`, `region`, `cidrs` or `cidr`, a field of the wrong type;
/// located.
pub fn read<'a>(src: &Source<'a>) -> Result<Parsed<'a>, ImportError> {
    let file: File<'a> = src.json(Format::Oracle)?;
    let mut entries = Vec::new();
    for (i, r) in file.regions.into_iter().enumerate() {
        for (j, c) in r.cidrs.into_iter().enumerate() {
            let field = format!("regions[{i}].cidrs[{j}].cidr");
            entries.push(src.entry(c.cidr, r.region.clone(), field));
        }
    }
    let version = src
        .stamp(
            Format::Oracle,
            "last_updated_timestamp",
            file.last_updated_timestamp,
        )?
        .map(|t| format!("last_updated_timestamp {t}"));
    Ok(Parsed { entries, version })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn oracle_reads_cidrs() {
        let text = r#"{"regions": [{"region": "eu-paris-1", "cidrs": [{"cidr": "1.0.0.0/8", "tags": []},
  {"cidr": "2.0.0.0/8"}]}], "last_updated_timestamp": "t"}"#;
        let src = Source {
            path: Path::new("o.json"),
            text,
        };
        let p = read(&src).expect("valid");
        assert_eq!(p.version.as_deref(), Some("last_updated_timestamp t"));
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[1].key, "eu-paris-1");
        assert_eq!(p.entries[1].field, "regions[0].cidrs[1].cidr");
        let e = src.err_at(p.entries[1].offset, "", "");
        assert_eq!((e.line, e.column), (2, 12));
    }
}
