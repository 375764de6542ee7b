//! The mapping file of `egressd regions import`: which provider region, scope or country
//! lands in which policy region.
//!
//! ```toml
//! # Optional: policy region for every entry whose key is not listed below. Without it such
//! # entries are skipped (and an error is raised if one lies inside an imported prefix).
//! # unmapped_region = "elsewhere"
//!
//! [aws]                         # AWS `region`
//! eu = ["eu-central-1", "eu-west-1"]
//! [gcp]                         # Google Cloud `scope`
//! eu = ["europe-west1"]
//! [azure]                       # Azure `properties.region` (lowercase, as in the file)
//! eu = ["westeurope", "northeurope"]
//! [oracle]                      # Oracle `region`
//! eu = ["eu-frankfurt-1"]
//! [geofeed]                     # RFC 8805: ISO 3166-1 alpha-2 country or ISO 3166-2 subdivision
//! eu = ["DE", "FR"]
//! ```
//!
//! Each section maps a policy region name (same rules as in the policy: 1-63 characters from
//! `a-z`, `0-9`, `_`, `-`, starting with a letter or digit, not `unknown` or `local`) to the
//! provider keys it takes. Provider keys are matched exactly (case-sensitive) against the
//! file's key field; geofeed keys are upper case (`DE`, `US-CA`), and file values are
//! upper-cased before matching (RFC 8805 codes are case-insensitive). A geofeed line whose
//! subdivision is listed goes by the subdivision, otherwise by its country.
//!
//! A key listed twice (in one region or in two) is an error, as are unknown sections or keys.
//! Errors carry the file, line, column and field (`aws.eu[2]`).
//!
//! An optional `[fetch]` section says where `egressd regions fetch` downloads the files from
//! ([`FetchUrls`]): `aws`, `gcp`, `oracle` default to the providers' official URLs; `azure`
//! has no default (Microsoft publishes the service tags under a new URL every week), and
//! `geofeed` lists RFC 8805 feed URLs. A URL must be `https://`, or `http://` to a loopback
//! address (a local mirror, the tests).
//!
//! ```toml
//! [fetch]
//! azure = "https://download.microsoft.com/download/.../ServiceTags_Public_20250707.json"
//! geofeed = ["https://noc.example.net/geofeed.csv"]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Format, ImportError};
use crate::base::located::LineIndex;

/// A validated mapping file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The file it was read from.
    pub path: PathBuf,
    /// Every policy region named in the file (including `unmapped_region`), sorted, without
    /// duplicates.
    pub regions: Vec<String>,
    /// `unmapped_region`: the policy region of entries whose key is not listed; `None`: such
    /// entries are skipped.
    pub unmapped_region: Option<String>,
    /// Per format: provider key -> (index into `regions`, 1-based line in the file).
    sections: BTreeMap<Format, HashMap<String, (usize, usize)>>,
    /// The `[fetch]` section.
    pub fetch: FetchUrls,
}

/// AWS `ip-ranges.json`, the official URL.
pub const AWS_URL: &str = "https://ip-ranges.amazonaws.com/ip-ranges.json";
/// Google Cloud `cloud.json`, the official URL.
pub const GCP_URL: &str = "https://www.gstatic.com/ipranges/cloud.json";
/// Oracle Cloud `public_ip_ranges.json`, the official URL.
pub const ORACLE_URL: &str = "https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json";

/// A URL of the `[fetch]` section with the line it is on (0: a default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchUrl {
    /// The URL.
    pub url: String,
    /// 1-based line in the mapping file; 0 for a built-in default.
    pub line: usize,
}

/// The `[fetch]` section of a mapping: where each provider's file is downloaded from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchUrls {
    /// `aws`, else [`AWS_URL`].
    pub aws: Option<FetchUrl>,
    /// `gcp`, else [`GCP_URL`].
    pub gcp: Option<FetchUrl>,
    /// `oracle`, else [`ORACLE_URL`].
    pub oracle: Option<FetchUrl>,
    /// `azure`; no default.
    pub azure: Option<FetchUrl>,
    /// `geofeed`: RFC 8805 feeds.
    pub geofeed: Vec<FetchUrl>,
}

