//! `egressd regions fetch`: download the providers' published range files into a directory,
//! so that `egressd regions import` can turn them into regions.
//!
//! What is fetched follows the mapping file ([`Mapping`]): the AWS, Google Cloud, Oracle and
//! Azure files of the formats the mapping has a section for, from the URLs of its `[fetch]`
//! section ([`crate::policy::import::mapping::FetchUrls`]; official URLs by default, Azure's must be
//! configured), and every geofeed URL listed there. Each goes to a fixed name in the
//! directory ([`file_name`]).
//!
//! - **Conditional requests.** Beside each file, `.NAME.http` (JSON, [`Meta`]) keeps the URL,
//!   `ETag` and `Last-Modified` of the copy on disk; the next fetch sends `If-None-Match` and
//!   `If-Modified-Since`, and a `304 Not Modified` leaves the file as it is.
//! - **Checks.** A new file must parse with the format's reader ([`super::parse_source`]),
//!   hold at least one prefix, and carry a version stamp (AWS and Google Cloud `syncToken`,
//!   Azure `changeNumber`, Oracle `last_updated_timestamp`) not older than the file on disk.
//! - **All or nothing.** Every source is downloaded and checked first; only when all of them
//!   pass are the new files written, each atomically ([`crate::base::safefs`]: a temporary file in
//!   the directory, synced, renamed over the old one). Any failure (network, HTTP status,
//!   a check) writes nothing and is reported with the URL and file, and the command exits 1.
//!
//! HTTP: ureq with rustls (no OpenSSL), the Mozilla root certificates (webpki-roots), the
//! `HTTPS_PROXY`/`NO_PROXY` environment, redirects followed, https only (http only to a
//! loopback mirror), a size limit and an overall timeout per request.
use std::{
    ffi::OsStr,
    io::{self, Read as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{Format, Mapping, Source, mapping::FetchUrl};
use crate::base::safefs::TrustedDir;

/// Largest file accepted (Azure's service tags are about 10 MB).
pub const MAX_BYTES: u64 = 256 << 20;

/// Options of [`fetch`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Overall time limit of one request (connect, redirects, body).
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
        }
    }
}

/// What became of one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Format of the file.
    pub format: String,
    /// Where it came from.
    pub url: String,
    /// Its path in the directory.
    pub file: PathBuf,
    /// `updated`, `unchanged` (the same bytes were served) or `not_modified` (304).
    pub status: &'static str,
    /// Its version stamp, when the format has one (`syncToken 1753388594`).
    pub version: Option<String>,
}

/// The record kept beside each fetched file (`.NAME.http`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// URL the file on disk was fetched from.
    pub url: String,
    /// Its `ETag`.
    pub etag: Option<String>,
    /// Its `Last-Modified`.
    pub last_modified: Option<String>,
}

/// The file name a source is kept under: `aws-ip-ranges.json`, `gcp-cloud.json`,
/// `oracle-public_ip_ranges.json`, `azure-service-tags.json`, `geofeed-<hash of URL>.csv`.
pub fn file_name(format: Format, url: &str) -> String {
    match format {
        Format::Aws => "aws-ip-ranges.json".into(),
        Format::Gcp => "gcp-cloud.json".into(),
        Format::Oracle => "oracle-public_ip_ranges.json".into(),
        Format::Azure => "azure-service-tags.json".into(),
        Format::Geofeed => {
            let h = crate::policy::fnv1a64(url.as_bytes());
            format!("geofeed-{h:016x}.csv")
        }
    }
}

fn meta_name(file: &str) -> String {
    format!(".{file}.http")
}

/// The sources `mapping` asks for, as (format, URL).
///
/// # Errors
/// The mapping has an `[azure]` section but no `fetch.azure` URL; it asks for nothing.
pub fn sources(mapping: &Mapping) -> anyhow::Result<Vec<(Format, FetchUrl)>> {
    let mut out = Vec::new();
    for format in [Format::Aws, Format::Gcp, Format::Oracle, Format::Azure] {
        if !mapping.has_section(format) {
            continue;
        }
        match mapping.fetch.url(format) {
            Some(u) => out.push((format, u)),
            None => bail!(
                "{}: fetch.azure: the mapping has an [azure] section but no URL to fetch it \
                 from; Microsoft publishes the service tags under a new URL every week (see \
                 https://www.microsoft.com/en-us/download/details.aspx?id=56519): set \
                 `azure = \"https://download.microsoft.com/.../ServiceTags_Public_YYYYMMDD.json\"` \
                 in [fetch]",
                mapping.path.display()
            ),
        }
    }
    out.extend(
        mapping
            .fetch
            .geofeed
            .iter()
            .map(|u| (Format::Geofeed, u.clone())),
    );
    if out.is_empty() {
        bail!(
            "{}: nothing to fetch: no [aws], [gcp], [oracle] or [azure] section and no \
             fetch.geofeed URL",
            mapping.path.display()
        );
    }
    Ok(out)
}

