//! `egressd regions import`: turn the address-range files that cloud and hosting providers
//! publish into `[regions.NAME]` tables for a policy file.
//!
//! Inputs ([`Format`]):
//! - AWS `ip-ranges.json` ([`aws`]): `prefixes[].ip_prefix`, `ipv6_prefixes[].ipv6_prefix`,
//!   keyed by `region` (`eu-west-1`, `GLOBAL`, ...);
//! - Google Cloud `cloud.json` ([`gcp`]): `prefixes[].ipv4Prefix` / `ipv6Prefix`, keyed by
//!   `scope` (`europe-west1`, `global`, ...);
//! - Azure service tags `ServiceTags_Public_*.json` ([`azure`]):
//!   `values[].properties.addressPrefixes[]`, keyed by `properties.region` (`westeurope`, ...;
//!   empty for global tags);
//! - Oracle Cloud `public_ip_ranges.json` ([`oracle`]): `regions[].cidrs[].cidr`, keyed by
//!   `regions[].region` (`eu-frankfurt-1`, ...);
//! - RFC 8805 geofeeds ([`geofeed`]): CSV lines `prefix,country,subdivision,city,postal`,
//!   keyed by the ISO 3166-2 subdivision (`DE-HE`) if the mapping names it, else by the
//!   ISO 3166-1 alpha-2 country (`DE`).
//!
//! A [`Mapping`] file says which provider key lands in which policy region (see
//! [`mapping`]). The result ([`Imported`], rendered by [`render`]) is TOML in the schema of
//! [`crate::config`]: one `[regions.NAME]` table per policy region, which works as a drop-in
//! file (`policy.d/NAME.toml`) or pasted into a policy file. With `allowlist` set, [`render`]
//! adds an `allowlist = [...]` line: the output is then also a complete policy that
//! `egressd check` accepts (and, as a drop-in, adds its regions to the main allowlist).
//!
//! # Rules
//! - Every entry's prefix must be a network address: a prefix with host bits set
//!   (`10.0.0.1/24`) is an error, unless [`Options::mask_host_bits`] is set, which masks it
//!   (`10.0.0.0/24`) and counts it in a warning. IPv4 and IPv6 prefixes are accepted in any
//!   list of any format (some files mix them). IPv4-mapped IPv6 prefixes (`::ffff:0:0/96`
//!   and inside) are an error, as in the policy.
//! - An entry whose key is empty (Azure's global service tags, geofeed lines without a
//!   country) carries no location: it is skipped and counted, whatever the mapping says.
//! - An entry whose key the mapping does not name goes to the mapping's `unmapped_region` if
//!   there is one, and is skipped otherwise.
//! - Prefixes are deduplicated: the same prefix published several times (AWS lists a prefix
//!   once per service, Azure once per service tag) appears once. Prefixes are **not
//!   aggregated**: every output line is a prefix exactly as a provider published it, so it
//!   can be traced back, and nested prefixes are kept.
//! - **Conflicts are errors, never resolved silently.** The same prefix with keys that lead
//!   to two different policy regions, or to a region and to "skipped", is an error that names
//!   both places. So is a skipped entry (with a location) whose prefix lies strictly inside an
//!   emitted prefix: dropping it would make the longest-prefix match judge its addresses as
//!   the enclosing region, although the provider says they are elsewhere. Map its key, or set
//!   `unmapped_region` in the mapping.
//! - Output order is deterministic: regions by name; within a region IPv4 before IPv6, each
//!   sorted by (network address, prefix length).
//!
//! # Provider text
//! Provider files come from the internet. Nothing a provider wrote reaches the output
//! unchecked: version stamps are checked by [`Source::stamp`], location keys by the format's
//! alphabet (region names, ISO 3166 codes) before they are matched, comments escape control
//! characters, and [`verify_output`] reads the output back and requires exactly the regions
//! and prefixes the import meant to write, and nothing else.
//!
//! Errors ([`ImportError`]) name the file, the 1-based line and column where the format has
//! them, and the field (`prefixes[12].ip_prefix`, `ip_prefix` of a geofeed line).

pub mod aws;
pub mod azure;
pub mod fetch;
pub mod gcp;
pub mod geofeed;
pub mod mapping;
pub mod oracle;
mod render;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::base::prefix::{mask_u32, mask_u128};

pub use mapping::Mapping;
#[cfg(test)]
use render::toml_string;
pub use render::{RenderOptions, render, validate_output, verify_output, write_atomically};

