//! Running commands with the toolchain paths set.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
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

/// Runs `cargo ARGS` in the workspace root, echoing its stdout line by line while folding
/// each line into `acc` with `f`; returns the exit status and the accumulator.
pub fn cargo_tee<A: Default>(
    args: &[&str],
    mut f: impl FnMut(&str, &mut A),
) -> anyhow::Result<(std::process::ExitStatus, A)> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .env("PATH", path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo")?;
    let mut acc = A::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            f(&line, &mut acc);
        }
    }
    Ok((child.wait()?, acc))
}

/// Captured stdout of a successful run, else `None`.
pub fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.env("PATH", path()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}
