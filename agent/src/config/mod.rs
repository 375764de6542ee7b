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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::located::LineIndex;

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

/// Default event suppression window, in milliseconds.
pub const DEFAULT_SUPPRESS_WINDOW_MS: u32 = 1000;
/// Largest `summary_after` accepted (records per key and second).
pub const MAX_SUMMARY_AFTER: u32 = 1_000_000;

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

/// What happens to sockets that put frames on the wire past the INET socket hooks
/// (AF_PACKET, AF_XDP) created or used by tasks under the enforced cgroup (field
/// `packet_sockets`). Needs the BPF LSM (see `egressd coverage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketSockets {
    /// Creating one, or sending on one, fails with `EPERM`; reported (default in enforce
    /// mode).
    Deny,
    /// Allowed and reported (default in audit mode).
    Audit,
    /// Allowed, counted, not reported.
    Allow,
}

impl PacketSockets {
    /// `"deny"`, `"audit"` or `"allow"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::Allow => "allow",
        }
    }

    /// The kernel verdict it stands for.
    pub const fn verdict(self) -> egressd_common::Verdict {
        match self {
            Self::Deny => egressd_common::Verdict::Deny,
            Self::Audit => egressd_common::Verdict::Audit,
            Self::Allow => egressd_common::Verdict::Allow,
        }
    }

    /// The default for policy mode `mode`.
    pub const fn default_for(mode: Mode) -> Self {
        match mode {
            Mode::Enforce => Self::Deny,
            Mode::Audit => Self::Audit,
        }
    }
}

impl std::fmt::Display for PacketSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the kernel finds the longest prefix covering an IPv4 destination (field
/// `ipv4_lookup`). Both give the same decisions; they differ in speed and kernel memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv4Lookup {
    /// [`Ipv4Lookup::Table`] when the policy egressd starts with has at least
    /// [`AUTO_TABLE_MIN_PREFIXES`] IPv4 prefixes, else [`Ipv4Lookup::Trie`] (default).
    #[default]
    Auto,
    /// The kernel's LPM trie: about 35 bytes per prefix; a lookup visits one node per
    /// distinguishing bit (hundreds of ns to a few us at 100k-1M prefixes).
    Trie,
    /// A DIR-24-8 table ([`crate::policy::table`]): at most two array reads per lookup
    /// whatever the number of prefixes, for 64 MiB per policy set (two sets) plus 512 bytes per
    /// /24 holding a longer prefix.
    Table,
}

impl Ipv4Lookup {
    /// `"auto"`, `"trie"` or `"table"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Trie => "trie",
            Self::Table => "table",
        }
    }
}

/// IPv4 prefixes from which `ipv4_lookup = "auto"` picks the table.
pub const AUTO_TABLE_MIN_PREFIXES: usize = 65_536;

/// How the kernel finds the longest prefix covering an IPv6 destination (field
/// `ipv6_lookup`). Both give the same decisions; they differ in speed and kernel memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv6Lookup {
    /// [`Ipv6Lookup::Table`] when the policy egressd starts with has at least
    /// [`AUTO_TABLE6_MIN_PREFIXES`] IPv6 prefixes (counted before merging), else
    /// [`Ipv6Lookup::Trie`] (default).
    #[default]
    Auto,
    /// The kernel's LPM trie: about 50 bytes per prefix; a lookup visits one node per
    /// distinguishing bit.
    Trie,
    /// Sorted disjoint ranges binary-searched within the destination's /16
    /// ([`crate::policy::table6`]): a 512 KiB index per policy set (two sets) plus 24 bytes
    /// per range (at most two per prefix plus one).
    Table,
}

impl Ipv6Lookup {
    /// `"auto"`, `"trie"` or `"table"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Trie => "trie",
            Self::Table => "table",
        }
    }
}

/// IPv6 prefixes (counted before merging) from which `ipv6_lookup = "auto"` picks the table.
pub const AUTO_TABLE6_MIN_PREFIXES: usize = 1024;

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

/// What a rule or the default does to a matching destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Deny (or, in audit mode, report). Sorted first: at a full tie deny beats allow.
    Deny,
    /// Allow.
    Allow,
}

impl Action {
    /// `"deny"` or `"allow"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// What a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A CIDR prefix (`to = [...]`).
    Prefix(IpNetwork),
    /// Every prefix of a region (`regions = [...]`).
    Region(String),
}

/// One `[[rules]]` entry: allow or deny a set of destinations, optionally for one protocol
/// and a port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in load order (main file first, then drop-ins in name order),
    /// which is also its precedence among rules. The id events carry is assigned by name
    /// ([`crate::ids`]); a policy compiled with [`crate::policy::compile`] uses the position.
    pub id: u32,
    /// `name`, or `rules[i]` / `FILE:rules[i]` when absent.
    pub name: String,
    /// `action`.
    pub action: Action,
    /// `to` prefixes and `regions`, in file order; non-empty.
    pub targets: Vec<Target>,
    /// `protocol` as an IANA protocol number; `None` for any protocol.
    pub protocol: Option<u8>,
    /// `ports` as an inclusive range (host byte order); `None` for any port.
    pub ports: Option<(u16, u16)>,
    /// `mode`; `None` inherits the region's, then the policy's.
    pub mode: Option<Mode>,
    /// Where it was defined: `FILE:LINE`.
    pub origin: String,
}

impl Rule {
    /// A rule that names a protocol or ports beats a rule without either at the same prefix.
    pub fn is_specific(&self) -> bool {
        self.protocol.is_some() || self.ports.is_some()
    }

    /// How specific the rule is at its prefix: 2 with ports, 1 with a protocol only, 0
    /// otherwise. At equal prefix the more specific rule wins.
    pub fn specificity(&self) -> u8 {
        if self.ports.is_some() {
            2
        } else {
            u8::from(self.protocol.is_some())
        }
    }
}