/// The provider file formats [`import`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Format {
    /// AWS `ip-ranges.json`.
    Aws,
    /// Google Cloud `cloud.json`.
    Gcp,
    /// Azure service tags JSON.
    Azure,
    /// Oracle Cloud `public_ip_ranges.json`.
    Oracle,
    /// RFC 8805 geofeed CSV.
    Geofeed,
}

impl Format {
    /// All formats, in the order of the mapping file's sections.
    pub const ALL: [Format; 5] = [
        Format::Aws,
        Format::Gcp,
        Format::Azure,
        Format::Oracle,
        Format::Geofeed,
    ];

    /// The name used on the command line and as the mapping file's section:
    /// `aws`, `gcp`, `azure`, `oracle`, `geofeed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Aws => "aws",
            Format::Gcp => "gcp",
            Format::Azure => "azure",
            Format::Oracle => "oracle",
            Format::Geofeed => "geofeed",
        }
    }

    /// What a key of this format is, for messages: `region`, `scope`, `country`.
    pub const fn key_kind(self) -> &'static str {
        match self {
            Format::Aws | Format::Azure | Format::Oracle => "region",
            Format::Gcp => "scope",
            Format::Geofeed => "country",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Guess the format of a provider file from its content: a file that does not start with
/// `{` (after whitespace and a UTF-8 byte order mark) is a geofeed; a JSON file is recognized
/// by the keys only its provider uses (`ip_prefix`/`ipv6_prefix`: AWS;
/// `ipv4Prefix`/`ipv6Prefix`: Google Cloud; `addressPrefixes`: Azure; `cidrs`: Oracle).
/// Returns `None` when no key or more than one provider's keys are found.
pub fn detect_format(text: &str) -> Option<Format> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if !t.starts_with('{') {
        return Some(Format::Geofeed);
    }
    let found: Vec<Format> = [
        (Format::Aws, &["\"ip_prefix\"", "\"ipv6_prefix\""][..]),
        (Format::Gcp, &["\"ipv4Prefix\"", "\"ipv6Prefix\""][..]),
        (Format::Azure, &["\"addressPrefixes\""][..]),
        (Format::Oracle, &["\"cidrs\""][..]),
    ]
    .into_iter()
    .filter(|(_, keys)| keys.iter().any(|k| t.contains(k)))
    .map(|(f, _)| f)
    .collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Why an import failed, with its location (the same type as
/// [`crate::config::ConfigError`]).
pub type ImportError = crate::base::located::LocatedError;

/// A provider file's text with its path, as the format readers see it.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// Path used to label errors.
    pub path: &'a Path,
    /// The whole file.
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// An entry of a JSON range file: the prefix `text` (a string borrowed from this
    /// source, located by [`Self::offset_of`]) with its location `key`, at `field`; no
    /// subdivision, no containing record.
    pub fn entry(&self, text: Cow<'a, str>, key: Cow<'a, str>, field: String) -> Entry<'a> {
        Entry {
            offset: self.offset_of(&text),
            text,
            key,
            subdivision: None,
            field,
            context: None,
        }
    }

    /// Byte offset of `s` in the text (of its opening quote when it is a JSON string), if `s`
    /// is a slice of the text (a string serde_json borrowed from the input rather than
    /// unescaped into a copy).
    pub fn offset_of(&self, s: &str) -> Option<usize> {
        // A copy lives elsewhere on the heap, so only a borrowed slice is inside the text.
        let start = self.text.as_ptr() as usize;
        let p = s.as_ptr() as usize;
        if p < start || p + s.len() > start + self.text.len() {
            return None;
        }
        // Point at the opening quote, as the policy's errors do.
        let o = p - start;
        Some(if o > 0 && self.text.as_bytes()[o - 1] == b'"' {
            o - 1
        } else {
            o
        })
    }

    /// An error at byte `offset` (line and column 0 when `None`).
    pub fn err_at(
        &self,
        offset: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ImportError {
        let (line, column) = offset.map_or((0, 0), |o| line_col(self.text, o));
        ImportError {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Check a version stamp the provider publishes (`createDate`, `syncToken`, `cloud`, ...)
    /// before it is copied into the output's header: 1-64 characters from `A-Z a-z 0-9 . _ :
    /// + -`, which every provider's dates, tokens and cloud names fit. Anything else (a
    /// newline that would end the comment, a control character, a quote) is refused rather
    /// than copied. `name` is the provider's field name, for the error.
    ///
    /// # Errors
    /// A stamp outside that alphabet or too long, located at the value (or, when it had
    /// escapes, at its key).
    pub fn stamp(
        &self,
        format: Format,
        name: &str,
        value: Option<Cow<'a, str>>,
    ) -> Result<Option<Cow<'a, str>>, ImportError> {
        let Some(v) = value else { return Ok(None) };
        if is_token(&v, 64) {
            return Ok(Some(v));
        }
        let offset = self
            .offset_of(&v)
            .or_else(|| self.text.find(&format!("\"{name}\"")));
        Err(self.err_at(
            offset,
            name,
            format!(
                "not a valid {format} range file: `{name}` is {}, not a date or token (1-64 \
                 characters from A-Z, a-z, 0-9, `.`, `_`, `:`, `+`, `-`); refusing to copy it \
                 into the generated policy",
                printable(&v)
            ),
        ))
    }

    /// Deserialize the whole text as JSON into `T`, turning serde_json's error into a located
    /// [`ImportError`] whose field is the path serde was in (`prefixes[3].region`).
    ///
    /// # Errors
    /// JSON syntax errors, missing fields and wrong types, with serde_json's line and column.
    pub fn json<T: serde::Deserialize<'a>>(&self, format: Format) -> Result<T, ImportError> {
        let mut de = serde_json::Deserializer::from_str(self.text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.inner();
            let mut message = inner.to_string();
            let suffix = format!(" at line {} column {}", inner.line(), inner.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
            ImportError {
                file: self.path.to_path_buf(),
                line: inner.line(),
                column: inner.column(),
                field: if field == "." { String::new() } else { field },
                message: format!("not a valid {format} range file: {message}"),
            }
        })
    }
}

/// A JSON string that stays borrowed from the input when it has no escapes, so that
/// [`Source::offset_of`] can locate it. (serde's own `Cow<str>` is only borrowed as a direct
/// `#[serde(borrow)]` field, not inside a `Vec`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = JsonStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// One published prefix, as a format reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The prefix text as published (`3.4.12.4/32`).
    pub text: Cow<'a, str>,
    /// The provider's location key: region, scope or ISO 3166-1 country; may be empty (no
    /// location).
    pub key: Cow<'a, str>,
    /// Geofeed only: the ISO 3166-2 subdivision (`DE-HE`), tried before `key`.
    pub subdivision: Option<Cow<'a, str>>,
    /// Byte offset of the prefix text in the file, `None` when unknown.
    pub offset: Option<usize>,
    /// Where the prefix is in the file's structure (see [`ImportError::field`]).
    pub field: String,
    /// For messages: the containing record when it has a name (Azure: the service tag).
    pub context: Option<Cow<'a, str>>,
}

