//! Idempotent installation of the build and test toolchain (see TOOLCHAIN.md in the
//! project's shared notes): Debian packages, the nightly `rust-src` component, and
//! bpf-linker built against LLVM 22 (rustc nightly's LLVM major).
use std::process::Command;

use anyhow::bail;

use crate::sh;

/// Debian packages: LLVM 22 for bpf-linker, iproute2 for the test bed, util-linux for
/// `setpriv` (unprivileged test) and `nsenter`, procps for `sysctl`, bpftool for inspection,
/// rsyslog and its OpenSSL TLS driver for the sink tests' real receiver, python3-venv for
/// [`ensure_ansible`].
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "util-linux",
    "procps",
    "bpftool",
    "rsyslog",
    "rsyslog-openssl",
    // A virtual environment for ansible-core and ansible-lint (the role tests).
    "python3-venv",
    // Contenders of `cargo xtask bench`.
    "nftables",
    "iptables",
    "ipset",
];
/// bpf-linker release that supports LLVM 22 (feature `llvm-22`).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages `cargo xtask vm-test` needs besides [`PACKAGES`]: QEMU, busybox-static
/// (the guest's shell and init), cpio (the initramfs), kmod (`depmod` indexes an unpacked
/// kernel's modules) and xz-utils (6.12's modules are `.ko.xz`). Only that command installs
/// them.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];

/// Installs whatever is missing; quick when everything is there.
pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    let has_src = sh::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        sh::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = sh::output(Command::new("bpf-linker").arg("--version"));
    if !linker.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
        );
        sh::run(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))?;
    }
    ensure_cargo_fuzz()?;
    // cargo-deb is installed by `cargo xtask package` itself: tests and the demo do not
    // need it.
    Ok(())
}

/// ansible-core release the role tests (`agent/tests/ansible.rs`) run: the 2.19 series the
/// role is written for.
const ANSIBLE_CORE_VERSION: &str = "2.19.14";
/// ansible-lint release that checks the role (production profile).
const ANSIBLE_LINT_VERSION: &str = "26.10.1";

/// Installs ansible-core and ansible-lint from PyPI into `TARGET/ansible/venv` (where the
/// role tests look for them) unless those versions are there; quick when they are.
///
/// # Errors
/// The virtual environment cannot be made (python3-venv missing) or pip fails (no PyPI).
pub fn ensure_ansible() -> anyhow::Result<()> {
    let venv = sh::target_dir().join("ansible/venv");
    let bin = venv.join("bin");
    let has = |tool: &str, version: &str| {
        sh::output(
            Command::new(bin.join(tool))
                .arg("--version")
                .env("NO_COLOR", "1"),
        )
        .is_some_and(|v| v.contains(version))
    };
    if has("ansible-playbook", &format!("core {ANSIBLE_CORE_VERSION}"))
        && has("ansible-lint", ANSIBLE_LINT_VERSION)
    {
        return Ok(());
    }
    // The distribution's own interpreter (with python3-venv), not whatever python3 comes
    // first in PATH; ansible-core 2.19 needs Python 3.11 or later (Ubuntu 22.04's python3 is
    // 3.10: its python3.11 package then).
    let Some(python) = [
        "/usr/bin/python3",
        "/usr/bin/python3.13",
        "/usr/bin/python3.12",
        "/usr/bin/python3.11",
    ]
    .into_iter()
    .find(|p| {
        sh::output(Command::new(p).args([
            "-c",
            "import sys, venv; sys.exit(sys.version_info < (3, 11))",
        ]))
        .is_some()
    }) else {
        bail!(
            "ansible-core {ANSIBLE_CORE_VERSION} needs Python 3.11 or later with venv (Debian \
             12 and Ubuntu 24.04 have it as python3; on Ubuntu 22.04 install python3.11-venv)"
        );
    };
    eprintln!(
        "xtask: installing ansible-core {ANSIBLE_CORE_VERSION} and ansible-lint \
         {ANSIBLE_LINT_VERSION} into {} (a minute)",
        venv.display()
    );
    sh::run(
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    sh::run(Command::new(bin.join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("ansible-core=={ANSIBLE_CORE_VERSION}"),
        &format!("ansible-lint=={ANSIBLE_LINT_VERSION}"),
    ]))
}

/// Installs the Debian packages of `cargo xtask vm-test` that are missing.
pub fn ensure_vm() -> anyhow::Result<()> {
    ensure_packages(VM_PACKAGES)
}

/// cargo-fuzz release `cargo xtask fuzz` drives (libFuzzer via the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.12.0";

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] unless that version is there.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = sh::output(Command::new("cargo").args(["fuzz", "--version"]));
    if !have.is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        sh::run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    Ok(())
}

/// Installs those of `packages` that are not installed (apt-get, as root).
fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !sh::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run as root so they can be installed");
    }
    eprintln!("xtask: installing {missing:?}");
    sh::run(Command::new("apt-get").args(["update", "-qq"]))?;
    sh::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// cargo-deb release `cargo xtask package` uses (pinned: a newer one may need a newer rustc).
const CARGO_DEB_VERSION: &str = "=3.8.0";

/// Installs cargo-deb (for `cargo xtask package`) if `cargo deb` is missing.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    if sh::output(Command::new("cargo").args(["deb", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (a minute or two)");
    sh::run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// Effective uid is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
