//! Reads exported records back: one line of a SIEM export -> [`Entry`].
//!
//! A line holds one record in any of egressd's formats, alone (file and stdout sinks) or
//! behind a syslog header as a receiver stores it (RFC 5424 with or without octet counting,
//! or a receiver's own template): a CEF record starts at `CEF:0|`, a JSON record at the
//! first `{` and runs to the end of the line (a UTF-8 byte order mark before it is skipped).
//! Which JSON format it is follows from its fields: `ecs.version` (ECS), `class_uid` (OCSF),
//! else the native `type` and `sequence`.
use std::collections::BTreeMap;

use serde_json::Value;

use super::chain;
use crate::events::formats::{Format, cef};

/// One record read back, with what verification needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// File and line (from 1) it was read from.
    pub file: String,
    /// Line number, from 1.
    pub line: usize,
    /// Byte column of its frame in the line, from 1, when the line holds several frames (a
    /// raw syslog TCP stream); 0 when the record is the line's only one.
    pub column: usize,
    /// Its format.
    pub format: Format,
    /// `host.name` (CEF `dvchost`, OCSF `device.hostname`).
    pub host: String,
    /// `agent.ephemeral_id`: the agent run.
    pub run: String,
    /// `sequence`.
    pub sequence: u64,
    /// Record type in native names (`connection`, `agent_start`, `heartbeat`, ...).
    pub kind: String,
    /// Time, nanoseconds since the Unix epoch (milliseconds precision for OCSF and CEF).
    pub time_ns: i128,
    /// The hash chain link as written, if any.
    pub link: Option<String>,
    /// The canonical bytes the link covers ([`chain`]).
    pub canonical: Vec<u8>,
    /// What lifecycle records say (empty for connection events).
    pub facts: Facts,
}

/// What a lifecycle record says, as far as its format carries it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// Policy digest (`agent_start`, `policy_loaded`, `policy_fallback`).
    pub digest: Option<String>,
    /// Policy generation (or `generation_in_force`).
    pub generation: Option<u64>,
    /// Policy mode (`enforce`, `audit`), not in CEF.
    pub mode: Option<String>,
    /// Heartbeat interval in seconds (`heartbeat`, and `agent_start` since it states it).
    pub interval_secs: Option<u64>,
    /// Losses by stage (`ringbuf_full`, `sink_write_failed`, `undecodable`; in CEF only
    /// `total`), cumulative since the run started.
    pub lost: BTreeMap<String, u64>,
    /// Kernel counters summed over hooks: (region, verdict) -> count, cumulative.
    pub counters: BTreeMap<(String, String), u64>,
    /// Coverage of the kernel (`agent_start`): `enforced`, `partial` and `not_covered` paths, `kernel`.
    pub coverage: BTreeMap<String, String>,
    /// Reload error, tamper repairs or fallback error, in words.
    pub detail: Option<String>,
    /// `agent_start` of a run that adopted pinned enforcement: the generation then in force.
    pub adopted: Option<u64>,
}

/// Reads one line; `Ok(None)` for a line that holds no egressd record (blank, or some
/// other program's message).
///
/// # Errors
/// A line that looks like an egressd record but lacks a field every record has: the
/// message names the field.
pub fn parse_line(file: &str, line: usize, text: &str) -> Result<Option<Entry>, String> {
    let text = text.trim_end_matches(['\r', '\n']);
    if let Some(i) = text.find("CEF:0|") {
        return parse_cef(file, line, &text[i..]).map(Some);
    }
    let Some(i) = text.find('{') else {
        return Ok(None);
    };
    let Ok(mut v) = serde_json::from_str::<Value>(&text[i..]) else {
        return Ok(None);
    };
    let format = if v.pointer("/ecs/version").is_some() {
        Format::Ecs
    } else if v.get("class_uid").is_some() {
        Format::Ocsf
    } else if v.get("type").is_some() && v.get("sequence").is_some() {
        Format::Json
    } else {
        return Ok(None);
    };
    // serde_json keeps the last of two equal keys, a SIEM may keep the first: a record
    // with `"verdict":"allow","verdict":"deny"` would verify while it reads as allowed.
    if let Err(e) = serde::de::DeserializeSeed::deserialize(
        NoDuplicateKeys,
        &mut serde_json::Deserializer::from_str(&text[i..]),
    ) {
        return Err(format!("not a record as egressd writes it: {e}"));
    }
    let link = chain::take_json_link(format, &mut v);
    let canonical = chain::canonical_json(&v).map_err(|e| format!("canonical form: {e}"))?;
    let mut e = match format {
        Format::Ecs => ecs(&v),
        Format::Ocsf => ocsf(&v),
        _ => native(&v),
    }?;
    e.file = file.to_owned();
    e.line = line;
    e.link = link;
    e.canonical = canonical;
    Ok(Some(e))
}