/// Whether `s` is 1-`max` characters from `A-Z a-z 0-9 . _ : + -`: what the providers' dates,
/// tokens and region keys are made of, and nothing that can end a TOML comment or string.
pub fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'-'))
}

/// `s` quoted for a message, with control characters and non-ASCII escaped and cut at 80
/// characters, so that hostile provider text cannot rewrite the terminal either.
pub fn printable(s: &str) -> String {
    let mut out = String::from("`");
    for (i, c) in s.chars().enumerate() {
        if i == 80 {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out.push('`');
    out
}

/// Check an entry's location key as the format publishes it, before it is matched or copied
/// anywhere: empty (no location), or for the JSON formats a region or scope name (1-64
/// characters from `A-Z a-z 0-9 . _ -`); for geofeeds an ISO 3166-1 alpha-2 country (two
/// letters, any case) and an ISO 3166-2 subdivision (`CC-` and 1-3 letters or digits).
/// Returns the field of the offending key (`prefixes[3].region`, `alpha2code`) and the
/// message.
fn check_entry_key(format: Format, e: &Entry<'_>) -> Result<(), (String, String)> {
    let sibling = |name: &str| match e.field.rsplit_once('.') {
        Some((parent, _)) => format!("{parent}.{name}"),
        None => name.to_string(),
    };
    let bad = |field: String, what: &str, value: &str| {
        Err((
            field,
            format!(
                "{} is not {what}; refusing the file (a provider key is matched against the \
                 mapping and may be copied into the generated policy)",
                printable(value)
            ),
        ))
    };
    if format == Format::Geofeed {
        let letters = |s: &[u8]| s.len() == 2 && s.iter().all(u8::is_ascii_alphabetic);
        let k = e.key.as_bytes();
        if !k.is_empty() && !letters(k) {
            return bad(
                "alpha2code".into(),
                "an ISO 3166-1 alpha-2 country code (RFC 8805)",
                &e.key,
            );
        }
        if let Some(sub) = &e.subdivision {
            let b = sub.as_bytes();
            let ok = (4..=6).contains(&b.len())
                && letters(&b[..2])
                && b[2] == b'-'
                && b[3..].iter().all(u8::is_ascii_alphanumeric);
            if !ok {
                return bad(
                    "region".into(),
                    "an ISO 3166-2 subdivision code such as `DE-HE` (RFC 8805)",
                    sub,
                );
            }
        }
        return Ok(());
    }
    if e.key.is_empty() || (is_token(&e.key, 64) && !e.key.contains([':', '+'])) {
        return Ok(());
    }
    let name = match format {
        Format::Aws | Format::Oracle => "region",
        Format::Gcp => "scope",
        Format::Azure => "properties.region",
        Format::Geofeed => "alpha2code",
    };
    let field = match format {
        // values[i].properties.addressPrefixes[j] -> values[i].properties.region
        Format::Azure => e
            .field
            .split_once(".properties")
            .map_or_else(|| name.to_string(), |(p, _)| format!("{p}.{name}")),
        // regions[i].cidrs[j].cidr -> regions[i].region
        Format::Oracle => e
            .field
            .split_once(".cidrs")
            .map_or_else(|| name.to_string(), |(p, _)| format!("{p}.{name}")),
        _ => sibling(name),
    };
    bad(
        field,
        &format!(
            "a {} name as {format} files have them (1-64 characters from A-Z, a-z, 0-9, `.`, \
             `_`, `-`)",
            format.key_kind()
        ),
        &e.key,
    )
}

/// The version line of a file stamped with a date (`date_name`: the provider's key for it)
/// and a sync token, as AWS and Google Cloud publish them.
pub fn dated_version(
    date_name: &str,
    date: Option<Cow<'_, str>>,
    token: Option<Cow<'_, str>>,
) -> Option<String> {
    match (date, token) {
        (Some(d), Some(t)) => Some(format!("{date_name} {d}, syncToken {t}")),
        (Some(d), None) => Some(format!("{date_name} {d}")),
        (None, Some(t)) => Some(format!("syncToken {t}")),
        (None, None) => None,
    }
}

/// What a format reader returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Every entry, in file order.
    pub entries: Vec<Entry<'a>>,
    /// The file's own version stamp (AWS `createDate`, Azure `changeNumber`, ...), when it
    /// has one; copied into the output's header.
    pub version: Option<String>,
}

/// Parse `src` as `format`.
///
/// # Errors
/// See the format modules: syntax, missing fields and wrong types, located.
pub fn parse_source<'a>(src: &Source<'a>, format: Format) -> Result<Parsed<'a>, ImportError> {
    match format {
        Format::Aws => aws::read(src),
        Format::Gcp => gcp::read(src),
        Format::Azure => azure::read(src),
        Format::Oracle => oracle::read(src),
        Format::Geofeed => geofeed::read(src),
    }
}