/// One `[regions.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Region name, matches `[a-z0-9][a-z0-9_-]{0,62}` and is never `unknown`.
    pub name: String,
    /// `mode` of this region's denials; `None` inherits the policy's.
    pub mode: Option<Mode>,
    /// Where it was defined: `FILE:LINE`.
    pub origin: String,
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
    /// `packet_sockets`: AF_PACKET/AF_XDP sockets of the enforced cgroup; when absent,
    /// [`PacketSockets::default_for`] the mode.
    pub packet_sockets: PacketSockets,
    /// `packet_socket_open` then `packet_socket_send`: absolute paths of executables that
    /// may create packet sockets whatever `packet_sockets` says, and whether they may also
    /// send on them (true: `packet_socket_send`). Identified in the kernel by the (device,
    /// inode) the path resolves to when the policy is installed.
    pub packet_exes: Vec<(PathBuf, bool)>,
    /// `ipv4_lookup`: the IPv4 lookup structure; [`Ipv4Lookup::Auto`] when absent. Read when
    /// egressd starts (it sizes the kernel maps); a reload that changes it takes effect at
    /// the next start.
    pub ipv4_lookup: Ipv4Lookup,
    /// `ipv6_lookup`: the IPv6 lookup structure; [`Ipv6Lookup::Auto`] when absent. Read, like
    /// `ipv4_lookup`, when egressd starts.
    pub ipv6_lookup: Ipv6Lookup,
    /// NAT64 prefixes (each a /96): [`WELL_KNOWN_NAT64`] first, then `nat64_prefixes` in file
    /// order. An IPv6 destination inside one is judged by its last 32 bits as IPv4.
    pub nat64: Vec<Ipv6Network>,
    /// `default`: what happens to a destination in no region and under no rule;
    /// [`Action::Deny`] when absent.
    pub default: Action,
    /// `suppress_window_ms`: at most one event per (process, destination, verdict) per
    /// window, in milliseconds; the next event carries the number suppressed. 0 disables it;
    /// [`DEFAULT_SUPPRESS_WINDOW_MS`] when absent. Counters are exact either way.
    pub suppress_window_ms: u32,
    /// `summary_after`: `connection` records per (cgroup, hook, region, verdict, rule) and
    /// second; the kernel aggregates that key's further attempts of the second into one
    /// `connection_summary` (it also aggregates whenever the ring buffer is full; the packet
    /// hook `cgroup_skb/egress` only then). 0: no budget;
    /// [`egressd_common::DEFAULT_SUMMARY_AFTER`] when absent.
    pub summary_after: u32,
    /// `regions` of the main file then of the drop-in files, in file order; at most
    /// [`MAX_CONFIG_REGIONS`]. The position `i` becomes region id `i + 1` in
    /// [`crate::policy::compile`].
    pub regions: Vec<Region>,
    /// `[[rules]]` of the main file then of the drop-in files, in file order.
    pub rules: Vec<Rule>,
    /// Drop-in files that were read, in the order they were applied.
    pub drop_ins: Vec<PathBuf>,
}

/// Why a configuration file was rejected, with its location (column in characters); the
/// same type as [`crate::import::ImportError`].
pub type ConfigError = crate::located::LocatedError;

/// Read and validate the configuration at `path` plus its drop-in directory.
///
/// The drop-in directory is `drop_in_dir` (relative paths are relative to the main file's
/// directory), by default `policy.d` beside the main file when that directory exists. Every
/// `*.toml` file in it is read in file-name order; each may define `[regions.NAME]`,
/// `[[rules]]` and `allowlist` entries (added to the main file's), nothing else. A region
/// defined in two files is an error naming both.
///
/// Run as root, the files and the drop-in directory must be trusted as
/// [`crate::safefs`] says: owned by root, not writable by group or others, in directories
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

/// The text of a policy set exactly as it was read: the main file and every drop-in file, in
/// the order they are applied. [`parse_set_all`] of it gives the same [`Config`] as the
/// [`load`] that read it; `egressd run` keeps it as the last good policy
/// ([`crate::lastgood`]).
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
    let sources = read_sources(path, None)?;
    let (cfg, output) = sources.parse()?;
    Ok((cfg, output, sources))
}

fn load_all_in(path: &Path, dir_override: Option<&Path>) -> Result<(Config, Output), ConfigError> {
    read_sources(path, dir_override)?.parse()
}

