//! `egressd explain --config FILE ADDR[:PORT][/PROTO]`: what the policy decides for one
//! destination, and why.
//!
//! The answer is computed by the code that fills the kernel maps and models the kernel's
//! decision: [`crate::policy::compile`], then [`Policy::judged_addr`] (IPv4-mapped and NAT64
//! addresses become the IPv4 address they carry), [`Policy::region_of`] (longest-prefix
//! match) and [`Policy::decide`] (region allowlist, rules, default, in the documented
//! precedence), which gives the verdict and the deciding rule. What the kernel does not
//! report — the matching prefix, which target of the rule matched, whose mode applied — is
//! found here by a linear scan ([`matching_prefix`]) and checked against
//! [`Policy::region_of`] / [`Policy::decide`].
//!
//! Without `/PROTO` the destination is judged with no protocol (IANA 0) and without `:PORT`
//! with port 0, as [`Policy::verdict`] does: rules that name a protocol or ports do not
//! match then, and the output says so when the policy has such rules.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egressd_common::{REGION_LOCAL, REGION_UNKNOWN, Verdict};
use ipnetwork::{IpNetwork, Ipv6Network};
use serde_json::json;

use crate::config::{Action, LOCAL_REGION_NAME, Mode, Rule, Target};
use crate::policy::Policy;

/// Protocol of an explained destination: an IANA protocol number (`include/uapi/linux/in.h`),
/// named as in [`crate::base::protocol::NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proto(pub u8);

impl Proto {
    /// TCP (`connect()`).
    pub const TCP: Proto = Proto(6);
    /// UDP (connected or `sendto()`/`sendmsg()`).
    pub const UDP: Proto = Proto(17);

    /// The protocol's keyword (`tcp`, `sctp`, ...) or `proto-N` for numbers without one;
    /// [`parse_destination`] reads either back.
    pub fn as_str(self) -> String {
        match crate::base::protocol::by_name(&crate::base::protocol::name(self.0)) {
            Some(_) => crate::base::protocol::name(self.0),
            None => format!("proto-{}", self.0),
        }
    }

    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        self.0
    }
}

/// A destination as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The address, exactly as written (an IPv4-mapped address stays IPv6 here).
    pub ip: IpAddr,
    /// Destination port, 0-65535, when given.
    pub port: Option<u16>,
    /// Protocol, when given.
    pub proto: Option<Proto>,
}

impl fmt::Display for Destination {
    /// `ADDR`, `ADDR:PORT`, `[V6]:PORT`, each optionally followed by `/PROTO`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}")?,
            (a, Some(p)) => write!(f, "{a}:{p}")?,
            (a, None) => write!(f, "{a}")?,
        }
        if let Some(proto) = self.proto {
            write!(f, "/{}", proto.as_str())?;
        }
        Ok(())
    }
}

