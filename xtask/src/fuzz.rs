//! `cargo xtask fuzz`: run the cargo-fuzz targets of `fuzz/` (nightly, libFuzzer), each for
//! a bounded time, and report one line per target and a summary line.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`: the project's policies
//! and provider fixtures, and the inputs of issue #23's findings) and its growing corpus
//! (`fuzz/corpus/TARGET`, not committed). A crash, a failed property or an input slower than
//! [`TIMEOUT_SECS`] fails the target; libFuzzer saves the input under
//! `fuzz/artifacts/TARGET/`, and `cargo +nightly fuzz run TARGET ARTIFACT` replays it.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{setup, sh};

/// Every target of `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &[
    "config_text",
    "config_structured",
    "drop_ins",
    "policy_model",
    "provider_aws",
    "provider_gcp",
    "provider_azure",
    "provider_oracle",
    "geofeed",
    "mapping",
    "destination",
    "import_roundtrip",
];

/// One input may take this long before libFuzzer calls it a hang (seconds).
const TIMEOUT_SECS: u32 = 10;

/// `cargo xtask fuzz` options.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target (CI: 20; a longer hunt: 3600).
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Run only these targets (default: all).
    targets: Vec<String>,
}

/// Builds the fuzz targets, runs them, prints `fuzz: N passed, N failed`.
pub fn run(args: Args) -> anyhow::Result<()> {
    setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target `{t}` (targets: {})",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let dir = sh::root().join("fuzz");
    // The eBPF object is not needed to fuzz the parsers and the compiler, and building it
    // with the sanitizer flags cargo-fuzz sets would fail.
    let cargo_fuzz = || {
        let mut c = Command::new("cargo");
        c.args(["+nightly", "fuzz"])
            .current_dir(&dir)
            .env("AYA_BUILD_SKIP", "1");
        c
    };
    sh::run(cargo_fuzz().args(["build", "-O"])).context("building the fuzz targets")?;
    let mut failed = Vec::new();
    for t in &targets {
        let corpus = dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = dir.join("seeds").join(t);
        let mut c = cargo_fuzz();
        c.args(["run", "-O", t]).arg(&corpus);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.args([
            "--",
            &format!("-max_total_time={}", args.seconds),
            &format!("-timeout={TIMEOUT_SECS}"),
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        match sh::run(&mut c) {
            Ok(()) => println!("fuzz {t}: ok ({} s)", args.seconds),
            Err(e) => {
                println!("fuzz {t}: FAILED ({e:#}); the input is in fuzz/artifacts/{t}/");
                failed.push(*t);
            }
        }
    }
    println!(
        "fuzz: {} passed, {} failed",
        targets.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