/// Reads the main file and its drop-ins (the directory named by `dir_override`, else by the
/// main file's `drop_in_dir`, else `policy.d` beside it if it exists), checking as root that
/// they are trusted. Only the main file's TOML syntax and `drop_in_dir` are looked at.
fn read_sources(path: &Path, dir_override: Option<&Path>) -> Result<Sources, ConfigError> {
    // As root, a policy file (or drop-in) others could have written is refused, like
    // sshd's StrictModes: see `crate::safefs`.
    let strict = crate::safefs::euid() == 0;
    let read = |p: &Path| {
        if strict {
            crate::safefs::read_trusted(p)
        } else {
            std::fs::read_to_string(p)
        }
        .map_err(|e| ConfigError::file(p, format!("cannot read configuration: {e}")))
    };
    let text = read(path)?;
    let ctx = Ctx::new(path, &text);
    let raw: RawConfig = toml::from_str(&text).map_err(|e| ctx.toml_error(&e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (dir, explicit) = match (dir_override, &raw.drop_in_dir) {
        (Some(d), _) => (d.to_path_buf(), None),
        (None, Some(d)) => (base.join(d.get_ref()), Some(d)),
        (None, None) => (base.join("policy.d"), None),
    };
    let mut drop_ins = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            if strict && let Err(e) = crate::safefs::check_trusted_dir(&dir) {
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
        Err(e)
            if explicit.is_none()
                && dir_override.is_none()
                && e.kind() == std::io::ErrorKind::NotFound => {}
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
    Ok(Sources {
        main: path.to_path_buf(),
        text,
        drop_ins,
    })
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
    let ctx = Ctx::new(path, text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(ctx.toml_error(&e)),
    };
    let mut docs = vec![Doc {
        ctx: Ctx::new(path, text),
        allowlist: &raw.allowlist,
        regions: &raw.regions,
        rules: &raw.rules,
    }];
    let mut extra: Vec<RawDropIn> = Vec::with_capacity(drop_ins.len());
    for (p, t) in drop_ins {
        let c = Ctx::new(p, t);
        extra.push(toml::from_str(t).map_err(|e| c.drop_in_error(&e))?);
    }
    for ((p, t), d) in drop_ins.iter().zip(&extra) {
        docs.push(Doc {
            ctx: Ctx::new(p, t),
            allowlist: &d.allowlist,
            regions: &d.regions,
            rules: &d.rules,
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
}

/// Where a prefix was first seen, for duplicate messages.
struct Seen {
    region: usize,
    field: String,
    /// Byte offset in `doc`'s text; the line is computed only for an error message (doing
    /// it for every prefix would make large files quadratic).
    offset: usize,
    doc: usize,
}

impl<'a> Ctx<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            lines: std::cell::OnceCell::new(),
        }
    }

    /// 1-based (line, column in characters) of byte `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
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
        let (line, column) = self.line_col(span.start);
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

    fn validate(&self, raw: &RawConfig, docs: &[Doc<'_>]) -> Result<Config, ConfigError> {
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

        let packet_sockets = match &raw.packet_sockets {
            None => PacketSockets::default_for(mode),
            Some(e) => match e.get_ref().as_str() {
                "deny" => PacketSockets::Deny,
                "audit" => PacketSockets::Audit,
                "allow" => PacketSockets::Allow,
                other => {
                    errors.push(self.err(
                        e.span(),
                        "packet_sockets",
                        format!("invalid value `{other}`: expected `deny`, `audit` or `allow`"),
                    ));
                    PacketSockets::default_for(mode)
                }
            },
        };

        let mut packet_exes: Vec<(PathBuf, bool)> = Vec::new();
        for (field, list, send) in [
            ("packet_socket_open", &raw.packet_socket_open, false),
            ("packet_socket_send", &raw.packet_socket_send, true),
        ] {
            for (i, p) in list.iter().flatten().enumerate() {
                let path = PathBuf::from(p.get_ref());
                let field = format!("{field}[{i}]");
                if !path.is_absolute() {
                    errors.push(self.err(
                        p.span(),
                        &field,
                        format!(
                            "must be an absolute path to an executable, got `{}`",
                            p.get_ref()
                        ),
                    ));
                } else if packet_exes.iter().any(|(q, _)| *q == path) {
                    errors.push(self.err(
                        p.span(),
                        &field,
                        format!(
                            "`{}` is listed twice (packet_socket_send already lets it open)",
                            p.get_ref()
                        ),
                    ));
                } else if packet_exes.len() >= egressd_common::MAX_PACKET_EXES as usize {
                    errors.push(self.err(
                        p.span(),
                        &field,
                        format!(
                            "at most {} executables may use packet sockets",
                            egressd_common::MAX_PACKET_EXES
                        ),
                    ));
                } else {
                    packet_exes.push((path, send));
                }
            }
        }

        let ipv4_lookup = match &raw.ipv4_lookup {
            None => Ipv4Lookup::Auto,
            Some(e) => match e.get_ref().as_str() {
                "auto" => Ipv4Lookup::Auto,
                "trie" => Ipv4Lookup::Trie,
                "table" => Ipv4Lookup::Table,
                other => {
                    errors.push(self.err(
                        e.span(),
                        "ipv4_lookup",
                        format!("invalid value `{other}`: expected `auto`, `trie` or `table`"),
                    ));
                    Ipv4Lookup::Auto
                }
            },
        };
        let ipv6_lookup = match &raw.ipv6_lookup {
            None => Ipv6Lookup::Auto,
            Some(e) => match e.get_ref().as_str() {
                "auto" => Ipv6Lookup::Auto,
                "trie" => Ipv6Lookup::Trie,
                "table" => Ipv6Lookup::Table,
                other => {
                    errors.push(self.err(
                        e.span(),
                        "ipv6_lookup",
                        format!("invalid value `{other}`: expected `auto`, `trie` or `table`"),
                    ));
                    Ipv6Lookup::Auto
                }
            },
        };

        let mut nat64 = vec![WELL_KNOWN_NAT64];
        for (i, p) in raw.nat64_prefixes.iter().flatten().enumerate() {
            let field = format!("nat64_prefixes[{i}]");
            match parse_prefix(p.get_ref()) {
                Ok(IpNetwork::V6(n)) if n.prefix() == 96 && n.network() == n.ip() => {
                    if nat64.contains(&n) {
                        continue;
                    }
                    // The kernel's NAT64 map holds MAX_NAT64 prefixes, the well-known one
                    // included: a longer list would pass here and fail to load.
                    if nat64.len() >= egressd_common::MAX_NAT64 as usize {
                        errors.push(self.err(
                            p.span(),
                            field,
                            format!(
                                "too many NAT64 prefixes: at most {} besides the well-known \
                                 64:ff9b::/96",
                                egressd_common::MAX_NAT64 - 1
                            ),
                        ));
                        break;
                    }
                    nat64.push(n);
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

        let default = match &raw.default {
            None => Action::Deny,
            Some(d) => match d.get_ref().as_str() {
                "deny" => Action::Deny,
                "allow" => Action::Allow,
                other => {
                    errors.push(self.err(
                        d.span(),
                        "default",
                        format!("invalid default `{other}`: expected `deny` or `allow`"),
                    ));
                    Action::Deny
                }
            },
        };

        let suppress_window_ms = match &raw.suppress_window_ms {
            None => DEFAULT_SUPPRESS_WINDOW_MS,
            Some(w) => u32::try_from(*w.get_ref())
                .ok()
                .filter(|v| *v <= 3_600_000)
                .unwrap_or_else(|| {
                    errors.push(self.err(
                        w.span(),
                        "suppress_window_ms",
                        format!("invalid window {}: use 0 (off) to 3600000 ms", w.get_ref()),
                    ));
                    0
                }),
        };

        let summary_after = match &raw.summary_after {
            None => egressd_common::DEFAULT_SUMMARY_AFTER,
            Some(w) => u32::try_from(*w.get_ref())
                .ok()
                .filter(|v| *v <= MAX_SUMMARY_AFTER)
                .unwrap_or_else(|| {
                    errors.push(self.err(
                        w.span(),
                        "summary_after",
                        format!(
                            "invalid record budget {}: use 0 (none) to {MAX_SUMMARY_AFTER} \
                             records per second",
                            w.get_ref()
                        ),
                    ));
                    0
                }),
        };

        // Regions of every file, each file in its own order.
        let mut entries: Vec<(usize, &Spanned<String>, &Spanned<RawRegion>)> = Vec::new();
        for (di, doc) in docs.iter().enumerate() {
            let mut mine: Vec<_> = doc.regions.iter().map(|(k, v)| (di, k, v)).collect();
            mine.sort_by_key(|(_, k, _)| k.span().start);
            entries.extend(mine);
        }
        let mut regions: Vec<Region> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<IpNetwork, Seen> = HashMap::new();
        let mut defined: HashMap<&str, (usize, usize)> = HashMap::new();
        for (index, (di, key, table)) in entries.iter().enumerate() {
            let doc = &docs[*di];
            let name = key.get_ref();
            let rfield = join("regions", name);
            let kline = doc.ctx.line_of(key.span().start);
            if let Some((d0, l0)) = defined.get(name.as_str()) {
                errors.push(doc.ctx.err(
                    key.span(),
                    rfield.clone(),
                    format!(
                        "duplicate region `{name}` (first defined in {}:{l0}); a region may be \
                         defined in one file only",
                        docs[*d0].ctx.path.display()
                    ),
                ));
                continue;
            }
            defined.insert(name, (*di, kline));
            if let Err(msg) = check_region_name(name) {
                errors.push(doc.ctx.err(key.span(), rfield.clone(), msg));
            }
            if index == MAX_CONFIG_REGIONS {
                errors.push(doc.ctx.err(
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
            let mode = table.get_ref().mode.as_ref().and_then(|m| {
                parse_mode(m.get_ref())
                    .map_err(|msg| {
                        errors.push(doc.ctx.err(m.span(), format!("{rfield}.mode"), msg))
                    })
                    .ok()
            });
            let pfield = format!("{rfield}.prefixes");
            let mut prefixes = Vec::new();
            match &table.get_ref().prefixes {
                Some(list) if !list.get_ref().is_empty() => {
                    for (i, p) in list.get_ref().iter().enumerate() {
                        let field = format!("{pfield}[{i}]");
                        let net = match parse_prefix(p.get_ref()) {
                            Ok(net) => net,
                            Err(msg) => {
                                errors.push(doc.ctx.err(p.span(), field, msg));
                                continue;
                            }
                        };
                        if let Some(first) = seen.get(&net) {
                            let fdoc = &docs[first.doc];
                            let fline = fdoc.ctx.line_of(first.offset);
                            let at = if first.doc == *di {
                                format!("line {fline}")
                            } else {
                                format!("{}:{fline}", fdoc.ctx.path.display())
                            };
                            let msg = if first.region == index {
                                format!(
                                    "prefix {net} is listed twice in region `{name}` \
                                     (first as {} on {at})",
                                    first.field
                                )
                            } else {
                                format!(
                                    "prefix {net} is in two regions: `{}` ({} on {at}) and \
                                     `{name}`; a prefix may belong to one region only",
                                    entries[first.region].1.get_ref(),
                                    first.field
                                )
                            };
                            errors.push(doc.ctx.err(p.span(), field, msg));
                            continue;
                        }
                        seen.insert(
                            net,
                            Seen {
                                region: index,
                                field,
                                offset: p.span().start,
                                doc: *di,
                            },
                        );
                        prefixes.push(net);
                    }
                }
                Some(list) => errors.push(doc.ctx.err(
                    list.span(),
                    pfield,
                    format!("region `{name}` has no prefixes"),
                )),
                None => errors.push(doc.ctx.err(
                    key.span(),
                    pfield,
                    format!("region `{name}` has no prefixes (add `prefixes = [\"CIDR\", ...]`)"),
                )),
            }
            regions.push(Region {
                name: name.clone(),
                mode,
                origin: format!("{}:{kline}", doc.ctx.path.display()),
                description: table.get_ref().description.clone(),
                prefixes,
            });
        }

        let known = Known::new(&regions);
        let mut allowlist: Vec<String> = Vec::new();
        let mut listed: HashSet<&str> = HashSet::new();
        for doc in docs {
            for (i, entry) in doc.allowlist.iter().enumerate() {
                let name = entry.get_ref();
                let field = format!("allowlist[{i}]");
                if !listed.insert(name.as_str()) {
                    errors.push(doc.ctx.err(
                        entry.span(),
                        field,
                        format!("duplicate allowlist entry `{name}` (already listed)"),
                    ));
                } else if let Some(msg) = unknown_region(name, &known) {
                    errors.push(doc.ctx.err(entry.span(), field, msg));
                }
                allowlist.push(name.clone());
            }
        }

        let mut rules = Vec::new();
        for doc in docs {
            for (i, r) in doc.rules.iter().enumerate() {
                let id = u32::try_from(rules.len() + 1).unwrap_or(u32::MAX);
                match doc.ctx.rule(id, i, r, &known) {
                    Ok(rule) => rules.push(rule),
                    Err(e) => errors.extend(e),
                }
            }
        }

        // Report the earliest problem (main file first) so fixing top to bottom works.
        let order = |e: &ConfigError| {
            let di = docs.iter().position(|d| d.ctx.path == e.file).unwrap_or(0);
            (di, e.line, e.column)
        };
        if let Some(first) = errors.into_iter().min_by_key(order) {
            return Err(first);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            mode,
            allowlist,
            cgroup,
            established,
            packet_sockets,
            packet_exes,
            ipv4_lookup,
            ipv6_lookup,
            nat64,
            default,
            suppress_window_ms,
            summary_after,
            regions,
            rules,
            drop_ins: Vec::new(),
        })
    }

    /// Validates one `[[rules]]` entry (`index` within its file).
    fn rule(
        &self,
        id: u32,
        index: usize,
        raw: &Spanned<RawRule>,
        regions: &Known<'_>,
    ) -> Result<Rule, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let field = format!("rules[{index}]");
        let r = raw.get_ref();
        let action = match r.action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                errors.push(self.err(
                    r.action.span(),
                    format!("{field}.action"),
                    format!("invalid action `{other}`: expected `allow` or `deny`"),
                ));
                Action::Deny
            }
        };
        let mut targets = Vec::new();
        for (i, t) in r.to.iter().flatten().enumerate() {
            match parse_prefix(t.get_ref()) {
                Ok(net) => targets.push(Target::Prefix(net)),
                Err(msg) => errors.push(self.err(t.span(), format!("{field}.to[{i}]"), msg)),
            }
        }
        for (i, t) in r.regions.iter().flatten().enumerate() {
            match unknown_region(t.get_ref(), regions) {
                None => targets.push(Target::Region(t.get_ref().clone())),
                Some(msg) => errors.push(self.err(t.span(), format!("{field}.regions[{i}]"), msg)),
            }
        }
        if r.to.iter().flatten().count() + r.regions.iter().flatten().count() == 0 {
            errors.push(self.err(
                raw.span(),
                field.clone(),
                "a rule needs destinations: `to = [\"CIDR\", ...]` and/or `regions = [...]` \
                 (use to = [\"0.0.0.0/0\", \"::/0\"] for everywhere)",
            ));
        }
        let protocol = r.protocol.as_ref().and_then(|p| {
            parse_protocol(p.get_ref())
                .map_err(|m| errors.push(self.err(p.span(), format!("{field}.protocol"), m)))
                .ok()
        });
        let ports = r.ports.as_ref().and_then(|p| {
            let res = parse_ports(p.get_ref()).and_then(|range| match protocol {
                Some(n) if crate::protocol::has_ports(n) => Ok(range),
                _ => Err(
                    "ports need `protocol = \"tcp\"`, `\"udp\"`, `\"sctp\"` or `\"udplite\"`"
                        .to_owned(),
                ),
            });
            res.map_err(|m| errors.push(self.err(p.span(), format!("{field}.ports"), m)))
                .ok()
        });
        let mode = r.mode.as_ref().and_then(|m| {
            parse_mode(m.get_ref())
                .map_err(|msg| errors.push(self.err(m.span(), format!("{field}.mode"), msg)))
                .ok()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let line = self.line_of(raw.span().start);
        let origin = format!("{}:{line}", self.path.display());
        let name = r
            .name
            .as_ref()
            .map_or_else(|| format!("rule at {origin}"), |n| n.get_ref().clone());
        Ok(Rule {
            id,
            name,
            action,
            targets,
            protocol,
            ports,
            mode,
            origin,
        })
    }
}

/// The defined region names, for lookups by name (a set: checking every allowlist entry and
/// rule against a list made validation quadratic) and for messages.
struct Known<'a> {
    names: HashSet<&'a str>,
    /// `a, b, c` (the first [`Known::LISTED`] names in order, then how many more).
    listing: String,
}

impl<'a> Known<'a> {
    /// Names listed in an "unknown region" message.
    const LISTED: usize = 20;

    fn new(regions: &'a [Region]) -> Self {
        let mut listing = regions
            .iter()
            .take(Self::LISTED)
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if regions.len() > Self::LISTED {
            listing.push_str(&format!(" and {} more", regions.len() - Self::LISTED));
        }
        Self {
            names: regions.iter().map(|r| r.name.as_str()).collect(),
            listing,
        }
    }
}

/// `None` if `name` is a defined region, else why not.
fn unknown_region(name: &str, regions: &Known<'_>) -> Option<String> {
    if regions.names.contains(name) {
        return None;
    }
    Some(if name == UNKNOWN_REGION_NAME {
        format!(
            "`{UNKNOWN_REGION_NAME}` is reserved for destinations in no region and cannot be allowlisted"
        )
    } else if regions.names.is_empty() {
        format!("unknown region `{name}` (no regions are defined)")
    } else {
        format!("unknown region `{name}` (defined: {})", regions.listing)
    })
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(format!(
            "invalid mode `{other}`: expected `enforce` or `audit`"
        )),
    }
}

/// A name of [`crate::protocol::NAMES`] or a number 0-255 (IANA).
fn parse_protocol(v: &toml::Value) -> Result<u8, String> {
    match v {
        toml::Value::String(s) => crate::protocol::by_name(s).ok_or_else(|| {
            format!(
                "unknown protocol `{s}`: use {} or an IANA protocol number (unquoted)",
                crate::protocol::names_list()
            )
        }),
        toml::Value::Integer(n) => {
            let p = u8::try_from(*n).map_err(|_| format!("protocol {n} is not in 0-255"))?;
            match p {
                // The packet hook walks past these to the upper-layer header (RFC 8200
                // section 4), so a rule naming one would never match anything.
                0 | 43 | 44 | 51 | 60 => Err(format!(
                    "protocol {p} is an IPv6 extension header or IPsec AH, never the \
                     upper-layer protocol egressd judges (omit `protocol` to match any \
                     protocol)"
                )),
                _ => Ok(p),
            }
        }
        _ => Err("protocol must be a name or a number".into()),
    }
}

/// `25`, `"25"` or `"1000-2000"` (inclusive).
fn parse_ports(v: &toml::Value) -> Result<(u16, u16), String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("invalid port `{s}`: use 0-65535"))
    };
    match v {
        toml::Value::Integer(n) => {
            let p = u16::try_from(*n).map_err(|_| format!("invalid port {n}: use 0-65535"))?;
            Ok((p, p))
        }
        toml::Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("invalid port range `{s}`: start above end"));
            }
            Ok((lo, hi))
        }
        _ => Err("ports must be a number or a string like \"1000-2000\"".into()),
    }
}

