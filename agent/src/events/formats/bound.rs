//! Size bounds on what a workload controls, applied before and after formatting.
//!
//! - **Fields, after escaping.** The strings a workload chooses (command line, executable
//!   path, cgroup path and unit, user and group names) are cut so that their *escaped* form
//!   fits: a control character costs 6 bytes (`\u001b` in JSON and CEF), so a cap on raw
//!   bytes would still let a command line of escape characters grow six-fold. A cut field
//!   ends in `...`. Limits: [`MAX_COMMAND_LINE`] for the command line, [`MAX_PATH`] for paths,
//!   [`MAX_NAME`] for names and units.
//! - **Records, per sink.** A formatted record longer than the sink's `max_message_bytes`
//!   (8 KiB for syslog sinks by default, rsyslog's default `maxMessageSize`) is cut so that
//!   it stays parseable and says so: JSON formats get a top-level `"truncated_from_bytes": N`
//!   and lose the ends of their longest strings (then of their longest arrays, then, when
//!   only strings under 64 bytes are left, whole nested objects, largest first); a CEF line
//!   is cut between key-value pairs or inside a value, never inside an escape sequence, and
//!   ends with `egressdTruncatedFromBytes=N`. The pipeline counts each such record.
use crate::{
    events::formats::Format,
    events::{ConnectionEvent, Record},
};

/// Longest escaped command line kept in a record, in bytes.
pub const MAX_COMMAND_LINE: usize = 2048;
/// Longest escaped path (executable, cgroup path) kept in a record, in bytes.
pub const MAX_PATH: usize = 1024;
/// Longest escaped name (user, group, systemd unit) kept in a record, in bytes.
pub const MAX_NAME: usize = 256;
/// What a cut field ends with.
const ELLIPSIS: &str = "...";
pub use crate::config::output::MIN_MESSAGE_BYTES;

/// Whether `c` is a control character for the formats: C0, DEL, C1 (U+0085 included) and
/// the Unicode line and paragraph separators U+2028 and U+2029.
pub fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// The most bytes `c` takes once escaped by any format (JSON or CEF).
pub fn escaped_len(c: char) -> usize {
    match c {
        '\\' | '"' | '=' | '|' => 2,
        c if is_control(c) => 6,
        c => c.len_utf8(),
    }
}

/// `s` cut so that its escaped form is at most `max` bytes (ending in `...`), or `None`
/// when it fits as it is.
pub fn cap(s: &str, max: usize) -> Option<String> {
    if fits(s, max) {
        return None;
    }
    let room = max.saturating_sub(ELLIPSIS.len());
    let mut used = 0;
    let mut out = String::new();
    for c in s.chars() {
        used += escaped_len(c);
        if used > room {
            break;
        }
        out.push(c);
    }
    out.push_str(ELLIPSIS);
    Some(out)
}

/// Whether the escaped form of `s` takes at most `max` bytes (no char escapes to more than
/// six bytes, so a short string is not even scanned).
fn fits(s: &str, max: usize) -> bool {
    s.len().saturating_mul(6) <= max || s.chars().map(escaped_len).sum::<usize>() <= max
}

fn cap_opt<T: std::ops::Deref<Target = str> + From<String>>(v: &mut Option<T>, max: usize) -> bool {
    match v.as_deref().and_then(|s| cap(s, max)) {
        Some(c) => {
            *v = Some(c.into());
            true
        }
        None => false,
    }
}

/// The event with its workload-controlled strings capped (see the module docs), or `None`
/// when every one fits.
pub fn cap_event(ev: &ConnectionEvent) -> Option<ConnectionEvent> {
    // Checked before cloning: nearly every event fits as it is.
    let fit = |v: Option<&str>, max: usize| v.is_none_or(|s| fits(s, max));
    if fit(ev.process.command_line.as_deref(), MAX_COMMAND_LINE)
        && fit(ev.process.executable.as_deref(), MAX_PATH)
        && fit(ev.cgroup.path.as_deref(), MAX_PATH)
        && fit(ev.cgroup.systemd_unit.as_deref(), MAX_NAME)
        && fit(ev.user.name.as_deref(), MAX_NAME)
        && fit(ev.group.name.as_deref(), MAX_NAME)
    {
        return None;
    }
    let mut e = ev.clone();
    let mut cut = false;
    cut |= cap_opt(&mut e.process.command_line, MAX_COMMAND_LINE);
    cut |= cap_opt(&mut e.process.executable, MAX_PATH);
    cut |= cap_opt(&mut e.cgroup.path, MAX_PATH);
    cut |= cap_opt(&mut e.cgroup.systemd_unit, MAX_NAME);
    cut |= cap_opt(&mut e.user.name, MAX_NAME);
    cut |= cap_opt(&mut e.group.name, MAX_NAME);
    // `process.name` is a comm: at most 48 bytes ([`crate::events::Comm`]), below every cap.
    cut.then_some(e)
}