/// Options of [`import`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Read every source as this format; `None` detects each file's format
    /// ([`detect_format`]).
    pub format: Option<Format>,
    /// Mask host bits (`10.0.0.1/24` becomes `10.0.0.0/24`) instead of rejecting them.
    pub mask_host_bits: bool,
}

/// What [`import`] read from one source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSummary {
    /// The file as given.
    pub path: PathBuf,
    /// Its format, given or detected.
    pub format: Format,
    /// [`Parsed::version`].
    pub version: Option<String>,
    /// Entries read (before deduplication).
    pub entries: usize,
    /// Entries that went to a policy region (before deduplication).
    pub mapped: usize,
    /// Entries skipped because their key is not in the mapping (and there is no
    /// `unmapped_region`).
    pub unmapped: usize,
    /// Entries skipped because their key is empty (no location).
    pub no_location: usize,
    /// Entries whose host bits were masked ([`Options::mask_host_bits`]).
    pub masked: usize,
}

/// One policy region of the result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportedRegion {
    /// Distinct prefixes: IPv4 first, then IPv6, each sorted by (network, length).
    pub prefixes: Vec<IpNetwork>,
    /// Entries (before deduplication) per (format, provider key) that landed here; a key
    /// sent here by `unmapped_region` is counted too.
    pub from: BTreeMap<(Format, String), usize>,
}