/// A file's version stamp, compared with the copy on disk: newer or equal passes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stamp {
    /// `syncToken` (AWS: seconds, Google Cloud: milliseconds) or Azure `changeNumber`.
    Number(u64),
    /// Oracle `last_updated_timestamp` (ISO 8601, compared as text).
    Text(String),
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stamp::Number(n) => write!(f, "{n}"),
            Stamp::Text(t) => f.write_str(t),
        }
    }
}

#[derive(Deserialize)]
struct Stamps {
    #[serde(rename = "syncToken")]
    sync_token: Option<String>,
    #[serde(rename = "changeNumber")]
    change_number: Option<u64>,
    last_updated_timestamp: Option<String>,
}

/// The version stamp of `text` in `format`, with its name; `Ok(None)` for geofeeds.
///
/// # Errors
/// A JSON format without its stamp, or a stamp that is not a number where one is expected.
fn stamp(format: Format, text: &str) -> Result<Option<(&'static str, Stamp)>, String> {
    if format == Format::Geofeed {
        return Ok(None);
    }
    let s: Stamps = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let (name, value) = match format {
        Format::Aws | Format::Gcp => {
            let t = s.sync_token.ok_or("no syncToken")?;
            let n = t
                .parse()
                .map_err(|_| format!("syncToken `{t}` is not a number"))?;
            ("syncToken", Stamp::Number(n))
        }
        Format::Azure => (
            "changeNumber",
            Stamp::Number(s.change_number.ok_or("no changeNumber")?),
        ),
        Format::Oracle => (
            "last_updated_timestamp",
            Stamp::Text(
                s.last_updated_timestamp
                    .ok_or("no last_updated_timestamp")?,
            ),
        ),
        Format::Geofeed => return Ok(None),
    };
    Ok(Some((name, value)))
}

/// A downloaded file that passed its checks, not yet written.
struct Fetched {
    name: String,
    /// New contents; `None`: the file stays.
    body: Option<Vec<u8>>,
    /// The record to keep beside it; `None`: the one there stays.
    meta: Option<Meta>,
}

/// Downloads every source of `mapping` into `dir` (created 0700 if missing, checked as
/// [`crate::base::safefs`] says), as the module documentation describes; returns one outcome per
/// source, in the order of [`sources`].
///
/// # Errors
/// Any source that cannot be fetched or fails a check (every failure is listed, each with
/// its URL and file); nothing is written then. Also an untrusted directory.
pub fn fetch(mapping: &Mapping, dir: &Path, options: &Options) -> anyhow::Result<Vec<Outcome>> {
    let list = sources(mapping)?;
    // Created only when there is something to write.
    let existing = match TrustedDir::open(dir) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("directory {}", dir.display())),
    };
    let mut outcomes = Vec::new();
    let mut fetched = Vec::new();
    let mut failures = Vec::new();
    for (format, url) in &list {
        let name = file_name(*format, &url.url);
        match fetch_one(existing.as_ref(), dir, *format, &url.url, &name, options) {
            Ok((outcome, f)) => {
                outcomes.push(outcome);
                fetched.push(f);
            }
            Err(e) => failures.push(format!(
                "{format} from {} (for {}): {e:#}",
                url.url,
                dir.join(&name).display()
            )),
        }
    }
    if !failures.is_empty() {
        bail!(
            "nothing was written to {}; {} of {} sources failed:\n  {}",
            dir.display(),
            failures.len(),
            list.len(),
            failures.join("\n  ")
        );
    }
    let tdir = match existing {
        Some(d) => d,
        None => TrustedDir::create(dir).with_context(|| format!("directory {}", dir.display()))?,
    };
    for f in &fetched {
        if let Some(body) = &f.body {
            tdir.replace(OsStr::new(&f.name), body, 0o644)
                .with_context(|| format!("writing {}", dir.join(&f.name).display()))?;
        }
        if let Some(meta) = &f.meta {
            let meta = serde_json::to_vec_pretty(meta)?;
            let mname = meta_name(&f.name);
            tdir.replace(OsStr::new(&mname), &meta, 0o644)
                .with_context(|| format!("writing {}", dir.join(&mname).display()))?;
        }
    }
    tdir.sync()
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(outcomes)
}