impl FetchUrls {
    /// The URL `format`'s file is fetched from, if any (the default when not configured).
    pub fn url(&self, format: Format) -> Option<FetchUrl> {
        let default = |u: &str| {
            Some(FetchUrl {
                url: u.to_owned(),
                line: 0,
            })
        };
        match format {
            Format::Aws => self.aws.clone().or_else(|| default(AWS_URL)),
            Format::Gcp => self.gcp.clone().or_else(|| default(GCP_URL)),
            Format::Oracle => self.oracle.clone().or_else(|| default(ORACLE_URL)),
            Format::Azure => self.azure.clone(),
            Format::Geofeed => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    aws: Option<Spanned<String>>,
    gcp: Option<Spanned<String>>,
    oracle: Option<Spanned<String>>,
    azure: Option<Spanned<String>>,
    geofeed: Option<Vec<Spanned<String>>>,
}

/// Why `url` cannot be fetched from, if it cannot: not `https://`, or `http://` to other
/// than a loopback address; no host.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a valid URL `{url}`: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("`{url}` names no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}` is plain http: ranges that decide where hosts may connect must \
                     come over https (http is accepted for loopback mirrors only)"
                ))
            }
        }
        _ => Err(format!("`{url}`: the scheme must be https")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    unmapped_region: Option<Spanned<String>>,
    aws: Option<RawSection>,
    gcp: Option<RawSection>,
    azure: Option<RawSection>,
    oracle: Option<RawSection>,
    geofeed: Option<RawSection>,
    fetch: Option<RawFetch>,
}

type RawSection = BTreeMap<Spanned<String>, Vec<Spanned<String>>>;

/// Read and validate the mapping file at `path`.
///
/// # Errors
/// See [`Mapping::parse`]; also a file that cannot be read.
pub fn load(path: &Path) -> Result<Mapping, ImportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ImportError::file(path, format!("cannot read mapping: {e}")))?;
    Mapping::parse(path, &text)
}

