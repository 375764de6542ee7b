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
//!
//! Layout: this module reads the files (main file, drop-ins, [`Sources`]) and holds the raw
//! schema serde sees; [`policy`] validates what the policy says ([`Config`]), [`output`] what
//! the agent's own output says ([`Output`]: sinks, host labels, heartbeat); the located-error
//! machinery is [`crate::base::located`]. Uses only the base modules below it (`located`,
//! `protocol`, `safefs`), never the policy compiler, the kernel or the event pipeline.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::base::located::LineIndex;
use crate::base::located::toml::{backticked, field_from_text, join, locate, plain_types};

pub mod output;
pub mod policy;
mod prefixes;
#[cfg(test)]
mod tests;

pub use output::*;
pub use policy::*;

/// Why a configuration file was rejected, with its location (column in characters); the
/// same type as [`crate::policy::import::ImportError`].
pub type ConfigError = crate::base::located::LocatedError;

/// Read and validate the configuration at `path` plus its drop-in directory.
///
/// The drop-in directory is `drop_in_dir` (relative paths are relative to the main file's
/// directory), by default `policy.d` beside the main file when that directory exists. Every
/// `*.toml` file in it is read in file-name order; each may define `[regions.NAME]`,
/// `[[rules]]` and `allowlist` entries (added to the main file's), nothing else. A region
/// defined in two files is an error naming both.
///
/// Run as root, the files and the drop-in directory must be trusted as
/// [`crate::base::safefs`] says: owned by root, not writable by group or others, in directories
/// that are not either (links only when root owns them); anything else is refused, naming
/// the file and what is wrong, on `--watch` and SIGHUP reloads too.
///
/// # Errors
/// A [`ConfigError`] with line 0 and an empty field if a file cannot be read (or is not
/// UTF-8) or is not trusted, otherwise whatever [`parse_set`] reports.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_all(path).map(|(cfg, _)| cfg)
}

/// Reads and validates the configuration like [`load`], returning the output settings too.
///
/// # Errors
/// As [`load`].
pub fn load_all(path: &Path) -> Result<(Config, Output), ConfigError> {
    load_all_in(path, None)
}

/// Reads and validates the configuration like [`load`], with the drop-in files of
/// `drop_ins` instead of those `path` names (or finds beside itself), when given: to check a
/// copy of the main file kept elsewhere (config management validates a temporary file)
/// together with the drop-ins it will be used with.
///
/// # Errors
/// As [`load`]; `drop_ins` cannot be read.
pub fn load_with_drop_ins(path: &Path, drop_ins: &Path) -> Result<Config, ConfigError> {
    load_all_in(path, Some(drop_ins)).map(|(cfg, _)| cfg)
}

/// [`load_with_drop_ins`] (with `Some`) or [`load_all`] (with `None`), returning the output
/// settings too.
///
/// # Errors
/// As [`load_with_drop_ins`].
pub fn load_all_with_drop_ins(
    path: &Path,
    drop_ins: Option<&Path>,
) -> Result<(Config, Output), ConfigError> {
    load_all_in(path, drop_ins)
}

/// The text of a policy set exactly as it was read: the main file and every drop-in file, in
/// the order they are applied. [`parse_set_all`] of it gives the same [`Config`] as the
/// [`load`] that read it; `egressd run` keeps it as the last good policy
/// ([`crate::daemon::lastgood`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    /// The main file's path, as given.
    pub main: PathBuf,
    /// The main file's text.
    pub text: String,
    /// Each drop-in file's path and text, in name order.
    pub drop_ins: Vec<(PathBuf, String)>,
}

impl Sources {
    /// Validates the set as [`load_all`] does (the same [`parse_set_all`]).
    ///
    /// # Errors
    /// As [`parse_set`].
    pub fn parse(&self) -> Result<(Config, Output), ConfigError> {
        parse_set_all(&self.main, &self.text, &self.drop_ins)
    }
}

/// Reads and validates the configuration like [`load_all`], returning the text of every file
/// it read too.
///
/// # Errors
/// As [`load`].
pub fn load_sources(path: &Path) -> Result<(Config, Output, Sources), ConfigError> {
    let (sources, main) = read_sources(path, None)?;
    let (cfg, output) = parse_read(&sources, main)?;
    Ok((cfg, output, sources))
}

fn load_all_in(path: &Path, dir_override: Option<&Path>) -> Result<(Config, Output), ConfigError> {
    let (sources, main) = read_sources(path, dir_override)?;
    parse_read(&sources, main)
}

/// [`Sources::parse`] with the main file already deserialized by [`read_sources`] (its
/// prefix lists are read once).
fn parse_read(sources: &Sources, main: Parsed) -> Result<(Config, Output), ConfigError> {
    parse_with(&sources.main, &sources.text, &sources.drop_ins, Some(main))
}

