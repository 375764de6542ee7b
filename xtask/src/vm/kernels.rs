//! The Debian cloud kernels `cargo xtask vm-test` boots: pinned packages ([`KERNELS`]),
//! fetched with `apt-get download` from the suites in `xtask/vm/debian-kernels.sources`,
//! unpacked with `dpkg-deb -x`, indexed with `depmod` and cached under
//! `target/vm/kernels/`. apt runs with a private state (lists and cache under
//! `target/vm/apt/`), so the machine's own apt sources and lists are left alone.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::sh;

/// A pinned Debian kernel package.
pub struct Kernel {
    /// Name on the command line (`--kernel 6.1`).
    pub name: &'static str,
    /// The Debian release whose hosts run it.
    pub release: &'static str,
    /// The apt suite it comes from (in `xtask/vm/debian-kernels.sources`).
    pub suite: &'static str,
    /// Binary package (`-unsigned`: the same kernel as the signed one users boot, without
    /// the Secure Boot signature wrapper).
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// Run its vCPUs on one host thread under TCG (`-accel tcg,thread=single`). Kernels whose
    /// BPF LSM is active patch the `bpf_lsm_*` stubs each time an LSM link comes or goes,
    /// while the other vCPU runs them; QEMU 7.2's multi-threaded TCG then executed a stale
    /// breakpoint (6.1: a soft lockup at `bpf_lsm_bpf+0`; 6.12: `Oops: int3` at
    /// `bpf_lsm_socket_create+5`, where memory held the restored `nop`). Single-threaded
    /// TCG switches vCPUs between translation blocks, so the patch is coherent; it is
    /// slower.
    pub tcg_single: bool,
    /// How long its whole suite runs relative to the others (higher: longer); `vm-test`
    /// starts the single-threaded TCG kernels first and, among those, the longest first.
    /// 6.1's verifier makes its daemon start-ups the slowest.
    pub suite_weight: u8,
}

/// The kernels egressd is proven on: one per Debian release its users run, each pinned to
/// an exact package version so a run is reproducible (the suites move).
///
/// Picked on 2026-11-30 as the newest cloud kernel of each release's latest point release
/// (bullseye 11.11, bookworm 12.15, trixie 13.8): the kernel such a host gets from its main
/// suite. The security suites carry newer ABIs, but the archive drops their superseded
/// files (bullseye-security's 5.10.0-44 to -46 were listed but already gone), while a point
/// release's packages stay until the next one (bullseye's are final). trixie's 6.12 stands
/// for bookworm-backports' too (the same upstream series; backports had only 6.12.95).
///
/// To move one on: `apt-cache policy` with the private state `vm-test` leaves in
/// `target/vm/apt` (see [`apt`]) shows what the suites offer; change the row and run
/// `cargo xtask vm-test --kernel NAME`.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        release: "Debian 11 bullseye",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-cloud-amd64-unsigned",
        version: "5.10.223-1",
        tcg_single: false,
        suite_weight: 2,
    },
    Kernel {
        name: "6.1",
        release: "Debian 12 bookworm",
        suite: "bookworm",
        package: "linux-image-6.1.0-50-cloud-amd64-unsigned",
        version: "6.1.176-1",
        // Single-threaded since 2026-12-01: multi-threaded, the stale-breakpoint lockup at
        // `bpf_lsm_bpf+0` struck in three boots out of three that day (twice in a row with
        // the retry). Single-threaded the suite took 969 s of the then 1,200 s timeout on a
        // loaded machine, without a lockup.
        tcg_single: true,
        suite_weight: 3,
    },
    Kernel {
        name: "6.12",
        release: "Debian 13 trixie",
        suite: "trixie",
        package: "linux-image-6.12.117+deb13-cloud-amd64-unsigned",
        version: "6.12.117-1",
        tcg_single: true,
        suite_weight: 1,
    },
];

/// The apt sources file of the project (copied into the private apt state).
const SOURCES: &str = include_str!("../../vm/debian-kernels.sources");

/// Marks a complete unpacked kernel directory (written last).
const STAMP: &str = ".egressd-vm-complete";

