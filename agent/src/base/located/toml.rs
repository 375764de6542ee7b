//! Locating a field in TOML text: the dotted path (`regions.us.prefixes[1]`) of the node an
//! error span points at, or, for a syntax error, the best guess from the surrounding lines.
//! Used by [`crate::config`] to turn toml's errors into [`super::LocatedError`]s.
use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// serde's type names (`i64`, `i128`, `u32`, ...) in a message, said as an operator would.
pub(crate) fn plain_types(message: &str) -> String {
    let mut m = message.to_owned();
    for t in ["i128", "i64", "i32", "u64", "u32", "u16", "u8"] {
        m = m.replace(&format!("expected {t}"), "expected an integer");
        m = m.replace(&format!(" as {t},"), ",");
    }
    // serde says "invalid type: integer `N`, expected an integer" for N out of range.
    if let Some(n) = backticked(&m, "invalid type: integer `")
        && m.ends_with("expected an integer")
    {
        return format!("integer {n} is out of range");
    }
    m
}

/// The name between backticks after `prefix` in serde messages like "missing field `x`".
pub(crate) fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// Dotted path of the node that `span` points at: a key whose span is exactly `span`, else the
/// smallest (deepest on ties) value whose span contains it. Header tables only span their
/// `[header]`, which is why this scans the whole tree instead of descending by containment.
pub(crate) fn locate(root: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    struct Finder<'s> {
        span: &'s Range<usize>,
        best: Option<(String, usize)>,
        exact: Option<String>,
    }
    impl Finder<'_> {
        fn node(&mut self, path: String, value: &Spanned<DeValue<'_>>) {
            let vspan = value.span();
            let inside = vspan.start <= self.span.start && self.span.end <= vspan.end;
            if inside
                && self
                    .best
                    .as_ref()
                    .is_none_or(|(_, len)| vspan.len() <= *len)
            {
                self.best = Some((path.clone(), vspan.len()));
            }
            match value.get_ref() {
                DeValue::Table(t) => self.table(&path, t),
                DeValue::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        self.node(format!("{path}[{i}]"), v);
                    }
                }
                _ => {}
            }
        }
        fn table(&mut self, path: &str, table: &DeTable<'_>) {
            for (k, v) in table.iter() {
                let p = join(path, k.get_ref());
                if k.span() == *self.span {
                    self.exact = Some(p.clone());
                }
                self.node(p, v);
            }
        }
    }
    let mut f = Finder {
        span,
        best: None,
        exact: None,
    };
    f.table("", root);
    f.exact.or(f.best.map(|(p, _)| p))
}

/// Best-effort dotted path for a syntax error at `offset`, and the line where that path was
/// first defined if it was defined before (for duplicate keys). Only used when the document
/// does not parse, so it works on lines rather than a tree: the path is the last `[table]`
/// header plus the last `key =` after it (multi-line strings can fool it).
pub(crate) fn field_from_text(text: &str, offset: usize) -> (String, Option<usize>) {
    let mut header = String::new();
    let mut current = String::new();
    // (line number, path defined on that line), in file order.
    let mut defined: Vec<(usize, String)> = Vec::new();
    // Elements seen per array of tables (`[[rules]]`): each is its own table, `rules[N]`.
    let mut elements: HashMap<String, usize> = HashMap::new();
    let mut pos = 0;
    for (number, line) in (1..).zip(text.split_inclusive('\n')) {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            let array = h.starts_with('[');
            let h = h.trim_start_matches('[');
            let h = dotted(h.split(']').next().unwrap_or_default());
            header = if array {
                let n = elements.entry(h.clone()).or_insert(0);
                *n += 1;
                format!("{h}[{}]", *n - 1)
            } else {
                h
            };
            current = header.clone();
            defined.push((number, current.clone()));
        } else if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            let keyish = !k.is_empty()
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.\"' ".contains(&c));
            if keyish {
                current = if header.is_empty() {
                    dotted(k)
                } else {
                    format!("{header}.{}", dotted(k))
                };
                defined.push((number, current.clone()));
            }
        }
        pos += line.len();
        if pos > offset {
            break;
        }
    }
    // The error line itself defines `current`; an earlier definition is the first one.
    let error_line = defined.last().map(|(l, _)| *l);
    let first = defined
        .iter()
        .find(|(l, f)| *f == current && Some(*l) != error_line)
        .map(|(l, _)| *l);
    (current, first)
}

/// `a . b.c` -> `a.b.c` (whitespace around dots is insignificant in TOML keys).
pub(crate) fn dotted(key: &str) -> String {
    key.split('.').map(str::trim).collect::<Vec<_>>().join(".")
}
