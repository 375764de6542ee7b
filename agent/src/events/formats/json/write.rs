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

/// Whether no byte of `b` needs an escape in JSON (`"`, `\`, below 0x20), eight bytes at a
/// time and without a byte loop: the strings of a record are short, so the cost of a byte
/// loop over each one's tail would be most of it. A tail is checked as the last eight bytes
/// (overlapping the word before); a string shorter than eight as two overlapping loads
/// padded with a byte that needs no escape.
#[inline]
fn plain(b: &[u8]) -> bool {
    let n = b.len();
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if !word_plain(load8(b, i)) {
                return false;
            }
            i += 8;
        }
        return word_plain(load8(b, n - 8));
    }
    // Bytes 0..4 and n-4..n (or 0..2 and n-2..n) cover the string; the rest is padding.
    // Which byte of the word holds which does not matter: the test is for any byte.
    const PAD: u64 = u64::from_ne_bytes([b'a'; 8]);
    let v = if n >= 4 {
        let lo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_ne_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | u64::from(hi) << 32
    } else if n >= 2 {
        let lo = u16::from_ne_bytes([b[0], b[1]]);
        let hi = u16::from_ne_bytes([b[n - 2], b[n - 1]]);
        PAD & !0xffff_ffff | u64::from(lo) | u64::from(hi) << 16
    } else if n == 1 {
        PAD & !0xff | u64::from(b[0])
    } else {
        return true;
    };
    word_plain(v)
}

/// The eight bytes of `b` at `i` (`i + 8 <= b.len()`) as one word, native byte order.
#[inline(always)]
fn load8(b: &[u8], i: usize) -> u64 {
    let w: [u8; 8] = b[i..i + 8].try_into().expect("eight bytes");
    u64::from_ne_bytes(w)
}

/// Whether no byte of `v` is below 0x20, `"` or `\`.
#[inline(always)]
fn word_plain(v: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `v` is zero, or below `n` (n <= 128): exact for "is there one" (Bit
    // Twiddling Hacks, "determine if a word has a byte less than n").
    let less = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    less(v, 0x20) | less(v ^ (ONES * 0x22), 1) | less(v ^ (ONES * 0x5c), 1) == 0
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

/// Where each member of a rendered connection record lies in its body: for member `i` (the
/// constants of the module `member`), the byte range of `"key":value`, without the comma before it;
/// empty for an absent member. Filled by [`connection_marked`], so that the record's canonical
/// bytes ([`super::canonical_marked_into`]) are copied from the body, not written again.
#[derive(Clone, Debug)]
pub struct Marks(pub(super) [(usize, usize); member::COUNT]);

impl Marks {
    /// Every member absent.
    pub const fn new() -> Self {
        Self([(0, 0); member::COUNT])
    }

    /// The bytes of member `i` in `body` (the buffer [`connection_marked`] wrote to).
    #[inline]
    pub(super) fn get<'a>(&self, body: &'a [u8], i: usize) -> &'a [u8] {
        let (from, to) = self.0[i];
        &body[from..to]
    }
}

impl Default for Marks {
    fn default() -> Self {
        Self::new()
    }
}

/// Member indices of [`Marks`]: the record's own members in rendered order, then those of
/// the objects whose members the canonical form puts in another order.
pub(crate) mod member {
    pub const TIMESTAMP: usize = 0;
    pub const TYPE: usize = 1;
    pub const ID: usize = 2;
    pub const SEQUENCE: usize = 3;
    pub const HOST: usize = 4;
    pub const AGENT: usize = 5;
    pub const VERDICT: usize = 6;
    pub const HOOK: usize = 7;
    pub const PROCESS: usize = 8;
    pub const USER: usize = 9;
    pub const GROUP: usize = 10;
    pub const CGROUP: usize = 11;
    pub const CONTAINER: usize = 12;
    pub const NETWORK: usize = 13;
    pub const DESTINATION: usize = 14;
    pub const POLICY: usize = 15;
    pub const RULE: usize = 16;
    pub const SUPPRESSED: usize = 17;
    pub const HOST_NAME: usize = 18;
    pub const HOST_LABELS: usize = 19;
    pub const AGENT_VERSION: usize = 20;
    pub const AGENT_EPHEMERAL_ID: usize = 21;
    pub const PROCESS_PID: usize = 22;
    pub const PROCESS_NAME: usize = 23;
    pub const PROCESS_THREAD: usize = 24;
    pub const PROCESS_PARENT: usize = 25;
    pub const PROCESS_EXECUTABLE: usize = 26;
    pub const PROCESS_COMMAND_LINE: usize = 27;
    pub const PROCESS_EXITED: usize = 28;
    pub const PROCESS_DETAILS: usize = 29;
    pub const PROCESS_ATTRIBUTION: usize = 30;
    pub const NETWORK_TYPE: usize = 31;
    pub const NETWORK_TRANSPORT: usize = 32;
    pub const NETWORK_IANA_NUMBER: usize = 33;
    pub const NETWORK_ETHERTYPE: usize = 34;
    pub const DESTINATION_IP: usize = 35;
    pub const DESTINATION_PORT: usize = 36;
    pub const DESTINATION_REGION: usize = 37;
    pub const DESTINATION_MAPPED: usize = 38;
    pub const POLICY_MODE: usize = 39;
    pub const POLICY_GENERATION: usize = 40;
    pub const POLICY_DIGEST: usize = 41;
    pub const COUNT: usize = 42;
}

