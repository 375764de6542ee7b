//! Ring buffer records -> typed, enriched events.
//!
//! The kernel writes [`egressd_common::Event`] (96 bytes, see that type for byte order);
//! [`decode`] copies one out of a ring-buffer item and [`Enricher::enrich`] turns it into a
//! [`ConnectionEvent`] with wall-clock time, host name and region name. Field names follow the
//! Elastic Common Schema (ECS 8.x) where it has one (`@timestamp`, `host.name`,
//! `process.pid`, `destination.ip`, ...).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use egressd_common::{Event, Hook, Verdict, family};
use serde::Serialize;

use crate::policy::Policy;

/// Copies an [`Event`] out of a ring-buffer item; `None` if the item is too short (a
/// layout mismatch between kernel object and daemon, which would be a build error).
pub fn decode(item: &[u8]) -> Option<Event> {
    if item.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data; the item may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) })
}

/// One denied or audited connection attempt, as sinks receive it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionEvent {
    /// RFC 3339 UTC time with nanoseconds, e.g. `2026-11-29T09:30:00.123456789Z`.
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    /// Always `"connection"` (lifecycle records use other types).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `"deny"` (the caller got EPERM) or `"audit"` (let through, would have been denied).
    pub verdict: &'static str,
    /// Kernel hook that judged it, e.g. `"cgroup/connect4"`.
    pub hook: &'static str,
    /// Observing host.
    pub host: Host,
    /// Calling process.
    pub process: Process,
    /// Calling user.
    pub user: Id,
    /// Calling group.
    pub group: Id,
    /// cgroup v2 of the caller.
    pub cgroup: Id,
    /// Address family and transport.
    pub network: Network,
    /// Where the connection was going.
    pub destination: Destination,
    /// Policy that judged it.
    pub policy: PolicyRef,
}

/// `host.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Host {
    /// Kernel host name (`uname -n`).
    pub name: String,
}

/// `process.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Process {
    /// Thread-group id.
    pub pid: u32,
    /// Task name (`comm`, at most 15 bytes).
    pub name: String,
    /// Calling thread.
    pub thread: Id,
}

/// A numeric id (`user.id`, `group.id`, `process.thread.id`, `cgroup.id`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Id {
    /// The id.
    pub id: u64,
}

/// `network.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Network {
    /// `"ipv4"` or `"ipv6"` (of the destination as judged).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `"tcp"`, `"udp"`, or the protocol number as text.
    pub transport: String,
    /// IANA protocol number.
    pub iana_number: u8,
}

/// `destination.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Destination {
    /// Destination address; an IPv4-mapped IPv6 destination is shown as its IPv4 address.
    pub ip: IpAddr,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    /// Policy region of `ip`, or `"unknown"`.
    pub region: String,
    /// True when an AF_INET6 socket named it as `::ffff:a.b.c.d`.
    pub mapped: bool,
}

/// The policy in force.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyRef {
    /// `"enforce"` or `"audit"`, derived from the verdict.
    pub mode: &'static str,
    /// Generation counter of the loaded policy.
    pub generation: u64,
    /// Digest of the loaded policy.
    pub digest: String,
}

/// Adds host and policy context to kernel events.
pub struct Enricher {
    host: String,
    policy: Arc<Policy>,
}

impl Enricher {
    /// `host` is the host name to report; `policy` resolves region ids to names.
    pub fn new(host: String, policy: Arc<Policy>) -> Self {
        Self { host, policy }
    }

    /// Builds the sink-facing event from a kernel record.
    pub fn enrich(&self, ev: &Event) -> ConnectionEvent {
        let ip = if ev.family == family::INET {
            IpAddr::V4(Ipv4Addr::new(
                ev.dst_addr[0],
                ev.dst_addr[1],
                ev.dst_addr[2],
                ev.dst_addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(ev.dst_addr))
        };
        let verdict = Verdict::from_u8(ev.verdict);
        ConnectionEvent {
            timestamp: rfc3339(crate::clock::boot_to_unix_ns(ev.boot_ns)),
            kind: "connection",
            verdict: match verdict {
                Some(Verdict::Deny) => "deny",
                Some(Verdict::Audit) => "audit",
                Some(Verdict::Allow) => "allow",
                None => "invalid",
            },
            hook: hook_name(ev.hook),
            host: Host {
                name: self.host.clone(),
            },
            process: Process {
                pid: ev.pid,
                name: comm(&ev.comm),
                thread: Id {
                    id: u64::from(ev.tid),
                },
            },
            user: Id {
                id: u64::from(ev.uid),
            },
            group: Id {
                id: u64::from(ev.gid),
            },
            cgroup: Id { id: ev.cgroup_id },
            network: Network {
                kind: if ip.is_ipv4() { "ipv4" } else { "ipv6" },
                transport: transport(ev.protocol),
                iana_number: ev.protocol,
            },
            destination: Destination {
                ip,
                port: ev.dst_port,
                region: self.policy.region_name(ev.region).to_owned(),
                mapped: ev.mapped != 0,
            },
            policy: PolicyRef {
                mode: if verdict == Some(Verdict::Audit) {
                    "audit"
                } else {
                    "enforce"
                },
                generation: ev.generation,
                digest: self.policy.digest.clone(),
            },
        }
    }
}

/// Kernel hook name for a [`Hook`] code, `"unknown"` for codes this build does not know.
pub fn hook_name(code: u8) -> &'static str {
    match Hook::from_u8(code) {
        Some(Hook::Connect4) => "cgroup/connect4",
        Some(Hook::Connect6) => "cgroup/connect6",
        Some(Hook::Sendmsg4) => "cgroup/sendmsg4",
        Some(Hook::Sendmsg6) => "cgroup/sendmsg6",
        Some(Hook::SkbEgress) => "cgroup_skb/egress",
        Some(Hook::SkbIngress) => "cgroup_skb/ingress",
        None => "unknown",
    }
}

/// `tcp`/`udp`/`icmp`/`ipv6-icmp`, else the number.
fn transport(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// NUL-terminated task name to text (lossy for non-UTF-8 bytes).
fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Formats Unix-epoch nanoseconds as RFC 3339 UTC with 9 fractional digits.
pub fn rfc3339(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_with_nanoseconds() {
        assert_eq!(
            rfc3339(1_796_031_000_123_456_789),
            "2026-11-30T09:30:00.123456789Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"curl");
        assert_eq!(comm(&raw), "curl");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }

    #[test]
    fn decode_rejects_short_items() {
        assert!(decode(&[0u8; 10]).is_none());
        assert!(decode(&[0u8; 96]).is_some());
    }
}
