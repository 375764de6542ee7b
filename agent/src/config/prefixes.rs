//! The regions' prefix lists read without toml's document tree, and their validation.
//!
//! `toml::from_str` lexes a whole document into tokens and events and builds its tree before
//! serde sees a value: about 240 bytes per list element, so a 1M-prefix policy took 240 MB
//! and a second before validation started (docs/benchmarks.md). [`carve`] runs toml's own
//! lexer (`toml_parser`, one token at a time, no buffer) over the text and takes out every
//! list that is plainly a region's prefix list (`prefixes = [...]` directly under a
//! `[regions.NAME]` header, holding only one-line strings of address characters, commas,
//! whitespace and comments), parsing each string into a prefix as it goes; toml then parses
//! the rest, where each such list reads `prefixes = []`. Anything else (other layouts, other
//! characters, a syntax error in the list) is left in the text for toml, and any error toml
//! reports on the reduced text sends the whole file through toml as it is, so errors read as
//! before.
use std::ops::Range;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use toml::Spanned;
use toml_parser::lexer::{Token, TokenKind};

use super::RawRegion;
use super::policy::{
    LOCAL_REGION_NAME, MAX_CONFIG_REGIONS, Region, UNKNOWN_REGION_NAME, check_region_name,
    parse_mode,
};
use crate::base::located::toml::join;

/// One prefix list, with every element already parsed.
#[derive(Default)]
pub(super) struct List {
    /// The valid prefixes, in list order.
    pub nets: Vec<IpNetwork>,
    /// Byte offset in the original text of each element (valid or not), in list order.
    pub offsets: Vec<u32>,
    /// (element index, why it is not a prefix) of the invalid ones, ascending.
    pub bad: Vec<(u32, String)>,
    /// The list's span (`[` to `]`) in the original text.
    pub span: Range<usize>,
}

/// A text with its plain prefix lists taken out.
#[derive(Default)]
pub(super) struct Carved {
    /// What toml parses: the text with each list's interior removed.
    pub reduced: String,
    /// Per list: the position of its `]` in `reduced` and the bytes removed up to there.
    pub cuts: Vec<(usize, usize)>,
    /// The lists, in the order of `cuts`.
    pub lists: Vec<List>,
}

impl Carved {
    /// The original offset of `offset` in `reduced`.
    pub fn original(cuts: &[(usize, usize)], offset: usize) -> usize {
        let i = cuts.partition_point(|&(at, _)| at <= offset);
        offset + if i == 0 { 0 } else { cuts[i - 1].1 }
    }

    /// The list whose `[]` starts at `offset` in `reduced`.
    pub fn list_at(&mut self, offset: usize) -> Option<List> {
        let i = self
            .cuts
            .binary_search_by_key(&(offset + 1), |c| c.0)
            .ok()?;
        Some(std::mem::take(&mut self.lists[i]))
    }
}

/// Lists shorter than this stay in the text: toml parses them at no real cost.
pub(super) const MIN_CARVED: usize = 1;

/// The carved text, or `None` when no list was taken out. With `parse` false the elements
/// are checked for their characters only (nets and errors stay empty).
pub(super) fn carve(text: &str, parse: bool) -> Option<Carved> {
    #[cfg(test)]
    if THROUGH_TOML.with(std::cell::Cell::get) {
        return None;
    }
    let source = toml_parser::Source::new(text);
    let mut lexer = source.lex();
    let mut pending: Option<Token> = None;
    let mut next = |pending: &mut Option<Token>| pending.take().or_else(|| lexer.next());
    let mut out = Carved::default();
    let mut copied = 0usize;
    let mut removed = 0usize;
    // Open `[`/`{` of values; table headers are read at depth 0 at the start of a line.
    let mut depth = 0usize;
    let mut line_start = true;
    let mut in_region = false;
    while let Some(tok) = next(&mut pending) {
        let kind = tok.kind();
        match kind {
            TokenKind::Eof => break,
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::Newline => {
                line_start = depth == 0;
                continue;
            }
            _ => {}
        }
        let at_line_start = std::mem::replace(&mut line_start, false);
        if depth == 0 && at_line_start && kind == TokenKind::LeftSquareBracket {
            in_region = header_is_region(&mut || next(&mut pending), text);
            continue;
        }
        if depth == 0 && at_line_start && in_region && kind == TokenKind::Atom {
            if raw(text, &tok) != "prefixes" {
                continue;
            }
            let eq = skip_ws(&mut || next(&mut pending));
            if eq.is_none_or(|t| t.kind() != TokenKind::Equals) {
                pending = eq;
                continue;
            }
            let open = skip_ws(&mut || next(&mut pending));
            let Some(open) = open.filter(|t| t.kind() == TokenKind::LeftSquareBracket) else {
                pending = open;
                continue;
            };
            match list(&source, text, open, parse, &mut || next(&mut pending)) {
                Ok(l) => {
                    let (start, end) = (l.span.start, l.span.end);
                    out.reduced.push_str(&text[copied..=start]);
                    removed += end - 1 - (start + 1);
                    copied = end - 1;
                    out.cuts.push((out.reduced.len(), removed));
                    out.lists.push(l);
                }
                Err(stop) => {
                    // Not carved: the list is open, and `stop` is read as usual.
                    depth = 1;
                    pending = stop;
                }
            }
            continue;
        }
        match kind {
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
    if out.lists.is_empty() {
        return None;
    }
    out.reduced.push_str(&text[copied..]);
    Some(out)
}

/// The text of token `t`.
fn raw<'t>(text: &'t str, t: &Token) -> &'t str {
    text.get(t.span().start()..t.span().end())
        .unwrap_or_default()
}

