//! Running commands with the toolchain paths set.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `PATH` with `~/.cargo/bin` (bpf-linker) and LLVM 22's bin directory in front.
pub fn path() -> String {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    let old = std::env::var("PATH").unwrap_or_default();
    format!("{}:/usr/lib/llvm-22/bin:{old}", home.join("bin").display())
}

/// Runs `cmd` to completion; an error names the command and its exit status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .env("PATH", path())
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cargo ARGS` in the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(root()))
}

/// Captured stdout of a successful run, else `None`.
pub fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.env("PATH", path()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}
