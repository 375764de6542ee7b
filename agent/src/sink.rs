//! Event sinks. This build has one: JSON lines (one object per line, RFC 8259, UTF-8) on
//! standard output.
use std::io::{self, Write};

use serde::Serialize;

/// Writes one JSON object per line and counts what it could not write.
pub struct JsonLines<W: Write> {
    out: W,
    written: u64,
    failed: u64,
}

impl JsonLines<io::BufWriter<io::Stdout>> {
    /// A sink on the process's standard output.
    pub fn stdout() -> Self {
        Self::new(io::BufWriter::new(io::stdout()))
    }
}

impl<W: Write> JsonLines<W> {
    /// A sink on any writer (files, tests).
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            failed: 0,
        }
    }

    /// Serializes `record` and appends a newline. A failed write is counted (see
    /// [`Self::failed`]) and logged, never fatal: the enforcement does not depend on the sink.
    pub fn emit<T: Serialize>(&mut self, record: &T) {
        let res = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match res {
            Ok(()) => self.written += 1,
            Err(e) => {
                self.failed += 1;
                tracing::warn!(error = %e, failed = self.failed, "event sink write failed");
            }
        }
    }

    /// Flushes buffered lines; call after each batch so events leave promptly.
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, "event sink flush failed");
        }
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Records that could not be written (counted as lost).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// The underlying writer (tests).
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_line() {
        let mut s = JsonLines::new(Vec::new());
        s.emit(&serde_json::json!({"a": 1}));
        s.emit(&serde_json::json!({"b": "x\ny"}));
        s.flush();
        assert_eq!(
            String::from_utf8_lossy(s.get_ref()),
            "{\"a\":1}\n{\"b\":\"x\\ny\"}\n"
        );
        assert_eq!((s.written(), s.failed()), (2, 0));
    }
}