/// A kernel unpacked on the host.
pub struct Unpacked {
    /// `boot/vmlinuz-*`.
    pub vmlinuz: PathBuf,
    /// `uname -r` of the kernel (the name of its module directory).
    pub uname: String,
    /// `lib/modules/<uname>` (with `modules.dep`).
    pub modules: PathBuf,
}

/// The kernel named `name` in [`KERNELS`].
pub fn by_name(name: &str) -> anyhow::Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        format!(
            "unknown kernel {name:?}; pinned kernels: {}",
            names.join(", ")
        )
    })
}

/// Returns `k` unpacked under `vm_dir/kernels/`, downloading and unpacking it first unless
/// a complete copy is there already (then this does no I/O beyond a few stats).
pub fn ensure(vm_dir: &Path, k: &Kernel) -> anyhow::Result<Unpacked> {
    let dir = vm_dir
        .join("kernels")
        .join(format!("{}_{}", k.package, k.version));
    if !dir.join(STAMP).exists() {
        fetch(vm_dir, k, &dir)?;
    }
    locate(&dir).with_context(|| format!("kernel cache {}", dir.display()))
}

/// Downloads `k`'s package and unpacks it into `dir` (through a temporary sibling, so an
/// interrupted run never leaves a half-unpacked cache entry), then runs `depmod` on it: the
/// package ships no `modules.dep` (its postinst makes it).
fn fetch(vm_dir: &Path, k: &Kernel, dir: &Path) -> anyhow::Result<()> {
    let debs = vm_dir.join("apt").join("debs");
    fs::create_dir_all(&debs)?;
    let spec = format!("{}={}", k.package, k.version);
    eprintln!(
        "xtask: vm-test: fetching {spec} ({}, suite {})",
        k.release, k.suite
    );
    // The lists may be missing, or stale for a new pin: update them then.
    if sh::output(apt(vm_dir, "apt-cache").args(["show", "-q", &spec])).is_none() {
        sh::run(apt(vm_dir, "apt-get").args(["update", "-qq"]))?;
    }
    sh::run(
        apt(vm_dir, "apt-get")
            .args(["download", "-q", &spec])
            .current_dir(&debs),
    )
    .with_context(|| {
        format!(
            "{spec} cannot be fetched from suite {}: pick a current version (KERNELS in \
             xtask/src/vm/kernels.rs)",
            k.suite
        )
    })?;
    let deb = debs.join(format!("{}_{}_amd64.deb", k.package, k.version));
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    // trixie's packages install into /usr/lib/modules only (merged /usr); depmod -b looks
    // in lib/modules.
    if !tmp.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", tmp.join("lib"))?;
    }
    let found = locate(&tmp)?;
    sh::run(Command::new("depmod").arg("-b").arg(&tmp).arg(&found.uname))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir)?;
    fs::write(dir.join(STAMP), format!("{spec}\n"))?;
    // The unpacked tree is the cache; the .deb is not needed again.
    let _ = fs::remove_file(&deb);
    Ok(())
}

/// Finds the kernel image and module tree of an unpacked package.
fn locate(dir: &Path) -> anyhow::Result<Unpacked> {
    let boot = dir.join("boot");
    let uname = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .find_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    Ok(Unpacked {
        vmlinuz: boot.join(format!("vmlinuz-{uname}")),
        modules: dir.join("lib/modules").join(&uname),
        uname,
    })
}

