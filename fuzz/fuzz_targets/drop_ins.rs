//! A main policy file and drop-in files: never a panic; an accepted set compiles and its
//! tables agree with the model.
#![no_main]
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|files: (String, Vec<String>)| {
    let (main, drop_ins) = files;
    let drop_ins: Vec<(PathBuf, String)> = drop_ins
        .into_iter()
        .take(4)
        .enumerate()
        .map(|(i, t)| (PathBuf::from(format!("policy.d/{i}.toml")), t))
        .collect();
    if let Ok((cfg, _)) = egressd::config::parse_set_all(Path::new("policy.toml"), &main, &drop_ins)
    {
        egressd_fuzz::check_policy(&cfg, &[]);
    }
});
