//! Elastic Common Schema documents, ECS version 8.11 (`ecs.version: "8.11.0"`).
//!
//! Connection events (categorization per the ECS "Using the categorization fields" guide:
//! a deny or allow decision is *not* an outcome, so `event.outcome` is never set):
//!
//! | ECS field | value |
//! | --- | --- |
//! | `event.kind` | `event` |
//! | `event.category` | `["network"]` |
//! | `event.type` | `["connection", "denied"]` (deny) or `["connection", "allowed"]` (audit) |
//! | `event.action` | `deny` or `would-deny` (audit: let through, would have been denied) |
//! | `event.id`, `event.sequence` | event id, sequence |
//! | `event.dataset`, `event.module`, `event.provider` | `egressd.connection`, `egressd`, kernel hook |
//! | `event.reason`, `message` | why, in words ([`super::message`]) |
//! | `event.severity` | 5 deny, 3 audit |
//! | `network.direction` | `egress` |
//! | `network.type`, `.transport`, `.iana_number` | `ipv4`/`ipv6`, `tcp`/`udp`, number as text |
//! | `source.address`, `source.user.*` | the host name and the calling user (the source address is not known at `connect()` time) |
//! | `destination.ip`, `.address`, `.port` | destination as judged |
//! | `process.pid`, `.name`, `.executable`, `.command_line`, `.parent.pid`, `.thread.id`, `.user.*` | calling process |
//! | `user.id`, `user.name`, `group.id`, `group.name` | real uid/gid (ids as text) |
//! | `host.name`, `host.hostname`, `labels.*` | host name, configured labels |
//! | `container.id`, `container.runtime` | when the cgroup path shows one |
//! | `rule.id`, `rule.name`, `rule.ruleset`, `rule.version` | rule id, `allowlist`, policy digest, policy generation |
//! | `observer.hostname`, `.type`, `.vendor`, `.product`, `.version` | host name, `firewall`, `egressd` |
//! | `agent.type`, `.name`, `.version`, `.ephemeral_id` | `egressd`, host name, version, run id |
//! | `egressd.*` | no ECS equivalent: `verdict`, `hook`, `region`, `mapped`, `mode`, `suppressed`, `policy.{digest,generation}`, `cgroup.{id,path,systemd_unit}`, `process_exited`, `process_details`, `process_attribution` |
//!
//! `connection_summary` records (attempts the kernel aggregated) keep the categorization of
//! a connection event (`event.kind: event`, `category: [network]`, `type: [connection,
//! denied]` or `allowed`, `event.action` `deny`/`would-deny`), with `event.dataset`
//! `egressd.connection_summary`, `event.start`/`.end`/`.duration` (ns) for the interval,
//! `related.ip` for the sample destinations, and `egressd.{count, distinct_destinations,
//! samples, verdict, hook, region, mode, policy.digest, cgroup.id}` (ECS has no count).
//!
//! Lifecycle records: `agent_start` is `event.kind: event`, `category: [process]`,
//! `type: [start]`; `agent_stop` the same with `type: [end]`; `policy_loaded` is
//! `category: [configuration]`, `type: [change]`; `heartbeat` is `event.kind: metric` without
//! category (none fits); `reload_failed` is `category: [configuration]`, `type: [change]`,
//! `event.outcome: failure` (the reload itself failed) with the error in `event.reason`;
//! `policy_fallback` the same, with the policy in force in `egressd.policy` and where it was
//! kept in `egressd.last_good`.
//! `event.action` is the record type with `-` (`agent-start`, ...);
//! counters and losses go to `egressd.counters`, `egressd.lost`, `egressd.connection_events`;
//! an adoption of pinned enforcement to `egressd.adopted`; the heartbeat period to
//! `egressd.interval_secs` (`agent_start` and `heartbeat`). Sinks put the hash chain link in
//! `event.hash` ([`crate::events::audit::chain`]).
use serde_json::{Map, Value, json};

use crate::events::{
    ConnectionEvent, Header, Lifecycle, LifecycleBody, Record, summary::SummaryEvent,
};

/// The pinned ECS version.
pub const ECS_VERSION: &str = "8.11.0";

