//! ArcSight Common Event Format, version 0 (`CEF:0`), after the "Implementing ArcSight CEF"
//! standard (revision 25):
//!
//! `CEF:0|egressd|egressd|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`
//!
//! Escaping (see [`header`] and [`value`]): in header fields a pipe becomes `\|` and a
//! backslash `\\` (control characters, not allowed there, become spaces); in extension
//! values an equals sign becomes `\=`, a backslash `\\`, a line feed `\n`, a carriage return
//! `\r`, and every other control character (C0 including ESC, DEL, C1 including U+0085, and
//! U+2028/U+2029) `\uXXXX` (pipes stay as they are). Keys are fixed ASCII names.
//!
//! Connection events:
//!
//! | header | deny | audit |
//! | --- | --- | --- |
//! | Signature ID | `connection-deny` | `connection-audit` |
//! | Name | `Egress connection denied` | `Egress connection would be denied (audit)` |
//! | Severity | 5 | 3 |
//!
//! | key | value |
//! | --- | --- |
//! | `rt` | event time, ms since the epoch |
//! | `externalId` | event id; `egressdSeq` its sequence number |
//! | `cat` | `egress/connection` |
//! | `act` | `deny` or `would-deny` |
//! | `deviceDirection` | `1` (outbound) |
//! | `proto` | `TCP`, `UDP`, ... |
//! | `dst` / `c6a3` + `c6a3Label=Destination IPv6 Address` | destination (IPv4 / IPv6) |
//! | `dpt` | destination port |
//! | `dvchost`, `shost` | host name |
//! | `spid`, `sproc`, `suid`, `suser` | process id, task name, uid, user name |
//! | `msg` | [`super::message`] |
//! | `cs1`..`cs6` (labelled) | `region`, `policyDigest`, `mode`, `cgroupPath`, `containerId`, `commandLine` |
//! | `cn1`..`cn3` (labelled) | `suppressed`, `policyGeneration`, `ruleId` |
//! | `egressdHook`, `egressdExe`, `egressdPpid`, `egressdUnit`, `egressdExited`, `egressdProcessDetails`, `egressdLabels` | vendor keys: hook, executable, parent pid, systemd unit, process gone, `process.details`, `k:v,k:v` host labels |
//!
//! `connection_summary` records (attempts the kernel aggregated): Signature ID
//! `connection-summary-deny` (severity 5) or `connection-summary-audit` (3); keys `rt` and
//! `end` (the last aggregated attempt), `start` (the first), `cnt` (the attempts, CEF's
//! baseEventCount), `externalId`, `egressdSeq`, `cat` `egress/connection_summary`, `act`,
//! `deviceDirection`, `dst`/`c6a3` (the first sample), `dvchost`, `shost`, `msg`,
//! `cs1`=`region`, `cs2`=`policyDigest`, `cs3`=`mode`, `cs4`=`sampleDestinations`
//! (`udp/198.18.2.1:40001,...`), `cn1`=`distinctDestinations`, `cn2`=`cgroupId`,
//! `cn3`=`ruleId`, `egressdHook`.
//!
//! Lifecycle records: Signature IDs `agent-start`, `agent-stop`, `policy-loaded`,
//! `heartbeat`, `reload-failed`, `policy-fallback`, `tamper-repaired`; severity 3 (start,
//! stop, policy), 1 (heartbeat), 7 when losses were counted or a reload failed, 8 for a
//! policy fallback (the policy on disk is invalid; the last good one is in force) and a
//! tamper repair; keys `rt`, `externalId`, `egressdSeq`, `dvchost`, `msg`,
//! `cs1`=`policyDigest`, `cs2`=`agentEphemeralId`, `cs3`=`lastGoodSavedAt` (fallback),
//! `cs6`=`partialPaths` (`agent_start`, when a path is covered in part),
//! `cn1`=`connectionEvents` (`intervalSecs`, the heartbeat period, in an `agent_start`),
//! `cn2`=`lostEvents`, `cn3`=`generationInForce` (`intervalSecs` in a heartbeat,
//! `adoptedGeneration` in an `agent_start` that adopted pinned enforcement). Sinks append the hash chain link as `egressdChain`
//! ([`crate::events::audit::chain`]).
use std::fmt::Write as _;

use crate::events::{
    ConnectionEvent, Header, Lifecycle, LifecycleBody, Record, summary::SummaryEvent,
};

