//! The hash chain that makes a sink's record stream tamper-evident.
//!
//! Every record a sink receives carries a *link*: `link(n) = SHA-256(link(n-1) || C(n))`,
//! where `link(0)` is 32 zero bytes, `link(n-1)` the 32 raw bytes of the previous record's
//! link, and `C(n)` the canonical bytes of record `n` (below). With a key
//! ([`Chain::keyed`]), `link(n) = HMAC-SHA-256(key, link(n-1) || C(n))`. The link is
//! written as `sha256:` (or `hmac-sha256:`) and 64 lowercase hex digits.
//!
//! The chain follows the order in which [`crate::events::pipeline::Pipeline::submit`] receives
//! records, which is the order of their `sequence` numbers; it starts again at every agent
//! run (the run's first record, `sequence` 1, links to 32 zero bytes). It is computed per
//! sink over the record as that sink renders it, so every format carries a link it can be
//! checked with alone, and a frame that waits in the spool keeps its link.
//!
//! Where the link is, and what the canonical bytes `C(n)` are:
//!
//! | format | link field | `C(n)` |
//! | --- | --- | --- |
//! | `json` | `chain` (top level) | RFC 8785 (JCS) serialization of the record's JSON object without `chain`: egressd writes native records in that form, so `C(n)` is the line without its `,"chain":"…"` member |
//! | `ecs` | `event.hash` | JCS of the document without `event.hash` |
//! | `ocsf` | `unmapped.egressd.chain` | JCS of the event without `unmapped.egressd.chain` |
//! | `cef` | `egressdChain` (last extension) | the UTF-8 bytes of the CEF text from `CEF:0|` up to, not including, ` egressdChain=` |
//!
//! In RFC 5424 messages the link is inside MSG (the format's own field), after the header
//! and the optional UTF-8 byte order mark; the syslog header itself is not covered.
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::events::formats::Format;

/// Bytes of a link.
pub const LINK_BYTES: usize = 32;
/// Prefix of an unkeyed link.
pub const SHA256: &str = "sha256:";
/// Prefix of a keyed link.
pub const HMAC_SHA256: &str = "hmac-sha256:";
/// The CEF extension key of the link.
pub const CEF_KEY: &str = "egressdChain";
/// Most bytes the link adds to a rendered record (the sinks' size bound reserves them).
pub const MAX_OVERHEAD: usize = 128;

/// The running state of one sink's chain.
#[derive(Clone)]
pub struct Chain {
    prev: [u8; LINK_BYTES],
    key: Option<std::sync::Arc<[u8]>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Chain")
            .field("prev", &hex(&self.prev))
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// An unkeyed (SHA-256) chain at its start.
    pub fn new() -> Self {
        Self {
            prev: [0; LINK_BYTES],
            key: None,
        }
    }

    /// A keyed (HMAC-SHA-256) chain at its start.
    pub fn keyed(key: std::sync::Arc<[u8]>) -> Self {
        Self {
            prev: [0; LINK_BYTES],
            key: Some(key),
        }
    }

    /// An unkeyed chain continuing after the link `prev` (tests forge tails with it).
    #[cfg(test)]
    pub(crate) fn unkeyed_after(prev: [u8; LINK_BYTES]) -> Self {
        Self { prev, key: None }
    }

    /// The link of the next record, whose canonical bytes are `canonical`, as text; the
    /// chain moves on to it.
    pub fn advance(&mut self, canonical: &[u8]) -> String {
        let next = self.step(canonical);
        let prefix = self.prefix();
        let mut text = String::with_capacity(prefix.len() + 2 * LINK_BYTES);
        text.push_str(prefix);
        push_hex(&mut text, &next);
        text
    }