/// A main file's raw schema and its carved prefix lists.
type Parsed = (RawConfig, prefixes::Carved);

/// Reads the main file and its drop-ins (the directory named by `dir_override`, else by the
/// main file's `drop_in_dir`, else `policy.d` beside it if it exists), checking as root that
/// they are trusted. Only the main file's TOML syntax and `drop_in_dir` are looked at.
fn read_sources(
    path: &Path,
    dir_override: Option<&Path>,
) -> Result<(Sources, Parsed), ConfigError> {
    // As root, a policy file (or drop-in) others could have written is refused, like
    // sshd's StrictModes: see `crate::base::safefs`.
    let strict = crate::base::safefs::euid() == 0;
    let read = |p: &Path| {
        if strict {
            crate::base::safefs::read_trusted(p)
        } else {
            crate::base::safefs::read_regular(p)
        }
        .map_err(|e| ConfigError::file(p, format!("cannot read configuration: {e}")))
    };
    let text = read(path)?;
    let ctx = Ctx::new(path, &text);
    let (raw, carved): (RawConfig, _) = parse_raw(&text, true).map_err(|e| ctx.toml_error(&e))?;
    let ctx = ctx.with_cuts(carved.cuts.clone());
    let base = path.parent().unwrap_or(Path::new("."));
    let (dir, explicit) = match (dir_override, &raw.drop_in_dir) {
        (Some(d), _) => (d.to_path_buf(), None),
        (None, Some(d)) => (base.join(d.get_ref()), Some(d)),
        (None, None) => (base.join("policy.d"), None),
    };
    let mut drop_ins = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            if strict && let Err(e) = crate::base::safefs::check_trusted_dir(&dir) {
                return Err(ConfigError::file(
                    &dir,
                    format!("untrusted drop-in directory: {e}"),
                ));
            }
            // Every `*.toml` not starting with a dot; a name that cannot be read as a file
            // (a dangling link, a directory) is an error, never silently skipped.
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.'))
                })
                .collect();
            files.sort();
            if let Some(bad) = files.iter().find(|p| !p.is_file()) {
                return Err(ConfigError::file(
                    bad,
                    "drop-in is not a readable regular file (a dangling link or a directory?)",
                ));
            }
            for f in files {
                let t = read(&f)?;
                drop_ins.push((f, t));
            }
        }
        // No `policy.d`: no drop-ins. But a link by that name whose target is missing is
        // an error (a directory swapped for a link that dangles would silently drop every
        // rule of its drop-ins).
        Err(e)
            if explicit.is_none()
                && dir_override.is_none()
                && e.kind() == std::io::ErrorKind::NotFound
                && std::fs::symlink_metadata(&dir).is_err() => {}
        Err(e) if explicit.is_none() => {
            return Err(ConfigError::file(
                &dir,
                format!("cannot read drop-in directory: {e}"),
            ));
        }
        Err(e) => {
            let span = explicit.map_or(0..0, |d| d.span());
            return Err(ctx.err(
                span,
                "drop_in_dir",
                format!("cannot read drop-in directory {}: {e}", dir.display()),
            ));
        }
    }
    let sources = Sources {
        main: path.to_path_buf(),
        text,
        drop_ins,
    };
    Ok((sources, (raw, carved)))
}

/// Validate the configuration text `text` alone (no drop-ins); `path` labels errors and is
/// stored in [`Config::path`].
///
/// # Errors
/// As [`parse_set`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_set(path, text, &[])
}

/// Validate a main file and drop-in files `(path, text)` as one policy.
///
/// Prefixes are `ADDRESS/LEN` with a decimal LEN (0-32 for IPv4, 0-128 for IPv6); a bare
/// address without `/LEN` is accepted as a /32 (IPv4) or /128 (IPv6).
///
/// # Errors
/// The first problem (main file first, then drop-ins in order; by line inside a file): TOML
/// syntax, duplicate keys (including a region defined twice), unknown fields, wrong types, a
/// bad `mode`/`default`/`established`, a missing `allowlist`, a malformed prefix, a prefix
/// with host bits set, an IPv4-mapped IPv6 prefix, a region without prefixes, the same prefix
/// twice in a region or in two regions, a bad or reserved region name, a region defined in
/// two files, more than [`MAX_CONFIG_REGIONS`] regions, an allowlist entry that names no
/// region or repeats one, a relative or empty `cgroup`, a rule without destinations or with a
/// bad action, protocol or port range, a rule naming an unknown region; for the output
/// settings: wrong types, unknown fields, a bad sink `type`, `format`, `transport`,
/// `facility` or `address`, a missing `path` (file) or `address` (syslog), TLS options on a
/// non-TLS sink, `cert` without `key` or the reverse, relative paths, duplicate sink names, a
/// `queue` or `retry_max_ms` below 1, negative numbers, bad label names or values.
pub fn parse_set(
    path: &Path,
    text: &str,
    drop_ins: &[(PathBuf, String)],
) -> Result<Config, ConfigError> {
    parse_set_all(path, text, drop_ins).map(|(cfg, _)| cfg)
}

