//! Every bpffs and filesystem path egressd pins to, and the small pinned state record.
//!
//! Layout of a pin directory (default [`DEFAULT_PIN_DIR`]):
//!
//! ```text
//! DIR/maps/EGRESSD_*_V1          every map of the eBPF object, pinned by its name
//! DIR/links/connect4 ...         one bpf_link per hook (connect4, connect6, sendmsg4,
//!                                sendmsg6, skb_egress, skb_ingress)
//! DIR/tc/IFINDEX                 the tc/egress TCX link of each interface, where that
//!                                fallback runs (see `loader::tc`)
//! DIR/EGRESSD_STATE_V1           BPF_MAP_TYPE_ARRAY, 1 entry of STATE_BYTES: the
//!                                [`PinnedState`] as NUL-padded JSON
//! ```
//!
//! Pins outlive the daemon: the hooks stay attached and keep judging with the pinned maps
//! until `egressd detach` removes them. The `_V1` suffix of the map names is the layout
//! version ([`egressd_common::maps`]); pins of another version are refused.
use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Default pin directory (on the bpffs mounted at [`BPFFS_ROOT`]).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egressd";
/// Where bpffs is mounted when no bpffs is found above the pin directory.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Name of the pinned state map.
pub const STATE_MAP: &str = "EGRESSD_STATE_V1";
/// Value size of [`STATE_MAP`] in bytes.
pub const STATE_BYTES: usize = 4096;
/// Layout version of the pins this build writes and adopts (the `_V1` suffix).
pub const LAYOUT_VERSION: &str = "V1";
/// Maps whose layout changed after [`LAYOUT_VERSION`]: their names carry a later version
/// (an egressd that predates them refuses their pins, this one drops the older ones).
pub const NEWER_MAPS: [&str; 2] = egressd_common::maps::TABLE24;

/// A pin directory and the paths inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    /// The directory, e.g. `/sys/fs/bpf/egressd`.
    pub root: PathBuf,
}

/// What egressd records next to its pins, for `egressd status` and for adoption checks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinnedState {
    /// cgroup v2 directory the links attach to.
    pub cgroup: String,
    /// Policy generation last published (also in the generation map).
    pub generation: u64,
    /// Policy digest of that generation (`policy.digest`).
    pub digest: String,
    /// `enforce` or `audit`.
    pub mode: String,
    /// Region names by id (index = region id; 0 is `unknown`, `""` for an id without a
    /// name), those of removed regions included, to name counters (see [`crate::policy::ids`]).
    pub regions: Vec<String>,
    /// Prefixes loaded, IPv4 and IPv6.
    pub prefixes_v4: usize,
    /// See `prefixes_v4`.
    pub prefixes_v6: usize,
    /// egressd version that wrote this record.
    pub version: String,
    /// Unix time in seconds of the last write.
    pub updated_unix: u64,
    /// Set while the policy in force is the last good one because the files on disk were
    /// invalid when the daemon started ([`crate::daemon::lastgood`]); cleared by the next install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<PinnedFallback>,
}

/// Why the pinned policy is the last good one instead of the files on disk.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinnedFallback {
    /// The error of the files on disk (`file:line:column: field: message`), at most
    /// [`FALLBACK_ERROR_BYTES`] bytes.
    pub error: String,
    /// Digest of the last good policy (the one in force).
    pub last_good_digest: String,
    /// The generation it was in force as when it was kept.
    pub last_good_generation: u64,
    /// When it was kept, RFC 3339 UTC.
    pub last_good_saved_at: String,
    /// The record it was read from (`STATE_DIR/policy-<hash>.json`, see `daemon::lastgood`).
    pub last_good_file: String,
}

/// Longest [`PinnedFallback::error`] kept in the state record (which holds [`STATE_BYTES`]).
pub const FALLBACK_ERROR_BYTES: usize = 1024;

impl PinDir {
    /// The pin directory `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `DIR/maps`.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// `DIR/maps/NAME`: the pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// `DIR/links`.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// `DIR/links/PIN` for a hook program name (`PIN` from
    /// [`crate::kernel::hooks::HOOKS`]).
    pub fn link(&self, program: &str) -> PathBuf {
        let short = crate::kernel::hooks::by_program(program).map_or(program, |h| h.pin);
        self.links_dir().join(short)
    }