/// Walks a JSON text and fails on an object with two equal keys (at any depth).
struct NoDuplicateKeys;

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicateKeys {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_element_seed(NoDuplicateKeys)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = m.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
            }
            m.next_value_seed(NoDuplicateKeys)?;
        }
        Ok(())
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Result<&'a str, String> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{}` (a string)", &ptr[1..].replace('/', ".")))
}

fn u64_at(v: &Value, ptr: &str) -> Result<u64, String> {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no `{}` (a number)", &ptr[1..].replace('/', ".")))
}

fn rfc3339_ns(s: &str) -> Result<i128, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp_nanos)
        .map_err(|e| format!("time `{s}`: {e}"))
}

fn blank(format: Format, host: &str, run: &str, sequence: u64, kind: &str, t: i128) -> Entry {
    Entry {
        file: String::new(),
        line: 0,
        column: 0,
        format,
        host: host.to_owned(),
        run: run.to_owned(),
        sequence,
        kind: kind.to_owned(),
        time_ns: t,
        link: None,
        canonical: Vec::new(),
        facts: Facts::default(),
    }
}

/// Facts from the native body fields, wherever a format keeps them (`body`: the object
/// holding `policy`, `counters`, `lost`, ...; `counters`: the one holding `counters` and
/// `lost`).
fn facts(body: &Value, counters: &Value) -> Facts {
    let mut f = Facts {
        digest: body
            .pointer("/policy/digest")
            .and_then(Value::as_str)
            .map(str::to_owned),
        generation: body
            .pointer("/policy/generation")
            .or_else(|| body.get("generation_in_force"))
            .and_then(Value::as_u64),
        mode: body
            .pointer("/policy/mode")
            .and_then(Value::as_str)
            .map(str::to_owned),
        interval_secs: body.get("interval_secs").and_then(Value::as_u64),
        adopted: body
            .pointer("/adopted/previous_generation")
            .and_then(Value::as_u64),
        ..Facts::default()
    };
    if let Some(lost) = counters.get("lost").and_then(Value::as_object) {
        for k in ["ringbuf_full", "sink_write_failed", "undecodable"] {
            if let Some(n) = lost.get(k).and_then(Value::as_u64) {
                f.lost.insert(k.to_owned(), n);
            }
        }
    }
    for row in counters
        .get("counters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(r), Some(v), Some(n)) = (
            row.get("region").and_then(Value::as_str),
            row.get("verdict").and_then(Value::as_str),
            row.get("count").and_then(Value::as_u64),
        ) {
            *f.counters.entry((r.to_owned(), v.to_owned())).or_default() += n;
        }
    }
    if let Some(c) = body.get("coverage") {
        for k in ["enforced", "partial", "not_covered", "unknown"] {
            if let Some(a) = c.get(k).and_then(Value::as_array) {
                let list: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                f.coverage.insert(k.to_owned(), list.join(","));
            }
        }
        if let Some(k) = c.get("kernel").and_then(Value::as_str) {
            f.coverage.insert("kernel".into(), k.to_owned());
        }
    }
    f.detail = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            body.get("repairs").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        });
    f
}

fn native(v: &Value) -> Result<Entry, String> {
    let mut e = blank(
        Format::Json,
        str_at(v, "/host/name")?,
        str_at(v, "/agent/ephemeral_id")?,
        u64_at(v, "/sequence")?,
        str_at(v, "/type")?,
        rfc3339_ns(str_at(v, "/@timestamp")?)?,
    );
    if !e.kind.starts_with("connection") {
        e.facts = facts(v, v);
    }
    Ok(e)
}

