//! OCSF events, schema release 1.3.0 (`metadata.version: "1.3.0"`).
//!
//! Connection events are class **Network Activity** (`class_uid` 4001, category 4 "Network
//! Activity") with the `security_control` and `host` profiles:
//!
//! | OCSF attribute | deny | audit |
//! | --- | --- | --- |
//! | `activity_id` / `activity_name` | 5 `Refuse` | 1 `Open` (connect hooks) or 6 `Traffic` (sendmsg hooks): the attempt went through |
//! | `type_uid` / `type_name` | 400105 `Network Activity: Refuse` | 400101 / 400106 |
//! | `action_id` / `action` | 2 `Denied` | 1 `Allowed` |
//! | `disposition_id` / `disposition` | 2 `Blocked` | 1 `Allowed` |
//! | `severity_id` / `severity` | 3 `Medium` | 2 `Low` |
//! | `message` | [`super::message`]: `denied ...` | `would have denied ... (audit mode: let through)`: it would have been blocked |
//!
//! Common to both: `time` (ms since the epoch), `count` (1 + the kernel's suppressed
//! repeats), `metadata.{version, uid (event id), sequence, log_name, product{name,
//! vendor_name, version}, profiles}`, `device.{hostname, name}`, `src_endpoint.hostname`,
//! `dst_endpoint.{ip, port}`, `connection_info.{protocol_name, protocol_num,
//! protocol_ver_id (4 or 6), direction_id 2, direction Outbound}`, `actor.process.{pid, tid,
//! name, cmd_line, file.{path, name}, parent_process.pid, user.{uid, name}}`,
//! `actor.user.{uid, name}`, `firewall_rule.{uid, name, version}` (rule id, `allowlist`,
//! policy generation), `actor.process.container.{uid, runtime}` when known (profile
//! `container`; OCSF has no top-level `container` in Network Activity), and
//! `unmapped.egressd` for what OCSF has no attribute for (verdict, hook, region, mapped,
//! mode, policy digest and generation, cgroup id/path/unit, host labels, process_exited,
//! process_details, process_attribution). `device` is the observing host: `hostname`,
//! `name`, and the required `type_id` 1 `Server`.
//!
//! `connection_summary` records (attempts the kernel aggregated) are Network Activity too,
//! with the same activity, action, disposition and severity as a connection event of their
//! verdict, the base event's `count` (the attempts), `start_time` and `end_time` (ms, the
//! first and last aggregated attempt), `dst_endpoint.name` `N destinations in region R` with
//! the first sample's `ip` and `port`, every sample address in `observables` (type 2 `IP
//! Address`), and `unmapped.egressd.{type, verdict, hook, region, mode,
//! distinct_destinations, samples, policy.digest, cgroup.id, labels}`.
//!
//! Lifecycle records are class **Application Lifecycle** (`class_uid` 6002, category 6
//! "Application Activity"): `agent_start` is activity 3 `Start`, `agent_stop` 4 `Stop`,
//! `policy_loaded` and `heartbeat` are 99 `Other` with `activity_name` `Policy Loaded` /
//! `Heartbeat`, and `reload_failed` 99 `Reload Failed` with `status_id` 2 `Failure` and the
//! error in `status_detail` (`policy_fallback` likewise: 99 `Policy Fallback`, `Failure`, the
//! policy in force and `last_good` under `unmapped.egressd`; `tamper_repaired` 99 `Tamper
//! Repaired`). For activity 99 `type_uid` is 600299 with the schema's caption `type_name`
//! `Application Lifecycle: Other`; the specific action is in `activity_name` (free text for
//! `Other`, per the schema), `metadata.log_name` and `unmapped.egressd.type` (the record
//! type). `app` names egressd; counters and losses go to `unmapped.egressd`, and so do the
//! heartbeat period (`interval_secs`, `agent_start` and `heartbeat`), an adoption of pinned enforcement (`adopted`) and, from the sinks, the hash chain link
//! (`chain`, [`crate::events::audit::chain`]).
use serde_json::{Map, Value, json};