/// Parse a destination argument:
///
/// | form | example |
/// | --- | --- |
/// | IPv4 | `198.18.1.2`, `198.18.1.2:443`, `198.18.1.2/udp`, `198.18.1.2:53/udp` |
/// | IPv6 | `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, `[2001:db8::1]:443/tcp` |
/// | other protocols | `198.18.1.2:5000/sctp`, `2001:db8::1/ipv6-icmp`, `198.18.1.2/proto-47` |
///
/// An IPv6 address with a port must be in brackets (`2001:db8::1:443` is the address
/// `2001:db8::1:443`). The port is decimal 0-65535; the protocol is a name of
/// [`crate::base::protocol::NAMES`] (any case) or `proto-N` for IANA number N, so every protocol a
/// policy accepts can be explained; a port with a protocol that has none is refused. Zone ids (`fe80::1%eth0`), prefixes (`10.0.0.0/8`) and host names are rejected.
///
/// # Errors
/// A message saying what is wrong with `s`.
pub fn parse_destination(s: &str) -> Result<Destination, String> {
    const FORMS: &str = "expected ADDR, ADDR:PORT or [IPv6]:PORT, optionally followed by \
                         /PROTO (tcp, udp, sctp, icmp, ... or proto-N)";
    if s.is_empty() {
        return Err(format!("empty destination: {FORMS}"));
    }
    let (rest, proto) = match s.rsplit_once('/') {
        Some((rest, p)) => {
            let numbered = p
                .get(..6)
                .filter(|h| h.eq_ignore_ascii_case("proto-"))
                .map(|_| &p[6..]);
            let proto = if let Some(n) = crate::base::protocol::by_name(p) {
                Proto(n)
            } else if let Some(n) = numbered {
                match n.parse::<u8>() {
                    Ok(num) if num.to_string() == n => Proto(num),
                    _ => {
                        return Err(format!(
                            "invalid protocol number `{n}` in `{s}`: expected proto-0 to proto-255"
                        ));
                    }
                }
            } else if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{s}` looks like a prefix: explain takes one address, e.g. {rest} \
                     (for IANA protocol {p} write {rest}/proto-{p})"
                ));
            } else {
                return Err(format!(
                    "unknown protocol `{p}` in `{s}`: use {} or proto-N (IANA number)",
                    crate::base::protocol::names_list()
                ));
            };
            (rest, Some(proto))
        }
        None => (s, None),
    };
    if rest.contains('%') {
        return Err(format!(
            "`{s}`: zone ids are not supported; give the address without `%zone`"
        ));
    }
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            // 0 too: the policy's port ranges may start at 0, which the hooks see for a
            // destination without a port (as in `connect()` to port 0).
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("invalid port `{p}` in `{s}`: expected 0-65535")),
        }
    };
    let (ip, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!("missing `]` in `{s}`"));
        };
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` in `{s}` is not an IPv6 address ({FORMS})"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(port(p)?),
                None => return Err(format!("unexpected `{after}` after `]` in `{s}` ({FORMS})")),
            },
        };
        (IpAddr::V6(ip), port)
    } else if let Ok(ip) = rest.parse::<IpAddr>() {
        (ip, None)
    } else if let Some((addr, p)) = rest.split_once(':')
        && !p.contains(':')
    {
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` in `{s}` is not an IPv4 address ({FORMS})"))?;
        (IpAddr::V4(ip), Some(port(p)?))
    } else {
        return Err(format!("`{rest}` is not an IP address ({FORMS})"));
    };
    if let (Some(p), Some(proto)) = (port, proto)
        && !crate::base::protocol::has_ports(proto.0)
    {
        return Err(format!(
            "`{s}`: protocol {} has no ports (the kernel judges it with port 0); give the \
             address without `:{p}`",
            proto.as_str()
        ));
    }
    Ok(Destination { ip, port, proto })
}

/// How the address looked up differs from the address given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Looked up as given.
    None,
    /// `::ffff:a.b.c.d`, judged as `a.b.c.d`.
    Ipv4Mapped,
    /// Inside this NAT64 /96 (RFC 6052), judged as the IPv4 address in its last 32 bits.
    Nat64(Ipv6Network),
}

/// What decided the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Loopback destination: always allowed, counted under region `local`.
    Loopback,
    /// Unspecified destination (`0.0.0.0`, `::`): always allowed, counted under `local`.
    Unspecified,
    /// The destination's region is on the allowlist (no rule took precedence).
    Allowlisted,
    /// The destination's region is not on the allowlist (no rule took precedence).
    NotAllowlisted,
    /// A rule decided ([`Explanation::rule`]).
    Rule,
    /// No region prefix and no rule contains the destination: the policy's `default`.
    Default,
}

impl Reason {
    /// Stable code used in the JSON output: `loopback`, `unspecified`, `allowlisted`,
    /// `not_allowlisted`, `rule`, `default`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Loopback => "loopback",
            Reason::Unspecified => "unspecified",
            Reason::Allowlisted => "allowlisted",
            Reason::NotAllowlisted => "not_allowlisted",
            Reason::Rule => "rule",
            Reason::Default => "default",
        }
    }
}

/// Whose `mode` applies to a denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModeFrom {
    /// The policy's `mode`.
    Policy,
    /// The `mode` of this region.
    Region(String),
    /// The `mode` of the deciding rule.
    Rule,
}

impl ModeFrom {
    /// `policy`, `region` or `rule`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            ModeFrom::Policy => "policy",
            ModeFrom::Region(_) => "region",
            ModeFrom::Rule => "rule",
        }
    }
}

/// The rule that decided, and what of it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRule {
    /// [`Rule::id`].
    pub id: u32,
    /// [`Rule::name`].
    pub name: String,
    /// [`Rule::action`].
    pub action: Action,
    /// [`Rule::origin`]: `FILE:LINE`.
    pub origin: String,
    /// `tcp port 25`, `udp ports 1000-2000`, `any protocol, any port`.
    pub scope: String,
    /// The longest of the rule's destinations containing the judged address: a prefix of
    /// `to`, or a prefix of a region of `regions`.
    pub prefix: Option<IpNetwork>,
    /// The region through which it matched, for a `regions = [...]` target.
    pub via_region: Option<String>,
}

/// The policy's answer for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// What was asked.
    pub destination: Destination,
    /// [`Policy::judged_addr`] of the destination: the address the kernel looks up.
    pub judged: IpAddr,
    /// How `judged` was derived from the destination.
    pub translation: Translation,
    /// Region id reported in events: [`REGION_LOCAL`] for loopback/unspecified,
    /// [`REGION_UNKNOWN`] for no region, else [`Policy::region_of`].
    pub region_id: u32,
    /// Region name (`local`, `unknown` or a configured region).
    pub region: String,
    /// The longest region prefix that contains the judged address (none for `local` and
    /// `unknown`).
    pub prefix: Option<IpNetwork>,
    /// Whether the region is on the allowlist (true for `local`).
    pub allowlisted: bool,
    /// The deciding rule, if a rule decided.
    pub rule: Option<MatchedRule>,
    /// The mode that applies to a denial of this destination (for an allowed destination:
    /// the mode a denial would have had).
    pub mode: Mode,
    /// Whose mode that is.
    pub mode_from: ModeFrom,
    /// [`Policy::decide`]'s verdict.
    pub verdict: Verdict,
    /// What decided.
    pub reason: Reason,
    /// The allowlist, by name, for messages.
    pub allowlist: Vec<String>,
    /// The policy's `default`, for messages.
    pub default: Action,
    /// Whether the policy has rules that name a protocol or ports (so that protocol and port
    /// matter).
    pub has_specific_rules: bool,
}

/// The longest region prefix of `policy` that contains `ip` (after [`Policy::judged_addr`]),
/// with its region id. A linear scan: fine for one address, not for a data path.
pub fn matching_prefix(policy: &Policy, ip: IpAddr) -> Option<(IpNetwork, u32)> {
    match policy.judged_addr(ip) {
        IpAddr::V4(a) => policy
            .v4
            .iter()
            .filter(|(n, _)| n.contains(a))
            .max_by_key(|(n, _)| n.prefix())
            .map(|(n, id)| (IpNetwork::V4(*n), *id)),
        IpAddr::V6(a) => policy
            .v6
            .iter()
            .filter(|(n, _)| n.contains(a))
            .max_by_key(|(n, _)| n.prefix())
            .map(|(n, id)| (IpNetwork::V6(*n), *id)),
    }
}

/// The longest prefix of region `id` that contains the judged address `addr`.
fn region_prefix(policy: &Policy, id: u32, addr: IpAddr) -> Option<IpNetwork> {
    let v4 = policy
        .v4
        .iter()
        .filter(|(_, r)| *r == id)
        .map(|(n, _)| IpNetwork::V4(*n));
    let v6 = policy
        .v6
        .iter()
        .filter(|(_, r)| *r == id)
        .map(|(n, _)| IpNetwork::V6(*n));
    v4.chain(v6)
        .filter(|n| n.contains(addr))
        .max_by_key(IpNetwork::prefix)
}

fn rule_scope(r: &Rule) -> String {
    let proto = match r.protocol {
        None => "any protocol".to_string(),
        Some(n) if crate::base::protocol::by_name(&crate::base::protocol::name(n)).is_some() => {
            crate::base::protocol::name(n)
        }
        Some(n) => format!("protocol {n}"),
    };
    let ports = match r.ports {
        None => "any port".to_string(),
        Some((lo, hi)) if lo == hi => format!("port {lo}"),
        Some((lo, hi)) => format!("ports {lo}-{hi}"),
    };
    match (r.protocol, r.ports) {
        (Some(_), Some(_)) => format!("{proto} {ports}"),
        _ => format!("{proto}, {ports}"),
    }
}

/// Explain what `policy` decides for `destination`.
pub fn explain(policy: &Policy, destination: Destination) -> Explanation {
    let ip = destination.ip;
    let judged = policy.judged_addr(ip);
    let translation = match (ip, ip.to_canonical(), judged) {
        (IpAddr::V6(_), IpAddr::V4(_), _) => Translation::Ipv4Mapped,
        (IpAddr::V6(a), _, IpAddr::V4(_)) => policy
            .nat64
            .iter()
            .find(|n| n.contains(a))
            .map_or(Translation::None, |n| Translation::Nat64(*n)),
        _ => Translation::None,
    };
    let decision = policy.decide(
        ip,
        destination.proto.map_or(0, Proto::number),
        destination.port.unwrap_or(0),
    );
    let allowlist: Vec<String> = policy
        .regions
        .iter()
        .zip(&policy.allowed)
        .filter(|(_, a)| **a)
        .map(|(n, _)| n.clone())
        .collect();
    let mut e = Explanation {
        destination,
        judged,
        translation,
        region_id: decision.region,
        region: LOCAL_REGION_NAME.to_string(),
        prefix: None,
        allowlisted: true,
        rule: None,
        mode: policy.mode,
        mode_from: ModeFrom::Policy,
        verdict: decision.verdict,
        reason: Reason::Loopback,
        allowlist,
        default: policy.default,
        has_specific_rules: policy.rules.iter().any(Rule::is_specific),
    };
    let canonical = ip.to_canonical();
    if canonical.is_loopback() || canonical.is_unspecified() {
        e.region_id = REGION_LOCAL;
        if canonical.is_unspecified() {
            e.reason = Reason::Unspecified;
        }
        return e;
    }
    let region_id = policy.region_of(ip);
    e.region_id = region_id;
    e.region = policy.region_name(region_id).to_string();
    // The scan must agree with the lookup the kernel model does; if it ever did not, report
    // no prefix rather than a wrong one.
    e.prefix = matching_prefix(policy, ip)
        .filter(|(_, id)| *id == region_id)
        .map(|(n, _)| n);
    e.allowlisted = policy
        .allowed
        .get(region_id as usize)
        .copied()
        .unwrap_or(false);
    let region_mode = |id: u32| {
        policy
            .region_modes
            .get(id as usize)
            .copied()
            .flatten()
            .map(|m| (m, ModeFrom::Region(policy.region_name(id).to_string())))
    };
    let policy_mode = (policy.mode, ModeFrom::Policy);
    let rule = (decision.rule != 0)
        .then(|| policy.rules.iter().find(|r| r.id == decision.rule))
        .flatten();
    let (mode, from) = if let Some(r) = rule {
        // The longest target of the rule containing the address decided.
        let mut best: Option<(IpNetwork, Option<u32>)> = None;
        for t in &r.targets {
            let found = match t {
                Target::Prefix(n) => n.contains(judged).then_some((*n, None)),
                Target::Region(name) => {
                    policy
                        .regions
                        .iter()
                        .position(|x| x == name)
                        .and_then(|id| {
                            let id = id as u32;
                            region_prefix(policy, id, judged).map(|n| (n, Some(id)))
                        })
                }
            };
            if let Some(f) = found
                && best.is_none_or(|(b, _)| f.0.prefix() > b.prefix())
            {
                best = Some(f);
            }
        }
        let via = best.and_then(|(_, id)| id);
        e.rule = Some(MatchedRule {
            id: r.id,
            name: r.name.clone(),
            action: r.action,
            origin: r.origin.clone(),
            scope: rule_scope(r),
            prefix: best.map(|(n, _)| n),
            via_region: via.map(|id| policy.region_name(id).to_string()),
        });
        e.reason = Reason::Rule;
        match r.mode {
            Some(m) => (m, ModeFrom::Rule),
            None => via.and_then(region_mode).unwrap_or(policy_mode),
        }
    } else if region_id != REGION_UNKNOWN {
        e.reason = if e.allowlisted {
            Reason::Allowlisted
        } else {
            Reason::NotAllowlisted
        };
        region_mode(region_id).unwrap_or(policy_mode)
    } else {
        e.reason = Reason::Default;
        policy_mode
    };
    e.mode = mode;
    e.mode_from = from;
    e
}

/// `"allow"`, `"deny"` or `"audit"`, as in events.
pub const fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Audit => "audit",
    }
}

impl Explanation {
    /// One paragraph: why the verdict is what it is.
    pub fn why(&self) -> String {
        let mut s = match self.translation {
            Translation::None => String::new(),
            Translation::Ipv4Mapped => format!(
                "{} is IPv4-mapped and is judged as the IPv4 address {}; ",
                self.destination.ip, self.judged
            ),
            Translation::Nat64(n) => format!(
                "{} is inside the NAT64 prefix {n} and is judged as the IPv4 address it \
                 carries, {}; ",
                self.destination.ip, self.judged
            ),
        };
        let allow = if self.allowlist.is_empty() {
            "the allowlist is empty".to_string()
        } else {
            format!("allowlist: {}", self.allowlist.join(", "))
        };
        let _ = match self.reason {
            Reason::Loopback => write!(
                s,
                "loopback destinations are always allowed (counted under region `local`)"
            ),
            Reason::Unspecified => write!(
                s,
                "unspecified destinations are always allowed (counted under region `local`)"
            ),
            Reason::Allowlisted => write!(s, "region `{}` is on the allowlist", self.region),
            Reason::NotAllowlisted => write!(
                s,
                "region `{}` is not on the allowlist ({allow})",
                self.region
            ),
            Reason::Rule => match &self.rule {
                Some(r) => {
                    let via = match (&r.via_region, r.prefix) {
                        (Some(reg), Some(p)) => format!(" via region `{reg}` ({p})"),
                        (None, Some(p)) => format!(" via {p}"),
                        _ => String::new(),
                    };
                    write!(
                        s,
                        "rule `{}` ({} {}, {}) matches{via} and takes precedence (longest \
                         prefix, then a rule naming a protocol or port, then deny over allow)",
                        r.name,
                        r.action.as_str(),
                        r.scope,
                        r.origin
                    )
                }
                None => write!(s, "a rule decided"),
            },
            Reason::Default => write!(
                s,
                "no region and no rule contains the address, so the policy default `{}` applies",
                self.default.as_str()
            ),
        };
        let _ = match self.verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny => write!(
                s,
                "; in enforce mode ({}) the connection fails with EPERM and is reported",
                self.mode_source()
            ),
            Verdict::Audit => write!(
                s,
                "; in audit mode ({}) the connection goes through and is reported",
                self.mode_source()
            ),
        };
        s
    }

    fn mode_source(&self) -> String {
        match &self.mode_from {
            ModeFrom::Policy => "the policy's".to_string(),
            ModeFrom::Region(r) => format!("region `{r}`'s"),
            ModeFrom::Rule => "the rule's".to_string(),
        }
    }

    /// A note about protocol and port, when they matter or were ignored; `None` otherwise.
    pub fn note(&self) -> Option<String> {
        let given = self.destination.port.is_some() || self.destination.proto.is_some();
        if self.reason == Reason::Loopback || self.reason == Reason::Unspecified {
            return None;
        }
        if self.has_specific_rules {
            let mut missing = Vec::new();
            if self.destination.proto.is_none() {
                missing.push("/PROTO");
            }
            if self.destination.port.is_none() {
                missing.push(":PORT");
            }
            (!missing.is_empty()).then(|| {
                format!(
                    "judged without {}; rules that name a protocol or ports match only when \
                     those are given",
                    missing.join(" and ")
                )
            })
        } else if given {
            Some(
                "port and protocol do not change the verdict: no rule of this policy names a \
                 protocol or ports"
                    .to_string(),
            )
        } else {
            None
        }
    }

    /// Human-readable, several lines, ending in a newline:
    ///
    /// ```text
    /// destination: 198.18.2.2:443/tcp
    /// judged as:   198.18.2.2
    /// region:      us (id 2), prefix 198.18.2.0/24
    /// mode:        enforce (policy)
    /// verdict:     deny
    /// why:         region `us` is not on the allowlist (allowlist: eu); in enforce mode ...
    /// ```
    ///
    /// A `rule:` line follows `region:` when a rule decided, and a `note:` line ends the
    /// output when protocol and port were ignored or could matter ([`Explanation::note`]).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "destination: {}", self.destination);
        let _ = writeln!(s, "judged as:   {}", self.judged);
        let region = match self.prefix {
            Some(p) => format!("{} (id {}), prefix {p}", self.region, self.region_id),
            None if self.region_id == REGION_UNKNOWN => {
                format!("{} (id {}), no prefix matches", self.region, self.region_id)
            }
            None => format!("{} (id {})", self.region, self.region_id),
        };
        let _ = writeln!(s, "region:      {region}");
        if let Some(r) = &self.rule {
            let _ = writeln!(
                s,
                "rule:        {} (id {}): {} {}, {}",
                r.name,
                r.id,
                r.action.as_str(),
                r.scope,
                r.origin
            );
        }
        let from = match &self.mode_from {
            ModeFrom::Policy => "policy".to_string(),
            ModeFrom::Region(r) => format!("region `{r}`"),
            ModeFrom::Rule => "rule".to_string(),
        };
        let _ = writeln!(s, "mode:        {} ({from})", self.mode);
        let _ = writeln!(s, "verdict:     {}", verdict_str(self.verdict));
        let _ = writeln!(s, "why:         {}", self.why());
        if let Some(n) = self.note() {
            let _ = writeln!(s, "note:        {n}");
        }
        s
    }

    /// One JSON object:
    ///
    /// ```json
    /// {"destination":{"ip":"::ffff:198.18.1.2","port":443,"protocol":"tcp",
    ///  "protocol_number":6},
    ///  "judged_ip":"198.18.1.2","translation":"ipv4_mapped","nat64_prefix":null,
    ///  "region":{"id":1,"name":"eu","prefix":"198.18.1.0/24","allowlisted":true},
    ///  "rule":null,"mode":"enforce","mode_from":"policy","verdict":"allow",
    ///  "reason":"allowlisted","why":"...","note":null}
    /// ```
    ///
    /// `port`, `protocol`, `prefix`, `nat64_prefix`, `rule` and `note` are `null` when
    /// absent; `translation` is `"none"`, `"ipv4_mapped"` or `"nat64"`; `rule` is
    /// `{"id","name","action","scope","origin","prefix","via_region"}`; `mode_from` is
    /// [`ModeFrom::as_str`]; `reason` is [`Reason::as_str`].
    pub fn to_json(&self) -> serde_json::Value {
        let (translation, nat64) = match self.translation {
            Translation::None => ("none", None),
            Translation::Ipv4Mapped => ("ipv4_mapped", None),
            Translation::Nat64(n) => ("nat64", Some(n.to_string())),
        };
        let rule = self.rule.as_ref().map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "action": r.action.as_str(),
                "scope": r.scope,
                "origin": r.origin,
                "prefix": r.prefix.map(|p| p.to_string()),
                "via_region": r.via_region,
            })
        });
        json!({
            "destination": {
                "ip": self.destination.ip.to_string(),
                "port": self.destination.port,
                "protocol": self.destination.proto.map(Proto::as_str),
                "protocol_number": self.destination.proto.map(Proto::number),
            },
            "judged_ip": self.judged.to_string(),
            "translation": translation,
            "nat64_prefix": nat64,
            "region": {
                "id": self.region_id,
                "name": self.region,
                "prefix": self.prefix.map(|p| p.to_string()),
                "allowlisted": self.allowlisted,
            },
            "rule": rule,
            "mode": self.mode.as_str(),
            "mode_from": self.mode_from.as_str(),
            "verdict": verdict_str(self.verdict),
            "reason": self.reason.as_str(),
            "why": self.why(),
            "note": self.note(),
        })
    }
}

#[cfg(test)]
mod tests;
