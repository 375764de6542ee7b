//! A structure-aware policy (regions, rules, modes, NAT64; sometimes sloppy, to reach the
//! validation errors): never a panic; an accepted policy compiles and its tables agree with
//! the model.
#![no_main]
use std::path::Path;

use egressd_fuzz::{GenPolicy, check_policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|g: GenPolicy| {
    let text = g.to_toml();
    if let Ok(cfg) = egressd::config::parse(Path::new("policy.toml"), &text) {
        check_policy(&cfg, &[]);
    } else {
        assert!(g.sloppy || !text.is_empty());
    }
});
