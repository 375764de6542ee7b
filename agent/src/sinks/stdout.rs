//! Standard output: frames are written through a buffer and flushed whenever the sink's
//! queue runs empty, so a burst costs one `write(2)` per buffer, and a quiet stream is never
//! held back.
use std::io::{self, Write as _};

use super::{SendError, Transport};

/// The process's standard output.
pub struct Stdout {
    out: Option<io::BufWriter<io::Stdout>>,
}

impl Stdout {
    /// Not yet open.
    pub fn new() -> Self {
        Self { out: None }
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Stdout {
    fn open(&mut self) -> io::Result<()> {
        self.out = Some(io::BufWriter::with_capacity(64 << 10, io::stdout()));
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.out.is_some()
    }

    fn send(&mut self, frame: &[u8]) -> Result<u64, SendError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| SendError::Retry(io::Error::other("stdout not open")))?;
        out.write_all(frame).map_err(SendError::Retry)?;
        Ok(frame.len() as u64)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn close(&mut self) {
        if let Some(mut o) = self.out.take() {
            let _ = o.flush();
        }
    }
}
