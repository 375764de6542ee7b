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
const RECORD_BYTES: usize = 2048;

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
/// `chain`), written straight from the event: its members in key order, strings and
/// integers as serde_json writes them (their own JCS form). What
/// [`crate::events::audit::chain::sorted_compact`] makes of the rendered body, without
/// parsing it again (the test `canonical_is_sorted_compact` holds the two together). `None`
/// for a host label key JCS would order differently or that needs escaping (then the body
/// is parsed).
pub fn canonical_connection(ev: &ConnectionEvent) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(RECORD_BYTES);
    canonical_connection_into(ev, &mut out).then_some(out)
}

/// [`canonical_connection`] appended to `out` (a buffer the caller reuses); `false`, with
/// `out` unchanged, where that returns `None`.
pub fn canonical_connection_into(ev: &ConnectionEvent, out: &mut Vec<u8>) -> bool {
    let plain = |k: &str| {
        k.bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    };
    if !ev.header.host.labels.keys().all(|k| plain(k)) {
        return false;
    }
    let mut o = Canonical(out);
    let h = &ev.header;
    o.open("@timestamp");
    o.str(&h.timestamp);
    o.key("agent");
    o.open("ephemeral_id");
    o.str(&h.agent.ephemeral_id);
    o.key("version");
    o.str(&h.agent.version);
    o.close();
    o.key("cgroup");
    o.open("id");
    o.num(ev.cgroup.id);
    o.opt_str("path", ev.cgroup.path.as_deref());
    o.opt_str("systemd_unit", ev.cgroup.systemd_unit.as_deref());
    o.close();
    if let Some(c) = &ev.container {
        o.key("container");
        o.open("id");
        o.str(&c.id);
        o.key("runtime");
        o.str(c.runtime);
        o.close();
    }
    if !ev.destination.is_absent() {
        let d = &ev.destination;
        o.key("destination");
        o.0.push(b'{');
        let mut first = true;
        if let Some(ip) = d.ip {
            o.0.extend_from_slice(b"\"ip\":");
            write::ip(o.0, &ip);
            first = false;
        }
        if !first {
            o.0.push(b',');
        }
        o.0.extend_from_slice(b"\"mapped\":");
        write::bool(o.0, d.mapped);
        o.key("port");
        o.num(u64::from(d.port));
        o.key("region");
        o.str(&d.region);
        o.close();
    }
    o.key("group");
    named(&mut o, &ev.group);
    o.key("hook");
    o.str(ev.hook);
    o.key("host");
    if h.host.labels.is_empty() {
        o.open("name");
    } else {
        o.open("labels");
        o.value(&h.host.labels);
        o.key("name");
    }
    o.str(&h.host.name);
    o.close();
    o.key("id");
    o.str(&h.id);
    o.key("network");
    o.0.push(b'{');
    let n = &ev.network;
    if let Some(e) = n.ethertype {
        o.0.extend_from_slice(b"\"ethertype\":");
        o.num(u64::from(e));
        o.0.push(b',');
    }
    if let Some(i) = n.iana_number {
        o.0.extend_from_slice(b"\"iana_number\":");
        o.num(u64::from(i));
        o.0.push(b',');
    }
    o.0.extend_from_slice(b"\"transport\":");
    o.str(&n.transport);
    o.key("type");
    o.str(n.kind);
    o.close();
    o.key("policy");
    o.open("digest");
    o.str(&ev.policy.digest);
    o.key("generation");
    o.num(ev.policy.generation);
    o.key("mode");
    o.str(ev.policy.mode);
    o.close();
    let p = &ev.process;
    o.key("process");
    o.open("attribution");
    o.str(p.attribution);
    o.opt_str("command_line", p.command_line.as_deref());
    o.key("details");
    o.str(p.details);
    o.opt_str("executable", p.executable.as_deref());
    o.key("exited");
    write::bool(o.0, p.exited);
    o.key("name");
    o.str(&p.name);
    if let Some(parent) = &p.parent {
        o.key("parent");
        o.open("pid");
        o.num(u64::from(parent.pid));
        o.close();
    }
    o.key("pid");
    o.num(u64::from(p.pid));
    o.key("thread");
    o.open("id");
    o.num(p.thread.id);
    o.close();
    o.close();
    o.key("rule");
    o.open("id");
    o.num(u64::from(ev.rule.id));
    o.key("name");
    o.str(&ev.rule.name);
    o.close();
    o.key("sequence");
    o.num(h.sequence);
    o.key("suppressed");
    o.num(u64::from(ev.suppressed));
    o.key("type");
    o.str(h.kind);
    o.key("user");
    named(&mut o, &ev.user);
    o.key("verdict");
    o.str(ev.verdict);
    o.close();
    true
}

fn named(o: &mut Canonical, n: &crate::events::Named) {
    o.open("id");
    o.num(n.id);
    o.opt_str("name", n.name.as_deref());
    o.close();
}

/// A JSON text written member by member (the caller gives the order).
struct Canonical<'a>(&'a mut Vec<u8>);

impl Canonical<'_> {
    /// `{"key":`
    fn open(&mut self, key: &str) {
        self.0.extend_from_slice(b"{\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// `,"key":`
    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn close(&mut self) {
        self.0.push(b'}');
    }

    fn num(&mut self, n: u64) {
        write::num(self.0, n);
    }

    fn str(&mut self, s: &str) {
        write::str(self.0, s);
    }

    fn opt_str(&mut self, key: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.key(key);
            self.str(s);
        }
    }

    /// As serde_json writes it (string maps).
    fn value<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        // Writing to a Vec cannot fail, and these values always serialize.
        let _ = serde_json::to_writer(&mut *self.0, v);
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