/// The result of [`import`]: policy regions by name, plus what was read and skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// The mapping file.
    pub mapping: PathBuf,
    /// Policy regions by name (sorted); a region of the mapping that received no prefix is
    /// absent (the policy rejects empty regions).
    pub regions: BTreeMap<String, ImportedRegion>,
    /// One per source, in command-line order.
    pub sources: Vec<SourceSummary>,
    /// Skipped keys (not in the mapping), with their entry counts, per format.
    pub unmapped_keys: BTreeMap<(Format, String), usize>,
    /// Things worth an operator's attention that are not errors: provider regions of the
    /// mapping that matched nothing in files of their format (geofeed countries are not
    /// reported: country lists are meant to be exhaustive), masked host bits, mapped regions
    /// that received no prefix.
    pub warnings: Vec<String>,
}

/// Where a prefix was claimed first, for conflict messages.
#[derive(Clone, Debug)]
struct Claim {
    /// Index into the mapping's region names, or [`SKIP`].
    region: usize,
    source: usize,
    offset: Option<usize>,
    field: String,
    key: String,
    context: Option<String>,
}

const SKIP: usize = usize::MAX;

/// Read every file in `sources` and map its prefixes into policy regions with `mapping`.
///
/// # Errors
/// A source that cannot be read, is not UTF-8, has an unknown format or a bad entry; a format
/// the mapping has no section for (unless it has `unmapped_region`); a conflict (see the
/// module documentation). The first error in command-line and file order.
pub fn import(
    mapping: &Mapping,
    sources: &[PathBuf],
    options: &Options,
) -> Result<Imported, ImportError> {
    let mut texts = Vec::with_capacity(sources.len());
    for path in sources {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ImportError::file(path, format!("cannot read range file: {e}")))?;
        texts.push((path.clone(), text));
    }
    import_texts(mapping, &texts, options)
}

