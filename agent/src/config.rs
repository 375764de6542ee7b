//! The TOML configuration read by `egressd run --config FILE` and `egressd check --config FILE`.
//!
//! ```toml
//! mode = "enforce"            # optional: "enforce" (default) or "audit"
//! allowlist = ["eu"]          # required: region names, may be empty
//! cgroup = "/sys/fs/cgroup"   # optional: absolute path of the cgroup v2 directory to attach to
//!
//! [regions.eu]
//! prefixes = ["198.18.1.0/24", "2001:db8:1::/48"]
//! description = "EU datacenters"   # optional
//! ```
//!
//! [`parse`] checks everything that can be checked without touching the kernel, so that
//! [`crate::policy::compile`] is infallible. Every error carries the file, a 1-based line and
//! column and the dotted path of the offending field (`regions.us.prefixes[1]`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Name reserved for "in no region" ([`egressd_common::REGION_UNKNOWN`]); events use it, so no
/// configured region may take it.
pub const UNKNOWN_REGION_NAME: &str = "unknown";

/// Name under which loopback and unspecified destinations are counted
/// ([`egressd_common::REGION_LOCAL`]); reserved like [`UNKNOWN_REGION_NAME`].
pub const LOCAL_REGION_NAME: &str = "local";

/// Maximum number of configured regions: every region slot but the reserved ids 0
/// ("unknown") and `MAX_REGIONS - 1` ("local").
pub const MAX_CONFIG_REGIONS: usize = egressd_common::MAX_REGIONS as usize - 2;

/// The well-known NAT64 prefix `64:ff9b::/96` (RFC 6052 section 2.1), always judged by the
/// IPv4 address it embeds.
pub const WELL_KNOWN_NAT64: Ipv6Network =
    match Ipv6Network::new_checked(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        Some(n) => n,
        None => panic!("valid prefix"),
    };

/// What happens to a connection that was allowed when it was opened and whose destination is
/// no longer allowed after a policy change (field `established`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Established {
    /// Its next packets are dropped by the packet-level backstop (default).
    #[default]
    Cut,
    /// It keeps running until closed; only new connections get the new verdict.
    Keep,
}

impl Established {
    /// `"cut"` or `"keep"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cut => "cut",
            Self::Keep => "keep",
        }
    }
}

/// What happens to a connection whose destination is in no allowlisted region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The connection fails with `EPERM` and is reported.
    #[default]
    Enforce,
    /// The connection goes through and is reported.
    Audit,
}

impl Mode {
    /// The name used in the config file and in events: `"enforce"` or `"audit"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[regions.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Region name, matches `[a-z0-9][a-z0-9_-]{0,62}` and is never `unknown`.
    pub name: String,
    /// Free text for operators; not used by the policy.
    pub description: Option<String>,
    /// Prefixes in file order, non-empty, without duplicates, normalized: host bits are zero
    /// (a prefix with host bits set is rejected, not masked) and a bare address is a /32 or
    /// /128. IPv4-mapped IPv6 prefixes (`::ffff:0:0/96` and inside) are rejected because
    /// mapped destinations are judged as IPv4.
    pub prefixes: Vec<IpNetwork>,
}

/// A validated configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, as given to [`load`] / [`parse`].
    pub path: PathBuf,
    /// `mode`, [`Mode::Enforce`] when absent.
    pub mode: Mode,
    /// `allowlist`: names of configured regions, in file order, without duplicates. May be
    /// empty (everything but loopback is denied or, in audit mode, reported).
    pub allowlist: Vec<String>,
    /// `cgroup`: absolute path of the cgroup v2 directory to attach to; `None` means the
    /// default chosen by the loader (the cgroup2 root, i.e. the whole host).
    pub cgroup: Option<PathBuf>,
    /// `established`: what a policy change does to flows opened under the old policy;
    /// [`Established::Cut`] when absent.
    pub established: Established,
    /// NAT64 prefixes (each a /96): [`WELL_KNOWN_NAT64`] first, then `nat64_prefixes` in file
    /// order. An IPv6 destination inside one is judged by its last 32 bits as IPv4.
    pub nat64: Vec<Ipv6Network>,
    /// `regions`, in file order; at most [`MAX_CONFIG_REGIONS`]. The position `i` becomes
    /// region id `i + 1` in [`crate::policy::compile`].
    pub regions: Vec<Region>,
}

