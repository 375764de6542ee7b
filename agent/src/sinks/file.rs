//! A file, appended to (created with mode 0640 if missing). For logrotate: rename the file,
//! then send the agent SIGUSR1 (`postrotate kill -USR1 $(pidof egressd)`); the sink finishes
//! the record it is writing, flushes, closes and opens the path again, so no record is split
//! across files or lost.
use std::{io, os::unix::fs::OpenOptionsExt as _, path::PathBuf};

use super::buffered::{Buffered, Opener};

/// An append-only file sink.
pub type File = Buffered<Path>;

/// The path a [`File`] sink appends to.
pub struct Path(PathBuf);

impl File {
    /// A sink for `path` (opened on first use).
    pub fn new(path: PathBuf) -> Self {
        Self::with_opener(Path(path))
    }
}

impl Opener for Path {
    type Writer = std::fs::File;
    const WHAT: &'static str = "file";

    fn open(&mut self) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.0)
    }
}