use crate::events::{
    ConnectionEvent, Header, Lifecycle, LifecycleBody, Record, summary::SummaryEvent,
};

/// The pinned OCSF schema release.
pub const OCSF_VERSION: &str = "1.3.0";

/// Renders one record as an OCSF JSON event (no newline).
pub fn render(record: &Record) -> Vec<u8> {
    let v = match record {
        Record::Connection(c) => connection(c),
        Record::Lifecycle(l) => lifecycle(l),
        Record::Summary(s) => summary(s),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

fn product(h: &Header) -> Value {
    json!({ "name": "egressd", "vendor_name": "egressd", "version": h.agent.version })
}

fn metadata(h: &Header, profiles: &[&str]) -> Value {
    json!({
        "version": OCSF_VERSION,
        "uid": h.id,
        "sequence": h.sequence,
        "log_name": h.kind,
        "product": product(h),
        "profiles": profiles,
    })
}

/// The observing host: `type_id` is required in `device`; 1 `Server` (egressd runs on
/// datacenter hosts; the schema's enum has no better fit for a VM or bare metal alike).
fn device(h: &Header) -> Value {
    json!({ "hostname": h.host.name, "name": h.host.name, "type_id": 1, "type": "Server" })
}

fn labels(h: &Header) -> Value {
    json!(h.host.labels)
}

/// Drops `null` members (absent optional attributes stay absent).
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

fn connection(ev: &ConnectionEvent) -> Value {
    let h = &ev.header;
    let deny = ev.verdict != "audit";
    let (activity_id, activity_name) = if deny {
        (5, "Refuse")
    } else if ev.hook.contains("sendmsg") {
        (6, "Traffic")
    } else {
        (1, "Open")
    };
    let user = json!({ "uid": ev.user.id.to_string(), "name": ev.user.name });
    let exe_name = ev
        .process
        .executable
        .as_deref()
        .and_then(|p| p.rsplit('/').next());
    let mut profiles = vec!["host", "security_control"];
    if ev.container.is_some() {
        profiles.push("container");
    }
    let mut m = Map::new();
    m.insert("class_uid".into(), json!(4001));
    m.insert("class_name".into(), json!("Network Activity"));
    m.insert("category_uid".into(), json!(4));
    m.insert("category_name".into(), json!("Network Activity"));
    m.insert("activity_id".into(), json!(activity_id));
    m.insert("activity_name".into(), json!(activity_name));
    m.insert("type_uid".into(), json!(400100 + activity_id));
    m.insert(
        "type_name".into(),
        json!(format!("Network Activity: {activity_name}")),
    );
    m.insert("time".into(), json!(super::unix_ms(h.unix_ns)));
    m.insert("count".into(), json!(u64::from(ev.suppressed) + 1));
    m.insert("severity_id".into(), json!(if deny { 3 } else { 2 }));
    m.insert(
        "severity".into(),
        json!(if deny { "Medium" } else { "Low" }),
    );
    m.insert("action_id".into(), json!(if deny { 2 } else { 1 }));
    m.insert(
        "action".into(),
        json!(if deny { "Denied" } else { "Allowed" }),
    );
    m.insert("disposition_id".into(), json!(if deny { 2 } else { 1 }));
    m.insert(
        "disposition".into(),
        json!(if deny { "Blocked" } else { "Allowed" }),
    );
    m.insert("message".into(), json!(super::message(ev)));
    m.insert("metadata".into(), metadata(h, &profiles));
    m.insert("device".into(), device(h));
    m.insert("src_endpoint".into(), json!({ "hostname": h.host.name }));
    // Network Activity requires dst_endpoint, with at least one of its identifying
    // attributes: a packet or XDP socket refused at creation has no IP destination yet, so
    // the endpoint is named for what it is.
    let dst = match ev.destination.ip {
        Some(ip) => json!({ "ip": ip, "port": ev.destination.port }),
        None => json!({ "name": format!("{} socket (no IP destination)", ev.network.kind) }),
    };
    m.insert("dst_endpoint".into(), dst);
    m.insert(
        "connection_info".into(),
        json!({
            "protocol_name": ev.network.transport,
            "protocol_num": ev.network.iana_number,
            "protocol_ver_id": match ev.network.kind {
                "ipv4" => json!(4),
                "ipv6" => json!(6),
                _ => json!(null),
            },
            "direction_id": 2,
            "direction": "Outbound",
        }),
    );
    m.insert(
        "actor".into(),
        json!({
            "process": {
                "pid": ev.process.pid,
                "tid": ev.process.thread.id,
                "name": ev.process.name,
                "cmd_line": ev.process.command_line,
                "file": ev.process.executable.as_ref().map(|p| json!({
                    "path": p, "name": exe_name, "type_id": 1, "type": "Regular File",
                })),
                "parent_process": ev.process.parent.as_ref().map(|p| json!({ "pid": p.pid })),
                "user": user,
                "container": ev.container.as_ref().map(|c| json!({ "uid": c.id, "runtime": c.runtime })),
            },
            "user": user,
        }),
    );
    m.insert(
        "firewall_rule".into(),
        json!({
            "uid": ev.rule.id.to_string(),
            "name": ev.rule.name,
            "version": ev.policy.generation.to_string(),
        }),
    );
    m.insert(
        "unmapped".into(),
        json!({ "egressd": {
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
            "host_labels": labels(h),
            "process_exited": ev.process.exited,
            "process_details": ev.process.details,
            "process_attribution": ev.process.attribution,
            "group": { "gid": ev.group.id.to_string(), "name": ev.group.name },
        }}),
    );
    prune(Value::Object(m))
}

/// A `connection_summary`: Network Activity like a connection event, with the base event's
/// `count`, `start_time` and `end_time`, `dst_endpoint` naming the region and the number of
/// destinations (and the first sample's address), and every sample in `observables`.
fn summary(s: &SummaryEvent) -> Value {
    let h = &s.header;
    let deny = s.verdict != "audit";
    let (activity_id, activity_name) = if deny {
        (5, "Refuse")
    } else if s.hook.contains("sendmsg") {
        (6, "Traffic")
    } else {
        (1, "Open")
    };
    let mut m = Map::new();
    m.insert("class_uid".into(), json!(4001));
    m.insert("class_name".into(), json!("Network Activity"));
    m.insert("category_uid".into(), json!(4));
    m.insert("category_name".into(), json!("Network Activity"));
    m.insert("activity_id".into(), json!(activity_id));
    m.insert("activity_name".into(), json!(activity_name));
    m.insert("type_uid".into(), json!(400100 + activity_id));
    m.insert(
        "type_name".into(),
        json!(format!("Network Activity: {activity_name}")),
    );
    m.insert("time".into(), json!(super::unix_ms(h.unix_ns)));
    m.insert("start_time".into(), json!(super::unix_ms(s.start_ns)));
    m.insert("end_time".into(), json!(super::unix_ms(h.unix_ns)));
    m.insert("count".into(), json!(s.count));
    m.insert("severity_id".into(), json!(if deny { 3 } else { 2 }));
    m.insert(
        "severity".into(),
        json!(if deny { "Medium" } else { "Low" }),
    );
    m.insert("action_id".into(), json!(if deny { 2 } else { 1 }));
    m.insert(
        "action".into(),
        json!(if deny { "Denied" } else { "Allowed" }),
    );
    m.insert("disposition_id".into(), json!(if deny { 2 } else { 1 }));
    m.insert(
        "disposition".into(),
        json!(if deny { "Blocked" } else { "Allowed" }),
    );
    m.insert("message".into(), json!(super::summary_message(s)));
    m.insert(
        "metadata".into(),
        metadata(h, &["host", "security_control"]),
    );
    m.insert("device".into(), device(h));
    m.insert("src_endpoint".into(), json!({ "hostname": h.host.name }));
    let first = s.destination.samples.first();
    m.insert(
        "dst_endpoint".into(),
        json!({
            "name": format!(
                "{} destinations in region {}",
                s.destination.distinct, s.destination.region
            ),
            "ip": first.and_then(|x| x.ip),
            "port": first.filter(|x| x.ip.is_some()).map(|x| x.port),
        }),
    );
    let observables: Vec<Value> = s
        .destination
        .samples
        .iter()
        .filter_map(|x| x.ip)
        .map(|ip| json!({ "name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": ip.to_string() }))
        .collect();
    if !observables.is_empty() {
        m.insert("observables".into(), json!(observables));
    }
    m.insert(
        "connection_info".into(),
        json!({ "direction_id": 2, "direction": "Outbound" }),
    );
    m.insert(
        "firewall_rule".into(),
        json!({ "uid": s.rule.id.to_string(), "name": s.rule.name }),
    );
    m.insert(
        "unmapped".into(),
        json!({ "egressd": {
            "type": h.kind,
            "verdict": s.verdict,
            "hook": s.hook,
            "region": s.destination.region,
            "mode": s.policy.mode,
            "distinct_destinations": s.destination.distinct,
            "samples": s.destination.samples,
            "policy": { "digest": s.policy.digest },
            "cgroup": { "id": s.cgroup.id },
            "labels": labels(h),
        }}),
    );
    prune(Value::Object(m))
}

fn lifecycle(l: &Lifecycle) -> Value {
    let h = &l.header;
    let (activity_id, activity_name) = match &l.body {
        LifecycleBody::Start { .. } => (3, "Start"),
        LifecycleBody::Stop { .. } => (4, "Stop"),
        LifecycleBody::PolicyLoaded { .. } => (99, "Policy Loaded"),
        LifecycleBody::Heartbeat { .. } => (99, "Heartbeat"),
        LifecycleBody::ReloadFailed { .. } => (99, "Reload Failed"),
        LifecycleBody::PolicyFallback { .. } => (99, "Policy Fallback"),
        LifecycleBody::TamperRepaired { .. } => (99, "Tamper Repaired"),
    };
    // The caption of `type_uid` is the schema's: `Other` for 99, whose `activity_name`
    // carries egressd's own term (the schema: "a data source specific value").
    let type_caption = if activity_id == 99 {
        "Other"
    } else {
        activity_name
    };
    let mut extra = Map::new();
    extra.insert("type".into(), json!(h.kind));
    extra.insert("host_labels".into(), labels(h));
    let mut failure = None;
    let lost = match &l.body {
        LifecycleBody::Start {
            policy,
            cgroup,
            sinks,
            coverage,
            adopted,
            interval_secs,
        } => {
            if let Some(a) = adopted {
                extra.insert("adopted".into(), json!(a));
            }
            extra.insert("policy".into(), json!(policy));
            extra.insert("cgroup".into(), json!(cgroup));
            extra.insert("sinks".into(), json!(sinks));
            extra.insert("coverage".into(), json!(coverage));
            extra.insert("interval_secs".into(), json!(interval_secs));
            0
        }
        LifecycleBody::PolicyLoaded { policy } => {
            extra.insert("policy".into(), json!(policy));
            0
        }
        LifecycleBody::Heartbeat {
            counters,
            interval_secs,
        } => {
            extra.insert("counters".into(), json!(counters));
            extra.insert("interval_secs".into(), json!(interval_secs));
            counters.lost.total()
        }
        LifecycleBody::ReloadFailed {
            error,
            generation_in_force,
        } => {
            extra.insert("generation_in_force".into(), json!(generation_in_force));
            failure = Some(error.clone());
            0
        }
        LifecycleBody::PolicyFallback {
            error,
            policy,
            last_good,
        } => {
            extra.insert("policy".into(), json!(policy));
            extra.insert("last_good".into(), json!(last_good));
            failure = Some(error.clone());
            0
        }
        LifecycleBody::TamperRepaired {
            repairs,
            generation_in_force,
        } => {
            extra.insert("generation_in_force".into(), json!(generation_in_force));
            extra.insert("repairs".into(), json!(repairs));
            0
        }
        LifecycleBody::Stop { counters, .. } => {
            extra.insert("counters".into(), json!(counters));
            counters.lost.total()
        }
    };
    let message = l.body.message();
    let (severity_id, severity) = if failure.is_some() {
        (4, "High")
    } else if lost > 0 {
        (3, "Medium")
    } else {
        (1, "Informational")
    };
    let (status_id, status) = if failure.is_some() {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    prune(json!({
        "class_uid": 6002,
        "class_name": "Application Lifecycle",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 600200 + activity_id,
        "type_name": format!("Application Lifecycle: {type_caption}"),
        "time": super::unix_ms(h.unix_ns),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "status_detail": failure,
        "message": message,
        "metadata": metadata(h, &["host"]),
        "app": product(h),
        "device": device(h),
        "unmapped": { "egressd": Value::Object(extra) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    fn doc(r: &Record) -> Value {
        serde_json::from_slice(&render(r)).expect("valid JSON")
    }

    #[test]
    fn deny_is_refuse_denied_blocked() {
        let d = doc(&Record::Connection(Box::new(sample::deny())));
        assert_eq!(d["class_uid"], 4001);
        assert_eq!(d["category_uid"], 4);
        assert_eq!(
            (d["activity_id"].clone(), d["activity_name"].clone()),
            (json!(5), json!("Refuse"))
        );
        assert_eq!(d["type_uid"], 400105);
        assert_eq!(
            (d["action_id"].clone(), d["action"].clone()),
            (json!(2), json!("Denied"))
        );
        assert_eq!(
            (d["disposition_id"].clone(), d["disposition"].clone()),
            (json!(2), json!("Blocked"))
        );
        assert_eq!(d["metadata"]["version"], "1.3.0");
        assert_eq!(d["time"], 1_795_945_374_018_i64);
        assert_eq!(d["count"], 4);
        assert_eq!(d["connection_info"]["direction_id"], 2);
        assert_eq!(d["actor"]["process"]["file"]["name"], "curl");
    }

    #[test]
    fn audit_is_allowed_with_would_have_blocked_message() {
        let d = doc(&Record::Connection(Box::new(sample::audit_exited())));
        assert_eq!(d["action_id"], 1);
        assert_eq!(d["disposition_id"], 1);
        assert_eq!(d["activity_id"], 6);
        assert!(
            d["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("would have denied")),
            "{d}"
        );
        assert_eq!(d["connection_info"]["protocol_ver_id"], 6);
        assert!(d["actor"]["process"].get("file").is_none());
    }

    #[test]
    fn other_activities_use_the_schema_caption() {
        for l in sample::lifecycle() {
            let d = doc(&Record::Lifecycle(Box::new(l)));
            let want = match d["activity_id"].as_i64() {
                Some(99) => "Application Lifecycle: Other".to_owned(),
                _ => format!(
                    "Application Lifecycle: {}",
                    d["activity_name"].as_str().unwrap_or("")
                ),
            };
            assert_eq!(d["type_name"], want, "{d}");
            assert_eq!(d["device"]["type_id"], 1);
            assert_eq!(d["unmapped"]["egressd"]["type"], d["metadata"]["log_name"]);
        }
        let d = doc(&Record::Connection(Box::new(sample::deny())));
        assert_eq!(d["device"]["type"], "Server");
        assert!(d.get("container").is_none());
        assert_eq!(d["actor"]["process"]["container"]["runtime"], "docker");
    }

    #[test]
    fn lifecycle_classes() {
        let ids: Vec<(Value, Value)> = sample::lifecycle()
            .into_iter()
            .map(|l| {
                let d = doc(&Record::Lifecycle(Box::new(l)));
                assert_eq!(d["class_uid"], 6002);
                (d["activity_id"].clone(), d["activity_name"].clone())
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                (json!(3), json!("Start")),
                (json!(99), json!("Policy Loaded")),
                (json!(99), json!("Heartbeat")),
                (json!(4), json!("Stop")),
                (json!(99), json!("Reload Failed")),
                (json!(99), json!("Policy Fallback")),
                (json!(99), json!("Tamper Repaired")),
            ]
        );
    }
}