/// Default `heartbeat_secs`.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 60;
/// Default per-sink in-memory queue, in records.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Default per-sink in-memory queue, in bytes (16 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// Default longest message of a syslog sink, in bytes (rsyslog's default `maxMessageSize`).
pub const DEFAULT_SYSLOG_MESSAGE_BYTES: usize = 8 << 10;
/// Default spool size limit per sink, in bytes (64 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default longest wait between reconnection attempts, in milliseconds.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// Directory under which syslog sinks spool by default (`{dir}/{sink name}`).
pub const DEFAULT_SPOOL_ROOT: &str = "/var/lib/egressd/spool";

/// Where and how the agent reports: host labels, heartbeat and sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// `[host] labels`: key/value pairs added to every record (`host.labels`).
    pub host_labels: BTreeMap<String, String>,
    /// `heartbeat_secs`: interval of the `heartbeat` record in seconds, 0 disables it;
    /// [`DEFAULT_HEARTBEAT_SECS`] when absent.
    pub heartbeat_secs: u64,
    /// `chain_key_file`: absolute path of the secret that keys the records' hash chain
    /// (HMAC-SHA-256, [`crate::audit::chain`]), read once at start; unkeyed SHA-256 when
    /// absent.
    pub chain_key_file: Option<PathBuf>,
    /// `[[sinks]]` in file order; one stdout sink with the native JSON format when absent.
    pub sinks: Vec<SinkConfig>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            host_labels: BTreeMap::new(),
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            chain_key_file: None,
            sinks: vec![SinkConfig::stdout()],
        }
    }
}