fn ecs(v: &Value) -> Result<Entry, String> {
    let dataset = str_at(v, "/event/dataset")?;
    let kind = if let Some(flow) = dataset
        .strip_prefix("egressd.")
        .filter(|k| matches!(*k, "connection" | "connection_summary"))
    {
        flow.to_owned()
    } else {
        str_at(v, "/event/action")?.replace('-', "_")
    };
    let mut e = blank(
        Format::Ecs,
        str_at(v, "/host/name")?,
        str_at(v, "/agent/ephemeral_id")?,
        u64_at(v, "/event/sequence")?,
        &kind,
        rfc3339_ns(str_at(v, "/@timestamp")?)?,
    );
    if !kind.starts_with("connection") {
        let body = v.get("egressd").cloned().unwrap_or(Value::Null);
        e.facts = facts(&body, &body);
        if kind == "reload_failed" {
            e.facts.detail = v
                .pointer("/event/reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
    }
    Ok(e)
}

fn ocsf(v: &Value) -> Result<Entry, String> {
    let uid = str_at(v, "/metadata/uid")?;
    let run = uid
        .rsplit_once('-')
        .map(|(r, _)| r)
        .ok_or("`metadata.uid` is not RUN-SEQUENCE")?;
    let ms = v
        .get("time")
        .and_then(Value::as_i64)
        .ok_or("no `time` (a number)")?;
    let kind = str_at(v, "/metadata/log_name")?;
    let mut e = blank(
        Format::Ocsf,
        str_at(v, "/device/hostname")?,
        run,
        u64_at(v, "/metadata/sequence")?,
        kind,
        i128::from(ms) * 1_000_000,
    );
    if !kind.starts_with("connection") {
        let body = v
            .pointer("/unmapped/egressd")
            .cloned()
            .unwrap_or(Value::Null);
        let counters = body.get("counters").cloned().unwrap_or(Value::Null);
        e.facts = facts(&body, &counters);
        if kind == "reload_failed" {
            e.facts.detail = v
                .get("status_detail")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
    }
    Ok(e)
}

fn parse_cef(file: &str, line: usize, text: &str) -> Result<Entry, String> {
    let (canonical, link) = chain::split_cef(text);
    let parsed = cef::parse(canonical).ok_or("a CEF line that does not parse")?;
    let (header, pairs) = (&parsed.0, &parsed.1);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    // Labelled custom keys (`cs1Label=policyDigest cs1=...`) by label.
    let labelled = |label: &str| {
        pairs
            .iter()
            .find(|(k, v)| k.ends_with("Label") && v == label)
            .and_then(|(k, _)| get(k.trim_end_matches("Label")))
    };
    let need = |k: &str| get(k).ok_or_else(|| format!("no CEF key `{k}`"));
    let id = need("externalId")?;
    let run = id
        .rsplit_once('-')
        .map(|(r, _)| r)
        .ok_or("`externalId` is not RUN-SEQUENCE")?;
    let signature = header.get(4).ok_or("no CEF signature id")?;
    let kind = if signature.starts_with("connection-summary-") {
        "connection_summary".to_owned()
    } else if signature.starts_with("connection-") {
        "connection".to_owned()
    } else {
        signature.replace('-', "_")
    };
    let seq = need("egressdSeq")?
        .parse::<u64>()
        .map_err(|e| format!("`egressdSeq`: {e}"))?;
    let ms = need("rt")?
        .parse::<i64>()
        .map_err(|e| format!("`rt`: {e}"))?;
    let mut e = blank(
        Format::Cef,
        need("dvchost")?,
        run,
        seq,
        &kind,
        i128::from(ms) * 1_000_000,
    );
    e.file = file.to_owned();
    e.line = line;
    e.link = link.map(str::to_owned);
    e.canonical = canonical.as_bytes().to_vec();
    if !kind.starts_with("connection") {
        let num = |label: &str| labelled(label).and_then(|v| v.parse::<u64>().ok());
        e.facts.digest = labelled("policyDigest").map(str::to_owned);
        e.facts.generation = num("generationInForce");
        e.facts.interval_secs = num("intervalSecs");
        e.facts.adopted = num("adoptedGeneration");
        if let Some(n) = num("lostEvents") {
            e.facts.lost.insert("total".into(), n);
        }
        for (label, key) in [
            ("kernel", "kernel"),
            ("enforcedPaths", "enforced"),
            ("notCoveredPaths", "not_covered"),
            ("partialPaths", "partial"),
        ] {
            if let Some(v) = labelled(label) {
                e.facts.coverage.insert(key.into(), v.to_owned());
            }
        }
        // CEF has no mode or generation keys for these: their messages (covered by the
        // link) say them.
        let msg = get("msg").unwrap_or_default();
        if kind == "agent_start" {
            e.facts.mode = between(msg, "(", ") attached").map(str::to_owned);
        }
        if kind == "policy_loaded" {
            e.facts.mode = between(msg, ", mode ", ")").map(str::to_owned);
            e.facts.generation = between(msg, "(generation ", ",").and_then(|g| g.parse().ok());
        }
        if matches!(kind.as_str(), "reload_failed" | "tamper_repaired") {
            e.facts.detail = get("msg").map(str::to_owned);
        }
    }
    Ok(e)
}

/// The text between the first `open` and the next `close` after it.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::audit::chain::Chain,
        events::{Record, sample},
    };

    /// Every sample in every format, sealed, alone and behind a syslog header, reads back
    /// with the same header fields and a link over the right bytes.
    #[test]
    fn every_format_reads_back() {
        for (name, rec) in sample::records() {
            let h = rec.header().clone();
            for f in Format::ALL {
                let sealed = Chain::new().seal(f, &f.render(&rec));
                let text = String::from_utf8(sealed).expect("UTF-8");
                for line in [
                    text.clone(),
                    format!(
                        "123 <134>1 2026-11-29T09:42:54.018030Z storage-eu-1 egressd 77 {} - \u{feff}{text}",
                        h.kind
                    ),
                ] {
                    let e = parse_line("f", 3, &line)
                        .unwrap_or_else(|err| panic!("{f:?} {name}: {err}"))
                        .unwrap_or_else(|| panic!("{f:?} {name}: not recognized"));
                    assert_eq!(
                        (e.host.as_str(), e.run.as_str(), e.sequence, e.kind.as_str()),
                        (
                            h.host.name.as_str(),
                            h.agent.ephemeral_id.as_str(),
                            h.sequence,
                            h.kind
                        ),
                        "{f:?} {name}"
                    );
                    assert_eq!(e.format, f);
                    assert_eq!(e.time_ns / 1_000_000, h.unix_ns / 1_000_000, "{f:?} {name}");
                    let want = chain::link(&[0; 32], &e.canonical, None);
                    assert_eq!(
                        e.link.as_deref().and_then(chain::parse_link),
                        Some((false, want)),
                        "{f:?} {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn lifecycle_facts_in_every_format() {
        let recs: BTreeMap<&str, Record> = sample::records().into_iter().collect();
        for f in Format::ALL {
            let read = |name: &str| {
                let text = String::from_utf8(f.render(&recs[name])).expect("UTF-8");
                parse_line("f", 1, &text)
                    .expect("parses")
                    .expect("recognized")
                    .facts
            };
            let start = read("agent_start");
            assert_eq!(start.digest.as_deref(), Some("3fb60c46ec413f16"), "{f:?}");
            assert_eq!(
                start.coverage.get("not_covered").map(String::as_str),
                Some("packet_socket"),
                "{f:?}"
            );
            let hb = read("heartbeat");
            assert_eq!(hb.interval_secs, Some(60), "{f:?}");
            let total = hb
                .lost
                .get("total")
                .copied()
                .unwrap_or_else(|| hb.lost.values().sum());
            assert_eq!(total, 2, "{f:?}");
            if f != Format::Cef {
                assert_eq!(
                    hb.counters.get(&("us".into(), "deny".into())),
                    Some(&4),
                    "{f:?}"
                );
            }
            assert_eq!(start.mode.as_deref(), Some("enforce"), "{f:?}");
            assert_eq!(start.interval_secs, Some(60), "{f:?}");
            assert_eq!(start.adopted, Some(1), "{f:?}");
            let loaded = read("policy_loaded");
            assert_eq!(
                (loaded.mode.as_deref(), loaded.generation),
                (Some("enforce"), Some(1)),
                "{f:?}"
            );
            let failed = read("reload_failed");
            assert!(
                failed.detail.as_deref().is_some_and(|d| d.contains("mars")),
                "{f:?} {failed:?}"
            );
        }
    }

    #[test]
    fn other_lines_are_not_records() {
        assert_eq!(parse_line("f", 1, ""), Ok(None));
        assert_eq!(parse_line("f", 1, "kernel: eth0 up"), Ok(None));
        assert_eq!(parse_line("f", 1, "{\"a\":1}"), Ok(None));
        let e = parse_line("f", 1, "{\"type\":\"heartbeat\",\"sequence\":1}").expect_err("bad");
        let dup = parse_line(
            "f",
            1,
            "{\"type\":\"connection\",\"sequence\":1,\"verdict\":\"allow\",\"verdict\":\"deny\"}",
        )
        .expect_err("duplicate key");
        assert!(dup.contains("duplicate key `verdict`"), "{dup}");
        assert!(e.contains("host.name"), "{e}");
    }
}
