//! The aws range file reader: never a panic; every entry's offset lies in the text.
#![no_main]
use std::path::Path;

use egressd::policy::import::{Format, Source, parse_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let src = Source {
        path: Path::new("ranges.json"),
        text,
    };
    if let Ok(parsed) = parse_source(&src, Format::Aws) {
        for e in &parsed.entries {
            assert!(e.offset.is_none_or(|o| o <= text.len()));
        }
        // A version stamp is copied into a comment: no line break, no control character.
        if let Some(v) = &parsed.version {
            assert!(!v.chars().any(char::is_control), "{v:?}");
        }
    }
});
