//! Audit trail: a hash chain over every sink's records ([`chain`]), and `egressd audit
//! verify`, which reads exported records back ([`read`]) and proves, or fails to prove,
//! continuous enforcement from them ([`verify`]). The README's "Auditing" section is the
//! auditor's guide.
pub mod chain;
pub mod read;
pub mod verify;

use std::path::Path;

/// Reads every record of `files` (`-` for stdin) into entries, counting lines that hold no
/// egressd record, and checks them.
///
/// A file holds lines (file and stdout sinks, a receiver's files) or a syslog stream as
/// it came over TCP ([`frames`]): RFC 6587 octet-counted frames back to back, or frames
/// ended by LF or NUL (non-transparent framing). A record is located as `FILE:LINE`, or
/// `FILE:LINE:COLUMN` (the frame's first byte, from 1) on a line that holds several frames.
///
/// # Errors
/// A file that cannot be read (named).
pub fn verify_files(
    files: &[impl AsRef<Path>],
    opts: &verify::Options,
) -> anyhow::Result<verify::Report> {
    use std::io::BufRead;
    let mut entries = Vec::new();
    let mut other = 0;
    let mut findings = Vec::new();
    for f in files {
        let path = f.as_ref();
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if name == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
            ))
        };
        // Records never hold a raw LF (every format escapes it), so a line never splits one.
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
            let frames = frames(&line);
            let several = frames.len() > 1;
            for fr in frames {
                let column = if several { fr.offset + 1 } else { 0 };
                let at = if several {
                    format!("{name}:{}:{column}", i + 1)
                } else {
                    format!("{name}:{}", i + 1)
                };
                if fr.cut {
                    findings.push(verify::Finding {
                        kind: "cut_frame",
                        fails: false,
                        at: Some(at),
                        sequence: None,
                        message: format!(
                            "an octet-counted frame announces {} bytes and the stream ends \
                             after {}: the connection broke while it was sent (a sink sends \
                             such a record again on its next connection, where it is checked; \
                             a record that never arrives whole is a sequence gap)",
                            fr.announced,
                            fr.bytes.len()
                        ),
                    });
                    continue;
                }
                // A frame that is not UTF-8 is no record of ours (every format is UTF-8).
                let Ok(text) = std::str::from_utf8(fr.bytes) else {
                    other += 1;
                    continue;
                };
                match read::parse_line(&name, i + 1, text) {
                    Ok(Some(mut e)) => {
                        e.column = column;
                        entries.push(e);
                    }
                    Ok(None) => other += usize::from(!text.trim().is_empty()),
                    Err(msg) => findings.push(verify::Finding {
                        kind: "unreadable",
                        fails: true,
                        at: Some(at),
                        sequence: None,
                        message: msg,
                    }),
                }
            }
        }
    }
    Ok(verify::verify(entries, other, findings, opts))
}

/// One syslog frame of a line.
#[derive(Debug, PartialEq, Eq)]
struct Frame<'a> {
    /// Byte offset in the line, from 0.
    offset: usize,
    /// The message (without the octet count or trailer).
    bytes: &'a [u8],
    /// An octet-counted frame cut short by the end of the line (a broken connection).
    cut: bool,
    /// The octet count it announced (octet-counted frames).
    announced: usize,
}

