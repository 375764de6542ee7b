//! A policy file as text: never a panic; an accepted policy compiles and its tables agree
//! with the model.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok((cfg, _output)) = egressd::config::parse_all(Path::new("policy.toml"), text) {
        egressd_fuzz::check_policy(&cfg, &[]);
    }
});