/// One `[[sinks]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// `name`: unique among the sinks; names its counters and its spool directory. Default:
    /// the type (`stdout`, `file`, `syslog`).
    pub name: String,
    /// `type` and its options.
    pub kind: SinkKind,
    /// `format`: `json` (default), `ecs`, `ocsf` or `cef`.
    pub format: crate::formats::Format,
    /// `queue`: in-memory queue in records ([`DEFAULT_QUEUE`]).
    pub queue: usize,
    /// `queue_bytes`: in-memory queue in bytes ([`DEFAULT_QUEUE_BYTES`]); whichever of
    /// `queue` and `queue_bytes` is reached first makes the queue full.
    pub queue_bytes: usize,
    /// `max_message_bytes`: longest record the destination takes (for syslog, the RFC 5424
    /// message with its header; for lines, with the newline); a longer one is truncated so
    /// it stays parseable, marked and counted ([`crate::formats::bound`]). 0: no limit.
    /// Default [`DEFAULT_SYSLOG_MESSAGE_BYTES`] for syslog sinks, 0 for others; at least
    /// [`crate::formats::bound::MIN_MESSAGE_BYTES`] when set.
    pub max_message_bytes: usize,
    /// On-disk spool used while the sink is down or slow; `None` disables it.
    pub spool: Option<SpoolConfig>,
    /// `retry_max_ms`: longest wait between reconnection attempts ([`DEFAULT_RETRY_MAX_MS`]);
    /// waits start at 100 ms and double.
    pub retry_max_ms: u64,
}

