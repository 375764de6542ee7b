//! Audit trail: a hash chain over every sink's records ([`chain`]), and `egressd audit
//! verify`, which reads exported records back ([`read`]) and proves, or fails to prove,
//! continuous enforcement from them ([`verify`]). The README's "Auditing" section is the
//! auditor's guide.
pub mod chain;
pub mod read;
pub mod verify;

use std::path::Path;

/// Reads every line of `files` (`-` for stdin) into entries, counting lines that hold no
/// egressd record, and checks them.
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
    let mut unreadable = Vec::new();
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
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
            // A line that is not UTF-8 is no record of ours (every format is UTF-8).
            let Ok(text) = std::str::from_utf8(&line) else {
                other += 1;
                continue;
            };
            match read::parse_line(&name, i + 1, text) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => other += usize::from(!text.trim().is_empty()),
                Err(msg) => unreadable.push(verify::Finding {
                    kind: "unreadable",
                    fails: true,
                    at: Some(format!("{name}:{}", i + 1)),
                    sequence: None,
                    message: msg,
                }),
            }
        }
    }
    Ok(verify::verify(entries, other, unreadable, opts))
}
