//! `regions import` end to end on any provider file: never a panic; when the import
//! succeeds, its rendered output reads back (with the policy parser) as exactly the regions
//! and prefixes it meant to write, and nothing else, as a complete policy and as a drop-in;
//! whatever the file says, the output cannot allow 8.8.8.8 (in no region of the file).
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use egressd::policy::import::{self, Format, Mapping, Options, RenderOptions};
use libfuzzer_sys::fuzz_target;

fn mapping() -> &'static Mapping {
    static M: OnceLock<Mapping> = OnceLock::new();
    M.get_or_init(|| {
        let text = "unmapped_region = \"elsewhere\"\n\
                    [aws]\neu = [\"eu-west-1\", \"eu-central-1\"]\n\
                    [gcp]\neu = [\"europe-west1\"]\n\
                    [azure]\neu = [\"westeurope\"]\n\
                    [oracle]\neu = [\"eu-frankfurt-1\"]\n\
                    [geofeed]\neu = [\"DE\", \"NL-NH\"]\n";
        Mapping::parse(Path::new("mapping.toml"), text).expect("mapping")
    })
}

fuzz_target!(|input: (u8, &str)| {
    let (which, text) = input;
    let format = match which % 6 {
        0 => None,
        1 => Some(Format::Aws),
        2 => Some(Format::Gcp),
        3 => Some(Format::Azure),
        4 => Some(Format::Oracle),
        _ => Some(Format::Geofeed),
    };
    let sources = vec![(PathBuf::from("ranges"), text.to_string())];
    let options = Options {
        format,
        mask_host_bits: which & 0x80 != 0,
    };
    let Ok(imported) = import::import_texts(mapping(), &sources, &options) else {
        return;
    };
    let allow: Vec<String> = imported.regions.keys().cloned().collect();
    let complete = import::render(
        &imported,
        &RenderOptions {
            allowlist: Some(allow.clone()),
        },
    )
    .expect("every imported region may be allowlisted");
    let cfg = import::verify_output(Path::new("out.toml"), &complete, &imported, Some(&allow))
        .unwrap_or_else(|e| panic!("complete output does not read back: {e}\n{complete}"));
    let fragment = import::render(&imported, &RenderOptions::default()).expect("render");
    import::verify_output(Path::new("policy.d/x.toml"), &fragment, &imported, None)
        .unwrap_or_else(|e| panic!("drop-in output does not read back: {e}\n{fragment}"));
    assert!(cfg.rules.is_empty());
    let policy = egressd::policy::compile(&cfg);
    let google = "8.8.8.8".parse().expect("address");
    let in_file = imported
        .regions
        .values()
        .any(|r| r.prefixes.iter().any(|p| p.contains(google)));
    if !in_file {
        assert_ne!(
            policy.decide(google, 6, 443).verdict,
            egressd_common::Verdict::Allow,
            "{complete}"
        );
    }
});