impl SinkConfig {
    /// The default sink: native JSON lines on stdout, no spool.
    pub fn stdout() -> Self {
        Self {
            name: "stdout".into(),
            kind: SinkKind::Stdout,
            format: crate::formats::Format::Json,
            queue: DEFAULT_QUEUE,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_message_bytes: 0,
            spool: None,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
        }
    }
}

/// What a sink writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// `type = "stdout"`: one record per line on standard output.
    Stdout,
    /// `type = "file"`: one record per line appended to `path`, reopened on SIGUSR1.
    File {
        /// `path`: absolute file path.
        path: PathBuf,
        /// `mode`: octal permission bits the file is created with (`"0640"`);
        /// [`crate::safefs::FILE_MODE`] (0600) when absent. Never writable by group or
        /// others.
        mode: u32,
    },
    /// `type = "syslog"`: RFC 5424 messages.
    Syslog(SyslogConfig),
}

/// Options of a syslog sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `transport`: `udp` (RFC 5426), `tcp` (RFC 6587 octet counting, default) or `tls`
    /// (RFC 5425).
    pub transport: SyslogTransport,
    /// `address`: `HOST:PORT` (IPv6 as `[ADDR]:PORT`), resolved at each connection attempt.
    pub address: String,
    /// `server_name`: name the TLS server certificate must carry; default: the host part of
    /// `address`.
    pub server_name: Option<String>,
    /// `ca`: PEM file of the CA certificates that may sign the server's certificate;
    /// default: the system's (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: PEM client certificate chain and private key, for servers that
    /// require client authentication.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// `facility`: syslog facility code (0-23); name in the file (`daemon` default, `local0`
    /// ... `local7`, `auth`, `authpriv`, `security`, `user`, ...).
    pub facility: u8,
    /// `app_name`: APP-NAME field (`egressd` default; 1-48 printable ASCII characters).
    pub app_name: String,
}

/// Syslog transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One message per datagram; no delivery guarantee.
    Udp,
    /// Octet-counted messages on a TCP stream.
    Tcp,
    /// Octet-counted messages on a TLS stream.
    Tls,
}

/// A sink's on-disk spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// `spool`: directory (created if missing); default for syslog sinks
    /// `{DEFAULT_SPOOL_ROOT}/{name}`.
    pub dir: PathBuf,
    /// `spool_max_bytes`: size limit ([`DEFAULT_SPOOL_MAX_BYTES`]); 0 disables the spool.
    pub max_bytes: u64,
    /// `spool_fsync`: `"batch"` (default) or `"interval"`; see
    /// [`crate::pipeline::spool::Fsync`].
    pub fsync: crate::pipeline::spool::Fsync,
}

