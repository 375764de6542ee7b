//! The native JSON of a connection record written by hand into the caller's buffer: the
//! bytes serde_json writes for [`ConnectionEvent`] (members in field order, compact), without
//! its per-field dispatch and with a copy for strings that need no escape. Every record of
//! a flood goes this way; the test `hand_written_is_serde_json` holds the two together, and
//! the golden files hold both to the published format.
use std::net::IpAddr;

use crate::events::{ConnectionEvent, Named};

/// Appends `s` as a JSON string as serde_json writes it: quoted, with `"`, `\`, and control
/// characters below U+0020 escaped (and nothing else).
#[inline]
pub(super) fn str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if plain(b) {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether no byte of `b` needs an escape in JSON (`"`, `\`, below 0x20): eight bytes at a
/// time (the strings of a record are short, so a byte loop's cost is in its every byte).
#[inline]
fn plain(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `v` is zero, or below `n` (n <= 128): exact for "is there one" (Bit
    // Twiddling Hacks, "determine if a word has a byte less than n").
    let less = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if less(v, 0x20) | less(v ^ (ONES * 0x22), 1) | less(v ^ (ONES * 0x5c), 1) != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
}

/// Appends `n` in decimal.
#[inline]
pub(super) fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `true` or `false`.
#[inline]
pub(super) fn bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends an address as serde_json writes it: its text form, quoted.
pub(super) fn ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(b'"');
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                num(out, u64::from(*o));
            }
            out.push(b'"');
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            out.push(b'"');
            let _ = write!(out, "{ip}");
            out.push(b'"');
        }
    }
}

/// `,"key":` (`key` needs no escape).
#[inline]
fn key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn opt_str(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        key(out, k);
        str(out, v);
    }
}

fn named(out: &mut Vec<u8>, n: &Named) {
    out.extend_from_slice(b"{\"id\":");
    num(out, n.id);
    opt_str(out, "name", n.name.as_deref());
    out.push(b'}');
}

/// Appends the native JSON object of `ev` (no newline), byte for byte what
/// `serde_json::to_writer(out, ev)` appends.
pub fn connection(out: &mut Vec<u8>, ev: &ConnectionEvent) {
    let h = &ev.header;
    out.extend_from_slice(b"{\"@timestamp\":");
    str(out, &h.timestamp);
    key(out, "type");
    str(out, h.kind);
    key(out, "id");
    str(out, &h.id);
    key(out, "sequence");
    num(out, h.sequence);
    key(out, "host");
    out.extend_from_slice(b"{\"name\":");
    str(out, &h.host.name);
    if !h.host.labels.is_empty() {
        key(out, "labels");
        out.push(b'{');
        for (i, (k, v)) in h.host.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            str(out, k);
            out.push(b':');
            str(out, v);
        }
        out.push(b'}');
    }
    out.push(b'}');
    key(out, "agent");
    out.extend_from_slice(b"{\"version\":");
    str(out, &h.agent.version);
    key(out, "ephemeral_id");
    str(out, &h.agent.ephemeral_id);
    out.push(b'}');
    key(out, "verdict");
    str(out, ev.verdict);
    key(out, "hook");
    str(out, ev.hook);
    let p = &ev.process;
    key(out, "process");
    out.extend_from_slice(b"{\"pid\":");
    num(out, u64::from(p.pid));
    key(out, "name");
    str(out, &p.name);
    key(out, "thread");
    out.extend_from_slice(b"{\"id\":");
    num(out, p.thread.id);
    out.push(b'}');
    if let Some(parent) = &p.parent {
        key(out, "parent");
        out.extend_from_slice(b"{\"pid\":");
        num(out, u64::from(parent.pid));
        out.push(b'}');
    }
    opt_str(out, "executable", p.executable.as_deref());
    opt_str(out, "command_line", p.command_line.as_deref());
    key(out, "exited");
    bool(out, p.exited);
    key(out, "details");
    str(out, p.details);
    key(out, "attribution");
    str(out, p.attribution);
    out.push(b'}');
    key(out, "user");
    named(out, &ev.user);
    key(out, "group");
    named(out, &ev.group);
    key(out, "cgroup");
    out.extend_from_slice(b"{\"id\":");
    num(out, ev.cgroup.id);
    opt_str(out, "path", ev.cgroup.path.as_deref());
    opt_str(out, "systemd_unit", ev.cgroup.systemd_unit.as_deref());
    out.push(b'}');
    if let Some(c) = &ev.container {
        key(out, "container");
        out.extend_from_slice(b"{\"id\":");
        str(out, &c.id);
        key(out, "runtime");
        str(out, c.runtime);
        out.push(b'}');
    }
    let n = &ev.network;
    key(out, "network");
    out.extend_from_slice(b"{\"type\":");
    str(out, n.kind);
    key(out, "transport");
    str(out, &n.transport);
    if let Some(i) = n.iana_number {
        key(out, "iana_number");
        num(out, u64::from(i));
    }
    if let Some(e) = n.ethertype {
        key(out, "ethertype");
        num(out, u64::from(e));
    }
    out.push(b'}');
    let d = &ev.destination;
    if !d.is_absent() {
        key(out, "destination");
        out.push(b'{');
        if let Some(a) = &d.ip {
            out.extend_from_slice(b"\"ip\":");
            ip(out, a);
            out.push(b',');
        }
        out.extend_from_slice(b"\"port\":");
        num(out, u64::from(d.port));
        key(out, "region");
        str(out, &d.region);
        key(out, "mapped");
        bool(out, d.mapped);
        out.push(b'}');
    }
    key(out, "policy");
    out.extend_from_slice(b"{\"mode\":");
    str(out, ev.policy.mode);
    key(out, "generation");
    num(out, ev.policy.generation);
    key(out, "digest");
    str(out, &ev.policy.digest);
    out.push(b'}');
    key(out, "rule");
    out.extend_from_slice(b"{\"id\":");
    num(out, u64::from(ev.rule.id));
    key(out, "name");
    str(out, &ev.rule.name);
    out.push(b'}');
    key(out, "suppressed");
    num(out, u64::from(ev.suppressed));
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every position of a word and of the tail.
    #[test]
    fn plain_finds_every_byte_that_needs_an_escape() {
        for len in [1, 7, 8, 9, 16, 17] {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    let want = c >= 0x20 && c != b'"' && c != b'\\';
                    assert_eq!(plain(&b), want, "byte {c:#x} at {at} of {len}");
                }
            }
        }
        assert!(plain(b""));
    }
}
