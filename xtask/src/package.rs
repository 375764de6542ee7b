//! `cargo xtask package`: the Debian package (cargo-deb, metadata in `agent/Cargo.toml`
//! under `[package.metadata.deb]`), then a check that installs it into a throwaway root with
//! `dpkg -x` and verifies the files: the binary runs, the unit has the hardening and the
//! SIGHUP reload, the shipped policy passes `egressd check` with the packaged binary.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::sh;

/// Files the package must install (relative to the root) and their modes.
pub const FILES: &[(&str, u32)] = &[
    ("usr/bin/egressd", 0o755),
    ("lib/systemd/system/egressd.service", 0o644),
    ("etc/egressd/policy.toml", 0o644),
    ("usr/share/doc/egressd/examples/sinks.toml", 0o644),
    ("usr/share/doc/egressd/examples/rules.toml", 0o644),
    ("usr/share/doc/egressd/README.md", 0o644),
];

/// Builds the .deb and checks it; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    crate::setup::ensure_cargo_deb()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["deb", "-p", "egressd"])
        .current_dir(sh::root())
        .env("PATH", sh::path())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("spawning cargo deb")?;
    if !o.status.success() {
        bail!("cargo deb failed: {}", o.status);
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not print the package path")?;
    verify(&deb)?;
    println!("{}", deb.display());
    Ok(deb)
}

/// Installs `deb` into a fresh directory with `dpkg -x` and checks [`FILES`], the unit and
/// the shipped policy. The directory is removed afterwards.
pub fn verify(deb: &Path) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("egressd-deb-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let res = check_root(deb, &root);
    let _ = std::fs::remove_dir_all(&root);
    res
}

fn check_root(deb: &Path, root: &Path) -> anyhow::Result<()> {
    sh::run(Command::new("dpkg").arg("-x").arg(deb).arg(root))?;
    let fields = sh::output(Command::new("dpkg-deb").args(["-f"]).arg(deb).args([
        "Package",
        "Version",
        "Architecture",
    ]))
    .context("dpkg-deb -f")?;
    if !fields.contains("Package: egressd") {
        bail!("unexpected control fields: {fields}");
    }
    for (file, mode) in FILES {
        let p = root.join(file);
        let meta = std::fs::metadata(&p)
            .with_context(|| format!("{file} missing from {}", deb.display()))?;
        if meta.permissions().mode() & 0o777 != *mode {
            bail!(
                "{file}: mode {:o}, want {mode:o}",
                meta.permissions().mode() & 0o777
            );
        }
    }
    let bin = root.join("usr/bin/egressd");
    let version = sh::output(Command::new(&bin).arg("--version")).context("egressd --version")?;
    if !version.starts_with("egressd ") {
        bail!("egressd --version printed {version:?}");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/egressd.service"))?;
    for want in [
        "Type=notify\n",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "--pin-dir",
    ] {
        if !unit.contains(want) {
            bail!("the unit lacks {want:?}");
        }
    }
    let policy = root.join("etc/egressd/policy.toml");
    sh::output(Command::new(&bin).args(["check", "--config"]).arg(&policy))
        .context("the packaged policy does not pass `egressd check`")?;
    eprintln!(
        "xtask: {} installs {} files into a throwaway root; binary, unit and policy check out",
        deb.display(),
        FILES.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every file the check expects is an asset of `[package.metadata.deb]`, and every asset
    /// source exists, so `cargo xtask package` cannot drift from the manifest.
    #[test]
    fn assets_match_the_manifest() {
        let root = crate::sh::root();
        let manifest = std::fs::read_to_string(root.join("agent/Cargo.toml")).expect("manifest");
        let deb = manifest
            .split_once("[package.metadata.deb]")
            .expect("agent/Cargo.toml has [package.metadata.deb]")
            .1;
        for (file, mode) in super::FILES {
            let dest = if *file == "usr/bin/egressd" {
                "usr/bin/"
            } else {
                file
            };
            let line = deb
                .lines()
                .find(|l| l.contains(&format!("\"{dest}\"")))
                .unwrap_or_else(|| panic!("{file} is not an asset"));
            assert!(
                line.contains(&format!("\"{mode:o}\"")),
                "{file}: mode in {line}"
            );
            let src = line.split('"').nth(1).expect("asset source");
            if src != "target/release/egressd" {
                assert!(root.join("agent").join(src).is_file(), "{src} missing");
            }
        }
    }
}
