//! Shared checks of the fuzz targets: what must hold for every policy the parser accepts.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egressd::config::{Config, Target};
use egressd::policy::{Policy, compile};
use egressd_common::{REGION_UNKNOWN, Verdict};
use ipnetwork::IpNetwork;

/// Compiles `cfg`; when the policy is loadable (no problems), checks that the compiled
/// tables, evaluated as the kernel does (longest prefix, then the entry's rules in order,
/// then its default), agree with the reference model [`Policy::decide`] at the edges and
/// middle of every prefix the policy names, for several protocols and ports, plus `extra`.
///
/// # Panics
/// On a disagreement (the finding), naming the destination.
pub fn check_policy(cfg: &Config, extra: &[(IpAddr, u8, u16)]) -> Policy {
    let p = compile(cfg);
    if !p.problems.is_empty() {
        return p;
    }
    let mut nets: Vec<IpNetwork> = cfg
        .regions
        .iter()
        .flat_map(|r| r.prefixes.iter().copied())
        .collect();
    let mut ports: Vec<u16> = vec![0, 1, 80, 443, 65535];
    for r in &cfg.rules {
        for t in &r.targets {
            if let Target::Prefix(n) = t {
                nets.push(*n);
            }
        }
        if let Some((lo, hi)) = r.ports {
            ports.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports.truncate(12);
    let mut addrs: Vec<IpAddr> = Vec::new();
    for n in nets.iter().take(64) {
        addrs.extend(edges(n));
    }
    addrs.extend(cfg.nat64.iter().take(4).flat_map(|n| {
        let base = u128::from(n.network());
        [
            IpAddr::V6(Ipv6Addr::from(base | 0x0a00_0001)),
            IpAddr::V6(Ipv6Addr::from(base | 0x0808_0808)),
        ]
    }));
    addrs.push(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)));
    for a in addrs {
        for proto in [6u8, 17, 1, 132] {
            for port in &ports {
                let port = if matches!(proto, 6 | 17 | 132) {
                    *port
                } else {
                    0
                };
                agree(&p, a, proto, port);
            }
        }
    }
    for (a, proto, port) in extra {
        agree(&p, *a, *proto, *port);
    }
    p
}

/// The network address, the last address and one in the middle of `n`, and the mapped
/// IPv6 form of an IPv4 one.
fn edges(n: &IpNetwork) -> Vec<IpAddr> {
    match n {
        IpNetwork::V4(v) => {
            let lo = u32::from(v.network());
            let hi = u32::from(v.broadcast());
            let mid = lo + (hi - lo) / 2;
            vec![
                IpAddr::V4(lo.into()),
                IpAddr::V4(hi.into()),
                IpAddr::V4(mid.into()),
                IpAddr::V6(Ipv4Addr::from(mid).to_ipv6_mapped()),
            ]
        }
        IpNetwork::V6(v) => {
            let lo = u128::from(v.network());
            let size = if v.prefix() == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - u32::from(v.prefix()))) - 1
            };
            vec![
                IpAddr::V6(lo.into()),
                IpAddr::V6((lo | size).into()),
                IpAddr::V6((lo + size / 2).into()),
            ]
        }
    }
}

/// Asserts that the tables and the model agree on (`ip`, `proto`, `port`).
pub fn agree(p: &Policy, ip: IpAddr, proto: u8, port: u16) {
    let model = p.decide(ip, proto, port);
    let canonical = ip.to_canonical();
    if canonical.is_loopback() || canonical.is_unspecified() {
        return; // decided before any lookup, in the kernel as in the model
    }
    let (verdict, rule) = kernel(p, ip, proto, port);
    assert_eq!(
        (verdict, rule),
        (model.verdict, model.rule),
        "tables and model disagree on {ip} proto {proto} port {port}"
    );
}

/// The compiled tables evaluated as the kernel does: (verdict, deciding rule id).
pub fn kernel(p: &Policy, ip: IpAddr, proto: u8, port: u16) -> (Verdict, u32) {
    let id = match p.judged_addr(ip) {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            (0..=32u8)
                .rev()
                .find_map(|len| {
                    let m = if len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(len))
                    };
                    p.lpm_v4
                        .binary_search_by(|(n, _)| {
                            (u32::from(n.network()), n.prefix()).cmp(&(a & m, len))
                        })
                        .ok()
                        .map(|i| p.lpm_v4[i].1)
                })
                .unwrap_or(REGION_UNKNOWN)
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            (0..=128u8)
                .rev()
                .find_map(|len| {
                    let m = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(len))
                    };
                    p.lpm_v6
                        .binary_search_by(|(n, _)| {
                            (u128::from(n.network()), n.prefix()).cmp(&(a & m, len))
                        })
                        .ok()
                        .map(|i| p.lpm_v6[i].1)
                })
                .unwrap_or(REGION_UNKNOWN)
        }
    };
    let e = p.entries[id as usize];
    let r = e.rules[..usize::from(e.n_rules)]
        .iter()
        .find(|r| r.matches(proto, port));
    let (action, audit, rule) = r
        .map_or((e.default_action, e.default_audit, e.default_rule), |r| {
            (r.action, r.audit, r.rule)
        });
    let verdict = match (action, audit) {
        (egressd_common::action::ALLOW, _) => Verdict::Allow,
        (_, 0) => Verdict::Deny,
        _ => Verdict::Audit,
    };
    (verdict, rule)
}