/// Why a configuration file was rejected, with its location.
///
/// Display: `{file}:{line}:{column}: {field}: {message}`; `:{line}:{column}` is omitted when
/// `line` is 0 (the file could not be read), `{field}: ` when `field` is empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line, 0 when the error is not about a position (I/O error).
    pub line: usize,
    /// 1-based column in characters (not bytes), 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the offending field (`mode`, `allowlist[0]`, `regions.us.prefixes[1]`),
    /// empty when the error is about the whole file.
    pub field: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut s = self.file.display().to_string();
        if self.line != 0 {
            s.push_str(&format!(":{}:{}", self.line, self.column));
        }
        s.push_str(": ");
        if !self.field.is_empty() {
            s.push_str(&self.field);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

/// Read and validate the configuration file at `path`.
///
/// # Errors
/// A [`ConfigError`] with line 0 and an empty field if the file cannot be read (or is not
/// UTF-8), otherwise whatever [`parse`] reports.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read configuration: {e}"),
    })?;
    parse(path, &text)
}

/// Validate the configuration text `text`; `path` is only used to label errors and is stored
/// in [`Config::path`].
///
/// Prefixes are `ADDRESS/LEN` with a decimal LEN (0-32 for IPv4, 0-128 for IPv6); a bare
/// address without `/LEN` is accepted as a /32 (IPv4) or /128 (IPv6).
///
/// # Errors
/// The first problem in file order: TOML syntax, duplicate keys (including a region defined
/// twice), unknown fields, wrong types, a bad `mode`, a missing `allowlist`, a malformed
/// prefix, a prefix with host bits set, an IPv4-mapped IPv6 prefix, a region without prefixes,
/// the same prefix twice in a region or in two regions, a bad or reserved region name, more
/// than [`MAX_CONFIG_REGIONS`] regions, an allowlist entry that names no region or repeats one,
/// a relative or empty `cgroup`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, text };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(ctx.toml_error(&e)),
    };
    ctx.validate(raw)
}

// --- Raw schema: what serde sees, with spans for error locations. ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // A string rather than `Mode` so that a bad value gets our message, not serde's.
    mode: Option<Spanned<String>>,
    allowlist: Vec<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    established: Option<Spanned<String>>,
    nat64_prefixes: Option<Vec<Spanned<String>>>,
    // Without toml's `preserve_order` this loses file order; key spans restore it.
    #[serde(default)]
    regions: BTreeMap<Spanned<String>, Spanned<RawRegion>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    // Optional so a missing list gets the same "no prefixes" error as an empty one.
    prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    description: Option<String>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

