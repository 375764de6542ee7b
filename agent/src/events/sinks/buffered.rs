//! What the line-oriented local sinks (stdout, files) share: frames go through a 64 KiB
//! buffer, flushed when the sink's queue runs empty (one `write(2)` per burst, a quiet stream
//! never held back) and on close; only how the writer is opened differs.
use std::{
    io::{self, BufWriter, Write},
    time::Instant,
};

use super::{SendError, Transport};

/// Opens the writer of a [`Buffered`] sink (again after a close: logrotate's SIGUSR1).
pub trait Opener: Send {
    /// The writer opened.
    type Writer: Write + Send;
    /// Names the destination in "not open" errors (`"stdout"`, `"file"`).
    const WHAT: &'static str;
    /// Opens the writer.
    ///
    /// # Errors
    /// The destination cannot be opened (the sink retries later).
    fn open(&mut self) -> io::Result<Self::Writer>;
}

/// A [`Transport`] writing through a buffer to what `O` opens.
pub struct Buffered<O: Opener> {
    opener: O,
    out: Option<BufWriter<O::Writer>>,
}

impl<O: Opener> Buffered<O> {
    /// Not yet open; `opener` opens it on first use.
    pub fn with_opener(opener: O) -> Self {
        Self { opener, out: None }
    }
}

impl<O: Opener> Transport for Buffered<O> {
    fn open(&mut self, _deadline: Instant) -> io::Result<()> {
        let w = self.opener.open()?;
        self.out = Some(BufWriter::with_capacity(64 << 10, w));
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.out.is_some()
    }

    fn send(&mut self, frame: &[u8], _deadline: Instant) -> Result<u64, SendError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| SendError::Retry(io::Error::other(format!("{} not open", O::WHAT))))?;
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