/// Opens member `i` of an object as its first: `"key":` (`key` needs no escape).
#[inline]
fn first(out: &mut Vec<u8>, m: &mut Marks, i: usize, key: &str) {
    m.0[i].0 = out.len();
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Opens member `i` after another: `,"key":`.
#[inline]
fn next(out: &mut Vec<u8>, m: &mut Marks, i: usize, key: &str) {
    out.push(b',');
    first(out, m, i, key);
}

/// Closes member `i` here.
#[inline]
fn end(out: &[u8], m: &mut Marks, i: usize) {
    m.0[i].1 = out.len();
}

/// A string member `i` after another.
#[inline]
fn str_member(out: &mut Vec<u8>, m: &mut Marks, i: usize, key: &str, v: &str) {
    next(out, m, i, key);
    str(out, v);
    end(out, m, i);
}

/// An integer member `i` after another.
#[inline]
fn num_member(out: &mut Vec<u8>, m: &mut Marks, i: usize, key: &str, v: u64) {
    next(out, m, i, key);
    num(out, v);
    end(out, m, i);
}

fn opt_str(out: &mut Vec<u8>, m: &mut Marks, i: usize, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        str_member(out, m, i, key, v);
    }
}

fn named(out: &mut Vec<u8>, n: &Named) {
    out.extend_from_slice(b"{\"id\":");
    num(out, n.id);
    if let Some(name) = &n.name {
        out.extend_from_slice(b",\"name\":");
        str(out, name);
    }
    out.push(b'}');
}

/// Appends the native JSON object of `ev` (no newline), byte for byte what
/// `serde_json::to_writer(out, ev)` appends.
pub fn connection(out: &mut Vec<u8>, ev: &ConnectionEvent) {
    connection_marked(out, ev, &mut Marks::new());
}