/// A policy built from structure rather than bytes, so most inputs are policies the parser
/// accepts (regions, rules with prefixes, regions, protocols, ports and modes), rendered as
/// TOML by [`GenPolicy::to_toml`].
#[derive(Debug, arbitrary::Arbitrary)]
pub struct GenPolicy {
    /// `mode = "audit"`.
    pub audit: bool,
    /// `default = "allow"`.
    pub default_allow: bool,
    /// Extra NAT64 prefixes (their top 96 bits).
    pub nat64: Vec<u128>,
    /// Regions `r0`, `r1`, ...
    pub regions: Vec<GenRegion>,
    /// Bit i: `ri` is on the allowlist.
    pub allow: u16,
    /// `[[rules]]`.
    pub rules: Vec<GenRule>,
    /// Sloppy rendering: keep host bits, use names from outside the defined set, repeat
    /// allowlist entries (exercises validation rather than compilation).
    pub sloppy: bool,
}

/// A `[regions.rN]` table.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct GenRegion {
    /// Its prefixes.
    pub prefixes: Vec<GenPrefix>,
    /// `mode`: none, enforce or audit.
    pub mode: Option<bool>,
}

/// A prefix: few distinct high bits so that prefixes overlap and nest.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct GenPrefix {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Address bits (mostly the top ones matter).
    pub addr: u32,
    /// Prefix length (taken modulo the family's maximum + 1).
    pub len: u8,
}

/// A `[[rules]]` entry.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct GenRule {
    /// `action = "allow"` rather than deny.
    pub allow: bool,
    /// `to` prefixes.
    pub to: Vec<GenPrefix>,
    /// `regions` by index.
    pub regions: Vec<u8>,
    /// `protocol`: index into tcp, udp, icmp, sctp, or a number.
    pub protocol: Option<u8>,
    /// `ports` as a range.
    pub ports: Option<(u16, u16)>,
    /// `mode`.
    pub mode: Option<bool>,
}

impl GenPrefix {
    fn render(&self, exact: bool) -> String {
        if self.v6 {
            let len = self.len % 129;
            // 2001:db8::/32 and its neighbours, varied in bits 32-63.
            let a = (0x2001_0db8u128 << 96) | (u128::from(self.addr) << 64);
            let a = if exact {
                a & if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                }
            } else {
                a
            };
            format!("{}/{len}", Ipv6Addr::from(a))
        } else {
            let len = self.len % 33;
            let a = self.addr;
            let a = if exact {
                a & if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                }
            } else {
                a
            };
            format!("{}/{len}", Ipv4Addr::from(a))
        }
    }
}

fn mode(m: Option<bool>) -> &'static str {
    match m {
        None => "",
        Some(true) => "mode = \"audit\"\n",
        Some(false) => "mode = \"enforce\"\n",
    }
}

impl GenPolicy {
    /// The policy as TOML (a main file).
    pub fn to_toml(&self) -> String {
        let exact = !self.sloppy;
        let nregions = self.regions.len().min(12);
        let name = |i: usize| {
            if self.sloppy && i % 7 == 6 {
                format!("x{i}")
            } else {
                format!("r{}", i % nregions.max(1))
            }
        };
        let mut s = String::new();
        let allow: Vec<String> = (0..nregions)
            .filter(|i| self.allow & (1 << i) != 0)
            .map(|i| format!("\"{}\"", name(i)))
            .collect();
        s.push_str(&format!("allowlist = [{}]\n", allow.join(", ")));
        if self.audit {
            s.push_str("mode = \"audit\"\n");
        }
        if self.default_allow {
            s.push_str("default = \"allow\"\n");
        }
        if !self.nat64.is_empty() {
            let list: Vec<String> = self
                .nat64
                .iter()
                .take(3)
                .map(|n| format!("\"{}/96\"", Ipv6Addr::from(n << 32)))
                .collect();
            s.push_str(&format!("nat64_prefixes = [{}]\n", list.join(", ")));
        }
        for (i, r) in self.regions.iter().take(nregions).enumerate() {
            let list: Vec<String> = r
                .prefixes
                .iter()
                .take(16)
                .map(|p| format!("\"{}\"", p.render(exact)))
                .collect();
            s.push_str(&format!(
                "[regions.r{i}]\nprefixes = [{}]\n{}",
                list.join(", "),
                mode(r.mode)
            ));
        }
        for r in self.rules.iter().take(24) {
            s.push_str("[[rules]]\n");
            s.push_str(if r.allow {
                "action = \"allow\"\n"
            } else {
                "action = \"deny\"\n"
            });
            if !r.to.is_empty() {
                let list: Vec<String> =
                    r.to.iter()
                        .take(4)
                        .map(|p| format!("\"{}\"", p.render(exact)))
                        .collect();
                s.push_str(&format!("to = [{}]\n", list.join(", ")));
            }
            if !r.regions.is_empty() {
                let list: Vec<String> = r
                    .regions
                    .iter()
                    .take(3)
                    .map(|i| format!("\"{}\"", name(usize::from(*i))))
                    .collect();
                s.push_str(&format!("regions = [{}]\n", list.join(", ")));
            }
            let proto = r.protocol.map(|p| match p % 6 {
                0 => "\"tcp\"".to_string(),
                1 => "\"udp\"".to_string(),
                2 => "\"icmp\"".to_string(),
                3 => "\"sctp\"".to_string(),
                _ => p.to_string(),
            });
            if let Some(p) = &proto {
                s.push_str(&format!("protocol = {p}\n"));
            }
            if let Some((lo, hi)) = r.ports
                && (self.sloppy || proto.as_deref().is_some_and(|p| p != "\"icmp\""))
            {
                let (lo, hi) = if exact {
                    (lo.min(hi).max(1), hi.max(lo).max(1))
                } else {
                    (lo, hi)
                };
                s.push_str(&format!("ports = \"{lo}-{hi}\"\n"));
            }
            s.push_str(mode(r.mode));
        }
        s
    }
}
