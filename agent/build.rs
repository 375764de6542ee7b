//! Builds the eBPF object (package `egressd-ebpf`, target `bpfel-unknown-none`) with the
//! nightly toolchain and bpf-linker, and places it in `OUT_DIR/egressd-ebpf` for
//! `include_bytes_aligned!`. With `AYA_BUILD_SKIP=1` (unit tests on a machine without the
//! eBPF toolchain) an empty placeholder is written instead and loading fails at run time with
//! a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let ebpf_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?)
        .join("../ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let object = out_dir.join("egressd-ebpf");
    // The kernel programs also depend on the shared ABI crate.
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("../common").display()
    );
    // A stale object from an earlier build must not survive a skipped build.
    let _ = fs::remove_file(&object);
    aya_build::build_ebpf(
        [Package {
            name: "egressd-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    if !object.exists() {
        fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
    }
    Ok(())
}