/// `record` with its fields capped, when any needed it.
pub fn cap_record(record: &Record) -> Option<Record> {
    match record {
        Record::Connection(c) => cap_event(c).map(|e| Record::Connection(Box::new(e))),
        Record::Lifecycle(_) | Record::Summary(_) => None,
    }
}

/// `body` (a record rendered in `format`) cut to at most `limit` bytes as the module docs
/// say, or `None` when it cannot be made that small.
pub fn fit(format: Format, body: &[u8], limit: usize) -> Option<Vec<u8>> {
    if body.len() <= limit {
        return Some(body.to_vec());
    }
    match format {
        Format::Cef => fit_cef(body, limit),
        Format::Json | Format::Ecs | Format::Ocsf => fit_json(body, limit),
    }
}

/// Cuts a CEF line: inside the value that crosses the limit at a character boundary not
/// inside an escape (or before the key, when the cut would fall in it), then appends
/// `egressdTruncatedFromBytes=N`.
fn fit_cef(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let marker = format!(" egressdTruncatedFromBytes={}", body.len());
    let room = limit.checked_sub(marker.len())?;
    // The header (7 pipes) must stay whole.
    let header_end = text
        .char_indices()
        .filter(|&(_, c)| c == '|')
        .nth(6)
        .map(|(i, _)| i + 1)?;
    if room < header_end {
        return None;
    }
    let mut cut = room;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    // Not inside an escape: the backslashes before the cut must pair up, and a `\uXXXX`
    // (a control character) must keep its four digits. Both move the cut back to an ASCII
    // byte, so it stays on a character boundary.
    let bytes = text.as_bytes();
    let slashes_before = |i: usize| bytes[..i].iter().rev().take_while(|b| **b == b'\\').count();
    loop {
        if slashes_before(cut) % 2 == 1 {
            cut -= 1;
            continue;
        }
        let open_u = (cut.saturating_sub(5)..cut).find(|&j| {
            bytes[j] == b'\\' && j + 1 < cut && bytes[j + 1] == b'u' && slashes_before(j) % 2 == 0
        });
        match open_u {
            Some(j) => cut = j,
            None => break,
        }
    }
    // Inside a key (after the space that starts a pair, before its unescaped `=`)? Cut
    // before the pair instead.
    let ext = &text[header_end..cut];
    if let Some(sp) = ext.rfind(' ') {
        let tail = &ext[sp + 1..];
        let is_key = tail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if is_key {
            cut = header_end + sp;
        }
    }
    let mut out = text.as_bytes()[..cut].to_vec();
    out.extend_from_slice(marker.as_bytes());
    Some(out)
}

/// Shrinks a JSON document: adds `truncated_from_bytes`, then cuts the longest string of
/// at least 64 bytes, or else drops the last half of the longest array, until it fits.
fn fit_json(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    use serde_json::Value;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?
        .insert("truncated_from_bytes".into(), Value::from(body.len()));
    for _ in 0..10_000 {
        let out = serde_json::to_vec(&v).ok()?;
        if out.len() <= limit {
            return Some(out);
        }
        let excess = out.len() - limit;
        let mut strings = None;
        let mut arrays = None;
        let mut members = None;
        find(&v, &mut Vec::new(), &mut strings, &mut arrays, &mut members);
        if strings.is_none()
            && arrays.is_none()
            && let Some((_, path)) = members
        {
            // Only nested objects left: drop the largest one.
            let (last, parent) = path.split_last()?;
            let o = at(&mut v, parent)?.as_object_mut()?;
            let key = o.keys().nth(*last)?.clone();
            o.remove(&key);
            continue;
        }
        let (size, path) = strings.or(arrays)?;
        match at(&mut v, &path)? {
            Value::String(s) => {
                // Keep what fits, counting escapes; at least 16 bytes of it stay.
                let keep = size.saturating_sub(excess + ELLIPSIS.len() + 2).max(16);
                *s = cap(s, keep)?;
            }
            Value::Array(a) => {
                let n = a.len();
                a.truncate(n - (n / 2).max(1));
            }
            _ => return None,
        }
    }
    None
}

type Best = Option<(usize, Vec<usize>)>;

