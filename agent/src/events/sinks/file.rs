//! A file, appended to (created with the sink's `mode`, 0600 by default, if missing). For
//! logrotate: rename the file, then send the agent SIGUSR1 (`postrotate kill -USR1 $(pidof
//! egressd)`); the sink finishes the record it is writing, flushes, closes and opens the path
//! again, so no record is split across files or lost.
//!
//! Every open goes through [`crate::base::safefs`]: the directory must be owned by root and not
//! writable by others (nor its ancestors, sticky ones like `/tmp` aside), and the file is
//! opened relative to it with `O_NOFOLLOW`; a link, a file someone else owns or one others
//! can write is refused, naming the path.
use std::{io, path::PathBuf};

use super::buffered::{Buffered, Opener};

/// An append-only file sink.
pub type File = Buffered<Path>;

/// The path a [`File`] sink appends to, and the mode it is created with.
pub struct Path(PathBuf, u32);

impl File {
    /// A sink for `path` (opened on first use), created with mode 0600 if missing.
    pub fn new(path: PathBuf) -> Self {
        Self::with_mode(path, crate::base::safefs::FILE_MODE)
    }

    /// A sink for `path` (opened on first use), created with `mode` if missing.
    pub fn with_mode(path: PathBuf, mode: u32) -> Self {
        Self::with_opener(Path(path, mode))
    }
}

impl Opener for Path {
    type Writer = std::fs::File;
    const WHAT: &'static str = "file";

    fn open(&mut self) -> io::Result<std::fs::File> {
        crate::base::safefs::open_append(&self.0, self.1)
    }
}
