//! The guest's initramfs (an uncompressed `newc` cpio archive; no 9p or virtio-fs, which
//! Debian's cloud kernels lack), in two parts the kernel unpacks one after the other:
//!
//! - the common part, the same for every kernel: busybox-static, `/init`
//!   (`xtask/src/vm/init.sh`), the test binaries, the host tools the tests run
//!   ([`TOOLS`]) with the shared libraries `ldd` names, a few `/etc` files, and the test
//!   command line (`/egressd-vm/argv`, one argument per line);
//! - a per-kernel part: the modules of [`MODULES`] and their dependencies from that
//!   kernel's own tree (decompressed here, loaded with busybox `insmod` in that order from
//!   `/egressd-vm/modules.list`), and its `/boot/config-*`.
//!
//! Every host file keeps its absolute path, with the host's `/usr` symlinks (`/lib ->
//! usr/lib`, ...) recreated: the test binary runs `env!("CARGO_BIN_EXE_egressd")`, which is
//! a host path, and finds the tools through `PATH` as on the host.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernels::{self, Unpacked};
use crate::sh;

/// Programs the kernel tests and the test bed run by name (`Command::new`): iproute2's `ip`
/// (namespaces, veths), `sysctl` (run through `ip netns exec`), util-linux's `setpriv`
/// (the unprivileged test), `nsenter` and `prlimit` (the descriptor-limit security test),
/// `bpftool` (fleet tests), coreutils' `date`, iproute2's `tc` (tc/egress tests).
pub const TOOLS: &[&str] = &[
    "ip", "sysctl", "setpriv", "nsenter", "prlimit", "bpftool", "date", "tc",
];

/// Kernel modules the tests need (the cloud kernels build them as modules): `veth` for the
/// test bed, `sctp` for SCTP tests, `sch_ingress` (the `clsact` qdisc) and `cls_bpf` for
/// the tc/egress fallback on kernels without TCX links (the guest has no `modprobe` to load
/// them on demand).
pub const MODULES: &[&str] = &["veth", "sctp", "sch_ingress", "cls_bpf"];

/// Directories the guest's `PATH` searches, in order (busybox applets come last).
const PATH_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The guest's `/init`.
const INIT: &str = include_str!("init.sh");

/// What goes into the common part.
pub struct Contents<'a> {
    /// Binaries placed at their host paths, stripped (the release `egressd` and the
    /// `kernel` test binary).
    pub binaries: &'a [PathBuf],
    /// The command `/init` runs, and its arguments.
    pub argv: &'a [String],
}

/// Builds the common part in `vm_dir/initramfs/`; returns the archive's path.
pub fn build_common(vm_dir: &Path, contents: &Contents<'_>) -> anyhow::Result<PathBuf> {
    let dir = vm_dir.join("initramfs");
    let root = dir.join("common");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    let mut elves = Vec::new();
    for bin in contents.binaries {
        let dest = place(&root, bin)?;
        let _ = fs::remove_file(&dest);
        sh::run(Command::new("strip").arg("-o").arg(&dest).arg(bin))?;
        elves.push(bin.clone());
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing (Debian package busybox-static)");
    }
    copy_host_file(&root, busybox)?;
    elves.push(busybox.to_path_buf());
    for tool in TOOLS {
        let path = PATH_DIRS
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
            .with_context(|| format!("{tool} is not installed (see setup's package list)"))?;
        copy_host_file(&root, &path)?;
        elves.push(path);
    }
    let mut libs: Vec<PathBuf> = Vec::new();
    for elf in &elves {
        for lib in shared_libraries(elf)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        copy_host_file(&root, lib)?;
    }
    if Path::new("/etc/iproute2").is_dir() {
        copy_host_tree(&root, Path::new("/etc/iproute2"))?;
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        ),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("etc/hostname", "egressd-vm\n"),
    ] {
        write(&root.join(path), text.as_bytes(), 0o644)?;
    }
    for d in ["proc", "sys", "dev", "run", "tmp", "root", "busybox"] {
        fs::create_dir_all(root.join(d))?;
    }
    write(&root.join("init"), INIT.as_bytes(), 0o755)?;
    let mut argv = String::new();
    for arg in contents.argv {
        if arg.contains('\n') {
            bail!("test argument {arg:?} contains a newline");
        }
        argv.push_str(arg);
        argv.push('\n');
    }
    write(&root.join("egressd-vm/argv"), argv.as_bytes(), 0o644)?;
    let out = dir.join("common.cpio");
    pack(&root, &out)?;
    Ok(out)
}