/// Where a prefix was first seen, for duplicate messages.
struct Seen {
    region: usize,
    field: String,
    line: usize,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// Turn a toml error (syntax or serde) into a located error with a field path.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().to_string();
        match DeTable::parse(self.text) {
            // The document parses: serde rejected it; the span locates the field in the tree.
            Ok(root) => {
                let mut field = locate(root.get_ref(), &span).unwrap_or_default();
                if let Some(missing) = backticked(&message, "missing field `") {
                    field = join(&field, missing);
                    if missing == "allowlist" {
                        return self.err(
                            span,
                            field,
                            "missing field `allowlist` (list the allowed regions; \
                             `allowlist = []` allows nothing but loopback)",
                        );
                    }
                }
                self.err(span, field, message)
            }
            // A syntax error: no tree to walk, so guess the field from the surrounding lines.
            Err(_) => {
                let (field, first) = field_from_text(self.text, span.start);
                if message.starts_with("duplicate key") {
                    return self.duplicate_key(span, field, first);
                }
                self.err(span, field, message)
            }
        }
    }

    fn duplicate_key(
        &self,
        span: Range<usize>,
        field: String,
        first: Option<usize>,
    ) -> ConfigError {
        let key = self.text.get(span.clone()).unwrap_or_default().trim();
        let where_first = first
            .map(|l| format!(" (first defined on line {l})"))
            .unwrap_or_default();
        let parts: Vec<&str> = field.split('.').collect();
        let message = if parts.len() == 2 && parts[0] == "regions" {
            format!(
                "duplicate region `{}`{where_first}",
                parts[1].trim_matches('"')
            )
        } else {
            format!("duplicate key `{key}`{where_first}")
        };
        self.err(span, field, message)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut errors: Vec<ConfigError> = Vec::new();

        let mode = match &raw.mode {
            None => Mode::Enforce,
            Some(m) => match m.get_ref().as_str() {
                "enforce" => Mode::Enforce,
                "audit" => Mode::Audit,
                other => {
                    errors.push(self.err(
                        m.span(),
                        "mode",
                        format!("invalid mode `{other}`: expected `enforce` or `audit`"),
                    ));
                    Mode::Enforce
                }
            },
        };

        let cgroup = raw.cgroup.as_ref().map(|c| {
            let p = PathBuf::from(c.get_ref());
            if !p.is_absolute() {
                errors.push(self.err(
                    c.span(),
                    "cgroup",
                    format!(
                        "cgroup must be an absolute path to a cgroup v2 directory, got `{}`",
                        c.get_ref()
                    ),
                ));
            }
            p
        });

        let established = match &raw.established {
            None => Established::Cut,
            Some(e) => match e.get_ref().as_str() {
                "cut" => Established::Cut,
                "keep" => Established::Keep,
                other => {
                    errors.push(self.err(
                        e.span(),
                        "established",
                        format!("invalid value `{other}`: expected `cut` or `keep`"),
                    ));
                    Established::Cut
                }
            },
        };

        let mut nat64 = vec![WELL_KNOWN_NAT64];
        for (i, p) in raw.nat64_prefixes.iter().flatten().enumerate() {
            let field = format!("nat64_prefixes[{i}]");
            match parse_prefix(p.get_ref()) {
                Ok(IpNetwork::V6(n)) if n.prefix() == 96 && n.network() == n.ip() => {
                    if !nat64.contains(&n) {
                        nat64.push(n);
                    }
                }
                Ok(IpNetwork::V6(n)) if n.prefix() == 96 => errors.push(self.err(
                    p.span(),
                    field,
                    format!("host bits set in NAT64 prefix `{n}`"),
                )),
                Ok(n) => errors.push(self.err(
                    p.span(),
                    field,
                    format!(
                        "NAT64 prefix `{n}` must be an IPv6 /96 (RFC 6052 section 2.2: the \
                         IPv4 address is the last 32 bits); other lengths are not supported"
                    ),
                )),
                Err(msg) => errors.push(self.err(p.span(), field, msg)),
            }
        }

        let mut entries: Vec<(&Spanned<String>, &Spanned<RawRegion>)> =
            raw.regions.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);

        let mut regions = Vec::with_capacity(entries.len());
        let mut seen: HashMap<IpNetwork, Seen> = HashMap::new();
        for (index, (key, table)) in entries.iter().enumerate() {
            let name = key.get_ref();
            let rfield = join("regions", name);
            if let Err(msg) = check_region_name(name) {
                errors.push(self.err(key.span(), rfield.clone(), msg));
            }
            if index == MAX_CONFIG_REGIONS {
                errors.push(self.err(
                    key.span(),
                    rfield.clone(),
                    format!(
                        "too many regions: {} defined, at most {MAX_CONFIG_REGIONS} allowed \
                         (two region ids are reserved for `{UNKNOWN_REGION_NAME}` and \
                         `{LOCAL_REGION_NAME}`)",
                        entries.len()
                    ),
                ));
            }
            let pfield = format!("{rfield}.prefixes");
            let mut prefixes = Vec::new();
            match &table.get_ref().prefixes {
                Some(list) if !list.get_ref().is_empty() => {
                    for (i, p) in list.get_ref().iter().enumerate() {
                        let field = format!("{pfield}[{i}]");
                        let net = match parse_prefix(p.get_ref()) {
                            Ok(net) => net,
                            Err(msg) => {
                                errors.push(self.err(p.span(), field, msg));
                                continue;
                            }
                        };
                        let line = self.line_of(p.span().start);
                        if let Some(first) = seen.get(&net) {
                            let msg = if first.region == index {
                                format!(
                                    "prefix {net} is listed twice in region `{name}` \
                                     (first as {} on line {})",
                                    first.field, first.line
                                )
                            } else {
                                format!(
                                    "prefix {net} is in two regions: `{}` ({} on line {}) and `{name}`; \
                                     a prefix may belong to one region only",
                                    entries[first.region].0.get_ref(),
                                    first.field,
                                    first.line
                                )
                            };
                            errors.push(self.err(p.span(), field, msg));
                            continue;
                        }
                        seen.insert(
                            net,
                            Seen {
                                region: index,
                                field,
                                line,
                            },
                        );
                        prefixes.push(net);
                    }
                }
                Some(list) => errors.push(self.err(
                    list.span(),
                    pfield,
                    format!("region `{name}` has no prefixes"),
                )),
                None => errors.push(self.err(
                    key.span(),
                    pfield,
                    format!("region `{name}` has no prefixes (add `prefixes = [\"CIDR\", ...]`)"),
                )),
            }
            regions.push(Region {
                name: name.clone(),
                description: table.get_ref().description.clone(),
                prefixes,
            });
        }

        let mut allowlist: Vec<String> = Vec::with_capacity(raw.allowlist.len());
        for (i, entry) in raw.allowlist.iter().enumerate() {
            let name = entry.get_ref();
            let field = format!("allowlist[{i}]");
            if let Some(j) = allowlist.iter().position(|a| a == name) {
                errors.push(self.err(
                    entry.span(),
                    field,
                    format!("duplicate allowlist entry `{name}` (already allowlist[{j}])"),
                ));
            } else if !regions.iter().any(|r| &r.name == name) {
                let msg = if name == UNKNOWN_REGION_NAME {
                    format!(
                        "`{UNKNOWN_REGION_NAME}` is reserved for destinations in no region and cannot be allowlisted"
                    )
                } else if regions.is_empty() {
                    format!("unknown region `{name}` (no regions are defined)")
                } else {
                    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
                    format!("unknown region `{name}` (defined: {})", names.join(", "))
                };
                errors.push(self.err(entry.span(), field, msg));
            }
            // Kept even when wrong so positions stay aligned with the file for "allowlist[j]";
            // any error above means this list is never returned.
            allowlist.push(name.clone());
        }

        // Report the earliest problem so fixing top to bottom works.
        if let Some(first) = errors.into_iter().min_by_key(|e| (e.line, e.column)) {
            return Err(first);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            mode,
            allowlist,
            cgroup,
            established,
            nat64,
            regions,
        })
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`, and not the reserved name.
fn check_region_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if !ok {
        return Err(format!(
            "invalid region name `{name}`: use 1-63 characters from a-z, 0-9, `_` and `-`, \
             starting with a letter or digit"
        ));
    }
    if name == UNKNOWN_REGION_NAME {
        return Err(format!(
            "region name `{UNKNOWN_REGION_NAME}` is reserved (it names destinations in no region)"
        ));
    }
    if name == LOCAL_REGION_NAME {
        return Err(format!(
            "region name `{LOCAL_REGION_NAME}` is reserved (it names loopback and unspecified \
             destinations, which are always allowed)"
        ));
    }
    Ok(())
}

/// Parse `ADDR/LEN` or a bare `ADDR` strictly (no netmasks, no shortened IPv4 forms).
fn parse_prefix(s: &str) -> Result<IpNetwork, String> {
    const EXAMPLE: &str = "expected e.g. 198.18.1.0/24 or 2001:db8::/48";
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s.parse().map_err(|_| {
        format!("malformed prefix `{s}`: `{addr_s}` is not an IP address ({EXAMPLE})")
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "malformed prefix `{s}`: prefix length `{l}` is not a number 0-{max} ({EXAMPLE})"
                ));
            }
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "malformed prefix `{s}`: prefix length /{l} is out of range for {} (0-{max})",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    ));
                }
            }
        }
    };
    let net = match addr {
        IpAddr::V4(a) => {
            let network = Ipv4Addr::from(u32::from(a) & mask_u32(len));
            IpNetwork::V4(Ipv4Network::new(network, len).map_err(|e| e.to_string())?)
        }
        IpAddr::V6(a) => {
            let network = Ipv6Addr::from(u128::from(a) & mask_u128(len));
            if len >= 96 && (u128::from(network) >> 32) == 0xffff {
                let v4 = Ipv4Addr::from((u128::from(network) & 0xffff_ffff) as u32);
                return Err(format!(
                    "IPv4-mapped prefix `{s}` would never match: mapped destinations are judged \
                     as IPv4, write {v4}/{} instead",
                    len - 96
                ));
            }
            IpNetwork::V6(Ipv6Network::new(network, len).map_err(|e| e.to_string())?)
        }
    };
    if net.ip() != addr {
        return Err(format!(
            "host bits set in `{s}`: the network would be {net}; write that (or fix the length)"
        ));
    }
    Ok(net)
}

/// IPv4 netmask of `len` leading ones (`len` <= 32).
pub(crate) fn mask_u32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// IPv6 netmask of `len` leading ones (`len` <= 128).
pub(crate) fn mask_u128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// 1-based (line, column) of byte `offset`; the column counts characters.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    (line, text[line_start..offset].chars().count() + 1)
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The name between backticks after `prefix` in serde messages like "missing field `x`".
fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// Dotted path of the node that `span` points at: a key whose span is exactly `span`, else the
/// smallest (deepest on ties) value whose span contains it. Header tables only span their
/// `[header]`, which is why this scans the whole tree instead of descending by containment.
fn locate(root: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    struct Finder<'s> {
        span: &'s Range<usize>,
        best: Option<(String, usize)>,
        exact: Option<String>,
    }
    impl Finder<'_> {
        fn node(&mut self, path: String, value: &Spanned<DeValue<'_>>) {
            let vspan = value.span();
            let inside = vspan.start <= self.span.start && self.span.end <= vspan.end;
            if inside
                && self
                    .best
                    .as_ref()
                    .is_none_or(|(_, len)| vspan.len() <= *len)
            {
                self.best = Some((path.clone(), vspan.len()));
            }
            match value.get_ref() {
                DeValue::Table(t) => self.table(&path, t),
                DeValue::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        self.node(format!("{path}[{i}]"), v);
                    }
                }
                _ => {}
            }
        }
        fn table(&mut self, path: &str, table: &DeTable<'_>) {
            for (k, v) in table.iter() {
                let p = join(path, k.get_ref());
                if k.span() == *self.span {
                    self.exact = Some(p.clone());
                }
                self.node(p, v);
            }
        }
    }
    let mut f = Finder {
        span,
        best: None,
        exact: None,
    };
    f.table("", root);
    f.exact.or(f.best.map(|(p, _)| p))
}

/// Best-effort dotted path for a syntax error at `offset`, and the line where that path was
/// first defined if it was defined before (for duplicate keys). Only used when the document
/// does not parse, so it works on lines rather than a tree: the path is the last `[table]`
/// header plus the last `key =` after it (multi-line strings can fool it).
fn field_from_text(text: &str, offset: usize) -> (String, Option<usize>) {
    let mut header = String::new();
    let mut current = String::new();
    // (line number, path defined on that line), in file order.
    let mut defined: Vec<(usize, String)> = Vec::new();
    let mut pos = 0;
    for (number, line) in (1..).zip(text.split_inclusive('\n')) {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            let h = h.trim_start_matches('[');
            let h = h.split(']').next().unwrap_or_default();
            header = dotted(h);
            current = header.clone();
            defined.push((number, current.clone()));
        } else if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            let keyish = !k.is_empty()
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.\"' ".contains(&c));
            if keyish {
                current = if header.is_empty() {
                    dotted(k)
                } else {
                    format!("{header}.{}", dotted(k))
                };
                defined.push((number, current.clone()));
            }
        }
        pos += line.len();
        if pos > offset {
            break;
        }
    }
    // The error line itself defines `current`; an earlier definition is the first one.
    let error_line = defined.last().map(|(l, _)| *l);
    let first = defined
        .iter()
        .find(|(l, f)| *f == current && Some(*l) != error_line)
        .map(|(l, _)| *l);
    (current, first)
}

/// `a . b.c` -> `a.b.c` (whitespace around dots is insignificant in TOML keys).
fn dotted(key: &str) -> String {
    key.split('.').map(str::trim).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../configs/example.toml");

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
        let path =
            std::env::temp_dir().join(format!("egressd-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, EXAMPLE).expect("write temp file");
        let c = load(&path);
        let _ = std::fs::remove_file(&path);
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
        let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\n[regions.us]\nprefixes = []\n";
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
    fn config_duplicate_allowlist_entry() {
        let text = format!(
            "allowlist = [\n  \"eu\",\n  \"eu\",\n]\n{}",
            region("eu", "\"10.0.0.0/8\"")
        );
        fails(
            &text,
            3,
            "allowlist[1]",
            "duplicate allowlist entry `eu` (already allowlist[0])",
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
        let text = "allowlist = []\n[regions.eu]\nprefixes = [\"10.0.0.0/8\"]\nprefix = [\"11.0.0.0/8\"]\n";
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
}
