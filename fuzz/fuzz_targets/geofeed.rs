//! The RFC 8805 geofeed reader: never a panic; every entry's offset lies in the text.
#![no_main]
use std::path::Path;

use egressd::policy::import::{Format, Source, parse_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let src = Source {
        path: Path::new("geofeed.csv"),
        text,
    };
    if let Ok(parsed) = parse_source(&src, Format::Geofeed) {
        for e in &parsed.entries {
            assert!(e.offset.is_none_or(|o| o <= text.len()));
            let _ = src.err_at(e.offset, "ip_prefix", "");
        }
    }
});