/// The next token that is not whitespace.
fn skip_ws(next: &mut dyn FnMut() -> Option<Token>) -> Option<Token> {
    loop {
        let t = next()?;
        if t.kind() != TokenKind::Whitespace {
            return Some(t);
        }
    }
}

/// Reads a table header after its `[` up to its `]`: whether it is `[regions.NAME]` with
/// plain keys (an array of tables, quoted or other keys: false).
fn header_is_region(next: &mut dyn FnMut() -> Option<Token>, text: &str) -> bool {
    let mut parts = 0;
    let mut regions = false;
    let mut plain = true;
    loop {
        let Some(t) = skip_ws(next) else {
            return false;
        };
        match t.kind() {
            TokenKind::RightSquareBracket => return plain && regions && parts == 2,
            TokenKind::Dot => {}
            TokenKind::Atom => {
                if parts == 0 {
                    regions = raw(text, &t) == "regions";
                }
                parts += 1;
            }
            // `[[...]]`, quoted keys, a broken header: toml reads it.
            TokenKind::Newline | TokenKind::Eof => return false,
            _ => plain = false,
        }
    }
}

/// Characters a prefix string may hold to be carved (no escapes, no spaces).
fn prefix_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'/')
}

/// Reads a list after its `[` (`open`): `Err` with the token it stopped at when the list is
/// not plain.
fn list(
    source: &toml_parser::Source<'_>,
    text: &str,
    open: Token,
    parse: bool,
    next: &mut dyn FnMut() -> Option<Token>,
) -> Result<List, Option<Token>> {
    let mut l = List {
        span: open.span().start()..open.span().end(),
        ..List::default()
    };
    let mut want_value = true;
    let mut count = 0u32;
    loop {
        let Some(t) = next() else {
            return Err(None);
        };
        let span = t.span();
        let ok = match t.kind() {
            TokenKind::Whitespace => true,
            TokenKind::Newline | TokenKind::Comment => {
                let mut err: Option<toml_parser::ParseError> = None;
                if let Some(r) = source.get(span) {
                    if t.kind() == TokenKind::Newline {
                        r.decode_newline(&mut err);
                    } else {
                        r.decode_comment(&mut err);
                    }
                }
                err.is_none()
            }
            TokenKind::Comma if !want_value => {
                want_value = true;
                true
            }
            TokenKind::BasicString | TokenKind::LiteralString if want_value => {
                let s = &text.as_bytes()[span.start()..span.end()];
                let q = s[0];
                let inner = &s[1..s.len().saturating_sub(1).max(1)];
                let plain =
                    s.len() >= 3 && s[s.len() - 1] == q && inner.iter().all(|c| prefix_char(*c));
                if plain {
                    let Ok(offset) = u32::try_from(span.start()) else {
                        return Err(Some(t));
                    };
                    l.offsets.push(offset);
                    if parse {
                        // Only ASCII bytes: the slice is a valid `str`.
                        let s = std::str::from_utf8(inner).unwrap_or_default();
                        match crate::base::prefix::parse(s, false) {
                            Ok((net, _)) => l.nets.push(net),
                            Err(e) => l.bad.push((count, e.policy_message())),
                        }
                    }
                    count += 1;
                    want_value = false;
                }
                plain
            }
            TokenKind::RightSquareBracket if count as usize >= MIN_CARVED => {
                l.span.end = span.end();
                return Ok(l);
            }
            _ => false,
        };
        if !ok {
            return Err(Some(t));
        }
    }
}