/// `tool` (`apt-get`, `apt-cache`) with the private apt state under `vm_dir/apt`: only
/// the project's sources file, its own lists and cache, no preferences of the machine.
pub fn apt(vm_dir: &Path, tool: &str) -> Command {
    let apt_dir = vm_dir.join("apt");
    let parts = apt_dir.join("sources.list.d");
    let lists = apt_dir.join("lists");
    let cache = apt_dir.join("cache");
    // Best effort: a failure here shows up as apt's own error.
    let _ = fs::create_dir_all(lists.join("partial"));
    let _ = fs::create_dir_all(cache.join("archives/partial"));
    let _ = fs::create_dir_all(&parts);
    let _ = fs::write(parts.join("debian-kernels.sources"), SOURCES);
    let mut cmd = Command::new(tool);
    for (key, value) in [
        ("Dir::Etc::SourceList", "/dev/null".into()),
        ("Dir::Etc::SourceParts", parts.display().to_string()),
        ("Dir::Etc::Preferences", "/dev/null".into()),
        ("Dir::Etc::PreferencesParts", "/dev/null".into()),
        ("Dir::State::Lists", lists.display().to_string()),
        ("Dir::Cache", cache.display().to_string()),
        // Only the package lists: no AppStream metadata.
        (
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
            "false".into(),
        ),
        // Downloads land in a directory the sandbox user cannot write to.
        ("APT::Sandbox::User", "root".into()),
    ] {
        cmd.arg("-o").arg(format!("{key}={value}"));
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// One module of a kernel's `modules.dep`: its file (relative to the module directory)
/// and the files of every module it needs.
struct DepEntry {
    file: String,
    deps: Vec<String>,
}

/// The files (relative to `modules`) of `names` and everything they depend on, each once,
/// dependencies first (the order to `insmod` them in). Modules built into the kernel
/// (`modules.builtin`) need nothing and are left out.
pub fn module_closure(modules: &Path, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let dep_text = fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let mut by_name: HashMap<String, DepEntry> = HashMap::new();
    let mut by_file: HashMap<String, String> = HashMap::new();
    for line in dep_text.lines() {
        let Some((file, deps)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(file);
        by_file.insert(file.to_owned(), name.clone());
        by_name.insert(
            name,
            DepEntry {
                file: file.to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            },
        );
    }
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    for name in names {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        visit(&name, &by_name, &by_file, &mut order, 0)?;
    }
    Ok(order)
}

/// Depth-first: `name`'s dependencies, then `name`, each pushed once.
fn visit(
    name: &str,
    by_name: &HashMap<String, DepEntry>,
    by_file: &HashMap<String, String>,
    order: &mut Vec<String>,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 64 {
        bail!("module dependencies of {name} loop");
    }
    let entry = by_name
        .get(name)
        .with_context(|| format!("module {name} is neither in modules.dep nor built in"))?;
    if order.contains(&entry.file) {
        return Ok(());
    }
    for dep in &entry.deps {
        let dep_name = by_file
            .get(dep)
            .with_context(|| format!("{name} needs {dep}, which modules.dep does not list"))?;
        visit(dep_name, by_name, by_file, order, depth + 1)?;
    }
    order.push(entry.file.clone());
    Ok(())
}

/// `kernel/net/sctp/sctp.ko.xz` -> `sctp` (dashes as underscores, as the kernel names
/// modules).
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_loads_dependencies_first_once() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("egressd-vm-dep-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/net/veth.ko.xz:\n\
             kernel/net/sctp/sctp.ko.xz: kernel/net/ipv6/ip6_udp_tunnel.ko.xz \
             kernel/net/ipv4/udp_tunnel.ko.xz kernel/lib/libcrc32c.ko.xz\n\
             kernel/net/ipv6/ip6_udp_tunnel.ko.xz:\n\
             kernel/net/ipv4/udp_tunnel.ko.xz:\n\
             kernel/lib/libcrc32c.ko.xz:\n",
        )?;
        fs::write(dir.join("modules.builtin"), "kernel/net/ipv6/ipv6.ko\n")?;
        let got = module_closure(&dir, &["veth", "sctp", "ipv6", "udp-tunnel"]);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            got?,
            [
                "kernel/drivers/net/veth.ko.xz",
                "kernel/net/ipv6/ip6_udp_tunnel.ko.xz",
                "kernel/net/ipv4/udp_tunnel.ko.xz",
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/net/sctp/sctp.ko.xz",
            ]
        );
        Ok(())
    }

    #[test]
    fn unknown_module_is_an_error() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("egressd-vm-dep2-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("modules.dep"), "kernel/drivers/net/veth.ko:\n")?;
        let got = module_closure(&dir, &["nope"]);
        let _ = fs::remove_dir_all(&dir);
        assert!(got.is_err());
        Ok(())
    }
}