    /// Renders the record `body` (in `format`, without a link) with the next link added
    /// where the module docs say; a JSON body that does not parse (which the formats never
    /// produce) is returned unchanged and the chain does not move.
    pub fn seal(&mut self, format: Format, body: &[u8]) -> Vec<u8> {
        match format {
            Format::Cef => {
                let link = self.advance(body);
                let mut v = body.to_vec();
                v.extend_from_slice(format!(" {CEF_KEY}={link}").as_bytes());
                v
            }
            Format::Json => {
                // The hot path: the native body as serde_json wrote it, keys sorted in
                // place; anything it does not vouch for goes the general way below.
                let Some(canonical) = sorted_compact(body) else {
                    return self.seal_parsed(format, body);
                };
                let link = self.advance(&canonical);
                append_link(body, &link)
            }
            Format::Ecs | Format::Ocsf => self.seal_parsed(format, body),
        }
    }

    /// [`Self::seal`] of a native JSON `body` that is its own canonical form (written in
    /// JCS order, [`crate::events::formats::json::write::is_canonical`]): the body is hashed
    /// as it is and the link appended in place.
    pub fn seal_canonical(&mut self, mut body: Vec<u8>) -> Vec<u8> {
        let next = self.step(&body);
        let prefix = self.prefix();
        push_link_member(&mut body, |b| {
            b.extend_from_slice(prefix.as_bytes());
            push_hex_bytes(b, &next);
        });
        body
    }

    /// Moves the chain on to the link of the record whose canonical bytes are `canonical`;
    /// that link.
    fn step(&mut self, canonical: &[u8]) -> [u8; LINK_BYTES] {
        self.prev = link(&self.prev, canonical, self.key.as_deref());
        self.prev
    }

    fn prefix(&self) -> &'static str {
        if self.key.is_some() {
            HMAC_SHA256
        } else {
            SHA256
        }
    }

    /// [`Self::seal`] of a JSON format by parsing the body (any JSON text).
    fn seal_parsed(&mut self, format: Format, body: &[u8]) -> Vec<u8> {
        let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
            return body.to_vec();
        };
        let Ok(canonical) = canonical_json(&value) else {
            return body.to_vec();
        };
        let link = self.advance(&canonical);
        if format == Format::Json {
            return append_link(body, &link);
        }
        if let Some(slot) = insert_path(&mut value, json_path(format)) {
            *slot = Value::String(link);
        }
        serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
    }
}

/// The native object keeps its field order: the link is appended as its last member.
fn append_link(body: &[u8], link: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + link.len() + 12);
    v.extend_from_slice(body);
    push_link_member(&mut v, |v| v.extend_from_slice(link.as_bytes()));
    v
}

/// Appends `"chain":"LINK"` as the last member of the JSON object `body` (nothing when
/// `body` does not end with `}`); `link` writes the link's text.
fn push_link_member(body: &mut Vec<u8>, link: impl FnOnce(&mut Vec<u8>)) {
    if body.last() == Some(&b'}') {
        body.pop();
        if body.last() != Some(&b'{') {
            body.push(b',');
        }
        body.extend_from_slice(b"\"chain\":\"");
        link(body);
        body.extend_from_slice(b"\"}");
    }
}

/// [`canonical_json`] of `body` without building a [`Value`]: `body` is compact JSON as
/// serde_json writes it, and every object's members are put in key order, the rest copied
/// as it is. `None` (use [`canonical_json`]) for anything where that copy might not be the
/// canonical form: whitespace, a key with an escape or a non-ASCII character, a duplicate
/// key, a number with a fraction or exponent, a string escape serde_json does not write,
/// a raw control character, or text that is not one JSON value. Strings and integers as
/// serde_json writes them are their own JCS form (the test `sorted_compact_is_canonical`
/// holds this to [`canonical_json`]).
pub fn sorted_compact(body: &[u8]) -> Option<Vec<u8>> {
    // Copied strings must be text, as parsing would require.
    std::str::from_utf8(body).ok()?;
    // The output is the scratch space too (see `compact_value`): room for a copy of the
    // largest object besides the canonical text.
    let mut out = Vec::with_capacity(2 * body.len() + 16);
    let mut members = Vec::with_capacity(64);
    let end = compact_value(body, 0, &mut out, &mut members, 0)?;
    (end == body.len()).then_some(out)
}