/// Reads `name` in `dir`; `None` when it (or the directory) does not exist.
fn read_existing(dir: Option<&TrustedDir>, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(dir) = dir else { return Ok(None) };
    match dir.read(OsStr::new(name)) {
        Ok(mut f) => {
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Fetches and checks one source.
fn fetch_one(
    tdir: Option<&TrustedDir>,
    dir: &Path,
    format: Format,
    url: &str,
    name: &str,
    options: &Options,
) -> anyhow::Result<(Outcome, Fetched)> {
    let path = dir.join(name);
    let old = read_existing(tdir, name)?;
    let meta: Option<Meta> = read_existing(tdir, &meta_name(name))?
        .and_then(|m| serde_json::from_slice(&m).ok())
        .filter(|m: &Meta| m.url == url);
    let loopback = super::mapping::check_url(url).is_ok() && url.starts_with("http://");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(options.timeout))
        .http_status_as_error(false)
        .https_only(!loopback)
        .user_agent(format!("egressd/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut req = agent.get(url);
    if let (Some(m), Some(_)) = (&meta, &old) {
        if let Some(etag) = &m.etag {
            req = req.header("If-None-Match", etag);
        }
        if let Some(lm) = &m.last_modified {
            req = req.header("If-Modified-Since", lm);
        }
    }
    let mut resp = req.call().map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = resp.status().as_u16();
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let new_meta = Meta {
        url: url.to_owned(),
        etag: header("etag"),
        last_modified: header("last-modified"),
    };
    let outcome = |status: &'static str, version: Option<String>| Outcome {
        format: format.to_string(),
        url: url.to_owned(),
        file: path.clone(),
        status,
        version,
    };
    if status == 304 {
        let Some(old) = &old else {
            bail!("the server answered 304 Not Modified, but there is no file on disk");
        };
        let version = std::str::from_utf8(old)
            .ok()
            .and_then(|t| stamp(format, t).ok().flatten())
            .map(|(n, s)| format!("{n} {s}"));
        return Ok((
            outcome("not_modified", version),
            Fetched {
                name: name.to_owned(),
                body: None,
                meta: None,
            },
        ));
    }
    if status != 200 {
        bail!("HTTP status {status}");
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?;
    let text = std::str::from_utf8(&body).context("the file is not UTF-8 text")?;
    let parsed = super::parse_source(
        &Source {
            path: Path::new(url),
            text,
        },
        format,
    )
    .map_err(|e| anyhow::anyhow!("not a valid {format} file: {e}"))?;
    if parsed.entries.is_empty() {
        bail!("the file holds no prefix");
    }
    let new_stamp = stamp(format, text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Some((sname, new)), Some(old)) = (&new_stamp, &old)
        && let Some((_, old_stamp)) = std::str::from_utf8(old)
            .ok()
            .and_then(|t| stamp(format, t).ok().flatten())
        && *new < old_stamp
    {
        bail!("{sname} {new} is older than the {sname} {old_stamp} of the file on disk");
    }
    let version = new_stamp.map(|(n, s)| format!("{n} {s}"));
    if old.as_deref() == Some(body.as_slice()) {
        // The same bytes: keep the file, remember new validators for the next request.
        let changed = meta.as_ref() != Some(&new_meta);
        return Ok((
            outcome("unchanged", version),
            Fetched {
                name: name.to_owned(),
                body: None,
                meta: changed.then_some(new_meta),
            },
        ));
    }
    Ok((
        outcome("updated", version),
        Fetched {
            name: name.to_owned(),
            body: Some(body),
            meta: Some(new_meta),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_stamps_and_names() {
        assert_eq!(
            stamp(Format::Aws, r#"{"syncToken": "17", "prefixes": []}"#),
            Ok(Some(("syncToken", Stamp::Number(17))))
        );
        assert_eq!(
            stamp(Format::Azure, r#"{"changeNumber": 363, "values": []}"#),
            Ok(Some(("changeNumber", Stamp::Number(363))))
        );
        assert!(stamp(Format::Gcp, r#"{"prefixes": []}"#).is_err());
        assert!(stamp(Format::Aws, r#"{"syncToken": "x"}"#).is_err());
        assert_eq!(stamp(Format::Geofeed, "1.2.3.0/24,DE,,,"), Ok(None));
        assert!(Stamp::Text("2025-07-21T07".into()) < Stamp::Text("2025-07-22T00".into()));
        let a = file_name(Format::Geofeed, "https://a.example/geofeed.csv");
        assert!(a.starts_with("geofeed-") && a.ends_with(".csv"), "{a}");
        assert_ne!(
            a,
            file_name(Format::Geofeed, "https://b.example/geofeed.csv")
        );
    }
}
