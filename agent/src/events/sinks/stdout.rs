//! Standard output: frames are written through a buffer and flushed whenever the sink's
//! queue runs empty, so a burst costs one `write(2)` per buffer, and a quiet stream is never
//! held back.
use std::io;

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

impl Opener for Std {
    type Writer = io::Stdout;
    const WHAT: &'static str = "stdout";

    fn open(&mut self, _resume: Option<u64>) -> io::Result<io::Stdout> {
        Ok(io::stdout())
    }
}
