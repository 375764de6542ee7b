//! The native JSON of a connection record written by hand into the caller's buffer, in its
//! RFC 8785 (JCS) form: the members serde_json writes for [`ConnectionEvent`], compact and
//! in key order, without serde's per-field dispatch, with a copy for strings that need no
//! escape, and with no second pass to find the record's canonical bytes for its hash chain
//! link (the body is those bytes), and with the members that repeat from one record of a
//! process to the next (agent, cgroup, container, host, policy, process) copied from the
//! last record's where it held the same values ([`Parts`]). Every record of a flood goes
//! this way; the test `hand_written_is_canonical_serde_json` holds it to serde_json and JCS,
//! `kept_parts_follow_every_change` the kept parts to every value they are written from, and
//! the golden files to the published format.
use std::{net::IpAddr, sync::Arc};

use crate::events::{
    AgentInfo, Cgroup, ConnectionEvent, Container, Host, Named, PolicyRef, Process,
};

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

/// Opens a member after another: `,"key":` (`key` needs no escape).
#[inline]
fn key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A string member after another.
#[inline]
fn str_member(out: &mut Vec<u8>, k: &str, v: &str) {
    key(out, k);
    str(out, v);
}

/// An integer member after another.
#[inline]
fn num_member(out: &mut Vec<u8>, k: &str, v: u64) {
    key(out, k);
    num(out, v);
}

fn opt_str(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        str_member(out, k, v);
    }
}

fn named(out: &mut Vec<u8>, n: &Named) {
    out.extend_from_slice(b"{\"id\":");
    num(out, n.id);
    opt_str(out, "name", n.name.as_deref());
    out.push(b'}');
}

/// Whether [`connection`] writes `ev` in RFC 8785 form, so that its bytes are its own
/// canonical bytes: the host label keys (the only keys a record does not fix) are printable
/// ASCII without `"` or `\`, so they need no escape and their byte order is JCS's UTF-16
/// order.
pub fn is_canonical(ev: &ConnectionEvent) -> bool {
    ev.header.host.labels.keys().all(|k| {
        k.bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    })
}

/// Appends the native JSON object of `ev` (no newline): compact, every object's members in
/// key order (RFC 8785 section 3.2.3; every key is ASCII, so byte order is UTF-16 order),
/// strings escaped as serde_json escapes them, which is JCS's escaping. Where
/// [`is_canonical`] holds, the bytes are the record's canonical bytes: the JCS of
/// `serde_json::to_vec(ev)` (the test `hand_written_is_canonical_serde_json` holds the
/// two together).
pub fn connection(out: &mut Vec<u8>, ev: &ConnectionEvent) {
    PARTS.with_borrow_mut(|parts| connection_with(out, ev, parts));
}

