//! Standard output: frames are written through a buffer and flushed whenever the sink's
//! queue runs empty, so a burst costs one `write(2)` per buffer, and a quiet stream is never
//! held back.
use std::io::{self, IoSlice, Write};

use super::buffered::{Buffered, Opener};

/// The process's standard output.
pub type Stdout = Buffered<Std>;

/// Opens the process's standard output.
pub struct Std;

impl Stdout {
    /// Not yet open.
    pub fn new() -> Self {
        Self::with_opener(Std)
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

/// Standard output and the stream offset the sink stopped at.
pub struct StdWriter {
    out: io::Stdout,
    at: u64,
}

impl Write for StdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.out.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Opener for Std {
    type Writer = StdWriter;
    const WHAT: &'static str = "stdout";

    /// Standard output is one stream for the process's life: a reopen continues it where
    /// the sink stopped (`resume`), so a record a failed write cut off is completed, not
    /// followed by the next one on the same line.
    fn open(&mut self, resume: Option<u64>) -> io::Result<StdWriter> {
        Ok(StdWriter {
            out: io::stdout(),
            at: resume.unwrap_or(0),
        })
    }

    fn offset(w: &StdWriter) -> u64 {
        w.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopen_continues_the_stream_where_it_stopped() {
        let w = Std.open(Some(70_001)).expect("stdout");
        assert_eq!(
            Std::offset(&w),
            70_001,
            "a cut record is completed, not abandoned"
        );
        assert_eq!(Std::offset(&Std.open(None).expect("stdout")), 0);
    }
}