/// Syslog facility names (RFC 5424 section 6.2.1) and their codes.
const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl Ctx<'_> {
    /// Validates the output settings of `raw`, pushing errors; returns what is valid.
    fn output(&self, raw: &RawConfig, errors: &mut Vec<ConfigError>) -> Output {
        let mut out = Output::default();
        if let Some(h) = &raw.heartbeat_secs {
            match u64::try_from(*h.get_ref()) {
                Ok(v) => out.heartbeat_secs = v,
                Err(_) => errors.push(self.err(
                    h.span(),
                    "heartbeat_secs",
                    "heartbeat_secs must be 0 (off) or a number of seconds",
                )),
            }
        }
        if let Some(k) = &raw.chain_key_file {
            let p = PathBuf::from(k.get_ref());
            if p.is_absolute() {
                // Read now, as `run` will: `check` (config management's validator) and a
                // reload must refuse a key the next start would refuse.
                if let Err(e) = crate::audit::chain::load_key(&p) {
                    errors.push(self.err(k.span(), "chain_key_file", format!("{e:#}")));
                }
                out.chain_key_file = Some(p);
            } else {
                errors.push(self.err(
                    k.span(),
                    "chain_key_file",
                    format!(
                        "`chain_key_file` must be an absolute path, got `{}`",
                        k.get_ref()
                    ),
                ));
            }
        }
        if let Some(labels) = raw.host.as_ref().and_then(|h| h.get_ref().labels.as_ref()) {
            for (k, v) in labels {
                let key = k.get_ref();
                let field = join("host.labels", key);
                let key_ok = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
                if !key_ok {
                    errors.push(self.err(
                        k.span(),
                        field,
                        format!(
                            "invalid label name `{key}`: use 1-64 characters from a-z, A-Z, \
                             0-9, `_`, `.` and `-`"
                        ),
                    ));
                } else if v.get_ref().len() > 256 || v.get_ref().chars().any(char::is_control) {
                    errors.push(self.err(
                        v.span(),
                        field,
                        "label values are at most 256 bytes, without control characters",
                    ));
                } else {
                    out.host_labels.insert(key.clone(), v.get_ref().clone());
                }
            }
        }
        if let Some(sinks) = &raw.sinks {
            out.sinks.clear();
            for (i, s) in sinks.iter().enumerate() {
                if let Some(sink) = self.sink(i, s, errors) {
                    if let Some(first) = out.sinks.iter().position(|o| o.name == sink.name) {
                        errors.push(self.err(
                            s.span(),
                            format!("sinks[{i}].name"),
                            format!(
                                "duplicate sink name `{}` (also sinks[{first}]); give each sink \
                                 its own `name`",
                                sink.name
                            ),
                        ));
                    }
                    out.sinks.push(sink);
                }
            }
        }
        out
    }

    fn sink(
        &self,
        i: usize,
        s: &Spanned<RawSink>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SinkConfig> {
        let raw = s.get_ref();
        let f = |name: &str| format!("sinks[{i}].{name}");
        let before = errors.len();
        let abs_path = |v: &Spanned<String>, name: &str, errors: &mut Vec<ConfigError>| {
            let p = PathBuf::from(v.get_ref());
            if !p.is_absolute() {
                errors.push(self.err(
                    v.span(),
                    f(name),
                    format!("`{name}` must be an absolute path, got `{}`", v.get_ref()),
                ));
            }
            p
        };
        let Some(kind_s) = &raw.kind else {
            errors.push(self.err(
                s.span(),
                f("type"),
                "missing field `type`: `stdout`, `file` or `syslog`",
            ));
            return None;
        };
        let format = match &raw.format {
            None => crate::formats::Format::Json,
            Some(v) => crate::formats::Format::from_name(v.get_ref()).unwrap_or_else(|| {
                errors.push(self.err(
                    v.span(),
                    f("format"),
                    format!(
                        "unknown format `{}`: expected `json`, `ecs`, `ocsf` or `cef`",
                        v.get_ref()
                    ),
                ));
                crate::formats::Format::Json
            }),
        };
        let only_for = |opt: &Option<Spanned<String>>,
                        name: &str,
                        what: &str,
                        errors: &mut Vec<ConfigError>| {
            if let Some(v) = opt {
                errors.push(self.err(
                    v.span(),
                    f(name),
                    format!("`{name}` only applies to {what}"),
                ));
            }
        };
        let kind = match kind_s.get_ref().as_str() {
            "stdout" => {
                only_for(&raw.path, "path", "file sinks", errors);
                only_for(&raw.mode, "mode", "file sinks", errors);
                SinkKind::Stdout
            }
            "file" => match &raw.path {
                Some(p) => SinkKind::File {
                    path: abs_path(p, "path", errors),
                    mode: match &raw.mode {
                        None => crate::safefs::FILE_MODE,
                        Some(m) => match u32::from_str_radix(m.get_ref(), 8) {
                            Ok(v) if v <= 0o777 && v & 0o022 == 0 && v & 0o600 == 0o600 => v,
                            _ => {
                                errors.push(self.err(
                                    m.span(),
                                    f("mode"),
                                    format!(
                                        "`mode` must be octal permission bits that let the \
                                         owner read and write and nobody else write, such as \
                                         \"0600\" or \"0640\", got `{}`",
                                        m.get_ref()
                                    ),
                                ));
                                crate::safefs::FILE_MODE
                            }
                        },
                    },
                },
                None => {
                    errors.push(self.err(
                        s.span(),
                        f("path"),
                        "a file sink needs `path` (absolute)",
                    ));
                    return None;
                }
            },
            "syslog" => {
                only_for(&raw.path, "path", "file sinks", errors);
                only_for(&raw.mode, "mode", "file sinks", errors);
                let transport = match raw.transport.as_ref().map(|t| (t, t.get_ref().as_str())) {
                    None | Some((_, "tcp")) => SyslogTransport::Tcp,
                    Some((_, "udp")) => SyslogTransport::Udp,
                    Some((_, "tls")) => SyslogTransport::Tls,
                    Some((t, other)) => {
                        errors.push(self.err(
                            t.span(),
                            f("transport"),
                            format!("unknown transport `{other}`: expected `udp`, `tcp` or `tls`"),
                        ));
                        SyslogTransport::Tcp
                    }
                };
                let Some(address) = &raw.address else {
                    errors.push(self.err(
                        s.span(),
                        f("address"),
                        "a syslog sink needs `address = \"HOST:PORT\"`",
                    ));
                    return None;
                };
                if host_port(address.get_ref()).is_none() {
                    errors.push(self.err(
                        address.span(),
                        f("address"),
                        format!(
                            "invalid address `{}`: expected HOST:PORT, e.g. \
                             `siem.example.com:6514` or `[2001:db8::1]:514`",
                            address.get_ref()
                        ),
                    ));
                }
                if transport != SyslogTransport::Tls {
                    for (opt, name) in [
                        (&raw.ca, "ca"),
                        (&raw.cert, "cert"),
                        (&raw.key, "key"),
                        (&raw.server_name, "server_name"),
                    ] {
                        only_for(opt, name, "`transport = \"tls\"`", errors);
                    }
                }
                let client_auth = match (&raw.cert, &raw.key) {
                    (Some(c), Some(k)) => {
                        Some((abs_path(c, "cert", errors), abs_path(k, "key", errors)))
                    }
                    (Some(c), None) => {
                        errors.push(self.err(c.span(), f("cert"), "`cert` needs `key`"));
                        None
                    }
                    (None, Some(k)) => {
                        errors.push(self.err(k.span(), f("key"), "`key` needs `cert`"));
                        None
                    }
                    (None, None) => None,
                };
                let facility = match &raw.facility {
                    None => 3,
                    Some(v) => FACILITIES
                        .iter()
                        .find(|(n, _)| *n == v.get_ref())
                        .map(|(_, c)| *c)
                        .unwrap_or_else(|| {
                            errors.push(self.err(
                                v.span(),
                                f("facility"),
                                format!(
                                    "unknown facility `{}`: expected one of {}",
                                    v.get_ref(),
                                    FACILITIES.map(|(n, _)| n).join(", ")
                                ),
                            ));
                            3
                        }),
                };
                let app_name = match &raw.app_name {
                    None => "egressd".to_string(),
                    Some(v) => {
                        let a = v.get_ref();
                        if a.is_empty()
                            || a.len() > 48
                            || !a.bytes().all(|c| (33..=126).contains(&c))
                        {
                            errors.push(self.err(
                                v.span(),
                                f("app_name"),
                                "app_name must be 1-48 printable ASCII characters without spaces \
                                 (RFC 5424 APP-NAME)",
                            ));
                        }
                        a.clone()
                    }
                };
                SinkKind::Syslog(SyslogConfig {
                    transport,
                    address: address.get_ref().clone(),
                    server_name: raw.server_name.as_ref().map(|v| v.get_ref().clone()),
                    ca: raw.ca.as_ref().map(|v| abs_path(v, "ca", errors)),
                    client_auth,
                    facility,
                    app_name,
                })
            }
            other => {
                errors.push(self.err(
                    kind_s.span(),
                    f("type"),
                    format!("unknown sink type `{other}`: expected `stdout`, `file` or `syslog`"),
                ));
                return None;
            }
        };
        if !matches!(kind, SinkKind::Syslog(_)) {
            for (opt, name) in [
                (&raw.transport, "transport"),
                (&raw.address, "address"),
                (&raw.ca, "ca"),
                (&raw.cert, "cert"),
                (&raw.key, "key"),
                (&raw.server_name, "server_name"),
                (&raw.facility, "facility"),
                (&raw.app_name, "app_name"),
            ] {
                only_for(opt, name, "syslog sinks", errors);
            }
        }
        let name = match &raw.name {
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 63
                    && n.get_ref()
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
                if !ok {
                    errors.push(self.err(
                        n.span(),
                        f("name"),
                        "sink names are 1-63 characters from a-z, A-Z, 0-9, `_` and `-`",
                    ));
                }
                n.get_ref().clone()
            }
            None => kind_s.get_ref().clone(),
        };
        let positive = |v: &Option<Spanned<i64>>,
                        name: &str,
                        min: i64,
                        default: u64,
                        errors: &mut Vec<ConfigError>|
         -> u64 {
            match v {
                None => default,
                Some(n) if *n.get_ref() >= min => u64::try_from(*n.get_ref()).unwrap_or(default),
                Some(n) => {
                    errors.push(self.err(
                        n.span(),
                        f(name),
                        format!("`{name}` must be at least {min}"),
                    ));
                    default
                }
            }
        };
        let queue = positive(&raw.queue, "queue", 1, DEFAULT_QUEUE as u64, errors);
        let queue_bytes = positive(
            &raw.queue_bytes,
            "queue_bytes",
            64 << 10,
            DEFAULT_QUEUE_BYTES as u64,
            errors,
        );
        let default_message = match kind {
            SinkKind::Syslog(_) => DEFAULT_SYSLOG_MESSAGE_BYTES as u64,
            _ => 0,
        };
        let max_message_bytes = match &raw.max_message_bytes {
            Some(v) if *v.get_ref() == 0 => 0,
            other => positive(
                other,
                "max_message_bytes",
                crate::formats::bound::MIN_MESSAGE_BYTES as i64,
                default_message,
                errors,
            ),
        };
        let retry_max_ms = positive(
            &raw.retry_max_ms,
            "retry_max_ms",
            1,
            DEFAULT_RETRY_MAX_MS,
            errors,
        );
        let max_bytes = positive(
            &raw.spool_max_bytes,
            "spool_max_bytes",
            0,
            DEFAULT_SPOOL_MAX_BYTES,
            errors,
        );
        let fsync = match &raw.spool_fsync {
            None => crate::pipeline::spool::Fsync::default(),
            Some(v) => match v.get_ref().as_str() {
                "batch" => crate::pipeline::spool::Fsync::Batch,
                "interval" => crate::pipeline::spool::Fsync::Interval,
                other => {
                    errors.push(self.err(
                        v.span(),
                        f("spool_fsync"),
                        format!("`{other}`: expected \"batch\" or \"interval\""),
                    ));
                    crate::pipeline::spool::Fsync::default()
                }
            },
        };
        let spool_dir = match &raw.spool {
            Some(d) => Some(abs_path(d, "spool", errors)),
            None if matches!(kind, SinkKind::Syslog(_)) => {
                Some(Path::new(DEFAULT_SPOOL_ROOT).join(&name))
            }
            None => None,
        };
        if errors.len() > before {
            return None;
        }
        Some(SinkConfig {
            name,
            kind,
            format,
            queue: usize::try_from(queue).unwrap_or(DEFAULT_QUEUE),
            queue_bytes: usize::try_from(queue_bytes).unwrap_or(DEFAULT_QUEUE_BYTES),
            max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(0),
            spool: spool_dir.filter(|_| max_bytes > 0).map(|dir| SpoolConfig {
                dir,
                max_bytes,
                fsync,
            }),
            retry_max_ms,
        })
    }
}