/// [`import`] on texts already in memory: `(path used in messages, file content)`.
///
/// # Errors
/// As [`import`], without the I/O errors.
pub fn import_texts(
    mapping: &Mapping,
    sources: &[(PathBuf, String)],
    options: &Options,
) -> Result<Imported, ImportError> {
    let srcs: Vec<Source<'_>> = sources
        .iter()
        .map(|(p, t)| Source { path: p, text: t })
        .collect();
    let mut claims: HashMap<IpNetwork, Claim> = HashMap::new();
    let mut out = Imported {
        mapping: mapping.path.clone(),
        ..Imported::default()
    };
    let mut per_region: Vec<ImportedRegion> =
        vec![ImportedRegion::default(); mapping.regions.len()];
    let mut used_keys: HashSet<(Format, String)> = HashSet::new();
    let mut formats_seen: HashSet<Format> = HashSet::new();

    for (si, src) in srcs.iter().enumerate() {
        let format = match options.format {
            Some(f) => f,
            None => detect_format(src.text).ok_or_else(|| {
                ImportError::file(
                    src.path,
                    "cannot tell the format of this file (AWS, Google Cloud, Azure and Oracle \
                     JSON are recognized by their keys, anything else is read as a geofeed); \
                     pass --format",
                )
            })?,
        };
        formats_seen.insert(format);
        if !mapping.has_section(format) && mapping.unmapped_region.is_none() {
            return Err(ImportError::file(
                src.path,
                format!(
                    "the mapping {} has no [{format}] section, so nothing in this {format} file \
                     would be imported (add the section, or set `unmapped_region`)",
                    mapping.path.display()
                ),
            ));
        }
        let parsed = parse_source(src, format)?;
        // An empty file is what a failed download leaves; importing it would write a
        // policy without those regions.
        if parsed.entries.is_empty() {
            return Err(ImportError::file(
                src.path,
                format!(
                    "no prefixes in this {format} file (empty or truncated?); nothing was \
                     written"
                ),
            ));
        }
        let mut summary = SourceSummary {
            path: src.path.to_path_buf(),
            format,
            version: parsed.version.clone(),
            entries: parsed.entries.len(),
            mapped: 0,
            unmapped: 0,
            no_location: 0,
            masked: 0,
        };
        for e in &parsed.entries {
            let (net, masked) = parse_prefix(&e.text, options.mask_host_bits)
                .map_err(|msg| src.err_at(e.offset, e.field.clone(), with_context(msg, e)))?;
            summary.masked += usize::from(masked);
            check_entry_key(format, e).map_err(|(field, msg)| {
                src.err_at(
                    e.offset,
                    field,
                    with_context(format!("not a valid {format} range file: {msg}"), e),
                )
            })?;
            if e.key.is_empty() {
                summary.no_location += 1;
                continue;
            }
            let hit = mapping.lookup(format, &e.key, e.subdivision.as_deref());
            let (region, key) = match hit {
                Some((region, key)) => {
                    used_keys.insert((format, key.to_string()));
                    (region, key.to_string())
                }
                None => match mapping.unmapped_index() {
                    Some(r) => (r, e.key.to_string()),
                    None => {
                        *out.unmapped_keys
                            .entry((format, e.key.to_string()))
                            .or_default() += 1;
                        (SKIP, e.key.to_string())
                    }
                },
            };
            if region == SKIP {
                summary.unmapped += 1;
            } else {
                summary.mapped += 1;
                *per_region[region]
                    .from
                    .entry((format, key.clone()))
                    .or_default() += 1;
            }
            match claims.get(&net) {
                None => {
                    claims.insert(
                        net,
                        Claim {
                            region,
                            source: si,
                            offset: e.offset,
                            field: e.field.clone(),
                            key,
                            context: e.context.as_ref().map(|c| c.to_string()),
                        },
                    );
                }
                Some(first) if first.region == region => {}
                Some(first) => {
                    let fsrc = &srcs[first.source];
                    let first_at = fsrc.err_at(first.offset, first.field.clone(), "");
                    let first_fmt = &out_format(&out, &summary, first.source);
                    return Err(src.err_at(
                        e.offset,
                        e.field.clone(),
                        with_context(
                            format!(
                                "prefix {net} is {} here, but {} at {}{}; a prefix may belong \
                                 to one policy region only: fix the mapping (or the file)",
                                describe(mapping, format, &e.key, region),
                                describe(mapping, *first_fmt, &first.key, first.region),
                                location(&first_at),
                                first
                                    .context
                                    .as_ref()
                                    .map(|c| format!(" (in `{c}`)"))
                                    .unwrap_or_default(),
                            ),
                            e,
                        ),
                    ));
                }
            }
        }
        if summary.masked > 0 {
            out.warnings.push(format!(
                "{}: masked the host bits of {} prefixes (--mask-host-bits)",
                src.path.display(),
                summary.masked
            ));
        }
        out.sources.push(summary);
    }

    // Emitted prefixes, per region.
    let mut v4: HashMap<(u32, u8), usize> = HashMap::new();
    let mut v6: HashMap<(u128, u8), usize> = HashMap::new();
    let (mut lens4, mut lens6) = ([false; 33], [false; 129]);
    for (net, c) in &claims {
        if c.region == SKIP {
            continue;
        }
        per_region[c.region].prefixes.push(*net);
        match net {
            IpNetwork::V4(n) => {
                v4.insert((u32::from(n.network()), n.prefix()), c.region);
                lens4[usize::from(n.prefix())] = true;
            }
            IpNetwork::V6(n) => {
                v6.insert((u128::from(n.network()), n.prefix()), c.region);
                lens6[usize::from(n.prefix())] = true;
            }
        }
    }

    // A skipped prefix inside an emitted one would be judged as the enclosing region.
    let mut nested: Vec<(&Claim, IpNetwork, IpNetwork)> = Vec::new();
    for (net, c) in &claims {
        if c.region != SKIP {
            continue;
        }
        let parent = match net {
            IpNetwork::V4(n) => {
                let a = u32::from(n.network());
                (0..n.prefix())
                    .rev()
                    .filter(|l| lens4[usize::from(*l)])
                    .find_map(|l| {
                        let p = a & mask_u32(l);
                        v4.contains_key(&(p, l)).then(|| {
                            IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(p), l).unwrap_or(*n))
                        })
                    })
            }
            IpNetwork::V6(n) => {
                let a = u128::from(n.network());
                (0..n.prefix())
                    .rev()
                    .filter(|l| lens6[usize::from(*l)])
                    .find_map(|l| {
                        let p = a & mask_u128(l);
                        v6.contains_key(&(p, l)).then(|| {
                            IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(p), l).unwrap_or(*n))
                        })
                    })
            }
        };
        if let Some(p) = parent {
            nested.push((c, *net, p));
        }
    }
    if let Some((c, net, parent)) = nested
        .iter()
        .min_by_key(|(c, n, _)| (c.source, c.offset, c.field.clone(), sort_key(n)))
        && let Some(pc) = claims.get(parent)
    {
        let src = &srcs[c.source];
        let psrc = &srcs[pc.source];
        let pat = psrc.err_at(pc.offset, pc.field.clone(), "");
        let fmt = out.sources[c.source].format;
        let pfmt = out.sources[pc.source].format;
        let more = nested.len() - 1;
        return Err(src.err_at(
            c.offset,
            c.field.clone(),
            format!(
                "prefix {net} ({fmt} {} `{}`, not in the mapping) lies inside {parent} ({}, at \
                 {}): skipping it would judge its addresses as `{}`; map `{}` in [{fmt}] or set \
                 `unmapped_region` in the mapping{}",
                fmt.key_kind(),
                c.key,
                describe(mapping, pfmt, &pc.key, pc.region),
                location(&pat),
                mapping.regions[pc.region],
                c.key,
                if more > 0 {
                    format!(" ({more} more prefixes like this)")
                } else {
                    String::new()
                }
            ),
        ));
    }

    for (name, mut r) in mapping.regions.iter().zip(per_region) {
        if r.prefixes.is_empty() {
            if mapping.unmapped_region.as_deref() != Some(name.as_str()) {
                out.warnings.push(format!(
                    "policy region `{name}` received no prefix from these files; it is left out \
                     (the policy rejects empty regions)"
                ));
            }
            continue;
        }
        r.prefixes.sort_unstable_by_key(sort_key);
        out.regions.insert(name.clone(), r);
    }
    // Country lists are exhaustive on purpose (every EU member state), so an unused country
    // is normal; an unused provider region is more likely a typo.
    for (format, key, line) in mapping.keys() {
        if format != Format::Geofeed
            && formats_seen.contains(&format)
            && !used_keys.contains(&(format, key.to_string()))
        {
            out.warnings.push(format!(
                "{}:{line}: [{format}] {} `{key}` matched no entry in the {format} files (a \
                 typo, or a {} the provider no longer publishes?)",
                mapping.path.display(),
                format.key_kind(),
                format.key_kind()
            ));
        }
    }
    Ok(out)
}

