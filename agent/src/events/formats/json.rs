//! Native JSON lines (the default format): the [`crate::events`] records serialized as they
//! are, one object per line (RFC 8259, UTF-8), each in its RFC 8785 (JCS) form: compact,
//! every object's members in key order, then the `chain` link as the last member. The line
//! without `,"chain":"..."` is then the link's canonical bytes ([`crate::events::audit::chain`];
//! the configuration allows only `[A-Za-z0-9_.-]` in `host.labels` keys, so this always
//! holds; [`write::is_canonical`] checks it anyway).
//!
//! Connection event fields (ECS names where ECS has one):
//!
//! | field | meaning |
//! | --- | --- |
//! | `@timestamp` | kernel time of the attempt, RFC 3339 UTC, nanoseconds |
//! | `type` | `connection` (lifecycle records: `policy_loaded`, `agent_start`, `heartbeat`, `reload_failed`, `policy_fallback`, `tamper_repaired`, `agent_stop`) |
//! | `id`, `sequence` | event id unique per host (`{agent.ephemeral_id}-{sequence}`), gap-free sequence |
//! | `verdict` | `deny` (caller got EPERM) or `audit` (let through, would have been denied) |
//! | `hook` | kernel hook, e.g. `cgroup/connect4` |
//! | `host.name`, `host.labels` | host name, configured labels |
//! | `agent.version`, `agent.ephemeral_id` | agent version, random id of this run |
//! | `process.pid`, `.name`, `.thread.id` | from the kernel |
//! | `process.parent.pid`, `.executable`, `.command_line` | from `/proc` at event time |
//! | `process.exited` | true when the process had exited before `/proc` could be read |
//! | `process.details` | where parent, executable, command line and cgroup path come from: `verified` (`/proc`, consistent with the kernel's comm, uid, cgroup id and a start before the event), `exited`, `mismatch` (the pid now runs another program: withheld), `skipped` (enrichment stalled), `none` (no pid) |
//! | `process.attribution` | whose process fields: `task` (the caller, at a socket hook), `socket_owner` (the socket's creator, at the packet hook), `socket_uid` (a socket older than egressd: pid 0, only `user.id` and `cgroup.id`) |
//! | `user.id`, `user.name`, `group.id`, `group.name` | real uid/gid and their names |
//! | `cgroup.id`, `.path`, `.systemd_unit` | cgroup v2 id, path, deepest unit in the path |
//! | `container.id`, `.runtime` | when the cgroup path shows a container |
//! | `network.type`, `.transport`, `.iana_number` | `ipv4`/`ipv6`, `tcp`/`udp`, protocol number |
//! | `destination.ip`, `.port`, `.region`, `.mapped` | destination as judged, its region |
//! | `policy.mode`, `.generation`, `.digest` | the policy that judged it |
//! | `rule.id`, `rule.name` | deciding rule; 0 / `allowlist` for the region allowlist |
//! | `suppressed` | repeats the kernel suppressed since the previous event of this flow |
//!
//! Lifecycle records carry the same header (`@timestamp` ... `agent`) plus: `agent_start`:
//! `policy` (file, mode, digest, generation, regions, prefix counts, allowlist), `cgroup`,
//! `sinks`, `coverage`, `interval_secs` (the heartbeat period; 0: none), and `adopted`
//! (`previous_generation`) when it adopted pinned enforcement; `policy_loaded`: `policy`; `heartbeat` and `agent_stop`: `counters` (by hook,
//! region, verdict), `lost` (`ringbuf_full`, `sink_write_failed`, `undecodable`, `sinks` with
//! per-sink counters), `connection_events`, `uptime_secs`, and the daemon's extra kernel
//! statistics (`flows`, `reloads`); `heartbeat` also `interval_secs`; `reload_failed`:
//! `error`, `generation_in_force`; `policy_fallback`: `error` (why the files on disk were
//! refused), `policy` (the last good policy now in force), `last_good` (`digest`,
//! `generation`, `saved_at`, `file`).
//!
//! Every record a sink sends ends with `chain`, its hash chain link ([`crate::events::audit::chain`]).
use crate::events::Record;

pub mod write;

/// Bytes reserved for a rendered record (and its link and newline).
pub(crate) const RECORD_BYTES: usize = 2048;