/// Finds the largest string of at least 64 escaped bytes, the largest non-empty array and
/// the largest object below the top level, as (serialized size, path of child positions).
fn find(
    v: &serde_json::Value,
    path: &mut Vec<usize>,
    strings: &mut Best,
    arrays: &mut Best,
    members: &mut Best,
) {
    use serde_json::Value;
    let size = || serde_json::to_vec(v).map_or(0, |b| b.len());
    let better = |best: &Best, n: usize| best.as_ref().is_none_or(|(b, _)| n > *b);
    match v {
        Value::String(s) => {
            let n = s.chars().map(escaped_len).sum::<usize>() + 2;
            if n >= 64 && better(strings, n) {
                *strings = Some((n, path.clone()));
            }
        }
        Value::Array(a) => {
            let n = size();
            if !a.is_empty() && better(arrays, n) {
                *arrays = Some((n, path.clone()));
            }
            for (i, c) in a.iter().enumerate() {
                path.push(i);
                find(c, path, strings, arrays, members);
                path.pop();
            }
        }
        Value::Object(o) => {
            if !path.is_empty() {
                let n = size();
                if better(members, n) {
                    *members = Some((n, path.clone()));
                }
            }
            for (i, c) in o.values().enumerate() {
                path.push(i);
                find(c, path, strings, arrays, members);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The value at `path` (child positions, as [`find`] gives them).
fn at<'a>(v: &'a mut serde_json::Value, path: &[usize]) -> Option<&'a mut serde_json::Value> {
    use serde_json::Value;
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    let child = match v {
        Value::Array(a) => a.get_mut(*first)?,
        Value::Object(o) => o.values_mut().nth(*first)?,
        _ => return None,
    };
    at(child, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    #[test]
    fn fields_are_capped_after_escaping() {
        let mut ev = sample::deny();
        ev.process.command_line = Some("\u{1b}".repeat(47_000).into());
        ev.cgroup.path = Some(format!("/{}", "\u{85}".repeat(5000)).into());
        let capped = cap_event(&ev).expect("capped");
        let cl = capped.process.command_line.as_deref().unwrap_or_default();
        assert!(cl.ends_with("..."));
        assert!(cl.chars().map(escaped_len).sum::<usize>() <= MAX_COMMAND_LINE);
        for f in Format::ALL {
            let rec = Record::Connection(Box::new(capped.clone()));
            let n = f.render(&rec).len();
            assert!(n < 8 * 1024, "{f:?}: {n} bytes");
        }
        assert!(
            cap_event(&sample::deny()).is_none(),
            "the sample fits as it is"
        );
    }

    #[test]
    fn json_records_over_the_limit_stay_parseable_and_say_so() {
        let mut ev = sample::deny();
        ev.process.command_line = Some("a".repeat(2000).into());
        ev.process.executable = Some("/b".repeat(500).into());
        let rec = Record::Connection(Box::new(ev));
        for f in [Format::Json, Format::Ecs, Format::Ocsf] {
            let body = f.render(&rec);
            let out = fit(f, &body, 1500).expect("fits");
            assert!(out.len() <= 1500, "{f:?}: {}", out.len());
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["truncated_from_bytes"], body.len(), "{f:?}");
        }
        // Lifecycle records with long arrays too.
        for (name, rec) in sample::records() {
            let body = Format::Json.render(&rec);
            let out = fit(Format::Json, &body, 1024).expect("fits");
            assert!(out.len() <= 1024, "{name}: {}", out.len());
            serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");
        }
    }

    #[test]
    fn cef_lines_are_never_cut_inside_an_escape() {
        let mut ev = sample::deny();
        ev.process.command_line = Some("x=\\\u{1b}|".repeat(400).into());
        let rec = Record::Connection(Box::new(ev));
        let body = Format::Cef.render(&rec);
        for limit in 1000..1100 {
            let out = fit(Format::Cef, &body, limit).expect("fits");
            assert!(out.len() <= limit);
            let text = String::from_utf8(out).expect("UTF-8");
            let (head, marker) = text
                .rsplit_once(" egressdTruncatedFromBytes=")
                .expect("marker");
            assert_eq!(marker, body.len().to_string());
            let slashes = head.bytes().rev().take_while(|b| *b == b'\\').count();
            assert_eq!(
                slashes % 2,
                0,
                "{limit}: cut after a lone backslash: {head}"
            );
            let tail = &head[head.len().saturating_sub(6)..];
            assert!(
                !tail.contains("\\u") || tail.starts_with("\\u"),
                "{limit}: cut inside \\uXXXX: {tail}"
            );
        }
    }
}