/// Renders one record as an ECS JSON document (no newline).
pub fn render(record: &Record) -> Vec<u8> {
    let v = match record {
        Record::Connection(c) => connection(c),
        Record::Lifecycle(l) => lifecycle(l),
        Record::Summary(s) => summary(s),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

fn labels(h: &Header) -> Value {
    Value::Object(
        h.host
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Fields every document has.
fn common(h: &Header) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@timestamp".into(), json!(h.timestamp));
    m.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    m.insert(
        "host".into(),
        json!({ "name": h.host.name, "hostname": h.host.name }),
    );
    if !h.host.labels.is_empty() {
        m.insert("labels".into(), labels(h));
    }
    m.insert(
        "agent".into(),
        json!({
            "type": "egressd",
            "name": h.host.name,
            "version": h.agent.version,
            "ephemeral_id": h.agent.ephemeral_id,
        }),
    );
    m.insert(
        "observer".into(),
        json!({
            "hostname": h.host.name,
            "type": "firewall",
            "vendor": "egressd",
            "product": "egressd",
            "version": h.agent.version,
        }),
    );
    m
}

/// Drops `null` members so absent optional fields are absent, not `null`.
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, prune(v)))
                .collect(),
        ),
        other => other,
    }
}

fn named(id: u64, name: Option<&str>) -> Value {
    json!({ "id": id.to_string(), "name": name })
}

fn connection(ev: &ConnectionEvent) -> Value {
    let h = &ev.header;
    let deny = ev.verdict != "audit";
    let mut m = common(h);
    let message = super::message(ev);
    m.insert("message".into(), json!(message));
    m.insert(
        "event".into(),
        json!({
            "id": h.id,
            "sequence": h.sequence,
            "kind": "event",
            "category": ["network"],
            "type": ["connection", if deny { "denied" } else { "allowed" }],
            "action": if deny { "deny" } else { "would-deny" },
            "dataset": "egressd.connection",
            "module": "egressd",
            "provider": ev.hook,
            "severity": if deny { 5 } else { 3 },
            "reason": format!(
                "{}{}",
                super::why(ev),
                if deny { "" } else { " (audit mode: let through)" }
            ),
        }),
    );
    m.insert(
        "network".into(),
        json!({
            "direction": "egress",
            "type": ev.network.kind,
            "transport": ev.network.transport,
            "iana_number": ev.network.iana_number.map(|n| n.to_string()),
        }),
    );
    m.insert(
        "source".into(),
        json!({ "address": h.host.name, "user": named(ev.user.id, ev.user.name.as_deref()) }),
    );
    if let Some(ip) = ev.destination.ip {
        m.insert(
            "destination".into(),
            json!({
                "ip": ip,
                "address": ip.to_string(),
                "port": ev.destination.port,
            }),
        );
    }
    m.insert(
        "process".into(),
        json!({
            "pid": ev.process.pid,
            "name": ev.process.name,
            "executable": ev.process.executable,
            "command_line": ev.process.command_line,
            "parent": ev.process.parent.as_ref().map(|p| json!({ "pid": p.pid })),
            "thread": { "id": ev.process.thread.id },
            "user": named(ev.user.id, ev.user.name.as_deref()),
        }),
    );
    m.insert("user".into(), named(ev.user.id, ev.user.name.as_deref()));
    m.insert("group".into(), named(ev.group.id, ev.group.name.as_deref()));
    if let Some(c) = &ev.container {
        m.insert(
            "container".into(),
            json!({ "id": c.id, "runtime": c.runtime }),
        );
    }
    m.insert(
        "rule".into(),
        json!({
            "id": ev.rule.id.to_string(),
            "name": ev.rule.name,
            "ruleset": ev.policy.digest,
            "version": ev.policy.generation.to_string(),
        }),
    );
    m.insert(
        "egressd".into(),
        json!({
            "verdict": ev.verdict,
            "hook": ev.hook,
            "region": ev.destination.region,
            "mapped": ev.destination.mapped,
            "mode": ev.policy.mode,
            "suppressed": ev.suppressed,
            "policy": { "digest": ev.policy.digest, "generation": ev.policy.generation },
            "cgroup": {
                "id": ev.cgroup.id,
                "path": ev.cgroup.path,
                "systemd_unit": ev.cgroup.systemd_unit,
            },
            "process_exited": ev.process.exited,
            "process_details": ev.process.details,
            "process_attribution": ev.process.attribution,
        }),
    );
    prune(Value::Object(m))
}