/// Deepest nesting [`sorted_compact`] follows (records are a few levels deep).
const MAX_DEPTH: usize = 32;

/// One member of an object being sorted: its key (with quotes) as a range of the input,
/// its canonical value as a range of the output.
type Member = (std::ops::Range<usize>, std::ops::Range<usize>);

/// Writes the canonical form of the value at `b[i..]` to `out`; returns where it ends.
/// An object's members are written in input order first, then copied after them in key
/// order, and that copy moved back to where the object starts: no allocation per object.
/// `members` is a stack shared by the levels (each level uses the part above its parent's).
fn compact_value(
    b: &[u8],
    i: usize,
    out: &mut Vec<u8>,
    members: &mut Vec<Member>,
    depth: usize,
) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *b.get(i)? {
        b'{' => {
            let mut j = i + 1;
            if b.get(j) == Some(&b'}') {
                out.extend_from_slice(b"{}");
                return Some(j + 1);
            }
            let start = out.len();
            let base = members.len();
            loop {
                if b.get(j) != Some(&b'"') {
                    return None;
                }
                let key_end = plain_key_end(b, j + 1)?;
                if b.get(key_end + 1) != Some(&b':') {
                    return None;
                }
                let value = out.len();
                let next = compact_value(b, key_end + 2, out, members, depth + 1)?;
                members.push((j..key_end + 1, value..out.len()));
                j = next;
                match b.get(j) {
                    Some(b',') => j += 1,
                    Some(b'}') => break,
                    _ => return None,
                }
            }
            let own = &mut members[base..];
            own.sort_unstable_by(|x, y| b[x.0.clone()].cmp(&b[y.0.clone()]));
            if own
                .windows(2)
                .any(|w| b[w[0].0.clone()] == b[w[1].0.clone()])
            {
                return None;
            }
            let sorted = out.len();
            out.push(b'{');
            for (n, (key, value)) in members.drain(base..).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&b[key]);
                out.push(b':');
                out.extend_from_within(value);
            }
            out.push(b'}');
            let len = out.len() - sorted;
            out.copy_within(sorted.., start);
            out.truncate(start + len);
            Some(j + 1)
        }
        b'[' => {
            out.push(b'[');
            let mut j = i + 1;
            if b.get(j) == Some(&b']') {
                out.push(b']');
                return Some(j + 1);
            }
            loop {
                j = compact_value(b, j, out, members, depth + 1)?;
                match b.get(j) {
                    Some(b',') => {
                        out.push(b',');
                        j += 1;
                    }
                    Some(b']') => {
                        out.push(b']');
                        return Some(j + 1);
                    }
                    _ => return None,
                }
            }
        }
        b'"' => {
            let end = string_end(b, i + 1)?;
            out.extend_from_slice(&b[i..=end]);
            Some(end + 1)
        }
        b'-' | b'0'..=b'9' => {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            let end = i + 1 + digits;
            if b[i] == b'-' && digits == 0 {
                return None;
            }
            if matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            out.extend_from_slice(&b[i..end]);
            Some(end)
        }
        _ => {
            let lit: &[u8] = [&b"true"[..], b"false", b"null"]
                .into_iter()
                .find(|l| b[i..].starts_with(l))?;
            out.extend_from_slice(lit);
            Some(i + lit.len())
        }
    }
}

/// Index of the closing quote of a key starting at `i` (after its opening quote): printable
/// ASCII without escapes only.
fn plain_key_end(b: &[u8], i: usize) -> Option<usize> {
    let n = b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c))?;
    (b[i + n] == b'"').then_some(i + n)
}