impl Mapping {
    /// Validate the mapping text `text`; `path` labels errors.
    ///
    /// # Errors
    /// TOML syntax, unknown sections or keys, wrong types, a bad policy region name, an empty
    /// or malformed provider key (geofeed: not `CC` or `CC-SUB`), a key listed twice, a
    /// mapping that names no key at all (and has no `unmapped_region`). The first in file
    /// order.
    pub fn parse(path: &Path, text: &str) -> Result<Mapping, ImportError> {
        // Built once: locating every key from the start of the text was quadratic.
        let lines = LineIndex::new(text);
        let at = |offset: usize, field: String, message: String| {
            let (line, column) = lines.line_col(text, offset);
            ImportError {
                file: path.to_path_buf(),
                line,
                column,
                field,
                message,
            }
        };
        let raw: RawMapping = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, String::new(), e.message().trim_end().to_string())
        })?;

        let mut errors: Vec<ImportError> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut named: HashSet<String> = HashSet::new();
        let mut unmapped_region = None;
        if let Some(u) = &raw.unmapped_region {
            match crate::config::check_region_name(u.get_ref()) {
                Ok(()) => {
                    names.push(u.get_ref().clone());
                    named.insert(u.get_ref().clone());
                    unmapped_region = Some(u.get_ref().clone());
                }
                Err(m) => errors.push(at(u.span().start, "unmapped_region".into(), m)),
            }
        }
        // (format, key, region name, line)
        let mut listed: Vec<(Format, String, String, usize)> = Vec::new();
        for (format, section) in [
            (Format::Aws, &raw.aws),
            (Format::Gcp, &raw.gcp),
            (Format::Azure, &raw.azure),
            (Format::Oracle, &raw.oracle),
            (Format::Geofeed, &raw.geofeed),
        ] {
            let Some(section) = section else { continue };
            // (key) -> (field, line) of its first listing
            let mut seen: HashMap<&str, (String, usize)> = HashMap::new();
            let mut regions: Vec<_> = section.iter().collect();
            regions.sort_by_key(|(k, _)| k.span().start);
            for (region, keys) in regions {
                let rname = region.get_ref();
                let rfield = format!("{format}.{rname}");
                if let Err(m) = crate::config::check_region_name(rname) {
                    errors.push(at(region.span().start, rfield.clone(), m));
                    continue;
                }
                if named.insert(rname.clone()) {
                    names.push(rname.clone());
                }
                for (i, key) in keys.iter().enumerate() {
                    let field = format!("{rfield}[{i}]");
                    let k = key.get_ref();
                    let (line, _) = lines.line_col(text, key.span().start);
                    if let Err(m) = check_key(format, k) {
                        errors.push(at(key.span().start, field, m));
                        continue;
                    }
                    if let Some((first, first_line)) = seen.get(k.as_str()) {
                        errors.push(at(
                            key.span().start,
                            field,
                            format!(
                                "{} `{k}` is already mapped as {first} on line {first_line}; \
                                 a key may be listed once",
                                format.key_kind()
                            ),
                        ));
                        continue;
                    }
                    seen.insert(k, (field, line));
                    listed.push((format, k.clone(), rname.clone(), line));
                }
            }
        }
        let mut fetch = FetchUrls::default();
        if let Some(f) = &raw.fetch {
            let mut one = |v: &Spanned<String>, field: String| {
                let (line, _) = lines.line_col(text, v.span().start);
                match check_url(v.get_ref()) {
                    Ok(()) => Some(FetchUrl {
                        url: v.get_ref().clone(),
                        line,
                    }),
                    Err(m) => {
                        errors.push(at(v.span().start, field, m));
                        None
                    }
                }
            };
            fetch.aws = f.aws.as_ref().and_then(|v| one(v, "fetch.aws".into()));
            fetch.gcp = f.gcp.as_ref().and_then(|v| one(v, "fetch.gcp".into()));
            fetch.oracle = f
                .oracle
                .as_ref()
                .and_then(|v| one(v, "fetch.oracle".into()));
            fetch.azure = f.azure.as_ref().and_then(|v| one(v, "fetch.azure".into()));
            for (i, v) in f.geofeed.iter().flatten().enumerate() {
                if let Some(u) = one(v, format!("fetch.geofeed[{i}]")) {
                    fetch.geofeed.push(u);
                }
            }
        }
        if let Some(first) = errors.into_iter().min_by_key(|e| (e.line, e.column)) {
            return Err(first);
        }
        if listed.is_empty() && unmapped_region.is_none() {
            return Err(ImportError::file(
                path,
                "the mapping maps nothing: add a section such as [aws] with \
                 `eu = [\"eu-west-1\"]`",
            ));
        }
        names.sort();
        let mut sections: BTreeMap<Format, HashMap<String, (usize, usize)>> = BTreeMap::new();
        for (format, key, region, line) in listed {
            let idx = names.binary_search(&region).unwrap_or(0);
            sections.entry(format).or_default().insert(key, (idx, line));
        }
        // A present but empty section still counts as "has a section".
        for (format, present) in [
            (Format::Aws, raw.aws.is_some()),
            (Format::Gcp, raw.gcp.is_some()),
            (Format::Azure, raw.azure.is_some()),
            (Format::Oracle, raw.oracle.is_some()),
            (Format::Geofeed, raw.geofeed.is_some()),
        ] {
            if present {
                sections.entry(format).or_default();
            }
        }
        Ok(Mapping {
            path: path.to_path_buf(),
            regions: names,
            unmapped_region,
            sections,
            fetch,
        })
    }

    /// Whether the file has a section for `format` (possibly empty).
    pub fn has_section(&self, format: Format) -> bool {
        self.sections.contains_key(&format)
    }

    /// Index into [`Mapping::regions`] of `unmapped_region`.
    pub fn unmapped_index(&self) -> Option<usize> {
        self.unmapped_region
            .as_ref()
            .and_then(|u| self.regions.binary_search(u).ok())
    }

    /// The policy region (index into [`Mapping::regions`]) of an entry of `format` with key
    /// `key` (and, for geofeeds, subdivision `subdivision`), with the key that matched;
    /// `None` when the mapping does not list it. Geofeed codes are upper-cased first.
    pub fn lookup<'k>(
        &self,
        format: Format,
        key: &'k str,
        subdivision: Option<&'k str>,
    ) -> Option<(usize, std::borrow::Cow<'k, str>)> {
        let section = self.sections.get(&format)?;
        if format == Format::Geofeed {
            for k in subdivision.into_iter().chain(std::iter::once(key)) {
                if k.is_empty() {
                    continue;
                }
                let up = k.to_ascii_uppercase();
                if let Some((r, _)) = section.get(&up) {
                    return Some((*r, std::borrow::Cow::Owned(up)));
                }
            }
            return None;
        }
        section
            .get(key)
            .map(|(r, _)| (*r, std::borrow::Cow::Borrowed(key)))
    }

    /// Every listed key: (format, key, 1-based line), sorted by format then line.
    pub fn keys(&self) -> Vec<(Format, &str, usize)> {
        let mut v: Vec<(Format, &str, usize)> = self
            .sections
            .iter()
            .flat_map(|(f, s)| s.iter().map(|(k, (_, line))| (*f, k.as_str(), *line)))
            .collect();
        v.sort_by_key(|(f, k, line)| (*f, *line, k.to_string()));
        v
    }

    /// The policy region `format`'s `key` maps to, by name (for tests and messages).
    pub fn region_of(&self, format: Format, key: &str) -> Option<&str> {
        self.lookup(format, key, None)
            .and_then(|(r, _)| self.regions.get(r).map(String::as_str))
    }
}

