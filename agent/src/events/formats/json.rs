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
use crate::events::Record;

/// Bytes reserved for a rendered record (and its link and newline).
const RECORD_BYTES: usize = 2048;

/// Serializes `record` as one JSON object (no newline).
pub fn render(record: &Record) -> Vec<u8> {
    // Room for a connection record at once (about 1.2 KB), instead of growing from 128 bytes.
    let mut out = Vec::with_capacity(RECORD_BYTES);
    let res = match record {
        Record::Connection(c) => serde_json::to_writer(&mut out, c),
        Record::Lifecycle(l) => serde_json::to_writer(&mut out, l),
        Record::Summary(s) => serde_json::to_writer(&mut out, s),
    }
    .map(|()| out);
    // These types only hold strings, numbers, maps with string keys and IP addresses: their
    // serialization cannot fail.
    res.unwrap_or_else(|e| {
        format!(
            "{{\"type\":\"serialization_error\",\"error\":{:?}}}",
            e.to_string()
        )
        .into_bytes()
    })
}