/// The regions of every file (each file in its own order), their prefixes validated: names,
/// modes, each prefix parsed and seen once in the whole policy. Problems go to `errors`
/// (with them, the prefixes returned are not checked further).
pub(super) fn regions(
    docs: &[super::Doc<'_>],
    errors: &mut Vec<super::ConfigError>,
) -> Vec<Region> {
    let mut entries: Vec<(usize, &Spanned<String>, &Spanned<RawRegion>)> = Vec::new();
    for (di, doc) in docs.iter().enumerate() {
        let mut mine: Vec<_> = doc.regions.iter().map(|(k, v)| (di, k, v)).collect();
        mine.sort_by_key(|(_, k, _)| k.span().start);
        entries.extend(mine);
    }
    let mut regions: Vec<Region> = Vec::with_capacity(entries.len());
    let mut defined: HashMap<&str, (usize, usize)> = HashMap::new();
    // Every prefix once as (network, length, order), per family; `order` counts the list
    // elements of the regions below, valid or not, in file order.
    let mut keys4: Vec<(u32, u8, u32)> = Vec::new();
    let mut keys6: Vec<(u128, u8, u32)> = Vec::new();
    // Per region whose prefixes were read: (first order, entries index, offsets).
    let mut lists: Vec<(u32, usize, Vec<u32>)> = Vec::new();
    let mut order = 0u32;
    for (index, (di, key, table)) in entries.iter().enumerate() {
        let doc = &docs[*di];
        let name = key.get_ref();
        let rfield = join("regions", name);
        let kline = doc.ctx.line_of(key.span().start);
        if let Some((d0, l0)) = defined.get(name.as_str()) {
            errors.push(doc.ctx.err(
                key.span(),
                rfield.clone(),
                format!(
                    "duplicate region `{name}` (first defined in {}:{l0}); a region may be \
                     defined in one file only",
                    docs[*d0].ctx.path.display()
                ),
            ));
            continue;
        }
        defined.insert(name, (*di, kline));
        if let Err(msg) = check_region_name(name) {
            errors.push(doc.ctx.err(key.span(), rfield.clone(), msg));
        }
        if index == MAX_CONFIG_REGIONS {
            errors.push(doc.ctx.err(
                key.span(),
                rfield.clone(),
                format!(
                    "too many regions: {} defined, at most {MAX_CONFIG_REGIONS} allowed \
                     (two region ids are reserved for `{UNKNOWN_REGION_NAME}` and \
                     `{LOCAL_REGION_NAME}`)",
                    entries.len()
                ),
            ));
        }
        let mode = table.get_ref().mode.as_ref().and_then(|m| {
            parse_mode(m.get_ref())
                .map_err(|msg| errors.push(doc.ctx.err(m.span(), format!("{rfield}.mode"), msg)))
                .ok()
        });
        let pfield = format!("{rfield}.prefixes");
        let list = match &table.get_ref().prefixes {
            Some(list) if !list.get_ref().is_empty() => Some(List::read(&doc.ctx, list.get_ref())),
            // Empty for toml: carved, or really empty.
            Some(list) => {
                let carved = doc.lists.borrow_mut().list_at(list.span().start);
                if carved.is_none() {
                    errors.push(doc.ctx.err(
                        list.span(),
                        pfield.clone(),
                        format!("region `{name}` has no prefixes"),
                    ));
                }
                carved
            }
            None => {
                errors.push(doc.ctx.err(
                    key.span(),
                    pfield.clone(),
                    format!("region `{name}` has no prefixes (add `prefixes = [\"CIDR\", ...]`)"),
                ));
                None
            }
        };
        let mut prefixes = Vec::new();
        if let Some(mut l) = list {
            l.keys(order, &mut keys4, &mut keys6);
            for (i, msg) in std::mem::take(&mut l.bad) {
                let offset = l.offsets[i as usize] as usize;
                errors.push(doc.ctx.err_in_file(offset, format!("{pfield}[{i}]"), msg));
            }
            let n = u32::try_from(l.offsets.len()).unwrap_or(u32::MAX);
            prefixes = std::mem::take(&mut l.nets);
            lists.push((order, index, l.offsets));
            order = order.saturating_add(n);
        }
        regions.push(Region {
            name: name.clone(),
            mode,
            origin: format!("{}:{kline}", doc.ctx.path.display()),
            description: table.get_ref().description.clone(),
            prefixes,
        });
    }
    // Duplicates: a later listing of a prefix names its first one.
    let locate = |order: u32| {
        let i = lists.partition_point(|l| l.0 <= order) - 1;
        let (start, index, offsets) = &lists[i];
        let element = order - start;
        (*index, element, offsets[element as usize] as usize)
    };
    let mut report = |net: IpNetwork, first: u32, again: u32| {
        let (findex, felement, foffset) = locate(first);
        let (index, element, offset) = locate(again);
        let (fdi, fkey, _) = entries[findex];
        let (di, key, _) = entries[index];
        let fdoc = &docs[fdi];
        let fline = fdoc.ctx.line_col_in_file(foffset).0;
        let at = if fdi == di {
            format!("line {fline}")
        } else {
            format!("{}:{fline}", fdoc.ctx.path.display())
        };
        let ffield = format!("{}.prefixes[{felement}]", join("regions", fkey.get_ref()));
        let name = key.get_ref();
        let msg = if findex == index {
            format!("prefix {net} is listed twice in region `{name}` (first as {ffield} on {at})")
        } else {
            format!(
                "prefix {net} is in two regions: `{}` ({ffield} on {at}) and `{name}`; a prefix \
                 may belong to one region only",
                fkey.get_ref()
            )
        };
        let field = format!("{}.prefixes[{element}]", join("regions", name));
        errors.push(docs[di].ctx.err_in_file(offset, field, msg));
    };
    keys4.sort_unstable();
    for group in keys4.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        for again in &group[1..] {
            let net = Ipv4Network::new(Ipv4Addr::from(again.0), again.1).map(IpNetwork::V4);
            if let Ok(net) = net {
                report(net, group[0].2, again.2);
            }
        }
    }
    keys6.sort_unstable();
    for group in keys6.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        for again in &group[1..] {
            let net = Ipv6Network::new(Ipv6Addr::from(again.0), again.1).map(IpNetwork::V6);
            if let Ok(net) = net {
                report(net, group[0].2, again.2);
            }
        }
    }
    regions
}