/// Serializes `record` as one JSON object (no newline).
pub fn render(record: &Record) -> Vec<u8> {
    // Room for a connection record at once (about 1.2 KB), instead of growing from 128 bytes.
    let mut out = Vec::with_capacity(RECORD_BYTES);
    render_into(record, &mut out);
    out
}

/// [`render`] appended to `out` (a buffer the caller reuses).
pub fn render_into(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    let res = match record {
        Record::Connection(c) => {
            write::connection(out, c);
            Ok(())
        }
        Record::Lifecycle(l) => serde_json::to_writer(&mut *out, l),
        Record::Summary(s) => serde_json::to_writer(&mut *out, s),
    };
    // In key order, as connection records are written (these records are rare: the copy
    // costs nothing that matters).
    if res.is_ok()
        && !matches!(record, Record::Connection(_))
        && let Some(sorted) = crate::events::audit::chain::sorted_compact(&out[start..])
    {
        out.truncate(start);
        out.extend_from_slice(&sorted);
    }
    // These types only hold strings, numbers, maps with string keys and IP addresses: their
    // serialization cannot fail.
    if let Err(e) = res {
        out.truncate(start);
        out.extend_from_slice(
            format!(
                "{{\"type\":\"serialization_error\",\"error\":{:?}}}",
                e.to_string()
            )
            .as_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ConnectionEvent, audit::chain, formats::Format, sample};
    use std::sync::Arc;

    /// Every shape a connection record takes: each sample, and the optional members
    /// present and absent.
    fn events() -> Vec<ConnectionEvent> {
        let mut all: Vec<ConnectionEvent> = sample::records()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Record::Connection(c) => Some(*c),
                _ => None,
            })
            .collect();
        let mut bare = sample::deny();
        Arc::make_mut(&mut bare.header.host).labels.clear();
        bare.process.parent = None;
        bare.process.executable = None;
        bare.process.command_line = None;
        bare.user.name = None;
        bare.cgroup.path = None;
        bare.cgroup.systemd_unit = None;
        bare.network.iana_number = None;
        bare.network.ethertype = Some(2048);
        Arc::make_mut(&mut bare.header.host).name = "h\u{1}\"\\é".into();
        all.push(bare);
        let mut odd = sample::deny_utf8();
        let host = Arc::make_mut(&mut odd.header.host);
        host.labels.insert("zz top".into(), "ü\u{7f}".into());
        host.labels.insert("A".into(), String::new());
        odd.rule.name = "\u{2028}\t".into();
        all.push(odd);
        all
    }

    /// The hand-written object is serde_json's in RFC 8785 form, byte for byte, in every
    /// shape (escapes, non-ASCII text, labels, IPv4 and IPv6, optional members present and
    /// absent): the JCS of serde_json's object, by the fast path (`sorted_compact`) and by
    /// the general one (`canonical_json` of the parsed value).
    #[test]
    fn hand_written_is_canonical_serde_json() {
        let mut shapes = events();
        let mut v6 = sample::deny();
        v6.destination.ip = Some("2001:db8::ffff:0:1".parse().expect("address"));
        shapes.push(v6);
        let mut packet = sample::deny();
        packet.destination.ip = None;
        packet.container = None;
        shapes.push(packet);
        for ev in shapes {
            assert!(write::is_canonical(&ev));
            let serde = serde_json::to_vec(&ev).expect("serializes");
            let value: serde_json::Value = serde_json::from_slice(&serde).expect("parses");
            let want = chain::canonical_json(&value).expect("canonical");
            assert_eq!(chain::sorted_compact(&serde).as_ref(), Some(&want));
            let mut got = Vec::new();
            write::connection(&mut got, &ev);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    /// serde_json's object of `ev` in RFC 8785 form, and `ev` as written by hand.
    fn both(ev: &ConnectionEvent) -> (String, String) {
        let serde = serde_json::to_vec(ev).expect("serializes");
        let value: serde_json::Value = serde_json::from_slice(&serde).expect("parses");
        let want = chain::canonical_json(&value).expect("canonical");
        let mut got = Vec::new();
        write::connection(&mut got, ev);
        (
            String::from_utf8_lossy(&got).into_owned(),
            String::from_utf8_lossy(&want).into_owned(),
        )
    }

    /// The writer keeps the parts of the last record that repeat (agent, cgroup, container,
    /// host, policy, process) and uses them again when a record holds the same values: each
    /// record here shares the shared strings of the one before and changes one value, and
    /// each is still written as serde_json's canonical object (twice: once after a changed
    /// record, once after itself).
    #[test]
    fn kept_parts_follow_every_change() {
        type Step = (&'static str, fn(&mut ConnectionEvent));
        let steps: &[Step] = &[
            ("agent", |e| {
                Arc::make_mut(&mut e.header.agent).version = "9.9.9".into()
            }),
            ("cgroup.id", |e| e.cgroup.id += 1),
            ("cgroup.path", |e| {
                e.cgroup.path = Some("/other.slice".into())
            }),
            ("cgroup.path none", |e| e.cgroup.path = None),
            ("systemd_unit", |e| {
                e.cgroup.systemd_unit = Some("x.service".into())
            }),
            ("container.id", |e| {
                if let Some(c) = &mut e.container {
                    c.id = "cd34".into();
                }
            }),
            ("container.runtime", |e| {
                if let Some(c) = &mut e.container {
                    c.runtime = "podman";
                }
            }),
            ("container none", |e| e.container = None),
            ("host.labels", |e| {
                Arc::make_mut(&mut e.header.host)
                    .labels
                    .insert("rack".into(), "r1".into());
            }),
            ("host.name", |e| {
                Arc::make_mut(&mut e.header.host).name = "other".into()
            }),
            ("policy.digest", |e| {
                e.policy.digest = "0123456789abcdef".into()
            }),
            ("policy.generation", |e| e.policy.generation += 1),
            ("policy.mode", |e| e.policy.mode = "audit"),
            ("process.pid", |e| e.process.pid += 1),
            ("process.thread", |e| e.process.thread.id += 1),
            ("process.name", |e| {
                e.process.name = "other".try_into().expect("fits")
            }),
            ("process.exited", |e| e.process.exited = !e.process.exited),
            ("process.details", |e| e.process.details = "skipped"),
            ("process.attribution", |e| {
                e.process.attribution = "socket_owner"
            }),
            ("process.parent", |e| e.process.parent = None),
            ("process.executable", |e| {
                e.process.executable = Some("/bin/x".into())
            }),
            ("process.command_line", |e| {
                e.process.command_line = Some("x -y".into())
            }),
            ("process.command_line none", |e| {
                e.process.command_line = None
            }),
            ("destination", |e| e.destination.port += 1),
        ];
        let first = sample::deny();
        let (got, want) = both(&first);
        assert_eq!(got, want, "first");
        let mut prev = first.clone();
        let mut prev_text = both(&prev).1;
        for (what, change) in steps {
            let mut ev = prev.clone();
            change(&mut ev);
            let (got, want) = both(&ev);
            assert_ne!(got, prev_text, "{what}: the change shows");
            assert_eq!(got, want, "{what}");
            let (got, want) = both(&ev);
            assert_eq!(got, want, "{what}, again");
            prev_text = want;
            prev = ev;
        }
        // Back to the first record's values, held by it all along.
        let (got, want) = both(&first);
        assert_eq!(got, want, "first again");
    }

    /// The fast seal (the body is its canonical bytes) and the general one (the body
    /// parsed) give the same frame; a label key JCS orders by UTF-16, or that needs an
    /// escape, is not canonical.
    #[test]
    fn sealing_the_body_is_sealing_its_jcs() {
        for ev in events() {
            let body = render(&Record::Connection(Box::new(ev.clone())));
            let mut a = chain::Chain::new();
            let mut b = chain::Chain::new();
            assert_eq!(a.seal_canonical(body.clone()), b.seal(Format::Json, &body));
        }
        for key in ["é", "a\"b", "\u{1}"] {
            let mut ev = sample::deny();
            Arc::make_mut(&mut ev.header.host)
                .labels
                .insert(key.into(), "x".into());
            assert!(!write::is_canonical(&ev), "{key:?}");
        }
    }

    /// Lifecycle and summary records are in key order too.
    #[test]
    fn every_record_is_in_key_order() {
        for (name, r) in sample::records() {
            let body = render(&r);
            assert_eq!(
                chain::sorted_compact(&body).as_deref(),
                Some(&body[..]),
                "{name}"
            );
        }
    }
}