    /// `DIR/EGRESSD_STATE_V1`.
    pub fn state(&self) -> PathBuf {
        self.root.join(STATE_MAP)
    }

    /// True when any link pin exists (enforcement is pinned here).
    pub fn has_links(&self) -> bool {
        crate::kernel::hooks::HOOKS
            .iter()
            .any(|h| self.link(h.program).exists())
    }

    /// Whether the directory can be looked into: `Path::exists` answers false for a pin
    /// that is there but out of the caller's reach, which made `status` and `detach` of an
    /// unprivileged user report "nothing is pinned" over live pins.
    ///
    /// # Errors
    /// The directory (or one above it) cannot be searched or read: the error says that
    /// root is needed. A missing directory is not an error.
    pub fn check_access(&self) -> anyhow::Result<()> {
        match std::fs::read_dir(&self.root) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!(
                "cannot look into {}: {e} (pins are root's: run this as root)",
                self.root.display()
            )),
        }
    }

    /// True when the directory holds anything egressd pins.
    pub fn exists(&self) -> bool {
        self.state().exists() || self.has_links() || self.maps_dir().exists()
    }

    /// Makes sure the directory exists on a bpffs and is egressd's own, mounting bpffs at
    /// [`BPFFS_ROOT`] (mode 0700) when the directory lies under it and nothing is mounted
    /// there. A pin directory (and its `maps`, `links`) that egressd creates gets mode 0700;
    /// an existing one is accepted only when it is on a bpffs, owned by root and writable by
    /// nobody else, with the same for the directories above it (a sticky bpffs root such as
    /// a default-mode `/sys/fs/bpf` aside; see [`crate::base::safefs`]): pins in a directory a user
    /// created first would be the user's to remove.
    ///
    /// # Errors
    /// The directory is not on a bpffs (and cannot be put on one), cannot be created, or is
    /// not trusted (the error names it and why).
    pub fn prepare(&self) -> anyhow::Result<()> {
        let root = Path::new(BPFFS_ROOT);
        if self.root.starts_with(root) && !is_bpffs(root) {
            std::fs::create_dir_all(root).with_context(|| format!("creating {BPFFS_ROOT}"))?;
            mount_bpffs(root)?;
        }
        let dir = crate::base::safefs::TrustedDir::create(&self.root)
            .with_context(|| format!("pin directory {}", self.root.display()))?;
        if !is_bpffs_fd(dir.fd()) {
            bail!(
                "pin directory {} is not on a BPF filesystem; use a directory under a bpffs \
                 mount (`mount -t bpf -o mode=0700 bpf /sys/fs/bpf`)",
                self.root.display()
            );
        }
        for sub in [self.maps_dir(), self.links_dir()] {
            crate::base::safefs::TrustedDir::create(&sub)
                .with_context(|| format!("pin directory {}", sub.display()))?;
        }
        if is_world_writable(root) {
            tracing::warn!(
                path = BPFFS_ROOT,
                "bpffs is writable by every user (mode 1777): other users can pin objects \
                 there; egressd's own pin directory is 0700"
            );
        }
        Ok(())
    }

    /// Refuses pins of another layout version: any `EGRESSD_*` pin whose name does not end
    /// in `_V1`, but for the maps this build versions further ([`NEWER_MAPS`]).
    ///
    /// # Errors
    /// Names the offending pin and says to run `egressd detach` with the version that wrote
    /// it.
    pub fn check_layout(&self) -> anyhow::Result<()> {
        for dir in [self.maps_dir(), self.root.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("EGRESSD_")
                    && !name.ends_with(&format!("_{LAYOUT_VERSION}"))
                    && !NEWER_MAPS.contains(&name.as_str())
                {
                    bail!(
                        "{} was pinned with another map layout than this egressd's \
                         ({LAYOUT_VERSION}); refusing to adopt it. Detach it with the egressd \
                         that pinned it (`egressd detach --pin-dir {}`), then start again",
                        dir.join(&name).display(),
                        self.root.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Reads the pinned state record.
    ///
    /// # Errors
    /// No state pin, or it does not hold a valid record.
    pub fn read_state(&self) -> anyhow::Result<PinnedState> {
        let path = self.state();
        let fd = obj_get(&path)?;
        let mut value = vec![0u8; STATE_BYTES];
        let key = 0u32;
        let mut attr = [0u64; 4];
        attr[0] = u64::try_from(fd.as_raw_fd())?;
        attr[1] = (&raw const key) as u64;
        attr[2] = value.as_mut_ptr() as u64;
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading the pinned state")?;
        let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
        serde_json::from_slice(&value[..end])
            .with_context(|| format!("decoding the pinned state in {}", path.display()))
    }

    /// Writes the pinned state record, creating the state map on first use.
    ///
    /// # Errors
    /// The record is larger than [`STATE_BYTES`] (it then drops region names), or a `bpf(2)`
    /// call fails.
    pub fn write_state(&self, state: &PinnedState) -> anyhow::Result<()> {
        let path = self.state();
        let fd = match obj_get(&path) {
            Ok(fd) => fd,
            Err(_) => {
                let fd = create_state_map()?;
                obj_pin(&fd, &path)?;
                fd
            }
        };
        let mut text = serde_json::to_vec(state)?;
        if text.len() >= STATE_BYTES {
            let mut short = state.clone();
            short.regions.clear();
            text = serde_json::to_vec(&short)?;
        }
        if text.len() >= STATE_BYTES {
            bail!("the pinned state record is larger than {STATE_BYTES} bytes");
        }
        text.resize(STATE_BYTES, 0);
        let key = 0u32;
        let mut attr = [0u64; 4];
        attr[0] = u64::try_from(fd.as_raw_fd())?;
        attr[1] = (&raw const key) as u64;
        attr[2] = text.as_ptr() as u64;
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("writing the pinned state")?;
        Ok(())
    }

    /// Removes everything pinned here: forcibly detaches each pinned link
    /// (`BPF_LINK_DETACH`, so a running daemon's descriptors do not keep it attached),
    /// unpins links, maps and the state, and removes the directories. Returns the paths
    /// removed.
    ///
    /// Only bpffs pins are removed, through directory descriptors: the pin directory must be
    /// one egressd could have made (see [`Self::prepare`]), `maps` and `links` are opened
    /// with `O_NOFOLLOW` and must be on a bpffs, and each name in them is removed with
    /// `unlinkat` (a link there is removed, never followed). A `maps` that is a symbolic
    /// link, or a directory on another filesystem, is left alone and reported.
    ///
    /// # Errors
    /// The pin directory is not trusted or not on a bpffs; a pin that cannot be removed (the
    /// rest are still tried).
    pub fn remove_all(&self) -> anyhow::Result<Vec<PathBuf>> {
        let root = crate::base::safefs::TrustedDir::open(&self.root)
            .with_context(|| format!("pin directory {}", self.root.display()))?;
        if !is_bpffs_fd(root.fd()) {
            bail!(
                "{} is not on a BPF filesystem: refusing to remove anything there",
                self.root.display()
            );
        }
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        let sub = |name: &str, errors: &mut Vec<String>| match root.subdir(OsStr::new(name)) {
            Ok(d) if is_bpffs_fd(d.fd()) => Some(d),
            Ok(d) => {
                errors.push(format!("{}: not on a BPF filesystem", d.path().display()));
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        let links = sub("links", &mut errors);
        // Ids of the global LSM links, to wait below until the kernel has released them.
        let mut global_ids = Vec::new();
        if let Some(links) = &links {
            for hook in &crate::kernel::hooks::HOOKS {
                let path = self.link(hook.program);
                let Some(name) = path.file_name() else {
                    continue;
                };
                match links.lstat(name) {
                    // A global LSM link has no BPF_LINK_DETACH on older kernels; it ends
                    // when its pin (its only holder) is removed below.
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && !hook.on_cgroup() => {
                        let by_fd =
                            PathBuf::from(format!("/proc/self/fd/{}", links.fd().as_raw_fd()))
                                .join(name);
                        if let Ok(st) = obj_get(&by_fd).and_then(|fd| link_state(fd.as_fd())) {
                            global_ids.push(st.link_id);
                        }
                    }
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                        let by_fd =
                            PathBuf::from(format!("/proc/self/fd/{}", links.fd().as_raw_fd()))
                                .join(name);
                        if let Ok(fd) = obj_get(&by_fd) {
                            let mut attr = [0u64; 1];
                            attr[0] = u64::try_from(fd.as_raw_fd()).unwrap_or(0);
                            if let Err(e) = sys_bpf(BPF_LINK_DETACH, &mut attr) {
                                tracing::warn!(link = %path.display(), error = %e, "BPF_LINK_DETACH");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => continue,
                }
                match links.remove(name) {
                    Ok(()) => removed.push(path),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        // The kernel frees a link whose last reference went away asynchronously (a deferred
        // work item, then an RCU grace period for the trampoline): wait, bounded, so that
        // enforcement has ended when `detach` returns.
        // Polled sparingly, backing off: the release patches the hook's trampoline, and
        // every bpf() call runs the BPF LSM's own `bpf` hook, whose code shares the page
        // being patched (on 6.1 under QEMU's TCG a 20 ms poll met the patch window and
        // livelocked the vCPU).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut pause = std::time::Duration::from_millis(100);
        while !global_ids.is_empty() {
            std::thread::sleep(pause);
            if !global_ids.iter().any(|id| link_exists(*id)) {
                break;
            }
            if std::time::Instant::now() > deadline {
                errors.push(format!(
                    "LSM links {global_ids:?} still exist 10 s after their pins were removed \
                     (another process holds them?)"
                ));
                break;
            }
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
        let maps = sub("maps", &mut errors);
        if let Some(maps) = &maps {
            for name in maps.entries().unwrap_or_default() {
                match maps.remove(&name) {
                    Ok(()) => removed.push(self.maps_dir().join(&name)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        match root.remove(OsStr::new(STATE_MAP)) {
            Ok(()) => removed.push(self.state()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(e.to_string()),
        }
        for (dir, name) in [(&links, "links"), (&maps, "maps")] {
            if dir.is_some()
                && let Err(e) = root.remove_dir(OsStr::new(name))
            {
                errors.push(e.to_string());
            }
        }
        drop(root);
        if errors.is_empty()
            && let Err(e) = std::fs::remove_dir(&self.root)
        {
            errors.push(format!("{}: {e}", self.root.display()));
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(anyhow!("could not remove: {}", errors.join("; ")))
        }
    }
}

/// Whether the descriptor `fd` is on a BPF filesystem (`fstatfs(2)` magic).
fn is_bpffs_fd(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    // SAFETY: fstatfs writes into the zeroed struct; `fd` is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) };
    r == 0 && st.f_type == BPF_FS_MAGIC
}

fn is_world_writable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

/// Whether `path` is on a BPF filesystem (`statfs(2)` magic).
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    r == 0 && st.f_type == BPF_FS_MAGIC
}

/// `mount -t bpf -o mode=0700,nosuid,nodev,noexec bpf PATH`.
fn mount_bpffs(path: &Path) -> anyhow::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    let fs = c"bpf";
    // Only root may create pins at the top (the kernel's default is 1777), as systemd
    // mounts it.
    let data = c"mode=0700";
    // SAFETY: all pointers are valid C strings.
    let r = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {}", path.display()));
    }
    tracing::info!(path = %path.display(), mode = "0700", "mounted bpffs");
    Ok(())
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_LINK_UPDATE`: replace the program of a link atomically.
pub(crate) const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_PROG_QUERY` (`include/uapi/linux/bpf.h`).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// Whether link `id` still exists (`BPF_LINK_GET_FD_BY_ID` finds it).
fn link_exists(id: u32) -> bool {
    let mut attr = [u64::from(id)];
    match sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            if let Ok(fd) = i32::try_from(fd) {
                // SAFETY: the kernel returned a new descriptor we own; closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            true
        }
        Err(_) => false,
    }
}
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf(cmd, attr, sizeof attr)` with `attr` as an array of u64 words (zero-padded).
pub(crate) fn sys_bpf<const N: usize>(
    cmd: libc::c_long,
    attr: &mut [u64; N],
) -> anyhow::Result<i64> {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the command's layout; pointers in
    // it are valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), N * 8) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bpf(cmd {cmd})"));
    }
    Ok(r)
}

/// `BPF_OBJ_GET` of a pin.
pub fn obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u64; 2];
    attr[0] = c.as_ptr() as u64;
    let fd =
        sys_bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

/// Ids of the programs attached to cgroup `cgroup` at `attach_type` (`BPF_PROG_QUERY`;
/// needs CAP_NET_ADMIN, which egressd keeps, not CAP_SYS_ADMIN). At most 64 are listed.
///
/// # Errors
/// The query fails (not a cgroup, no privileges).
pub fn attached_programs(
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> anyhow::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    // struct { u32 target_fd; u32 attach_type; u32 query_flags; u32 attach_flags;
    //          u64 prog_ids; u32 prog_cnt; }
    let mut attr = [0u64; 4];
    attr[0] = u64::try_from(cgroup.as_raw_fd())? | (u64::from(attach_type) << 32);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    sys_bpf(BPF_PROG_QUERY, &mut attr).context("BPF_PROG_QUERY")?;
    let n = usize::try_from(attr[3] & 0xffff_ffff)?.min(ids.len());
    Ok(ids[..n].to_vec())
}

fn obj_pin(fd: &OwnedFd, path: &Path) -> anyhow::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u64; 2];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::try_from(fd.as_fd().as_raw_fd())?;
    sys_bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

fn create_state_map() -> anyhow::Result<OwnedFd> {
    // map_type (ARRAY = 2), key_size, value_size, max_entries, map_flags, inner_map_fd,
    // numa_node (u32 each), then map_name[16] at byte 28.
    let mut bytes = [0u8; 128];
    let words: [u32; 4] = [2, 4, u32::try_from(STATE_BYTES)?, 1];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let name = b"EGRESSD_STATE";
    bytes[28..28 + name.len()].copy_from_slice(name);
    let mut attr = [0u64; 16];
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        attr[i] = u64::from_ne_bytes(chunk.try_into()?);
    }
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr).context("creating the state map")?;
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

/// What the kernel says about a link: `bpf_link_info` for a cgroup link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// Link id.
    pub link_id: u32,
    /// Program id the link runs.
    pub program_id: u32,
    /// cgroup id (inode) it is attached to; 0 once detached (`BPF_LINK_DETACH`).
    pub cgroup_id: u64,
}

/// Reads `bpf_link_info` of a link descriptor.
///
/// # Errors
/// The descriptor is not a link.
pub fn link_state(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<LinkState> {
    // The union's member for cgroups: struct { u64 cgroup_id; u32 attach_type; } cgroup.
    let (_, link_id, program_id, target) = link_info(fd)?;
    Ok(LinkState {
        link_id,
        program_id,
        cgroup_id: target,
    })
}

/// A TCX link as the kernel sees it (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcxLinkState {
    /// Link id.
    pub link_id: u32,
    /// Program id the link runs.
    pub program_id: u32,
    /// Interface index it is attached to; 0 once the interface is gone or the link detached.
    pub ifindex: u32,
}

/// Reads `bpf_link_info` of a TCX link descriptor (Linux 6.6).
///
/// # Errors
/// The descriptor is not a TCX link (anything else pinned in its place).
pub fn tcx_link_state(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<TcxLinkState> {
    /// `BPF_LINK_TYPE_TCX` (`include/uapi/linux/bpf.h`).
    const BPF_LINK_TYPE_TCX: u32 = 11;
    // The union's member for TCX: struct { u32 ifindex; u32 attach_type; } tcx.
    let (kind, link_id, program_id, target) = link_info(fd)?;
    if kind != BPF_LINK_TYPE_TCX {
        bail!("not a TCX link (link type {kind})");
    }
    Ok(TcxLinkState {
        link_id,
        program_id,
        ifindex: (target & 0xffff_ffff) as u32,
    })
}

/// Link type, link id, program id and the first 8 bytes of the union of `fd`'s
/// `struct bpf_link_info` (`{ u32 type; u32 id; u32 prog_id; union {...} }`, the union 8-byte
/// aligned; the offsets are those of a little-endian target).
fn link_info(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<(u32, u32, u32, u64)> {
    let mut info = [0u64; 8];
    let mut attr = [0u64; 2];
    attr[0] = u64::try_from(fd.as_raw_fd())? | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok((
        (info[0] & 0xffff_ffff) as u32,
        (info[0] >> 32) as u32,
        (info[1] & 0xffff_ffff) as u32,
        info[2],
    ))
}

/// Atomically replaces the program of link `link` with `program` (`BPF_LINK_UPDATE`).
///
/// # Errors
/// The kernel refused (different attach type, or not a link).
pub fn link_update(
    link: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
) -> anyhow::Result<()> {
    // link_fd u32, new_prog_fd u32, flags u32, old_prog_fd u32.
    let mut attr = [0u64; 2];
    attr[0] = u64::try_from(link.as_raw_fd())? | (u64::try_from(program.as_raw_fd())? << 32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr).context("BPF_LINK_UPDATE")?;
    Ok(())
}
