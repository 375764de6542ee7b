//! A file, appended to (created with mode 0640 if missing). For logrotate: rename the file,
//! then send the agent SIGUSR1 (`postrotate kill -USR1 $(pidof egressd)`); the sink finishes
//! the record it is writing, flushes, closes and opens the path again, so no record is split
//! across files or lost.
use std::{
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
};

use super::{SendError, Transport};

/// An append-only file sink.
pub struct File {
    path: PathBuf,
    out: Option<io::BufWriter<std::fs::File>>,
}

impl File {
    /// A sink for `path` (opened on first use).
    pub fn new(path: PathBuf) -> Self {
        Self { path, out: None }
    }
}

impl Transport for File {
    fn open(&mut self) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)?;
        self.out = Some(io::BufWriter::with_capacity(64 << 10, f));
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.out.is_some()
    }

    fn send(&mut self, frame: &[u8]) -> Result<u64, SendError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| SendError::Retry(io::Error::other("file not open")))?;
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