/// Like [`parse`], also returning the agent's [`Output`] settings (`heartbeat_secs`,
/// `[host]`, `[[sinks]]`), which [`parse`] validates too but does not return.
///
/// # Errors
/// As [`parse_set`].
pub fn parse_all(path: &Path, text: &str) -> Result<(Config, Output), ConfigError> {
    parse_set_all(path, text, &[])
}

/// [`parse_set`] returning the [`Output`] settings too.
///
/// # Errors
/// As [`parse_set`].
pub fn parse_set_all(
    path: &Path,
    text: &str,
    drop_ins: &[(PathBuf, String)],
) -> Result<(Config, Output), ConfigError> {
    parse_with(path, text, drop_ins, None)
}

/// [`parse_set_all`], with the main file deserialized already when `main` is given.
fn parse_with(
    path: &Path,
    text: &str,
    drop_ins: &[(PathBuf, String)],
    main: Option<Parsed>,
) -> Result<(Config, Output), ConfigError> {
    let ctx = Ctx::new(path, text);
    let (raw, carved): (RawConfig, _) = match main.map_or_else(|| parse_raw(text, true), Ok) {
        Ok(raw) => raw,
        Err(e) => return Err(ctx.toml_error(&e)),
    };
    let ctx = ctx.with_cuts(carved.cuts.clone());
    let mut docs = vec![Doc {
        ctx: Ctx::new(path, text).with_cuts(carved.cuts.clone()),
        allowlist: &raw.allowlist,
        regions: &raw.regions,
        rules: &raw.rules,
        lists: std::cell::RefCell::new(carved),
    }];
    let mut extra: Vec<(RawDropIn, prefixes::Carved)> = Vec::with_capacity(drop_ins.len());
    for (p, t) in drop_ins {
        let c = Ctx::new(p, t);
        extra.push(parse_raw(t, true).map_err(|e| c.drop_in_error(&e))?);
    }
    for ((p, t), (d, carved)) in drop_ins.iter().zip(extra.iter_mut()) {
        let carved = std::mem::take(carved);
        docs.push(Doc {
            ctx: Ctx::new(p, t).with_cuts(carved.cuts.clone()),
            allowlist: &d.allowlist,
            regions: &d.regions,
            rules: &d.rules,
            lists: std::cell::RefCell::new(carved),
        });
    }
    let mut errors = Vec::new();
    let output = ctx.output(&raw, &mut errors);
    match ctx.validate(&raw, &docs) {
        Err(e) => errors.push(e),
        Ok(mut cfg) if errors.is_empty() => {
            cfg.drop_ins = drop_ins.iter().map(|(p, _)| p.clone()).collect();
            return Ok((cfg, output));
        }
        Ok(_) => {}
    }
    let order = |e: &ConfigError| {
        let di = docs.iter().position(|d| d.ctx.path == e.file).unwrap_or(0);
        (di, e.line, e.column)
    };
    Err(errors
        .into_iter()
        .min_by_key(order)
        .unwrap_or_else(|| ctx.err(0..0, "", "invalid configuration")))
}

/// One file's share of the policy.
struct Doc<'a> {
    ctx: Ctx<'a>,
    allowlist: &'a [Spanned<String>],
    regions: &'a BTreeMap<Spanned<String>, Spanned<RawRegion>>,
    rules: &'a [Spanned<RawRule>],
    /// Its prefix lists that toml did not read ([`prefixes::carve`]).
    lists: std::cell::RefCell<prefixes::Carved>,
}

