//! The mapping file of `regions import`: never a panic; a valid mapping's regions are
//! sorted, distinct, valid policy region names.
#![no_main]
use std::path::Path;

use egressd::policy::import::Mapping;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(m) = Mapping::parse(Path::new("mapping.toml"), text) {
        assert!(m.regions.windows(2).all(|w| w[0] < w[1]));
        for r in &m.regions {
            assert!(egressd::config::check_region_name(r).is_ok(), "{r:?}");
        }
        let _ = m.keys();
    }
});