/// Index of the closing quote of a string starting at `i` (after its opening quote), if
/// every escape in it is one serde_json writes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and
/// `\u00xx` in lowercase hex for other control characters) and no control character is raw.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        // Plain bytes first, in a tight loop: most of a record is.
        i += b
            .get(i..)?
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        match *b.get(i)? {
            b'"' => return Some(i),
            b'\\' => {
                match *b.get(i + 1)? {
                    b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let hex = b.get(i + 2..i + 6)?;
                        let lower = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
                        if !hex.iter().all(lower) {
                            return None;
                        }
                        let v = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                        // serde_json writes these as short escapes.
                        if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                }
            }
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

pub use crate::config::output::{MIN_KEY_BYTES, load_key};

/// `link(prev, canonical)` as the module docs define it.
pub fn link(prev: &[u8; LINK_BYTES], canonical: &[u8], key: Option<&[u8]>) -> [u8; LINK_BYTES] {
    match key {
        Some(k) => {
            // HMAC accepts keys of any length.
            let Ok(mut m) = Hmac::<Sha256>::new_from_slice(k) else {
                return [0; LINK_BYTES];
            };
            m.update(prev);
            m.update(canonical);
            m.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            h.update(prev);
            h.update(canonical);
            h.finalize().into()
        }
    }
}

/// A link's text, split: whether it is keyed, and its 32 bytes; `None` when it is neither
/// `sha256:` nor `hmac-sha256:` with 64 lowercase hex digits.
pub fn parse_link(text: &str) -> Option<(bool, [u8; LINK_BYTES])> {
    let (keyed, digits) = if let Some(d) = text.strip_prefix(SHA256) {
        (false, d)
    } else {
        (true, text.strip_prefix(HMAC_SHA256)?)
    };
    if digits.len() != 2 * LINK_BYTES
        || !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; LINK_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some((keyed, out))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len());
    push_hex(&mut s, bytes);
    s
}

/// Appends the lowercase hex of `bytes` to `s` (a table lookup per digit: this runs for
/// every record every sink sends).
fn push_hex(s: &mut String, bytes: &[u8]) {
    s.extend(hex_digits(bytes).map(char::from));
}

/// [`push_hex`] to bytes.
fn push_hex_bytes(v: &mut Vec<u8>, bytes: &[u8]) {
    v.extend(hex_digits(bytes));
}

/// The lowercase hex digits of `bytes`, two per byte, high nibble first.
fn hex_digits(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
}

/// Where a JSON format keeps the link.
pub fn json_path(format: Format) -> &'static [&'static str] {
    match format {
        Format::Ecs => &["event", "hash"],
        Format::Ocsf => &["unmapped", "egressd", "chain"],
        Format::Json | Format::Cef => &["chain"],
    }
}

