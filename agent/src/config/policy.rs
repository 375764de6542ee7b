//! The policy half of the configuration: modes, regions, rules and the lookup settings, and
//! their validation ([`Config`]). Uses only [`crate::base::located`] and [`crate::base::protocol`].
use std::collections::HashSet;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv6Network};
use toml::Spanned;

use super::{ConfigError, Ctx, Doc, RawConfig, RawRule};

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
    /// A DIR-24-8 table with its first level paged by /14 ([`crate::policy::table`]): at
    /// most three array reads per lookup whatever the number of prefixes, for 64 KiB per
    /// policy set (two sets) plus 4 KiB per /14 whose /24s do not all decide alike and 512
    /// bytes per /24 holding a longer prefix (about 64 MiB per set at 1M prefixes).
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
    /// Sorted disjoint ranges binary-searched within the destination's /16, or a longer
    /// prefix of a dense /16 ([`crate::policy::table6`]): a 512 KiB index per policy set (two
    /// sets) plus 24 bytes per range (at most two per prefix plus one) and 16 bytes of index
    /// chunks per range of room.
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
    /// ([`crate::policy::ids`]); a policy compiled with [`crate::policy::compile`] uses the position.
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
    /// The file it was read from, as given to [`super::load`] / [`super::parse`].
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
    /// `suppress_window_ms`: at most one event per (process, destination, verdict, hook) per
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
impl Ctx<'_> {
    pub(super) fn validate(
        &self,
        raw: &RawConfig,
        docs: &[Doc<'_>],
    ) -> Result<Config, ConfigError> {
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

        let regions = super::prefixes::regions(docs, &mut errors);

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

        let mut rules: Vec<Rule> = Vec::new();
        // Rule ids are assigned by name (`policy::ids`), and events and `explain` name a rule
        // by it: two rules of one name would be reported as each other.
        let mut named: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for doc in docs {
            for (i, r) in doc.rules.iter().enumerate() {
                let id = u32::try_from(rules.len() + 1).unwrap_or(u32::MAX);
                let rule = match doc.ctx.rule(id, i, r, &known) {
                    Ok(rule) => rule,
                    Err(e) => {
                        errors.extend(e);
                        continue;
                    }
                };
                if let Some(name) = &r.get_ref().name {
                    if let Some(&first) = named.get(name.get_ref().as_str()) {
                        errors.push(doc.ctx.err(
                            name.span(),
                            format!("rules[{i}].name"),
                            format!(
                                "duplicate rule name `{}` (first at {}): events and `explain` \
                                 name a rule by its name; give each rule its own",
                                name.get_ref(),
                                rules[first].origin
                            ),
                        ));
                        continue;
                    }
                    named.insert(name.get_ref(), rules.len());
                }
                rules.push(rule);
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
                Some(n) if crate::base::protocol::has_ports(n) => Ok(range),
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

pub(super) fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(format!(
            "invalid mode `{other}`: expected `enforce` or `audit`"
        )),
    }
}

/// A name of [`crate::base::protocol::NAMES`] or a number 0-255 (IANA).
fn parse_protocol(v: &toml::Value) -> Result<u8, String> {
    match v {
        toml::Value::String(s) => crate::base::protocol::by_name(s).ok_or_else(|| {
            format!(
                "unknown protocol `{s}`: use {} or an IANA protocol number (unquoted)",
                crate::base::protocol::names_list()
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

/// Parse `ADDR/LEN` or a bare `ADDR` strictly ([`crate::base::prefix::parse`]); host bits are an
/// error here.
pub(super) fn parse_prefix(s: &str) -> Result<IpNetwork, String> {
    crate::base::prefix::parse(s, false)
        .map(|(net, _)| net)
        .map_err(|e| e.policy_message())
}

pub(crate) use crate::base::prefix::{mask_u32, mask_u128};