fn connection_with(out: &mut Vec<u8>, ev: &ConnectionEvent, parts: &mut Parts) {
    let h = &ev.header;
    out.extend_from_slice(b"{\"@timestamp\":");
    str(out, &h.timestamp);
    parts
        .scope
        .put(out, ev, Scope::of, Scope::is_of, Scope::write);
    let d = &ev.destination;
    if !d.is_absent() {
        out.extend_from_slice(b",\"destination\":{");
        if let Some(a) = &d.ip {
            out.extend_from_slice(b"\"ip\":");
            ip(out, a);
            out.push(b',');
        }
        out.extend_from_slice(b"\"mapped\":");
        bool(out, d.mapped);
        num_member(out, "port", u64::from(d.port));
        str_member(out, "region", &d.region);
        out.push(b'}');
    }
    key(out, "group");
    named(out, &ev.group);
    str_member(out, "hook", ev.hook);
    parts.host.put(
        out,
        ev,
        |ev| Arc::clone(&ev.header.host),
        |k, ev| Arc::ptr_eq(k, &ev.header.host),
        |out, k| host(out, k),
    );
    str_member(out, "id", &h.id);
    let n = &ev.network;
    out.extend_from_slice(b",\"network\":{");
    // The optional numbers sort before `transport`, which always follows them.
    let numbers = [
        ("ethertype", n.ethertype.map(u64::from)),
        ("iana_number", n.iana_number.map(u64::from)),
    ];
    for (k, v) in numbers {
        if let Some(v) = v {
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
            num(out, v);
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"transport\":");
    str(out, &n.transport);
    str_member(out, "type", n.kind);
    out.push(b'}');
    parts
        .actor
        .put(out, ev, Actor::of, Actor::is_of, Actor::write);
    out.extend_from_slice(b",\"rule\":{\"id\":");
    num(out, u64::from(ev.rule.id));
    str_member(out, "name", &ev.rule.name);
    out.push(b'}');
    num_member(out, "sequence", h.sequence);
    num_member(out, "suppressed", u64::from(ev.suppressed));
    str_member(out, "type", h.kind);
    key(out, "user");
    named(out, &ev.user);
    str_member(out, "verdict", ev.verdict);
    out.push(b'}');
}

thread_local! {
    /// The rendered parts of this thread's last connection record.
    static PARTS: std::cell::RefCell<Parts> = std::cell::RefCell::default();
}

/// The members of a connection record that repeat from one record to the next of a process
/// (about two thirds of its bytes: agent, cgroup, container, host, policy, process), as the
/// last record rendered them. A flood's records differ in their time, destination, id and
/// sequence; writing the rest member by member took as long as hashing the whole record.
#[derive(Default)]
struct Parts {
    scope: Part<Scope>,
    host: Part<Arc<Host>>,
    actor: Part<Actor>,
}

/// One rendered part and the values it was rendered from. The values hold the record's
/// shared strings (`Arc`s), so none of them can be freed and its address reused by another
/// string while it is here: the same address is the same text.
struct Part<K> {
    from: Option<K>,
    bytes: Vec<u8>,
}

impl<K> Default for Part<K> {
    fn default() -> Self {
        Self {
            from: None,
            bytes: Vec::new(),
        }
    }
}

impl<K> Part<K> {
    /// Appends the part of `ev`: the kept bytes if `is_of` says they were rendered from the
    /// same values, else `write` of the values `of` takes from `ev` (kept for the next one).
    fn put(
        &mut self,
        out: &mut Vec<u8>,
        ev: &ConnectionEvent,
        of: impl FnOnce(&ConnectionEvent) -> K,
        is_of: impl FnOnce(&K, &ConnectionEvent) -> bool,
        write: impl FnOnce(&mut Vec<u8>, &K),
    ) {
        if !self.from.as_ref().is_some_and(|k| is_of(k, ev)) {
            // Forgotten first: bytes half written are never kept under the old values.
            self.from = None;
            let k = of(ev);
            self.bytes.clear();
            write(&mut self.bytes, &k);
            self.from = Some(k);
        }
        out.extend_from_slice(&self.bytes);
    }
}

/// Whether two optional shared strings are the same one (or both absent).
fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// `,"agent":…,"cgroup":…[,"container":…]`.
struct Scope {
    agent: Arc<AgentInfo>,
    cgroup: Cgroup,
    container: Option<Container>,
}

impl Scope {
    fn of(ev: &ConnectionEvent) -> Self {
        Self {
            agent: Arc::clone(&ev.header.agent),
            cgroup: ev.cgroup.clone(),
            container: ev.container.clone(),
        }
    }

    fn is_of(&self, ev: &ConnectionEvent) -> bool {
        // Named in full, so that a field added to either type must be compared here.
        let Cgroup {
            id,
            path,
            systemd_unit,
        } = &ev.cgroup;
        Arc::ptr_eq(&self.agent, &ev.header.agent)
            && self.cgroup.id == *id
            && same(self.cgroup.path.as_ref(), path.as_ref())
            && same(self.cgroup.systemd_unit.as_ref(), systemd_unit.as_ref())
            && match (&self.container, &ev.container) {
                (Some(a), Some(Container { id, runtime })) => {
                    Arc::ptr_eq(&a.id, id) && a.runtime == *runtime
                }
                (None, None) => true,
                _ => false,
            }
    }

    fn write(out: &mut Vec<u8>, k: &Self) {
        out.extend_from_slice(b",\"agent\":{\"ephemeral_id\":");
        str(out, &k.agent.ephemeral_id);
        str_member(out, "version", &k.agent.version);
        out.extend_from_slice(b"},\"cgroup\":{\"id\":");
        num(out, k.cgroup.id);
        opt_str(out, "path", k.cgroup.path.as_deref());
        opt_str(out, "systemd_unit", k.cgroup.systemd_unit.as_deref());
        out.push(b'}');
        if let Some(c) = &k.container {
            out.extend_from_slice(b",\"container\":{\"id\":");
            str(out, &c.id);
            str_member(out, "runtime", c.runtime);
            out.push(b'}');
        }
    }
}

/// `,"host":…`.
fn host(out: &mut Vec<u8>, h: &Host) {
    out.extend_from_slice(b",\"host\":{");
    if !h.labels.is_empty() {
        out.extend_from_slice(b"\"labels\":{");
        for (i, (k, v)) in h.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            str(out, k);
            out.push(b':');
            str(out, v);
        }
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(b"\"name\":");
    str(out, &h.name);
    out.push(b'}');
}

/// `,"policy":…,"process":…`.
struct Actor {
    policy: PolicyRef,
    process: Process,
}

impl Actor {
    fn of(ev: &ConnectionEvent) -> Self {
        Self {
            policy: ev.policy.clone(),
            process: ev.process.clone(),
        }
    }

    fn is_of(&self, ev: &ConnectionEvent) -> bool {
        // Named in full, so that a field added to either type must be compared here.
        let Process {
            pid,
            name,
            thread,
            parent,
            executable,
            command_line,
            exited,
            details,
            attribution,
        } = &ev.process;
        let PolicyRef {
            mode,
            generation,
            digest,
        } = &ev.policy;
        let (a, p) = (&self.process, &self.policy);
        Arc::ptr_eq(&p.digest, digest)
            && p.generation == *generation
            && p.mode == *mode
            && a.pid == *pid
            && a.thread == *thread
            && a.name == *name
            && a.exited == *exited
            && a.details == *details
            && a.attribution == *attribution
            && a.parent == *parent
            && same(a.executable.as_ref(), executable.as_ref())
            && same(a.command_line.as_ref(), command_line.as_ref())
    }

    fn write(out: &mut Vec<u8>, k: &Self) {
        out.extend_from_slice(b",\"policy\":{\"digest\":");
        str(out, &k.policy.digest);
        num_member(out, "generation", k.policy.generation);
        str_member(out, "mode", k.policy.mode);
        let p = &k.process;
        out.extend_from_slice(b"},\"process\":{\"attribution\":");
        str(out, p.attribution);
        opt_str(out, "command_line", p.command_line.as_deref());
        str_member(out, "details", p.details);
        opt_str(out, "executable", p.executable.as_deref());
        key(out, "exited");
        bool(out, p.exited);
        str_member(out, "name", &p.name);
        if let Some(parent) = &p.parent {
            out.extend_from_slice(b",\"parent\":{\"pid\":");
            num(out, u64::from(parent.pid));
            out.push(b'}');
        }
        num_member(out, "pid", u64::from(p.pid));
        out.extend_from_slice(b",\"thread\":{\"id\":");
        num(out, p.thread.id);
        out.extend_from_slice(b"}}");
    }
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