/// Splits `HOST:PORT` / `[V6]:PORT`; `None` when malformed.
pub fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if let Some(h) = host.strip_prefix('[') {
        let h = h.strip_suffix(']')?;
        h.parse::<Ipv6Addr>().ok()?;
        return Some((h.to_owned(), port));
    }
    // A bare IPv6 address must be bracketed.
    if host.is_empty() || host.contains([':', '[', ']', ' ', '/']) {
        return None;
    }
    Some((host.to_owned(), port))
}

/// The region name rule: `[a-z0-9][a-z0-9_-]{0,62}`, and not a reserved name (`unknown`,
/// `local`). Errors: why the name is not acceptable.
pub fn check_region_name(name: &str) -> Result<(), String> {
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
#[cfg(test)]
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    crate::located::line_col(text, offset)
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

/// serde's type names (`i64`, `i128`, `u32`, ...) in a message, said as an operator would.
fn plain_types(message: &str) -> String {
    let mut m = message.to_owned();
    for t in ["i128", "i64", "i32", "u64", "u32", "u16", "u8"] {
        m = m.replace(&format!("expected {t}"), "expected an integer");
        m = m.replace(&format!(" as {t},"), ",");
    }
    // serde says "invalid type: integer `N`, expected an integer" for N out of range.
    if let Some(n) = backticked(&m, "invalid type: integer `")
        && m.ends_with("expected an integer")
    {
        return format!("integer {n} is out of range");
    }
    m
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
    // Elements seen per array of tables (`[[rules]]`): each is its own table, `rules[N]`.
    let mut elements: HashMap<String, usize> = HashMap::new();
    let mut pos = 0;
    for (number, line) in (1..).zip(text.split_inclusive('\n')) {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            let array = h.starts_with('[');
            let h = h.trim_start_matches('[');
            let h = dotted(h.split(']').next().unwrap_or_default());
            header = if array {
                let n = elements.entry(h.clone()).or_insert(0);
                *n += 1;
                format!("{h}[{}]", *n - 1)
            } else {
                h
            };
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
        // In a directory of its own: as root, a policy directly in /tmp (writable by
        // others) is refused.
        let t = crate::safefs::tests::Tmp::new("config");
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
        let e =
            p(&format!("{base}nat64_prefixes = [{}]\n", list(max + 1))).expect_err("one too many");
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
        let copy_dir =
            std::env::temp_dir().join(format!("egressd-cfg-copy-{}", std::process::id()));
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 22 item 3: as root, a drop-in directory (or policy file) an unprivileged user
    /// can write is refused, naming it, instead of loading the user's allow rule; so is a
    /// file the user owns.
    #[test]
    fn config_untrusted_policy_files_are_refused_as_root() {
        use crate::safefs::tests::{Tmp, as_nobody, root};
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
                    [[sinks]]\nname = \"siem\"\ntype = \"syslog\"\ntransport = \"tls\"\n\
                    address = \"siem.example.com:6514\"\nformat = \"cef\"\nca = \"/etc/ca.pem\"\n\
                    cert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\nfacility = \"local4\"\nqueue = 5\n\
                    spool_max_bytes = 1000\nspool_fsync = \"interval\"\nretry_max_ms = 1000\n\
                    [[sinks]]\nname = \"udp\"\ntype = \"syslog\"\ntransport = \"udp\"\n\
                    address = \"[2001:db8::1]:514\"\nspool_max_bytes = 0\n";
        let o = out(text);
        assert_eq!(o.heartbeat_secs, 0);
        assert_eq!(o.chain_key_file, None);
        let dir = std::env::temp_dir().join(format!("egressd-cfg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = dir.join("chain.key");
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
                e.to_string().contains("t.toml:2:18: chain_key_file: ")
                    && e.to_string().contains(says),
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
        assert_eq!(o.sinks[1].format, crate::formats::Format::Ecs);
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
        assert_eq!(
            o.sinks[2].spool,
            Some(SpoolConfig {
                dir: PathBuf::from("/var/lib/egressd/spool/siem"),
                max_bytes: 1000,
                fsync: crate::pipeline::spool::Fsync::Interval,
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
}