/// The slot at `path`, creating objects on the way (a non-object on the way: `None`).
fn insert_path<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for p in parents {
        cur = cur
            .as_object_mut()?
            .entry((*p).to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    Some(
        cur.as_object_mut()?
            .entry((*last).to_owned())
            .or_insert(Value::Null),
    )
}

/// Takes the link out of a JSON record of `format`: returns its text (if it was there and a
/// string) and leaves `v` as it was before sealing (objects the removal leaves empty are
/// removed too).
pub fn take_json_link(format: Format, v: &mut Value) -> Option<String> {
    fn take(v: &mut Value, path: &[&str]) -> Option<Value> {
        let obj = v.as_object_mut()?;
        match path {
            [] => None,
            [last] => obj.remove(*last),
            [first, rest @ ..] => {
                let child = obj.get_mut(*first)?;
                let got = take(child, rest);
                if child.as_object().is_some_and(serde_json::Map::is_empty) {
                    obj.remove(*first);
                }
                got
            }
        }
    }
    match take(v, json_path(format))? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Splits a CEF text (from `CEF:0|`) into its canonical bytes and its link, `None` for the
/// link when the text has no `egressdChain` extension (then all of it is canonical).
pub fn split_cef(text: &str) -> (&str, Option<&str>) {
    let marker = format!(" {CEF_KEY}=");
    // Values escape `=` as `\=`, so the marker cannot occur inside one.
    match text.rfind(&marker) {
        Some(i) => (&text[..i], Some(&text[i + marker.len()..])),
        None => (text, None),
    }
}

/// The canonical bytes (RFC 8785, JCS) of a parsed JSON record whose link was taken out.
///
/// Records without floating-point numbers and with ASCII keys only (all of egressd's)
/// take serde_json's compact output, which is JCS for them (keys sorted by bytes, the same
/// escapes) and an order of magnitude faster; anything else goes through the JCS crate.
/// The test `fast_canonical_is_jcs` holds the two together.
///
/// # Errors
/// A value JCS cannot represent (a non-finite number cannot come from parsed JSON).
pub fn canonical_json(v: &Value) -> serde_json::Result<Vec<u8>> {
    fn plain(v: &Value) -> bool {
        match v {
            Value::Number(n) => !n.is_f64(),
            Value::Array(a) => a.iter().all(plain),
            Value::Object(m) => m.iter().all(|(k, x)| k.is_ascii() && plain(x)),
            Value::Null | Value::Bool(_) | Value::String(_) => true,
        }
    }
    if plain(v) {
        serde_json::to_vec(v)
    } else {
        serde_json_canonicalizer::to_vec(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_definition() {
        let mut c = Chain::new();
        let l1 = c.advance(b"one");
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(b"one");
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(l1, format!("sha256:{}", hex(&want)));
        let l2 = c.advance(b"two");
        let mut h = Sha256::new();
        h.update(want);
        h.update(b"two");
        let want2: [u8; 32] = h.finalize().into();
        assert_eq!(l2, format!("sha256:{}", hex(&want2)));
        assert_eq!(parse_link(&l2), Some((false, want2)));
        // Known answer (Python: hashlib.sha256(bytes(32) + b"abc").hexdigest()).
        assert_eq!(
            hex(&link(&[0; 32], b"abc", None)),
            "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370"
        );
    }

    #[test]
    fn keyed_links_differ_and_say_so() {
        let key: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"secret"[..]);
        let mut k = Chain::keyed(key);
        let l = k.advance(b"one");
        assert!(l.starts_with(HMAC_SHA256), "{l}");
        let (keyed, bytes) = parse_link(&l).expect("parses");
        assert!(keyed);
        assert_ne!(bytes, link(&[0; 32], b"one", None));
        assert_eq!(bytes, link(&[0; 32], b"one", Some(b"secret")));
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("egressd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let path = dir.join("chain.key");
        std::fs::write(&path, [7u8; 32]).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(&*load_key(&path).expect("valid"), &[7u8; 32]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = load_key(&path).expect_err("group-readable").to_string();
        assert!(e.contains("chain.key") && e.contains("0640"), "{e}");
        std::fs::write(&path, b"short").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = load_key(&path).expect_err("short").to_string();
        assert!(e.contains("5 bytes"), "{e}");
        let e = load_key(&dir.join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// serde_json's output is JCS for egressd's records (sorted keys, as long as no
    /// dependency turns on serde_json's `preserve_order`; the same string escapes), and
    /// other values take the JCS crate.
    #[test]
    fn sorted_compact_is_canonical() {
        use crate::events::sample;
        let check = |body: &[u8]| {
            let v: Value = serde_json::from_slice(body).expect("JSON");
            let want = canonical_json(&v).expect("canonical");
            if let Some(got) = sorted_compact(body) {
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                );
            }
        };
        for (name, rec) in sample::records() {
            for f in [Format::Json, Format::Ecs, Format::Ocsf] {
                let body = f.render(&rec);
                assert!(sorted_compact(&body).is_some(), "{f:?} {name}");
                check(&body);
            }
        }
        // Every case serde_json writes specially, through serde_json's own output.
        let odd = serde_json::json!({
            "z": "\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}\u{2028}/\"\\é😀", "a": [1, -2, u64::MAX, i64::MIN, [], {}],
            "m": {"b": null, "a": true, "c": false, "B": 0}, "": 0,
        });
        let body = serde_json::to_vec(&odd).expect("JSON");
        assert!(sorted_compact(&body).is_some());
        check(&body);
        // Left to the general way.
        for text in [
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"é":1}"#,
            r#"{"a\n":1}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": 1}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":"\u000A"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":1}x"#,
            r#"{"a":tru}"#,
            "{\"a\":\"\u{1}\"}",
        ] {
            assert_eq!(sorted_compact(text.as_bytes()), None, "{text}");
        }
        // The native format's link over the fast path equals the general one.
        for (name, rec) in sample::records() {
            let body = Format::Json.render(&rec);
            let fast = Chain::new().seal(Format::Json, &body);
            let slow = Chain::new().seal_parsed(Format::Json, &body);
            assert_eq!(fast, slow, "{name}");
        }
    }

    #[test]
    fn fast_canonical_is_jcs() {
        use crate::events::sample;
        for (name, rec) in sample::records() {
            for f in [Format::Json, Format::Ecs, Format::Ocsf] {
                let v: Value = serde_json::from_slice(&f.render(&rec)).expect("JSON");
                assert_eq!(
                    canonical_json(&v).expect("canonical"),
                    serde_json_canonicalizer::to_vec(&v).expect("JCS"),
                    "{f:?} {name}"
                );
            }
        }
        let odd: Value = serde_json::from_str(
            r#"{"b":"\u0001\u001f\u007f\u2028/\"\\é😀","a":[1,-2,18446744073709551615],"é":1.5e21,"\uffff":0,"😀":0}"#,
        )
        .expect("JSON");
        assert_eq!(
            canonical_json(&odd).expect("canonical"),
            serde_json_canonicalizer::to_vec(&odd).expect("JCS")
        );
        let plain: Value =
            serde_json::from_str(r#"{"z":"\u0001\u001f\u007f\u2028/\"\\é😀\n","a":[1,-2]}"#)
                .expect("JSON");
        assert_eq!(
            serde_json::to_vec(&plain).expect("JSON"),
            serde_json_canonicalizer::to_vec(&plain).expect("JCS")
        );
    }

    #[test]
    fn bad_links_are_refused() {
        assert_eq!(parse_link("sha256:abc"), None);
        assert_eq!(parse_link(&format!("md5:{}", "0".repeat(64))), None);
        assert_eq!(parse_link(&format!("sha256:{}", "A".repeat(64))), None);
    }

    #[test]
    fn every_format_round_trips_its_canonical_bytes() {
        use crate::events::sample;
        for (name, rec) in sample::records() {
            for f in Format::ALL {
                let body = f.render(&rec);
                let mut c = Chain::new();
                let sealed = c.seal(f, &body);
                let (canonical, got) = match f {
                    Format::Cef => {
                        let text = std::str::from_utf8(&sealed).expect("UTF-8");
                        let (c, l) = split_cef(text);
                        (c.as_bytes().to_vec(), l.map(str::to_owned))
                    }
                    _ => {
                        let mut v: Value = serde_json::from_slice(&sealed).expect("JSON");
                        let l = take_json_link(f, &mut v);
                        (canonical_json(&v).expect("JCS"), l)
                    }
                };
                let want = hex(&link(&[0; 32], &canonical, None));
                assert_eq!(got, Some(format!("sha256:{want}")), "{f:?} {name}");
                if f == Format::Json {
                    // The native object keeps its order, the link comes last.
                    assert!(sealed.starts_with(&body[..body.len() - 1]), "{name}");
                }
            }
        }
    }
}