/// Builds `kernel`'s modules part in `dir` and the whole initramfs (`common` followed by
/// it); returns the initramfs's path.
pub fn build_for_kernel(dir: &Path, common: &Path, kernel: &Unpacked) -> anyhow::Result<PathBuf> {
    let root = dir.join("modules-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let files = kernels::module_closure(&kernel.modules, MODULES)?;
    let mut list = String::new();
    for file in &files {
        let src = kernel.modules.join(file);
        let plain = file
            .strip_suffix(".xz")
            .or_else(|| file.strip_suffix(".zst"))
            .or_else(|| file.strip_suffix(".gz"))
            .unwrap_or(file);
        let guest = Path::new("egressd-vm/modules").join(plain);
        let dest = root.join(&guest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let tool = match src.extension().and_then(|e| e.to_str()) {
            Some("xz") => Some("xz"),
            Some("zst") => Some("zstd"),
            Some("gz") => Some("gzip"),
            _ => None,
        };
        match tool {
            Some(tool) => {
                let out = fs::File::create(&dest)?;
                let st = Command::new(tool)
                    .arg("-dc")
                    .arg(&src)
                    .stdout(out)
                    .status()
                    .with_context(|| format!("running {tool} (decompressing {file})"))?;
                if !st.success() {
                    bail!("{tool} -dc {}: {st}", src.display());
                }
            }
            None => {
                fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            }
        }
        list.push('/');
        list.push_str(&guest.to_string_lossy());
        list.push('\n');
    }
    // bpftool's feature probe reads the kernel's configuration from /boot.
    let config = format!("boot/config-{}", kernel.uname);
    if let Some(dir) = kernel.vmlinuz.parent().and_then(Path::parent) {
        let src = dir.join(&config);
        if src.is_file() {
            fs::create_dir_all(root.join("boot"))?;
            fs::copy(&src, root.join(&config))?;
        }
    }
    write(
        &root.join("egressd-vm/modules.list"),
        list.as_bytes(),
        0o644,
    )?;
    let modules = dir.join("modules.cpio");
    pack(&root, &modules)?;
    let initrd = dir.join("initrd.cpio");
    let mut out = fs::File::create(&initrd)?;
    for part in [common, modules.as_path()] {
        let mut f = fs::File::open(part)?;
        std::io::copy(&mut f, &mut out)?;
    }
    out.flush()?;
    Ok(initrd)
}

/// Writes `bytes` to `path` (creating its directory) with `mode`.
fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Creates, under `root`, the directory of absolute host path `path` the way the host has
/// it: every symlink on the way (`/lib -> usr/lib`) is recreated and followed. Returns the
/// path under `root` where `path`'s file goes.
fn place(root: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    let parent = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut host = PathBuf::from("/");
    for comp in parent.components() {
        let Component::Normal(part) = comp else {
            continue;
        };
        host.push(part);
        let meta = fs::symlink_metadata(&host)
            .with_context(|| format!("inspecting {}", host.display()))?;
        let inside = root.join(host.strip_prefix("/")?);
        if meta.file_type().is_symlink() {
            if fs::symlink_metadata(&inside).is_err() {
                symlink(fs::read_link(&host)?, &inside)
                    .with_context(|| format!("symlink {}", inside.display()))?;
            }
            host = fs::canonicalize(&host)?;
            fs::create_dir_all(root.join(host.strip_prefix("/")?))?;
        } else {
            fs::create_dir_all(&inside)?;
        }
    }
    Ok(root.join(host.strip_prefix("/")?).join(name))
}

/// Copies host file `path` (its content, if it is a symlink) to the same path under `root`.
fn copy_host_file(root: &Path, path: &Path) -> anyhow::Result<()> {
    let dest = place(root, path)?;
    fs::copy(path, &dest).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

/// Copies the host directory `dir` with its regular files, recursively.
fn copy_host_tree(root: &Path, dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            copy_host_tree(root, &path)?;
        } else if path.is_file() {
            copy_host_file(root, &path)?;
        }
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `elf`; none for a static
/// binary.
fn shared_libraries(elf: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .with_context(|| format!("running ldd {}", elf.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary (busybox-static).
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", elf.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Packs the tree under `root` into a `newc` cpio archive at `out`, every entry owned by
/// root, in a stable order (each directory before what it holds).
fn pack(root: &Path, out: &Path) -> anyhow::Result<()> {
    let mut names = Vec::new();
    list_tree(root, Path::new("."), &mut names)?;
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running cpio (Debian package cpio)")?;
    {
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        for name in &names {
            writeln!(stdin, "{}", name.display())?;
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("cpio failed: {st}");
    }
    Ok(())
}

/// `rel` and everything under it (relative to `root`), sorted, directories first.
fn list_tree(root: &Path, rel: &Path, names: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    names.push(rel.to_path_buf());
    let full = root.join(rel);
    if !fs::symlink_metadata(&full)?.is_dir() {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(&full)?
        .map(|e| e.map(|e| rel.join(e.file_name())))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        list_tree(root, &e, names)?;
    }
    Ok(())
}