/// Escapes a header field: `\` -> `\\`, `|` -> `\|`, control characters (C0, DEL, C1,
/// U+2028, U+2029; line breaks included) -> space.
pub fn header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if super::bound::is_control(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an extension value: `\` -> `\\`, `=` -> `\=`, LF -> `\n`, CR -> `\r`, and
/// every other control character (C0 such as ESC, DEL, C1 such as U+0085, U+2028, U+2029)
/// -> `\uXXXX` (four uppercase hex digits), so no raw terminal escape sequence or line
/// separator reaches a log viewer.
pub fn value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if super::bound::is_control(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Builds `key=value` pairs separated by single spaces.
struct Ext(String);

impl Ext {
    fn kv(&mut self, key: &str, v: impl std::fmt::Display) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={}", value(&v.to_string()));
        self
    }

    fn opt(&mut self, key: &str, v: Option<impl std::fmt::Display>) -> &mut Self {
        if let Some(v) = v {
            self.kv(key, v);
        }
        self
    }

    fn labelled(&mut self, key: &str, label: &str, v: Option<impl std::fmt::Display>) -> &mut Self {
        if let Some(v) = v {
            self.kv(&format!("{key}Label"), label);
            self.kv(key, v);
        }
        self
    }
}

fn line(h: &Header, signature: &str, name: &str, severity: u8, ext: &Ext) -> String {
    format!(
        "CEF:0|egressd|egressd|{}|{}|{}|{severity}|{}",
        header(&h.agent.version),
        header(signature),
        header(name),
        ext.0
    )
}

/// Renders one record as a CEF line (no newline).
pub fn render(record: &Record) -> String {
    match record {
        Record::Connection(c) => connection(c),
        Record::Lifecycle(l) => lifecycle(l),
        Record::Summary(s) => summary(s),
    }
}

/// A `connection_summary` (see the module docs).
fn summary(s: &SummaryEvent) -> String {
    let h = &s.header;
    let deny = s.verdict != "audit";
    let mut e = Ext(String::new());
    e.kv("rt", super::unix_ms(h.unix_ns))
        .kv("start", super::unix_ms(s.start_ns))
        .kv("end", super::unix_ms(h.unix_ns))
        .kv("cnt", s.count)
        .kv("externalId", h.id)
        .kv("egressdSeq", h.sequence)
        .kv("cat", "egress/connection_summary")
        .kv("act", if deny { "deny" } else { "would-deny" })
        .kv("deviceDirection", 1);
    match s.destination.samples.first().and_then(|x| x.ip) {
        Some(std::net::IpAddr::V4(ip)) => {
            e.kv("dst", ip);
        }
        Some(std::net::IpAddr::V6(ip)) => {
            e.labelled("c6a3", "Destination IPv6 Address", Some(ip));
        }
        None => {}
    }
    let samples: Vec<String> = s
        .destination
        .samples
        .iter()
        .map(|x| match x.ip {
            Some(std::net::IpAddr::V6(ip)) => format!("{}/[{ip}]:{}", x.transport, x.port),
            Some(ip) => format!("{}/{ip}:{}", x.transport, x.port),
            None => x.transport.clone(),
        })
        .collect();
    e.kv("dvchost", &h.host.name)
        .kv("shost", &h.host.name)
        .kv("msg", super::summary_message(s))
        .labelled("cs1", "region", Some(&s.destination.region))
        .labelled("cs2", "policyDigest", Some(&s.policy.digest))
        .labelled("cs3", "mode", Some(s.policy.mode))
        .labelled("cs4", "sampleDestinations", Some(samples.join(",")))
        .labelled("cn1", "distinctDestinations", Some(s.destination.distinct))
        .labelled("cn2", "cgroupId", Some(s.cgroup.id))
        .labelled("cn3", "ruleId", Some(s.rule.id))
        .kv("egressdHook", s.hook);
    if deny {
        line(
            h,
            "connection-summary-deny",
            "Egress connections denied (summary)",
            5,
            &e,
        )
    } else {
        line(
            h,
            "connection-summary-audit",
            "Egress connections would be denied (audit summary)",
            3,
            &e,
        )
    }
}

fn connection(ev: &ConnectionEvent) -> String {
    let h = &ev.header;
    let deny = ev.verdict != "audit";
    let mut e = Ext(String::new());
    e.kv("rt", super::unix_ms(h.unix_ns))
        .kv("externalId", h.id)
        .kv("egressdSeq", h.sequence)
        .kv("cat", "egress/connection")
        .kv("act", if deny { "deny" } else { "would-deny" })
        .kv("deviceDirection", 1)
        .kv("proto", ev.network.transport.to_uppercase());
    match ev.destination.ip {
        Some(std::net::IpAddr::V4(ip)) => {
            e.kv("dst", ip);
        }
        Some(std::net::IpAddr::V6(ip)) => {
            e.labelled("c6a3", "Destination IPv6 Address", Some(ip));
        }
        None => {}
    }
    let labels: Vec<String> = h
        .host
        .labels
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    if ev.destination.ip.is_some() {
        e.kv("dpt", ev.destination.port);
    }
    e.kv("dvchost", &h.host.name)
        .kv("shost", &h.host.name)
        .kv("spid", ev.process.pid)
        .kv("sproc", ev.process.name)
        .kv("suid", ev.user.id)
        .opt("suser", ev.user.name.as_ref())
        .kv("msg", super::message(ev))
        .labelled("cs1", "region", Some(&ev.destination.region))
        .labelled("cs2", "policyDigest", Some(&ev.policy.digest))
        .labelled("cs3", "mode", Some(ev.policy.mode))
        .labelled("cs4", "cgroupPath", ev.cgroup.path.as_ref())
        .labelled("cs5", "containerId", ev.container.as_ref().map(|c| &c.id))
        .labelled("cs6", "commandLine", ev.process.command_line.as_ref())
        .labelled("cn1", "suppressed", Some(ev.suppressed))
        .labelled("cn2", "policyGeneration", Some(ev.policy.generation))
        .labelled("cn3", "ruleId", Some(ev.rule.id))
        .kv("egressdHook", ev.hook)
        .opt("egressdExe", ev.process.executable.as_ref())
        .opt("egressdPpid", ev.process.parent.as_ref().map(|p| p.pid))
        .opt("egressdUnit", ev.cgroup.systemd_unit.as_ref())
        .kv("egressdExited", ev.process.exited)
        .kv("egressdProcessDetails", ev.process.details)
        .kv("egressdAttribution", ev.process.attribution);
    if !labels.is_empty() {
        e.kv("egressdLabels", labels.join(","));
    }
    if deny {
        line(h, "connection-deny", "Egress connection denied", 5, &e)
    } else {
        line(
            h,
            "connection-audit",
            "Egress connection would be denied (audit)",
            3,
            &e,
        )
    }
}

fn lifecycle(l: &Lifecycle) -> String {
    let h = &l.header;
    let mut e = Ext(String::new());
    e.kv("rt", super::unix_ms(h.unix_ns))
        .kv("externalId", h.id)
        .kv("egressdSeq", h.sequence)
        .kv("cat", "egress/lifecycle")
        .kv("dvchost", &h.host.name);
    let (signature, name, severity) = match &l.body {
        LifecycleBody::Start {
            policy,
            coverage,
            adopted,
            interval_secs,
            ..
        } => {
            e.labelled("cn1", "intervalSecs", Some(interval_secs));
            if let Some(a) = adopted {
                e.labelled("cn3", "adoptedGeneration", Some(a.previous_generation));
            }
            e.labelled("cs1", "policyDigest", Some(&policy.digest))
                .labelled("cs3", "kernel", Some(&coverage.kernel))
                .labelled("cs4", "enforcedPaths", Some(coverage.enforced.join(",")))
                .labelled(
                    "cs5",
                    "notCoveredPaths",
                    Some(coverage.not_covered.join(",")),
                )
                // Only when some path is partial (the other formats leave it out then too).
                .labelled(
                    "cs6",
                    "partialPaths",
                    (!coverage.partial.is_empty()).then(|| coverage.partial.join(",")),
                );
            ("agent-start", "egressd started", 3)
        }
        LifecycleBody::PolicyLoaded { policy } => {
            e.labelled("cs1", "policyDigest", Some(&policy.digest));
            ("policy-loaded", "Policy loaded", 3)
        }
        LifecycleBody::Heartbeat {
            counters,
            interval_secs,
        } => {
            let lost = counters.lost.total();
            e.labelled("cn1", "connectionEvents", Some(counters.connection_events))
                .labelled("cn2", "lostEvents", Some(lost))
                .labelled("cn3", "intervalSecs", Some(interval_secs));
            (
                "heartbeat",
                "egressd heartbeat",
                if lost > 0 { 7 } else { 1 },
            )
        }
        LifecycleBody::ReloadFailed {
            generation_in_force,
            ..
        } => {
            e.labelled("cn3", "generationInForce", Some(generation_in_force));
            ("reload-failed", "Policy reload failed", 7)
        }
        LifecycleBody::PolicyFallback {
            policy, last_good, ..
        } => {
            e.labelled("cs1", "policyDigest", Some(&policy.digest))
                .labelled("cn3", "generationInForce", Some(policy.generation))
                .labelled("cs3", "lastGoodSavedAt", Some(&last_good.saved_at));
            (
                "policy-fallback",
                "Invalid policy on disk: last good policy in force",
                8,
            )
        }
        LifecycleBody::TamperRepaired {
            generation_in_force,
            ..
        } => {
            e.labelled("cn3", "generationInForce", Some(generation_in_force));
            (
                "tamper-repaired",
                "Pinned enforcement tampered with and restored",
                8,
            )
        }
        LifecycleBody::Stop { counters, .. } => {
            let lost = counters.lost.total();
            e.labelled("cn1", "connectionEvents", Some(counters.connection_events))
                .labelled("cn2", "lostEvents", Some(lost));
            (
                "agent-stop",
                "egressd stopped",
                if lost > 0 { 7 } else { 3 },
            )
        }
    };
    let msg = l.body.message();
    e.labelled("cs2", "agentEphemeralId", Some(&h.agent.ephemeral_id))
        .kv("msg", msg);
    line(h, signature, name, severity, &e)
}

/// A parsed CEF line: the 7 header fields and the extension's (key, value) pairs, unescaped.
pub type Parsed = (Vec<String>, Vec<(String, String)>);

/// Splits a CEF line into its 7 unescaped header fields and unescaped extension pairs
/// (a reference parser for tests: a value runs until the next ` key=`).
pub fn parse(line: &str) -> Option<Parsed> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while fields.len() < 7 {
        match chars.next()? {
            '\\' => cur.push(chars.next()?),
            '|' => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    let ext: String = chars.collect();
    // Split at unescaped '=': the key is the last word before it.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut key = String::new();
    let mut val = String::new();
    let mut it = ext.chars().peekable();
    let mut in_key = true;
    while let Some(c) = it.next() {
        if in_key {
            if c == '=' {
                in_key = false;
            } else {
                key.push(c);
            }
            continue;
        }
        match c {
            '\\' => match it.next()? {
                'n' => val.push('\n'),
                'r' => val.push('\r'),
                o => val.push(o),
            },
            '=' => {
                // `val` ends with " newkey": move the last word to the next key.
                let split = val.rfind(' ')?;
                let next_key = val[split + 1..].to_owned();
                val.truncate(split);
                pairs.push((std::mem::take(&mut key), std::mem::take(&mut val)));
                key = next_key;
            }
            c => val.push(c),
        }
    }
    if !key.is_empty() {
        pairs.push((key, val));
    }
    Some((fields, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    #[test]
    fn escaping_rules() {
        assert_eq!(header(r"a|b\c"), r"a\|b\\c");
        assert_eq!(header("x\ny=z"), "x y=z");
        assert_eq!(value(r"a=b\c|d"), r"a\=b\\c|d");
        assert_eq!(value("l1\nl2\r"), r"l1\nl2\r");
    }

    fn get<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn deny_round_trips_through_a_parser() {
        let ev = sample::deny();
        let line = render(&Record::Connection(Box::new(ev.clone())));
        let (h, pairs) = parse(&line).expect("parses");
        assert_eq!(
            h,
            [
                "CEF:0",
                "egressd",
                "egressd",
                "0.1.0",
                "connection-deny",
                "Egress connection denied",
                "5"
            ]
        );
        assert_eq!(get(&pairs, "act"), Some("deny"));
        assert_eq!(get(&pairs, "dst"), Some("198.18.2.2"));
        assert_eq!(get(&pairs, "dpt"), Some("8080"));
        assert_eq!(get(&pairs, "rt"), Some("1795945374018"));
        assert_eq!(get(&pairs, "cs6"), ev.process.command_line.as_deref());
        assert_eq!(get(&pairs, "cs6Label"), Some("commandLine"));
        assert_eq!(get(&pairs, "cn1"), Some("3"));
        assert_eq!(
            get(&pairs, "egressdLabels"),
            Some("environment:prod,role:storage,site:fra1")
        );
        assert!(!line.contains('\n'));
    }

    /// Partial coverage reaches the CEF `agent_start` (it was left out; found by QA).
    #[test]
    fn agent_start_names_partial_paths() {
        let mut start = sample::lifecycle()
            .into_iter()
            .find(|l| l.header.kind == "agent_start")
            .expect("sample agent_start");
        let LifecycleBody::Start { coverage, .. } = &mut start.body else {
            panic!("agent_start body");
        };
        assert_eq!(coverage.partial, Vec::<&str>::new());
        let line = render(&Record::Lifecycle(Box::new(start.clone())));
        assert!(!line.contains("partialPaths"), "{line}");
        if let LifecycleBody::Start { coverage, .. } = &mut start.body {
            coverage.partial = vec!["packet_socket", "raw_next_hop"];
        }
        let line = render(&Record::Lifecycle(Box::new(start)));
        let (_, pairs) = parse(&line).expect("parses");
        assert_eq!(get(&pairs, "cs6Label"), Some("partialPaths"));
        assert_eq!(get(&pairs, "cs6"), Some("packet_socket,raw_next_hop"));
    }

    #[test]
    fn audit_ipv6_and_pipes_in_names() {
        let line = render(&Record::Connection(Box::new(sample::audit_exited())));
        let (h, pairs) = parse(&line).expect("parses");
        assert_eq!(h[4], "connection-audit");
        assert_eq!(h[6], "3");
        assert_eq!(get(&pairs, "act"), Some("would-deny"));
        assert_eq!(get(&pairs, "c6a3"), Some("2001:db8:2::2"));
        assert_eq!(get(&pairs, "c6a3Label"), Some("Destination IPv6 Address"));
        assert_eq!(get(&pairs, "sproc"), Some("dig|x=y"));
        assert_eq!(get(&pairs, "dst"), None);
        assert_eq!(get(&pairs, "egressdExited"), Some("true"));
    }

    #[test]
    fn lifecycle_signatures_and_loss_severity() {
        let sigs: Vec<(String, String)> = sample::lifecycle()
            .into_iter()
            .map(|l| {
                let (h, _) = parse(&render(&Record::Lifecycle(Box::new(l)))).expect("parses");
                (h[4].clone(), h[6].clone())
            })
            .collect();
        assert_eq!(
            sigs,
            [
                ("agent-start".to_string(), "3".to_string()),
                ("policy-loaded".to_string(), "3".to_string()),
                ("heartbeat".to_string(), "7".to_string()),
                ("agent-stop".to_string(), "7".to_string()),
                ("reload-failed".to_string(), "7".to_string()),
                ("policy-fallback".to_string(), "8".to_string()),
                ("tamper-repaired".to_string(), "8".to_string()),
            ]
        );
    }

    /// Issue 22 item 6: every control character is escaped in extension values (raw ESC
    /// sequences, U+2028 and U+0085 passed through before) and replaced in the header.
    #[test]
    fn every_control_character_is_escaped() {
        let nasty = "a\u{1b}[31mb\u{7}c\u{7f}d\u{85}e\u{9b}f\u{2028}g\u{2029}h\u{0}i\tj";
        let v = value(nasty);
        assert!(
            !v.chars().any(crate::events::formats::bound::is_control),
            "{v:?}"
        );
        assert_eq!(
            v,
            "a\\u001B[31mb\\u0007c\\u007Fd\\u0085e\\u009Bf\\u2028g\\u2029h\\u0000i\\u0009j"
        );
        assert_eq!(value("x\ny\rz=\\"), "x\\ny\\rz\\=\\\\");
        assert_eq!(header("a\u{1b}b\u{2028}|"), "a b \\|");
        let mut ev = sample::deny();
        ev.process.command_line = Some(nasty.into());
        let line = render(&Record::Connection(Box::new(ev)));
        assert!(
            !line.chars().any(crate::events::formats::bound::is_control),
            "{line:?}"
        );
    }
}