/// Splits a line (without its LF) into syslog frames as a raw TCP stream carries them
/// (RFC 6587): octet counting, `MSG-LEN SP SYSLOG-MSG` with MSG-LEN a nonzero decimal and
/// SYSLOG-MSG starting with `<`, any number back to back; and non-transparent framing, a
/// message ended by LF (the line's end) or NUL. Anything else is one frame to the next NUL
/// or the line's end: a line as a file sink or a receiver's template writes it (a receiver
/// that keeps the octet count in front of each message on its own line reads the same way).
fn frames(line: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < line.len() {
        // Trailers and padding between frames.
        if matches!(line[p], b'\0' | b'\r') {
            p += 1;
            continue;
        }
        let digits = line[p..]
            .iter()
            .take(10)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let counted = digits > 0
            && line[p] != b'0'
            && line.get(p + digits) == Some(&b' ')
            && line.get(p + digits + 1) == Some(&b'<');
        if counted {
            let len: usize = std::str::from_utf8(&line[p..p + digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(usize::MAX);
            let start = p + digits + 1;
            let end = start.saturating_add(len);
            if end > line.len() {
                out.push(Frame {
                    offset: p,
                    bytes: &line[start..],
                    cut: true,
                    announced: len,
                });
                break;
            }
            out.push(Frame {
                offset: p,
                bytes: &line[start..end],
                cut: false,
                announced: len,
            });
            p = end;
            continue;
        }
        let end = line[p..]
            .iter()
            .position(|b| *b == b'\0')
            .map_or(line.len(), |n| p + n);
        out.push(Frame {
            offset: p,
            bytes: &line[p..end],
            cut: false,
            announced: 0,
        });
        p = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::formats::Format;

    #[test]
    fn frames_of_a_line() {
        let f = |l: &str| -> Vec<(usize, String, bool)> {
            frames(l.as_bytes())
                .into_iter()
                .map(|f| {
                    (
                        f.offset,
                        String::from_utf8_lossy(f.bytes).into_owned(),
                        f.cut,
                    )
                })
                .collect()
        };
        assert_eq!(f(""), []);
        assert_eq!(f("{\"a\":1}"), [(0, "{\"a\":1}".into(), false)]);
        assert_eq!(
            f("5 <1>ab3 <2>x\0<3>y\0\r"),
            [
                (0, "<1>ab".into(), false),
                (7, "<2>".into(), false),
                (12, "x".into(), false),
                (14, "<3>y".into(), false),
            ]
        );
        assert_eq!(
            f("3 <1>9 <2>cut"),
            [(0, "<1>".into(), false), (5, "<2>cut".into(), true)]
        );
        // Digits not followed by `SP <` are text, a leading zero is no count.
        assert_eq!(f("2026 x"), [(0, "2026 x".into(), false)]);
        assert_eq!(f("03 <1>"), [(0, "03 <1>".into(), false)]);
    }

    /// A syslog TCP stream as captured off the wire: octet-counted frames back to back on
    /// one "line", then frames with LF and NUL trailers (non-transparent framing), as a
    /// receiver that mixes both would see them; it verifies, and damage in it is located
    /// by line and column.
    #[test]
    fn a_raw_tcp_stream_verifies() {
        for format in Format::ALL {
            let records = verify::tests::stream(format, "h", "r", 0, verify::tests::CLEAN);
            let frame = |i: usize, r: &str| {
                format!("<134>1 2026-11-29T09:42:54.018030Z h egressd 77 m{i} - {r}")
            };
            let build = |skip: Option<usize>| {
                let mut raw = Vec::new();
                for (i, r) in records.iter().enumerate() {
                    if Some(i) == skip {
                        continue;
                    }
                    let msg = frame(i, r);
                    match i {
                        0..5 => raw.extend(format!("{} {msg}", msg.len()).bytes()),
                        5 => raw.extend(format!("\n{msg}\n").bytes()),
                        _ => raw.extend(format!("{msg}\0").bytes()),
                    }
                }
                raw
            };
            let dir = std::env::temp_dir().join(format!(
                "egressd-frames-{}-{}",
                std::process::id(),
                format.as_str()
            ));
            std::fs::create_dir_all(&dir).expect("tempdir");
            let path = dir.join("capture.raw");
            std::fs::write(&path, build(None)).expect("write");
            let r = verify_files(&[&path], &verify::Options::default()).expect("reads");
            assert!(r.proven, "{format:?}\n{}", verify::text(&r));
            assert_eq!(r.hosts[0].runs[0].last_sequence, 8, "{format:?}");
            // A frame deleted from the counted part: the gap is at line 1, the column of
            // the frame after it.
            std::fs::write(&path, build(Some(2))).expect("write");
            let r = verify_files(&[&path], &verify::Options::default()).expect("reads");
            let gap = r.hosts[0].runs[0]
                .findings
                .iter()
                .find(|f| f.kind == "sequence_gap")
                .unwrap_or_else(|| panic!("{format:?}: {}", verify::text(&r)));
            let counted = |i: usize| {
                let n = frame(i, &records[i]).len();
                n.to_string().len() + 1 + n
            };
            let col = counted(0) + counted(1) + 1;
            assert_eq!(
                gap.at.as_deref(),
                Some(format!("{}:1:{col}", path.display()).as_str()),
                "{format:?}"
            );
            // A stream cut inside a frame (a broken connection): noted, not a failure
            // by itself; here the record is gone, so its absence fails.
            let mut cut = build(None);
            let whole = cut.len();
            cut.truncate(counted(0) + 10);
            std::fs::write(&path, &cut).expect("write");
            let r = verify_files(&[&path], &verify::Options::default()).expect("reads");
            assert!(whole > cut.len());
            assert!(
                r.findings.iter().any(|f| f.kind == "cut_frame" && !f.fails),
                "{format:?}: {}",
                verify::text(&r)
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
