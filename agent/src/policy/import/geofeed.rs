//! RFC 8805 geofeeds (<https://www.rfc-editor.org/rfc/rfc8805>): CSV, one prefix per line,
//!
//! ```text
//! # comment lines start with '#'; blank lines are ignored
//! 5.101.96.0/21,NL,NL-NH,Amsterdam,1098 XH
//! 2600:3c00::/32,US,US-TX,Richardson,
//! ```
//!
//! Fields: `ip_prefix` (required), `alpha2code` (ISO 3166-1 alpha-2 country), `region`
//! (ISO 3166-2 subdivision), `city`, `postal_code` (deprecated). Only the first three are
//! used; trailing fields may be missing, and extra fields are ignored. Fields are trimmed.
//! Key: the country; the subdivision is passed along so the mapping can name it. A line with
//! an empty country carries no location. Errors name the line and the field.

use std::borrow::Cow;

use super::{Entry, ImportError, Parsed, Source};

/// Read a geofeed.
///
/// # Errors
/// A line that is not valid CSV (e.g. an unterminated quote) or whose `ip_prefix` is empty;
/// located by line.
pub fn read<'a>(src: &Source<'a>) -> Result<Parsed<'a>, ImportError> {
    let text = src.text.strip_prefix('\u{feff}').unwrap_or(src.text);
    let bom = src.text.len() - text.len();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut entries = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let offset = e.position().map(|p| bom + p.byte() as usize);
            src.err_at(
                offset,
                "",
                format!("not a valid geofeed (RFC 8805 CSV): {e}"),
            )
        })?;
        if !more {
            break;
        }
        let offset = record
            .position()
            .map(|p| first_data_byte(src.text, bom + p.byte() as usize));
        let field = |i: usize| record.get(i).unwrap_or("");
        if record.len() == 1 && field(0).is_empty() {
            continue; // a line of whitespace
        }
        if field(0).is_empty() {
            return Err(src.err_at(
                offset,
                "ip_prefix",
                "empty prefix (RFC 8805: the first field is the IP prefix)",
            ));
        }
        let sub = field(2);
        entries.push(Entry {
            text: Cow::Owned(field(0).to_string()),
            key: Cow::Owned(field(1).to_string()),
            subdivision: (!sub.is_empty()).then(|| Cow::Owned(sub.to_string())),
            offset,
            field: "ip_prefix".to_string(),
            context: None,
        });
    }
    Ok(Parsed {
        entries,
        version: None,
    })
}

/// The reader reports a record at the start of the comment and blank lines before it: skip
/// those, and the leading whitespace of the record's line.
fn first_data_byte(text: &str, mut pos: usize) -> usize {
    while let Some(rest) = text.get(pos..) {
        let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        if end == 0 || !(line.trim().is_empty() || line.starts_with('#')) {
            return pos + (line.len() - line.trim_start().len());
        }
        pos += end;
    }
    pos
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn geofeed_reads_lines() {
        let text = "# header\n\n5.101.96.0/21,NL,NL-NH,Amsterdam,1098 XH\n 2600:3c00::/32 , us ,US-TX\n\
                    10.0.0.0/8,,,,\n  \n192.0.2.0/24\n";
        let src = Source {
            path: Path::new("g.csv"),
            text,
        };
        let p = read(&src).expect("valid");
        let got: Vec<(&str, &str, Option<&str>)> = p
            .entries
            .iter()
            .map(|e| (&*e.text, &*e.key, e.subdivision.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("5.101.96.0/21", "NL", Some("NL-NH")),
                ("2600:3c00::/32", "us", Some("US-TX")),
                ("10.0.0.0/8", "", None),
                ("192.0.2.0/24", "", None),
            ]
        );
        let lines: Vec<usize> = p
            .entries
            .iter()
            .map(|e| src.err_at(e.offset, "", "").line)
            .collect();
        assert_eq!(lines, [3, 4, 5, 7]);
    }

    #[test]
    fn geofeed_errors() {
        let src = Source {
            path: Path::new("g.csv"),
            text: "\u{feff}1.0.0.0/8,DE\n,DE\n",
        };
        let e = read(&src).expect_err("empty prefix");
        assert_eq!((e.line, e.field.as_str()), (2, "ip_prefix"), "{e}");
        assert_eq!(
            e.to_string(),
            "g.csv:2:1: ip_prefix: empty prefix (RFC 8805: the first field is the IP prefix)"
        );
    }
}