/// `text` deserialized, with its plain prefix lists read apart ([`prefixes::carve`]; with
/// `parse` false they are only taken out). An error toml reports on the reduced text is
/// replaced by what it says of the whole text, so messages and locations are those of the
/// file as written.
fn parse_raw<T: serde::de::DeserializeOwned>(
    text: &str,
    parse: bool,
) -> Result<(T, prefixes::Carved), toml::de::Error> {
    if let Some(carved) = prefixes::carve(text, parse)
        && let Ok(raw) = toml::from_str(&carved.reduced)
    {
        return Ok((raw, carved));
    }
    toml::from_str(text).map(|raw| (raw, prefixes::Carved::default()))
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
    packet_sockets: Option<Spanned<String>>,
    packet_socket_open: Option<Vec<Spanned<String>>>,
    packet_socket_send: Option<Vec<Spanned<String>>>,
    ipv4_lookup: Option<Spanned<String>>,
    ipv6_lookup: Option<Spanned<String>>,
    nat64_prefixes: Option<Vec<Spanned<String>>>,
    default: Option<Spanned<String>>,
    drop_in_dir: Option<Spanned<String>>,
    suppress_window_ms: Option<Spanned<i64>>,
    summary_after: Option<Spanned<i64>>,
    // Without toml's `preserve_order` this loses file order; key spans restore it.
    #[serde(default)]
    regions: BTreeMap<Spanned<String>, Spanned<RawRegion>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    // Agent output settings (see [`Output`]); validated by `Ctx::output`.
    heartbeat_secs: Option<Spanned<i64>>,
    chain_key_file: Option<Spanned<String>>,
    host: Option<Spanned<RawHost>>,
    sinks: Option<Vec<Spanned<RawSink>>>,
}

/// A drop-in file: regions, rules and allowlist additions only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDropIn {
    #[serde(default)]
    allowlist: Vec<Spanned<String>>,
    #[serde(default)]
    regions: BTreeMap<Spanned<String>, Spanned<RawRegion>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    labels: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    action: Spanned<String>,
    to: Option<Vec<Spanned<String>>>,
    regions: Option<Vec<Spanned<String>>>,
    protocol: Option<Spanned<toml::Value>>,
    ports: Option<Spanned<toml::Value>>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    facility: Option<Spanned<String>>,
    app_name: Option<Spanned<String>>,
    queue: Option<Spanned<i64>>,
    queue_bytes: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    spool: Option<Spanned<String>>,
    spool_max_bytes: Option<Spanned<i64>>,
    spool_fsync: Option<Spanned<String>>,
    when_full: Option<Spanned<String>>,
    retry_max_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    // Optional so a missing list gets the same "no prefixes" error as an empty one.
    prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    description: Option<String>,
    mode: Option<Spanned<String>>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Built at the first located error, rule or region, then shared by all of them.
    lines: std::cell::OnceCell<LineIndex>,
    /// Where toml's text lacks the carved prefix lists ([`prefixes::Carved::cuts`]): spans
    /// serde reports are offsets in that text.
    cuts: Vec<(usize, usize)>,
}

impl<'a> Ctx<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            lines: std::cell::OnceCell::new(),
            cuts: Vec::new(),
        }
    }

    /// Spans of serde values are offsets in `text` without the lists `cuts` took out.
    fn with_cuts(mut self, cuts: Vec<(usize, usize)>) -> Self {
        self.cuts = cuts;
        self
    }

    /// The offset in the file of offset `offset` in toml's text.
    fn original(&self, offset: usize) -> usize {
        prefixes::Carved::original(&self.cuts, offset)
    }

    /// 1-based (line, column in characters) of byte `offset` of toml's text.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        self.line_col_in_file(self.original(offset))
    }

    /// 1-based (line, column in characters) of byte `offset` of the file.
    fn line_col_in_file(&self, offset: usize) -> (usize, usize) {
        self.lines
            .get_or_init(|| LineIndex::new(self.text))
            .line_col(self.text, offset)
    }

    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.err_in_file(self.original(span.start), field, message)
    }

    /// [`Ctx::err`] at byte `offset` of the file.
    fn err_in_file(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col_in_file(offset);
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A drop-in's parse error; main-file-only fields get a clear message.
    fn drop_in_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut err = self.toml_error(e);
        // Only a top-level key is a main-file setting; the same name inside a table is just
        // an unknown field there.
        if let Some(field) = backticked(e.message(), "unknown field `")
            && !err.field.contains('.')
            && [
                "mode",
                "cgroup",
                "established",
                "packet_sockets",
                "packet_socket_open",
                "packet_socket_send",
                "ipv4_lookup",
                "ipv6_lookup",
                "nat64_prefixes",
                "default",
                "drop_in_dir",
            ]
            .contains(&field)
        {
            err.message = format!(
                "`{field}` may only be set in the main configuration file, not in a drop-in"
            );
        }
        err
    }

    fn line_of(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    /// Turn a toml error (syntax or serde) into a located error with a field path.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = plain_types(e.message());
        match DeTable::parse(self.text) {
            // The document parses: serde rejected it; the span locates the field in the tree.
            Ok(root) => {
                let mut field = locate(root.get_ref(), &span).unwrap_or_default();
                if let Some(missing) = backticked(&message, "missing field `") {
                    field = join(&field, missing);
                    if missing == "allowlist" {
                        // A top-level key: whatever table the span falls in is not its path.
                        return self.err(
                            span,
                            "allowlist",
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
}