/// A `connection_summary`: the categorization of a connection event (the summary stands for
/// that many denied attempts, so rules on denied connections see it), `event.start`,
/// `.end`, `.duration` (ns), the sample destinations in `related.ip`, and what ECS has no
/// field for (the count above all) under `egressd`.
fn summary(s: &SummaryEvent) -> Value {
    let h = &s.header;
    let deny = s.verdict != "audit";
    let mut m = common(h);
    m.insert("message".into(), json!(super::summary_message(s)));
    let duration = u64::try_from(h.unix_ns - s.start_ns).unwrap_or(0);
    m.insert(
        "event".into(),
        json!({
            "id": h.id,
            "sequence": h.sequence,
            "kind": "event",
            "category": ["network"],
            "type": ["connection", if deny { "denied" } else { "allowed" }],
            "action": if deny { "deny" } else { "would-deny" },
            "dataset": "egressd.connection_summary",
            "module": "egressd",
            "provider": s.hook,
            "severity": if deny { 5 } else { 3 },
            "start": s.start,
            "end": s.end,
            "duration": duration,
            "reason": format!(
                "destination region {} is not allowlisted{}",
                s.destination.region,
                if deny { "" } else { " (audit mode: let through)" }
            ),
        }),
    );
    m.insert("network".into(), json!({ "direction": "egress" }));
    let ips: Vec<String> = s
        .destination
        .samples
        .iter()
        .filter_map(|x| x.ip.map(|ip| ip.to_string()))
        .collect();
    if !ips.is_empty() {
        m.insert("related".into(), json!({ "ip": ips }));
    }
    m.insert(
        "rule".into(),
        json!({
            "id": s.rule.id.to_string(),
            "name": s.rule.name,
            "ruleset": s.policy.digest,
        }),
    );
    m.insert(
        "egressd".into(),
        json!({
            "verdict": s.verdict,
            "hook": s.hook,
            "region": s.destination.region,
            "mode": s.policy.mode,
            "count": s.count,
            "distinct_destinations": s.destination.distinct,
            "samples": s.destination.samples,
            "policy": { "digest": s.policy.digest },
            "cgroup": { "id": s.cgroup.id },
        }),
    );
    prune(Value::Object(m))
}

