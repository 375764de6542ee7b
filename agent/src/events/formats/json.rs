//! Native JSON lines (the default format): the [`crate::events`] records serialized as they
//! are, one object per line (RFC 8259, UTF-8).
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
use crate::events::{ConnectionEvent, Record};

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

/// The canonical bytes of a connection record's hash chain link
/// ([`crate::events::audit::chain`]: RFC 8785 of the object [`render`] writes, without
/// `chain`). `None` for a host label key JCS would order differently or that needs escaping
/// (then the body is parsed). See [`canonical_marked_into`].
pub fn canonical_connection(ev: &ConnectionEvent) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(RECORD_BYTES);
    let mut marks = write::Marks::new();
    write::connection_marked(&mut body, ev, &mut marks);
    let mut out = Vec::with_capacity(RECORD_BYTES);
    canonical_marked_into(ev, &body, &marks, &mut out).then_some(out)
}

/// The canonical bytes of the connection record `ev` rendered as `body` by
/// [`write::connection_marked`] (which noted its members in `marks`), appended to `out`:
/// the members copied from the body in key order, every object's in turn. Strings and
/// integers as serde_json writes them are their own JCS form, and the objects copied whole
/// (`user`, `group`, `cgroup`, `container`, `rule`, `process.thread`, `process.parent`,
/// `host.labels`) have their members in key order already. What
/// [`crate::events::audit::chain::sorted_compact`] makes of the body, without parsing it (the
/// test `canonical_is_sorted_compact` holds the two together). `false`, with `out`
/// unchanged, for a host label key JCS would order differently (by UTF-16 code units) or
/// that needs escaping.
pub fn canonical_marked_into(
    ev: &ConnectionEvent,
    body: &[u8],
    marks: &write::Marks,
    out: &mut Vec<u8>,
) -> bool {
    use write::member::*;
    let plain = |k: &str| {
        k.bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    };
    if !ev.header.host.labels.keys().all(|k| plain(k)) {
        return false;
    }
    let mut o = Canonical {
        out,
        body,
        marks,
        first: true,
    };
    o.out.push(b'{');
    o.copy(TIMESTAMP);
    o.object("agent", &[AGENT_EPHEMERAL_ID, AGENT_VERSION]);
    o.copy(CGROUP);
    o.copy(CONTAINER);
    if !o.get(DESTINATION).is_empty() {
        o.object(
            "destination",
            &[
                DESTINATION_IP,
                DESTINATION_MAPPED,
                DESTINATION_PORT,
                DESTINATION_REGION,
            ],
        );
    }
    o.copy(GROUP);
    o.copy(HOOK);
    o.object("host", &[HOST_LABELS, HOST_NAME]);
    o.copy(ID);
    o.object(
        "network",
        &[
            NETWORK_ETHERTYPE,
            NETWORK_IANA_NUMBER,
            NETWORK_TRANSPORT,
            NETWORK_TYPE,
        ],
    );
    o.object("policy", &[POLICY_DIGEST, POLICY_GENERATION, POLICY_MODE]);
    o.object(
        "process",
        &[
            PROCESS_ATTRIBUTION,
            PROCESS_COMMAND_LINE,
            PROCESS_DETAILS,
            PROCESS_EXECUTABLE,
            PROCESS_EXITED,
            PROCESS_NAME,
            PROCESS_PARENT,
            PROCESS_PID,
            PROCESS_THREAD,
        ],
    );
    for m in [RULE, SEQUENCE, SUPPRESSED, TYPE, USER, VERDICT] {
        o.copy(m);
    }
    o.out.push(b'}');
    true
}

/// A JSON object written from members of a rendered body (the caller gives the order).
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    body: &'a [u8],
    marks: &'a write::Marks,
    /// No member written yet in the current object.
    first: bool,
}

impl Canonical<'_> {
    #[inline]
    fn get(&self, m: usize) -> &[u8] {
        self.marks.get(self.body, m)
    }

    /// Member `m` as rendered (`"key":value`), unless absent.
    #[inline]
    fn copy(&mut self, m: usize) {
        let bytes = self.marks.get(self.body, m);
        if bytes.is_empty() {
            return;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(bytes);
    }

    /// `"key":{...}` with `members` (those present) in this order.
    #[inline]
    fn object(&mut self, key: &str, members: &[usize]) {
        if !self.first {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":{");
        self.first = true;
        for &m in members {
            self.copy(m);
        }
        self.out.push(b'}');
        self.first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{audit::chain, formats::Format, sample};
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

    /// The hand-written object is serde_json's, byte for byte, in every shape (escapes,
    /// non-ASCII text, labels, IPv4 and IPv6, optional members present and absent).
    #[test]
    fn hand_written_is_serde_json() {
        let mut shapes = events();
        let mut v6 = sample::deny();
        v6.destination.ip = Some("2001:db8::ffff:0:1".parse().expect("address"));
        shapes.push(v6);
        let mut packet = sample::deny();
        packet.destination.ip = None;
        packet.container = None;
        shapes.push(packet);
        for ev in shapes {
            let want = serde_json::to_vec(&ev).expect("serializes");
            let mut got = Vec::new();
            write::connection(&mut got, &ev);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn canonical_is_sorted_compact() {
        for ev in events() {
            let body = render(&Record::Connection(Box::new(ev.clone())));
            let want = chain::sorted_compact(&body).expect("canonical");
            let got = canonical_connection(&ev).expect("written");
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
            let mut a = chain::Chain::new();
            let mut b = chain::Chain::new();
            assert_eq!(a.seal_json(body.clone(), &got), b.seal(Format::Json, &body));
        }
        let mut ev = sample::deny();
        Arc::make_mut(&mut ev.header.host)
            .labels
            .insert("é".into(), "x".into());
        assert_eq!(
            canonical_connection(&ev),
            None,
            "a key JCS orders by UTF-16"
        );
    }
}