impl List {
    /// A list toml read: each string parsed.
    fn read(ctx: &super::Ctx<'_>, items: &[Spanned<String>]) -> Self {
        let mut l = Self::default();
        for (i, p) in items.iter().enumerate() {
            let offset = ctx.original(p.span().start);
            l.offsets.push(u32::try_from(offset).unwrap_or(u32::MAX));
            match super::policy::parse_prefix(p.get_ref()) {
                Ok(net) => l.nets.push(net),
                Err(msg) => l.bad.push((u32::try_from(i).unwrap_or(u32::MAX), msg)),
            }
        }
        l
    }

    /// Adds (network, length, order) of every valid prefix to `keys4`/`keys6`; the list's
    /// first element has order `first`.
    fn keys(&self, first: u32, keys4: &mut Vec<(u32, u8, u32)>, keys6: &mut Vec<(u128, u8, u32)>) {
        let mut bad = self.bad.iter().map(|b| b.0).peekable();
        let mut nets = self.nets.iter();
        for i in 0..u32::try_from(self.offsets.len()).unwrap_or(u32::MAX) {
            if bad.peek() == Some(&i) {
                bad.next();
                continue;
            }
            let order = first.saturating_add(i);
            match nets.next() {
                Some(IpNetwork::V4(n)) => keys4.push((u32::from(n.network()), n.prefix(), order)),
                Some(IpNetwork::V6(n)) => keys6.push((u128::from(n.network()), n.prefix(), order)),
                None => break,
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Set by the tests to read every list through toml (the reference).
    static THROUGH_TOML: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::THROUGH_TOML;

    /// Both ways of reading a policy set: lists carved, and everything through toml.
    fn both(main: &str, drop_ins: &[(PathBuf, String)]) -> (String, String) {
        let path = Path::new("/etc/egressd/policy.toml");
        let read = |toml_only: bool| {
            THROUGH_TOML.with(|t| t.set(toml_only));
            let r = crate::config::parse_set_all(path, main, drop_ins);
            THROUGH_TOML.with(|t| t.set(false));
            format!("{r:?}")
        };
        (read(false), read(true))
    }

    /// A random policy file: regions with prefixes drawn from a small pool (so some repeat
    /// within and across regions and files), some invalid, in the layouts the carving reads
    /// and in some it leaves to toml.
    fn file(rng: &mut fastrand::Rng, main: bool, first_region: usize) -> String {
        const POOL: [&str; 14] = [
            "198.18.1.0/24",
            "198.18.2.0/24",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "2001:DB8:2::/48",
            "192.0.2.1",
            "10.0.0.1/8",
            "1.2.3.0/33",
            "::ffff:1.2.3.0/120",
            "2001:db8::/129",
            "fe80::/10",
            "203.0.113.0/24",
        ];
        let mut s = String::new();
        if main {
            s.push_str("mode = \"enforce\"\nallowlist = [\"r0\"]\n");
        }
        for r in first_region..first_region + rng.usize(1..4) {
            let name = if rng.u8(..30) == 0 { 0 } else { r };
            s.push_str(&format!("\n[regions.r{name}]\n"));
            if rng.u8(..10) == 0 {
                s.push_str("mode = \"audit\"\n");
            }
            s.push_str("prefixes = [");
            for i in 0..rng.usize(0..8) {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(["", " ", "\n  ", "  # note\n  ", "\r\n"][rng.usize(..5)]);
                let fresh = match rng.u8(..3) {
                    0 => format!("10.{}.{}.0/24", rng.u8(..), rng.u8(..)),
                    1 => format!("2001:db8:{:x}::/48", rng.u16(..)),
                    _ => format!("{}.{}.0.0/16", rng.u8(1..100), rng.u8(..)),
                };
                let p = if rng.u8(..25) == 0 {
                    POOL[rng.usize(..POOL.len())]
                } else {
                    &fresh
                };
                match rng.u8(..60) {
                    0 => s.push_str(&format!("'{p}'")),
                    1 => s.push_str(&format!("\" {p}\"")),
                    2 => s.push_str(&format!("\"{p}x\"")),
                    _ => s.push_str(&format!("\"{p}\"")),
                }
            }
            s.push_str([" ]\n", ",\n]\n", "]\n", ", ]  # end\n"][rng.usize(..4)]);
            if rng.u8(..40) == 0 {
                s.push_str("prefixes = [\"10.9.0.0/16\"]\n");
            }
        }
        if rng.u8(..40) == 0 {
            s.push_str("\n[regions.bad name]\nprefixes = [\"10.8.0.0/16\"]\n");
        }
        if rng.u8(..40) == 0 {
            s.push_str("oops = [\n");
        }
        s
    }

    #[test]
    fn carved_lists_read_as_toml_reads_them() {
        let mut rng = fastrand::Rng::with_seed(0xca55);
        let mut errors = 0;
        for _ in 0..3000 {
            let main = file(&mut rng, true, 0);
            let drop_ins: Vec<(PathBuf, String)> = (0..rng.usize(0..3))
                .map(|i| {
                    (
                        PathBuf::from(format!("/etc/egressd/policy.d/{i}.toml")),
                        file(&mut rng, false, 4 + 4 * i),
                    )
                })
                .collect();
            let (carved, reference) = both(&main, &drop_ins);
            assert_eq!(carved, reference, "{main}\n{drop_ins:?}");
            errors += usize::from(carved.starts_with("Err"));
        }
        // Both outcomes were exercised.
        assert!((300..2700).contains(&errors), "{errors} errors");
    }

    #[test]
    fn a_large_list_is_carved_and_keeps_its_lines() {
        let mut text = String::from("allowlist = []\n\n[regions.big]\nprefixes = [\n");
        for i in 0..5000u32 {
            text.push_str(&format!("  \"10.{}.{}.0/24\",\n", i / 256, i % 256));
        }
        text.push_str("  \"10.0.0.0/24\",\n]\n");
        let carved = super::carve(&text, true).expect("carved");
        assert_eq!(carved.lists.len(), 1);
        assert!(carved.reduced.len() < 100, "{}", carved.reduced);
        let (a, b) = both(&text, &[]);
        assert_eq!(a, b);
        assert!(
            a.contains("line: 5005") && a.contains("regions.big.prefixes[5000]"),
            "{a}"
        );
    }
}