fn out_format(out: &Imported, current: &SourceSummary, source: usize) -> Format {
    out.sources.get(source).map_or(current.format, |s| s.format)
}

fn with_context(msg: String, e: &Entry<'_>) -> String {
    match &e.context {
        Some(c) => format!("{msg} (in `{c}`)"),
        None => msg,
    }
}

fn location(e: &ImportError) -> String {
    let mut s = e.file.display().to_string();
    if e.line != 0 {
        let _ = write!(s, ":{}:{}", e.line, e.column);
    }
    if !e.field.is_empty() {
        let _ = write!(s, " {}", e.field);
    }
    s
}

fn describe(mapping: &Mapping, format: Format, key: &str, region: usize) -> String {
    let kind = format.key_kind();
    if region == SKIP {
        format!("in {format} {kind} `{key}`, which the mapping does not map (skipped)")
    } else {
        format!(
            "in {format} {kind} `{key}`, mapped to `{}`",
            mapping.regions[region]
        )
    }
}

/// Sort key of the output: IPv4 before IPv6, then network address, then length.
fn sort_key(n: &IpNetwork) -> (u8, u128, u8) {
    match n {
        IpNetwork::V4(n) => (4, u128::from(u32::from(n.network())), n.prefix()),
        IpNetwork::V6(n) => (6, u128::from(n.network()), n.prefix()),
    }
}

/// Parse `ADDR/LEN` (or a bare address: /32, /128) strictly, as the policy does
/// ([`crate::base::prefix::parse`]). Returns the network and whether host bits were masked (only
/// when `mask` is set; otherwise they are an error).
///
/// # Errors
/// A message naming the prefix and the problem.
pub fn parse_prefix(s: &str, mask: bool) -> Result<(IpNetwork, bool), String> {
    crate::base::prefix::parse(s, mask).map_err(|e| e.import_message())
}

/// 1-based (line, column) of byte `offset` in `text`; the column counts characters. For one
/// error; [`crate::base::located::LineIndex`] locates many.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    crate::base::located::line_col(text, offset)
}

#[cfg(test)]
mod tests;
