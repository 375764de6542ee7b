//! An error with its place in a file: what configuration and import errors both are.

use std::path::{Path, PathBuf};

/// Why a file was rejected, with its location.
///
/// Display: `{file}:{line}:{column}: {field}: {message}`; `:{line}:{column}` is omitted when
/// `line` is 0 (the file could not be read, or the format gives no position), `{field}: `
/// when `field` is empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct LocatedError {
    /// The file: a configuration file, a provider range file, a mapping or an output file.
    pub file: PathBuf,
    /// 1-based line, 0 when the error is not about a position.
    pub line: usize,
    /// 1-based column, 0 when `line` is 0: in characters where egressd located the text
    /// itself, in bytes for JSON syntax errors (as serde_json counts).
    pub column: usize,
    /// Path of the offending field (`allowlist[0]`, `regions.us.prefixes[1]`,
    /// `prefixes[12].ip_prefix`, `aws.eu[2]`), empty when the error is about the whole file.
    pub field: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl LocatedError {
    fn render(&self) -> String {
        let mut s = self.file.display().to_string();
        if self.line != 0 {
            s.push_str(&format!(":{}:{}", self.line, self.column));
        }
        s.push_str(": ");
        if !self.field.is_empty() {
            s.push_str(&self.field);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }

    /// An error about the whole file `file` (no position, no field).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }
    }
}
