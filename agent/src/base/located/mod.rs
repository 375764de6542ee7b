//! An error with its place in a file: what configuration and import errors both are.

use std::path::{Path, PathBuf};

pub mod toml;

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

/// Line starts of a text, computed once, so that locating each of many errors, rules or
/// regions costs a binary search instead of a scan from the start of the text (which made
/// validating large files quadratic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineIndex {
    /// Byte offset where each line starts; `starts[0]` is 0.
    starts: Vec<usize>,
    /// Characters before each [`BLOCK`]-byte block of the text, for columns on long lines.
    chars_before_block: Vec<usize>,
}

/// Bytes per checkpoint of [`LineIndex::chars_before_block`].
const BLOCK: usize = 256;

impl LineIndex {
    /// Index `text` (linear in its length).
    pub fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        starts.extend(memchr_newlines(bytes).map(|i| i + 1));
        let mut chars_before_block = Vec::with_capacity(bytes.len() / BLOCK + 1);
        let mut n = 0;
        for block in bytes.chunks(BLOCK) {
            chars_before_block.push(n);
            n += block.iter().filter(|b| is_char_start(**b)).count();
        }
        chars_before_block.push(n);
        Self {
            starts,
            chars_before_block,
        }
    }

    /// 1-based (line, column) of byte `offset` in `text` (the text this index was built
    /// from); the column counts characters. An offset inside a character is its start; an
    /// offset past the end is the end. O(log lines + 256).
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self.chars_before(text, offset) - self.chars_before(text, start) + 1;
        (line, column)
    }

    /// Characters in `text[..offset]`.
    fn chars_before(&self, text: &str, offset: usize) -> usize {
        let block = offset / BLOCK;
        let base = self.chars_before_block.get(block).copied().unwrap_or(0);
        base + text.as_bytes()[block * BLOCK..offset]
            .iter()
            .filter(|b| is_char_start(**b))
            .count()
    }
}

/// Whether `b` starts a UTF-8 character (is not a continuation byte).
fn is_char_start(b: u8) -> bool {
    b & 0xc0 != 0x80
}

/// Offsets of the `\n` bytes of `bytes`.
fn memchr_newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
}

/// 1-based (line, column) of byte `offset` in `text`, for a single lookup (builds no index;
/// use [`LineIndex`] for many).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    (line, text[line_start..offset].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_agrees_with_a_scan() {
        let mut text = String::from("ab\ncd\n\né\né");
        // A long line with multibyte characters across block boundaries.
        text.push_str(&"xé€𝄞".repeat(200));
        text.push_str("\nend");
        let idx = LineIndex::new(&text);
        for offset in 0..=text.len() + 3 {
            assert_eq!(
                idx.line_col(&text, offset),
                line_col(&text, offset),
                "offset {offset}"
            );
        }
        assert_eq!(idx.line_col("", 0), (1, 1));
        assert_eq!(LineIndex::new("").line_col("", 5), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\né", 4), (2, 1));
    }
}
