//! `egressd explain` destinations: never a panic; a parsed destination is explained against
//! the example policy in text and JSON.
#![no_main]
use std::path::Path;
use std::sync::OnceLock;

use egressd::policy::Policy;
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let text = include_str!("../../configs/rules.toml");
        let cfg = egressd::config::parse(Path::new("rules.toml"), text).expect("example policy");
        egressd::policy::compile(&cfg)
    })
}

fuzz_target!(|s: &str| {
    if let Ok(d) = egressd::policy::explain::parse_destination(s) {
        let e = egressd::policy::explain::explain(policy(), d);
        let _ = e.to_text();
        let _ = e.to_json().to_string();
    }
});