fn lifecycle(l: &Lifecycle) -> Value {
    let h = &l.header;
    let mut m = common(h);
    let action = h.kind.replace('_', "-");
    let mut event = json!({
        "id": h.id,
        "sequence": h.sequence,
        "kind": "event",
        "action": action,
        "dataset": "egressd.lifecycle",
        "module": "egressd",
    });
    let mut extra = Map::new();
    match &l.body {
        LifecycleBody::Start {
            policy,
            cgroup,
            sinks,
            coverage,
            adopted,
            interval_secs,
        } => {
            event["category"] = json!(["process"]);
            if let Some(a) = adopted {
                extra.insert("adopted".into(), json!(a));
            }
            event["type"] = json!(["start"]);
            extra.insert("policy".into(), json!(policy));
            extra.insert("cgroup".into(), json!({ "path": cgroup }));
            extra.insert("sinks".into(), json!(sinks));
            extra.insert("coverage".into(), json!(coverage));
            extra.insert("interval_secs".into(), json!(interval_secs));
        }
        LifecycleBody::PolicyLoaded { policy } => {
            event["category"] = json!(["configuration"]);
            event["type"] = json!(["change"]);
            extra.insert("policy".into(), json!(policy));
        }
        LifecycleBody::Heartbeat {
            counters,
            interval_secs,
        } => {
            event["kind"] = json!("metric");
            extra.insert("counters".into(), json!(counters.counters));
            extra.insert("lost".into(), json!(counters.lost));
            extra.insert(
                "connection_events".into(),
                json!(counters.connection_events),
            );
            extra.insert("uptime_secs".into(), json!(counters.uptime_secs));
            extra.extend(counters.extra.clone());
            extra.insert("interval_secs".into(), json!(interval_secs));
        }
        LifecycleBody::ReloadFailed {
            error,
            generation_in_force,
        } => {
            event["category"] = json!(["configuration"]);
            event["type"] = json!(["change"]);
            // Here the event itself (a reload) failed: that is what event.outcome is for.
            event["outcome"] = json!("failure");
            event["reason"] = json!(error);
            extra.insert("generation_in_force".into(), json!(generation_in_force));
        }
        LifecycleBody::PolicyFallback {
            error,
            policy,
            last_good,
        } => {
            event["category"] = json!(["configuration"]);
            event["type"] = json!(["change"]);
            // Loading the policy on disk failed; the last good one is in force.
            event["outcome"] = json!("failure");
            event["reason"] = json!(error);
            extra.insert("policy".into(), json!(policy));
            extra.insert("last_good".into(), json!(last_good));
        }
        LifecycleBody::TamperRepaired {
            repairs,
            generation_in_force,
        } => {
            event["category"] = json!(["configuration"]);
            event["type"] = json!(["change"]);
            extra.insert("generation_in_force".into(), json!(generation_in_force));
            extra.insert("repairs".into(), json!(repairs));
        }
        LifecycleBody::Stop { counters, .. } => {
            event["category"] = json!(["process"]);
            event["type"] = json!(["end"]);
            extra.insert("counters".into(), json!(counters.counters));
            extra.insert("lost".into(), json!(counters.lost));
            extra.insert(
                "connection_events".into(),
                json!(counters.connection_events),
            );
            extra.insert("uptime_secs".into(), json!(counters.uptime_secs));
            extra.extend(counters.extra.clone());
        }
    };
    let message = l.body.message();
    m.insert("message".into(), json!(message));
    m.insert("event".into(), event);
    m.insert("egressd".into(), Value::Object(extra));
    prune(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    fn doc(r: &Record) -> Value {
        serde_json::from_slice(&render(r)).expect("valid JSON")
    }

    #[test]
    fn deny_categorization() {
        let d = doc(&Record::Connection(Box::new(sample::deny())));
        assert_eq!(d["event"]["kind"], "event");
        assert_eq!(d["event"]["category"], json!(["network"]));
        assert_eq!(d["event"]["type"], json!(["connection", "denied"]));
        assert_eq!(d["event"]["action"], "deny");
        assert_eq!(d["network"]["direction"], "egress");
        assert!(d["event"].get("outcome").is_none());
        assert_eq!(d["destination"]["ip"], "198.18.2.2");
        assert_eq!(d["process"]["parent"]["pid"], 21200);
        assert_eq!(d["user"]["id"], "1000");
        assert_eq!(d["labels"]["site"], "fra1");
        assert_eq!(d["container"]["runtime"], "docker");
        assert_eq!(d["rule"]["ruleset"], "3fb60c46ec413f16");
        assert_eq!(d["observer"]["vendor"], "egressd");
    }

    #[test]
    fn audit_says_would_deny_and_omits_unknowns() {
        let d = doc(&Record::Connection(Box::new(sample::audit_exited())));
        assert_eq!(d["event"]["type"], json!(["connection", "allowed"]));
        assert_eq!(d["event"]["action"], "would-deny");
        assert!(d["event"].get("outcome").is_none());
        assert!(d["process"].get("executable").is_none());
        assert!(d["user"].get("name").is_none());
        assert_eq!(d["egressd"]["process_exited"], true);
        assert!(d.get("container").is_none());
    }

    #[test]
    fn lifecycle_kinds() {
        let kinds: Vec<(String, Value)> = sample::lifecycle()
            .into_iter()
            .map(|l| {
                let d = doc(&Record::Lifecycle(Box::new(l)));
                (
                    d["event"]["action"].as_str().unwrap_or("").to_owned(),
                    d["event"]["kind"].clone(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("agent-start".to_string(), json!("event")),
                ("policy-loaded".to_string(), json!("event")),
                ("heartbeat".to_string(), json!("metric")),
                ("agent-stop".to_string(), json!("event")),
                ("reload-failed".to_string(), json!("event")),
                ("policy-fallback".to_string(), json!("event")),
                ("tamper-repaired".to_string(), json!("event")),
            ]
        );
    }
}