fn check_key(format: Format, key: &str) -> Result<(), String> {
    if format == Format::Geofeed {
        let b = key.as_bytes();
        let cc = |s: &[u8]| s.len() == 2 && s.iter().all(u8::is_ascii_uppercase);
        let ok = cc(b)
            || (b.len() >= 4
                && b.len() <= 6
                && cc(&b[..2])
                && b[2] == b'-'
                && b[3..]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        if !ok {
            return Err(format!(
                "invalid geofeed key `{key}`: expected an ISO 3166-1 alpha-2 country code \
                 (`DE`) or an ISO 3166-2 subdivision code (`DE-HE`), upper case"
            ));
        }
        return Ok(());
    }
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid {format} {} `{key}`: expected the provider's name as in the file, e.g. {}",
            format.key_kind(),
            match format {
                Format::Aws => "`eu-west-1`",
                Format::Gcp => "`europe-west1`",
                Format::Azure => "`westeurope`",
                _ => "`eu-frankfurt-1`",
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Mapping, ImportError> {
        Mapping::parse(Path::new("m.toml"), text)
    }

    #[test]
    fn mapping_basic() {
        let m = p("[aws]\neu = [\"eu-west-1\"]\nus = [\"us-east-1\"]\n[geofeed]\neu = [\"DE\", \"US-CA\"]\n")
            .expect("valid");
        assert_eq!(m.regions, ["eu", "us"]);
        assert_eq!(m.region_of(Format::Aws, "eu-west-1"), Some("eu"));
        assert_eq!(m.region_of(Format::Aws, "us-east-1"), Some("us"));
        assert_eq!(m.region_of(Format::Aws, "EU-WEST-1"), None);
        assert_eq!(m.region_of(Format::Gcp, "eu-west-1"), None);
        assert_eq!(m.region_of(Format::Geofeed, "de"), Some("eu"));
        assert_eq!(
            m.lookup(Format::Geofeed, "US", Some("us-ca"))
                .map(|(r, _)| r),
            Some(0)
        );
        assert_eq!(m.lookup(Format::Geofeed, "US", Some("US-NY")), None);
        assert!(m.has_section(Format::Aws));
        assert!(!m.has_section(Format::Azure));
        assert_eq!(m.keys().len(), 4);
    }

    fn fails(text: &str, line: usize, field: &str, msg: &str) {
        let e = p(text).expect_err("invalid");
        assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
        assert!(e.message.contains(msg), "{e}");
    }

    #[test]
    fn mapping_errors() {
        fails(
            "[aws]\neu = [\"eu-west-1\"]\nus = [\"eu-west-1\"]\n",
            3,
            "aws.us[0]",
            "already mapped as aws.eu[0] on line 2",
        );
        fails(
            "[aws]\neu = [\"a\", \"a\"]\n",
            2,
            "aws.eu[1]",
            "already mapped",
        );
        fails("[aws]\nEU = [\"a\"]\n", 2, "aws.EU", "invalid region name");
        fails("[aws]\nlocal = [\"a\"]\n", 2, "aws.local", "reserved");
        fails("[aws]\neu = [\"\"]\n", 2, "aws.eu[0]", "invalid aws region");
        fails(
            "[geofeed]\neu = [\"DE\", \"deu\"]\n",
            2,
            "geofeed.eu[1]",
            "ISO 3166-1",
        );
        fails("[gpc]\neu = [\"x\"]\n", 1, "", "unknown field `gpc`");
        fails("[aws]\neu = \"x\"\n", 2, "", "invalid type");
        fails(
            "unmapped_region = \"Other\"\n[aws]\neu = [\"a\"]\n",
            1,
            "unmapped_region",
            "invalid region name",
        );
        let e = p("").expect_err("empty");
        assert!(e.message.contains("maps nothing"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("m.toml"));
    }

    #[test]
    fn mapping_unmapped_region() {
        let m = p("unmapped_region = \"other\"\n[aws]\neu = [\"eu-west-1\"]\n").expect("valid");
        assert_eq!(m.regions, ["eu", "other"]);
        assert_eq!(m.unmapped_index(), Some(1));
        let m = p("unmapped_region = \"other\"\n").expect("valid: everything to one region");
        assert_eq!(m.regions, ["other"]);
    }
}