/// [`connection`], noting in `m` (every member absent before) where each member went.
pub fn connection_marked(out: &mut Vec<u8>, ev: &ConnectionEvent, m: &mut Marks) {
    use member::*;
    let h = &ev.header;
    out.push(b'{');
    first(out, m, TIMESTAMP, "@timestamp");
    str(out, &h.timestamp);
    end(out, m, TIMESTAMP);
    str_member(out, m, TYPE, "type", h.kind);
    str_member(out, m, ID, "id", &h.id);
    num_member(out, m, SEQUENCE, "sequence", h.sequence);
    next(out, m, HOST, "host");
    out.push(b'{');
    first(out, m, HOST_NAME, "name");
    str(out, &h.host.name);
    end(out, m, HOST_NAME);
    if !h.host.labels.is_empty() {
        next(out, m, HOST_LABELS, "labels");
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
        end(out, m, HOST_LABELS);
    }
    out.push(b'}');
    end(out, m, HOST);
    next(out, m, AGENT, "agent");
    out.push(b'{');
    first(out, m, AGENT_VERSION, "version");
    str(out, &h.agent.version);
    end(out, m, AGENT_VERSION);
    str_member(
        out,
        m,
        AGENT_EPHEMERAL_ID,
        "ephemeral_id",
        &h.agent.ephemeral_id,
    );
    out.push(b'}');
    end(out, m, AGENT);
    str_member(out, m, VERDICT, "verdict", ev.verdict);
    str_member(out, m, HOOK, "hook", ev.hook);
    let p = &ev.process;
    next(out, m, PROCESS, "process");
    out.push(b'{');
    first(out, m, PROCESS_PID, "pid");
    num(out, u64::from(p.pid));
    end(out, m, PROCESS_PID);
    str_member(out, m, PROCESS_NAME, "name", &p.name);
    next(out, m, PROCESS_THREAD, "thread");
    out.extend_from_slice(b"{\"id\":");
    num(out, p.thread.id);
    out.push(b'}');
    end(out, m, PROCESS_THREAD);
    if let Some(parent) = &p.parent {
        next(out, m, PROCESS_PARENT, "parent");
        out.extend_from_slice(b"{\"pid\":");
        num(out, u64::from(parent.pid));
        out.push(b'}');
        end(out, m, PROCESS_PARENT);
    }
    opt_str(
        out,
        m,
        PROCESS_EXECUTABLE,
        "executable",
        p.executable.as_deref(),
    );
    opt_str(
        out,
        m,
        PROCESS_COMMAND_LINE,
        "command_line",
        p.command_line.as_deref(),
    );
    next(out, m, PROCESS_EXITED, "exited");
    bool(out, p.exited);
    end(out, m, PROCESS_EXITED);
    str_member(out, m, PROCESS_DETAILS, "details", p.details);
    str_member(out, m, PROCESS_ATTRIBUTION, "attribution", p.attribution);
    out.push(b'}');
    end(out, m, PROCESS);
    next(out, m, USER, "user");
    named(out, &ev.user);
    end(out, m, USER);
    next(out, m, GROUP, "group");
    named(out, &ev.group);
    end(out, m, GROUP);
    next(out, m, CGROUP, "cgroup");
    out.extend_from_slice(b"{\"id\":");
    num(out, ev.cgroup.id);
    if let Some(path) = &ev.cgroup.path {
        out.extend_from_slice(b",\"path\":");
        str(out, path);
    }
    if let Some(unit) = &ev.cgroup.systemd_unit {
        out.extend_from_slice(b",\"systemd_unit\":");
        str(out, unit);
    }
    out.push(b'}');
    end(out, m, CGROUP);
    if let Some(c) = &ev.container {
        next(out, m, CONTAINER, "container");
        out.extend_from_slice(b"{\"id\":");
        str(out, &c.id);
        out.extend_from_slice(b",\"runtime\":");
        str(out, c.runtime);
        out.push(b'}');
        end(out, m, CONTAINER);
    }
    let n = &ev.network;
    next(out, m, NETWORK, "network");
    out.push(b'{');
    first(out, m, NETWORK_TYPE, "type");
    str(out, n.kind);
    end(out, m, NETWORK_TYPE);
    str_member(out, m, NETWORK_TRANSPORT, "transport", &n.transport);
    if let Some(i) = n.iana_number {
        num_member(out, m, NETWORK_IANA_NUMBER, "iana_number", u64::from(i));
    }
    if let Some(e) = n.ethertype {
        num_member(out, m, NETWORK_ETHERTYPE, "ethertype", u64::from(e));
    }
    out.push(b'}');
    end(out, m, NETWORK);
    let d = &ev.destination;
    if !d.is_absent() {
        next(out, m, DESTINATION, "destination");
        out.push(b'{');
        if let Some(a) = &d.ip {
            first(out, m, DESTINATION_IP, "ip");
            ip(out, a);
            end(out, m, DESTINATION_IP);
            out.push(b',');
        }
        first(out, m, DESTINATION_PORT, "port");
        num(out, u64::from(d.port));
        end(out, m, DESTINATION_PORT);
        str_member(out, m, DESTINATION_REGION, "region", &d.region);
        next(out, m, DESTINATION_MAPPED, "mapped");
        bool(out, d.mapped);
        end(out, m, DESTINATION_MAPPED);
        out.push(b'}');
        end(out, m, DESTINATION);
    }
    next(out, m, POLICY, "policy");
    out.push(b'{');
    first(out, m, POLICY_MODE, "mode");
    str(out, ev.policy.mode);
    end(out, m, POLICY_MODE);
    num_member(
        out,
        m,
        POLICY_GENERATION,
        "generation",
        ev.policy.generation,
    );
    str_member(out, m, POLICY_DIGEST, "digest", &ev.policy.digest);
    out.push(b'}');
    end(out, m, POLICY);
    next(out, m, RULE, "rule");
    out.extend_from_slice(b"{\"id\":");
    num(out, u64::from(ev.rule.id));
    out.extend_from_slice(b",\"name\":");
    str(out, &ev.rule.name);
    out.push(b'}');
    end(out, m, RULE);
    num_member(out, m, SUPPRESSED, "suppressed", u64::from(ev.suppressed));
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every position of a word and of the tail.
    #[test]
    fn plain_finds_every_byte_that_needs_an_escape() {
        for len in [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17] {
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
