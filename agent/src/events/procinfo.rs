//! Process, user and cgroup details read from `/proc` at event time (best effort), checked
//! against what the kernel reported.
//!
//! Sources (see `proc(5)`): `/proc/PID/stat` (command name, parent pid, start time: field 22,
//! after the parenthesized command name, which may itself contain spaces and parentheses),
//! `/proc/PID/status` (`Uid:`, real uid first), `/proc/PID/exe` (executable link),
//! `/proc/PID/cmdline` (NUL-separated arguments, read only up to [`MAX_CMDLINE`] bytes: the
//! kernel copies them out of the process's memory, which takes long for huge argument
//! lists), `/proc/PID/cgroup` (the cgroup v2 line is `0::PATH`). User and group names come
//! from the system's databases through NSS (`getpwuid_r(3)`, `getgrgid_r(3)`).
//!
//! A process can exit between the kernel event and this read (a denied `connect()` returns
//! at once, and short-lived tools exit right after), and its pid can be reused, or it can
//! `execve` another program. So what `/proc` says is reported only when it agrees with the
//! kernel's own record of the event ([`Claim`]): the command name, the real uid, the cgroup
//! id, and a start time no later than the event. Otherwise the event carries the kernel's
//! fields only and says why ([`Details`]). Not detectable this way: an `execve` of a program
//! with the same 15-byte name, same uid and cgroup after the event.
//!
//! Container ids and systemd units are taken only from the part of the cgroup path that
//! root alone could have named ([`trusted_prefix`]): below a delegated cgroup (owned by a
//! user, or writable by others) a workload chooses its own names, e.g. `docker-ID.scope`.
use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Longest `command_line` reported, in bytes; longer ones are cut at a character boundary and
/// end in `...`.
pub const MAX_CMDLINE: usize = 4096;

/// Entries kept per cache before it is cleared (bounds memory under pid churn).
const CACHE_CAP: usize = 4096;

/// What `/proc/PID` said about a live process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcInfo {
    /// Start time in clock ticks since boot (`stat` field 22); identifies the process
    /// together with its pid.
    pub start_time: u64,
    /// Command name (`stat` field 2, at most 15 bytes); changes with `execve`.
    pub comm: String,
    /// Parent pid (`stat` field 4).
    pub ppid: Option<u32>,
    /// Real uid (first field of `status`'s `Uid:` line).
    pub uid: Option<u32>,
    /// Target of `/proc/PID/exe` (this and the next two are shared with every event of the
    /// process: no copy per event).
    pub exe: Option<Arc<str>>,
    /// Arguments joined by spaces (lossy UTF-8), at most [`MAX_CMDLINE`] bytes; `None` when
    /// empty (kernel threads, zombies).
    pub command_line: Option<Arc<str>>,
    /// cgroup v2 path (`0::PATH` line of `/proc/PID/cgroup`).
    pub cgroup: Option<Arc<str>>,
    /// [`systemd_unit`] of the trusted part of `cgroup` (found once per process, not per
    /// event; [`Self::set_trusted_cgroup`]).
    pub systemd_unit: Option<Arc<str>>,
    /// [`container`] of the trusted part of `cgroup` (as `systemd_unit`).
    pub container: Option<super::Container>,
    /// Inode number of the cgroup directory, which is the kernel's cgroup id
    /// (`bpf_get_current_cgroup_id`); `None` when it cannot be read.
    pub cgroup_id: Option<u64>,
}

impl ProcInfo {
    /// Sets the systemd unit and container from `trusted`: the leading part of `cgroup` that
    /// root alone could have named ([`trusted_prefix`]), `None` when it cannot be checked
    /// (then neither is reported: a workload could name its own cgroups to pose as another).
    pub fn set_trusted_cgroup(&mut self, trusted: Option<&str>) {
        self.systemd_unit = trusted.and_then(systemd_unit);
        self.container = trusted.and_then(container);
    }
}

/// The fields of `/proc/PID/stat` egressd uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Command name (between the first `(` and the last `)`).
    pub comm: String,
    /// Parent pid (field 4).
    pub ppid: u32,
    /// Start time in clock ticks since boot (field 22).
    pub start_time: u64,
}

/// Parses `/proc/PID/stat` as read (bytes: the kernel writes the name as the task set it,
/// which need not be UTF-8; it is decoded as the kernel's `comm` of an event is, invalid
/// sequences replaced by U+FFFD, so the two still compare equal).
pub fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3, ppid field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        start_time,
    })
}

/// The real uid from `/proc/PID/status` text (`Uid:\tREAL\tEFFECTIVE\t...`).
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What the kernel recorded about the process of one event, to check `/proc` against.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Thread-group id (0: unknown).
    pub pid: u32,
    /// Command name at the time of the record.
    pub comm: &'a str,
    /// Real uid.
    pub uid: u32,
    /// cgroup v2 id (0: unknown).
    pub cgroup_id: u64,
    /// When the kernel made the record, `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
}

/// How an event's process details were obtained: `process.details` in every format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Details {
    /// Read from `/proc` and consistent with the kernel's record.
    Verified(Arc<ProcInfo>),
    /// The process had exited before `/proc` could be read.
    Exited,
    /// `/proc/PID` now describes another program (the pid was reused, or the process ran
    /// `execve`, or changed uid or cgroup): its details are withheld. The field that
    /// disagreed.
    Mismatch(&'static str),
    /// Not read: the event waited too long behind a stalled read (see
    /// [`crate::events::worker`]).
    Skipped,
    /// The kernel did not name a process (pid 0).
    NoProcess,
}

impl Details {
    /// `verified`, `exited`, `mismatch`, `skipped` or `none`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Verified(_) => "verified",
            Self::Exited => "exited",
            Self::Mismatch(_) => "mismatch",
            Self::Skipped => "skipped",
            Self::NoProcess => "none",
        }
    }

    /// The details, when verified.
    pub fn info(&self) -> Option<&ProcInfo> {
        match self {
            Self::Verified(i) => Some(i),
            _ => None,
        }
    }
}

/// The leading components of cgroup `path` that only root could have created: each one's
/// parent directory under `cgroup_root` is owned by root and writable by nobody else. A
/// delegated subtree (systemd `Delegate=yes`, a rootless container manager) is owned by its
/// user, who names what is below it. `None` when `cgroup_root` cannot be read.
pub fn trusted_prefix(cgroup_root: &Path, path: &str) -> Option<String> {
    let mut dir = cgroup_root.to_path_buf();
    let mut out = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let meta = fs::symlink_metadata(&dir).ok()?;
        let others_write = meta.mode() & 0o002 != 0;
        let group_write = meta.mode() & 0o020 != 0 && meta.gid() != 0;
        if meta.uid() != 0 || others_write || group_write {
            break;
        }
        out.push('/');
        out.push_str(c);
        dir.push(c);
    }
    Some(if out.is_empty() { "/".to_owned() } else { out })
}

/// Joins NUL-separated `cmdline` bytes with spaces, bounded by [`MAX_CMDLINE`]; `cut` says
/// that `raw` is the start of a longer list (it then ends in `...`).
pub fn join_cmdline(raw: &[u8], cut: bool) -> Option<String> {
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return None;
    }
    let mut s = args.join(" ");
    if cut && s.len() <= MAX_CMDLINE {
        s.push_str("...");
    }
    if s.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    Some(s)
}

/// The cgroup v2 path of `/proc/PID/cgroup` as read (`0::/system.slice/x.service`; bytes:
/// a delegated cgroup may have any name but `/` and NUL), without its line end.
fn cgroup_path(text: &[u8]) -> Option<&[u8]> {
    text.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
        .map(|p| p.trim_ascii_end())
        .filter(|p| !p.is_empty())
}

/// Deepest systemd unit in a cgroup path: the last component ending in `.service` or
/// `.scope` (`/user.slice/user-1000.slice/session-3.scope` -> `session-3.scope`). Give it a
/// [`trusted_prefix`].
pub fn systemd_unit(path: &str) -> Option<Arc<str>> {
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(Into::into)
}

/// Container id and runtime shown by a cgroup path. Recognized shapes (the id is 64 hex
/// digits): `docker-ID.scope` and `/docker/ID` (Docker), `cri-containerd-ID.scope` and
/// `/kubepods/.../ID` (containerd), `crio-ID.scope` (CRI-O), `libpod-ID.scope` (Podman).
/// `crio-conmon-ID.scope` is the monitor process, not the container, and is ignored.
/// The outermost match wins: a process can only create cgroups below its own, so a
/// container cannot pose as another by naming a child cgroup. Give it a [`trusted_prefix`].
pub fn container(path: &str) -> Option<super::Container> {
    // No list of its components.
    let mut parent = "";
    for c in path.split('/') {
        let prev = std::mem::replace(&mut parent, c);
        let base = c.strip_suffix(".scope").unwrap_or(c);
        // The runtime of a bare id is decided only for a component that is one.
        let (runtime, id) = if let Some(id) = base.strip_prefix("docker-") {
            (Some("docker"), id)
        } else if let Some(id) = base.strip_prefix("cri-containerd-") {
            (Some("containerd"), id)
        } else if base.starts_with("crio-conmon-") {
            continue;
        } else if let Some(id) = base.strip_prefix("crio-") {
            (Some("cri-o"), id)
        } else if let Some(id) = base.strip_prefix("libpod-") {
            (Some("podman"), id)
        } else {
            (None, base)
        };
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let runtime = runtime.unwrap_or_else(|| {
                if prev == "docker" {
                    "docker"
                } else if path.split('/').any(|p| p.starts_with("kubepods")) {
                    "containerd"
                } else {
                    "unknown"
                }
            });
            return Some(super::Container {
                id: id.to_ascii_lowercase().into(),
                runtime,
            });
        }
    }
    None
}

/// Caches of process details (by pid, start time and command name) and of user and group
/// names.
pub struct Cache {
    root: PathBuf,
    cgroup_root: Option<PathBuf>,
    ns_per_tick: u64,
    procs: HashMap<u32, Arc<ProcInfo>>,
    /// The last `stat` read per pid, with the `CLOCK_BOOTTIME` (ns) at which the read began:
    /// it answers for every event the kernel recorded before that instant.
    stats: HashMap<u32, (u64, Stat)>,
    /// `CLOCK_BOOTTIME` now, in ns (the clock of [`Claim::boot_ns`]).
    clock: fn() -> u64,
    users: HashMap<u32, Option<Arc<str>>>,
    groups: HashMap<u32, Option<Arc<str>>>,
}

impl Cache {
    /// A cache reading `root` (normally `/proc`); cgroup checks are off until
    /// [`Self::with_cgroup_root`].
    pub fn new(root: PathBuf) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        Self {
            root,
            cgroup_root: None,
            ns_per_tick: 1_000_000_000 / hz.max(1),
            procs: HashMap::new(),
            stats: HashMap::new(),
            clock: crate::base::clock::boot_now_ns,
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Checks cgroup ids and container/unit names against the cgroup v2 hierarchy mounted at
    /// `root` (normally `/sys/fs/cgroup`).
    #[must_use]
    pub fn with_cgroup_root(mut self, root: Option<PathBuf>) -> Self {
        self.cgroup_root = root;
        self
    }

    /// The details of `claim.pid` now, if `/proc` agrees with the kernel's record. One
    /// `stat` read per call, unless a read of the same pid began after the kernel recorded
    /// this event: that read answers for it too (the process it saw had started before the
    /// event and was alive after it, so it is the one that made it; a name changed by an
    /// `execve` since shows as for a fresh read). So a flood from one process costs one read
    /// per ring-buffer batch. The rest is read again only for a new start time or name.
    pub fn lookup(&mut self, claim: &Claim<'_>) -> Details {
        if claim.pid == 0 {
            return Details::NoProcess;
        }
        // A flood's events nearly all end here: both reads cached, nothing copied.
        if let Some((at, stat)) = self.stats.get(&claim.pid)
            && claim.boot_ns <= *at
        {
            if let Some(m) = self.stat_mismatch(stat, claim) {
                return m;
            }
            if let Some(hit) = self.procs.get(&claim.pid)
                && hit.start_time == stat.start_time
                && hit.comm == stat.comm
            {
                return verified(hit.clone(), claim);
            }
        }
        let dir = self.root.join(claim.pid.to_string());
        let stat = match self.stats.get(&claim.pid) {
            Some((at, stat)) if claim.boot_ns <= *at => stat.clone(),
            _ => {
                let at = (self.clock)();
                let Some(stat) = fs::read(dir.join("stat")).ok().and_then(|t| parse_stat(&t))
                else {
                    self.stats.remove(&claim.pid);
                    return Details::Exited;
                };
                if self.stats.len() >= CACHE_CAP {
                    self.stats.clear();
                }
                self.stats.insert(claim.pid, (at, stat.clone()));
                stat
            }
        };
        if let Some(m) = self.stat_mismatch(&stat, claim) {
            return m;
        }
        let info = match self.procs.get(&claim.pid) {
            Some(hit) if hit.start_time == stat.start_time && hit.comm == stat.comm => hit.clone(),
            _ => {
                let Some(info) = self.read_details(&dir, stat.clone()) else {
                    return Details::Exited;
                };
                // An execve between the stat read and the cmdline read would pair this
                // name with the new program's details: read stat again.
                match fs::read(dir.join("stat")).ok().and_then(|t| parse_stat(&t)) {
                    Some(again) if again == stat => {}
                    Some(_) => {
                        self.stats.remove(&claim.pid);
                        return Details::Mismatch("name");
                    }
                    None => {
                        self.stats.remove(&claim.pid);
                        return Details::Exited;
                    }
                }
                let info = Arc::new(info);
                if self.procs.len() >= CACHE_CAP {
                    self.procs.clear();
                }
                self.procs.insert(claim.pid, info.clone());
                info
            }
        };
        verified(info, claim)
    }

    /// Why `stat` cannot be the process that made `claim`'s event, if it cannot.
    fn stat_mismatch(&self, stat: &Stat, claim: &Claim<'_>) -> Option<Details> {
        // One tick of slack: the start time is rounded down to clock ticks.
        let started_ns = stat.start_time.saturating_mul(self.ns_per_tick);
        if started_ns > claim.boot_ns.saturating_add(self.ns_per_tick) {
            return Some(Details::Mismatch("start_time"));
        }
        (stat.comm != claim.comm).then_some(Details::Mismatch("name"))
    }

    /// User name of `uid` and group name of `gid` (from NSS), cached (also when unknown),
    /// borrowed from the cache: the caller shares what it keeps.
    pub fn names(&mut self, uid: u32, gid: u32) -> (Option<&Arc<str>>, Option<&Arc<str>>) {
        if self.users.len() >= CACHE_CAP {
            self.users.clear();
        }
        if self.groups.len() >= CACHE_CAP {
            self.groups.clear();
        }
        let user = self
            .users
            .entry(uid)
            .or_insert_with(|| user_name(uid).map(Into::into));
        let group = self
            .groups
            .entry(gid)
            .or_insert_with(|| group_name(gid).map(Into::into));
        (user.as_ref(), group.as_ref())
    }

    /// Reads uid, exe, cmdline (at most [`MAX_CMDLINE`] bytes) and cgroup; `None` if the
    /// process vanished meanwhile (its status, cmdline or cgroup file then fails to read).
    /// Every file is read as bytes: a process's name and its cgroup's need not be UTF-8,
    /// and a process must not hide its details behind such a name.
    fn read_details(&self, dir: &Path, stat: Stat) -> Option<ProcInfo> {
        let status = fs::read(dir.join("status")).ok()?;
        let uid = parse_status_uid(&String::from_utf8_lossy(&status));
        let exe = fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mut cmdline = Vec::with_capacity(256);
        fs::File::open(dir.join("cmdline"))
            .ok()?
            .take(MAX_CMDLINE as u64 + 1)
            .read_to_end(&mut cmdline)
            .ok()?;
        let cut = cmdline.len() > MAX_CMDLINE;
        cmdline.truncate(MAX_CMDLINE);
        let mut raw = Vec::new();
        fs::File::open(dir.join("cgroup"))
            .ok()?
            .take(64 * 1024)
            .read_to_end(&mut raw)
            .ok()?;
        let raw_path = cgroup_path(&raw);
        let cgroup = raw_path.map(|p| String::from_utf8_lossy(p).into_owned());
        let (trusted_cgroup, cgroup_id) = match (&self.cgroup_root, &cgroup, raw_path) {
            (Some(root), Some(path), Some(raw_path)) => {
                use std::os::unix::ffi::OsStrExt as _;
                let relative = raw_path.strip_prefix(b"/").unwrap_or(raw_path);
                (
                    trusted_prefix(root, path),
                    fs::metadata(root.join(std::ffi::OsStr::from_bytes(relative)))
                        .ok()
                        .map(|m| m.ino()),
                )
            }
            _ => (None, None),
        };
        let mut info = ProcInfo {
            start_time: stat.start_time,
            comm: stat.comm,
            ppid: Some(stat.ppid),
            uid,
            exe: exe.map(Into::into),
            command_line: join_cmdline(&cmdline, cut).map(Into::into),
            cgroup: cgroup.map(Into::into),
            cgroup_id,
            ..ProcInfo::default()
        };
        info.set_trusted_cgroup(trusted_cgroup.as_deref());
        Some(info)
    }
}

/// Retries a `get*_r` call with a growing buffer while it reports `ERANGE`.
fn with_buffer(mut call: impl FnMut(&mut [u8]) -> Option<Result<String, i32>>) -> Option<String> {
    let mut size = 1024;
    while size <= 1 << 20 {
        let mut buf = vec![0u8; size];
        match call(&mut buf)? {
            Ok(name) => return Some(name),
            Err(libc::ERANGE) => size *= 4,
            Err(_) => return None,
        }
    }
    None
}

/// `getpwuid_r(3)`: the user name of `uid`, if the user database knows it.
pub fn user_name(uid: u32) -> Option<String> {
    with_buffer(|buf| {
        // SAFETY: zeroed is a valid passwd (pointers null); getpwuid_r fills it, pointing
        // into `buf`, which outlives the CStr read below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out)
        };
        if rc != 0 {
            return Some(Err(rc));
        }
        if out.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        Some(Ok(name.to_string_lossy().into_owned()))
    })
}

/// `getgrgid_r(3)`: the group name of `gid`, if the group database knows it.
pub fn group_name(gid: u32) -> Option<String> {
    with_buffer(|buf| {
        // SAFETY: as in user_name.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out)
        };
        if rc != 0 {
            return Some(Err(rc));
        }
        if out.is_null() || grp.gr_name.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, inside `buf`.
        let name = unsafe { CStr::from_ptr(grp.gr_name) };
        Some(Ok(name.to_string_lossy().into_owned()))
    })
}

/// `info` as the details of `claim`'s process if its uid and cgroup agree with the kernel's.
fn verified(info: Arc<ProcInfo>, claim: &Claim<'_>) -> Details {
    if info.uid.is_some_and(|u| u != claim.uid) {
        return Details::Mismatch("uid");
    }
    if claim.cgroup_id != 0 && info.cgroup_id.is_some_and(|id| id != claim.cgroup_id) {
        return Details::Mismatch("cgroup");
    }
    Details::Verified(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_name() {
        let stat = "123 (a) b (c)) S 45 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    98765 1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(stat.as_bytes()),
            Some(Stat {
                comm: "a) b (c)".into(),
                ppid: 45,
                start_time: 98765
            })
        );
        assert_eq!(parse_stat(b"garbage"), None);
        // A name that is not UTF-8 (any bytes but NUL) is decoded, not a failed read.
        let odd = b"7 (\xffab\xfe) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0 0";
        assert_eq!(
            parse_stat(odd).map(|s| (s.comm, s.start_time)),
            Some(("\u{fffd}ab\u{fffd}".to_owned(), 555))
        );
        assert_eq!(
            parse_status_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
    }

    #[test]
    fn cmdline_joined_and_bounded() {
        assert_eq!(
            join_cmdline(b"curl\0-s\0http://x/\0", false).as_deref(),
            Some("curl -s http://x/")
        );
        assert_eq!(join_cmdline(b"", false), None);
        assert_eq!(join_cmdline(b"a\0b", true).as_deref(), Some("a b..."));
        let long = vec![b'a'; MAX_CMDLINE * 2];
        let s = join_cmdline(&long, false).expect("non-empty");
        assert_eq!(s.len(), MAX_CMDLINE);
        assert!(s.ends_with("..."));
        let mut multi = "é".repeat(MAX_CMDLINE).into_bytes();
        multi.push(0);
        let s = join_cmdline(&multi, false).expect("non-empty");
        assert!(s.len() <= MAX_CMDLINE && s.ends_with("..."));
    }

    #[test]
    fn cgroup_v2_line() {
        let hybrid =
            "12:memory:/x\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(
            cgroup_path(hybrid.as_bytes()),
            Some(&b"/system.slice/a.service"[..])
        );
        assert_eq!(cgroup_path(b"0::/\n"), Some(&b"/"[..]));
        assert_eq!(cgroup_path(b"1:cpu:/x\n"), None);
    }

    #[test]
    fn units() {
        assert_eq!(
            systemd_unit("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope")
                .as_deref(),
            Some("x.scope")
        );
        assert_eq!(systemd_unit("/egressd-test-1x2"), None);
        assert_eq!(systemd_unit("/"), None);
    }

    #[test]
    fn containers() {
        let id = "0123456789abcdef".repeat(4);
        for (path, runtime) in [
            (format!("/system.slice/docker-{id}.scope"), "docker"),
            (format!("/docker/{id}"), "docker"),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
                "containerd",
            ),
            (format!("/kubepods/besteffort/pod1/{id}"), "containerd"),
            (
                format!("/machine.slice/libpod-{id}.scope/container"),
                "podman",
            ),
            (format!("/kubepods.slice/crio-{id}.scope"), "cri-o"),
        ] {
            let c = container(&path).unwrap_or_else(|| panic!("no container in {path}"));
            assert_eq!((&*c.id, c.runtime), (id.as_str(), runtime), "{path}");
        }
        assert_eq!(container(&format!("/x/crio-conmon-{id}.scope")), None);
        assert_eq!(container("/system.slice/nginx.service"), None);
        assert_eq!(container(&format!("/docker/{}", &id[..63])), None);
        // A container naming a child cgroup like another container stays itself.
        let other = "fedcba9876543210".repeat(4);
        let c = container(&format!(
            "/system.slice/docker-{id}.scope/docker-{other}.scope"
        ))
        .expect("outer");
        assert_eq!(&*c.id, id.as_str());
    }

    #[test]
    fn trusted_prefix_stops_at_a_delegated_cgroup() {
        use std::os::unix::fs::{PermissionsExt as _, chown};
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let root = std::env::temp_dir().join(format!("egressd-cg-{}", std::process::id()));
        let deleg = root.join("user.slice/user@1000.service");
        fs::create_dir_all(deleg.join("app.slice")).expect("mkdir");
        for d in [&root, &root.join("user.slice"), &deleg] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        chown(&deleg, Some(1000), Some(1000)).expect("chown");
        let id = "0123456789abcdef".repeat(4);
        let path = format!("/user.slice/user@1000.service/app.slice/docker-{id}.scope");
        let t = trusted_prefix(&root, &path).expect("readable");
        assert_eq!(t, "/user.slice/user@1000.service");
        assert_eq!(systemd_unit(&t).as_deref(), Some("user@1000.service"));
        assert_eq!(container(&t), None);
        // A directory others may write is no better.
        chown(&deleg, Some(0), Some(0)).expect("chown");
        fs::set_permissions(&deleg, fs::Permissions::from_mode(0o777)).expect("chmod");
        assert_eq!(
            trusted_prefix(&root, &path).as_deref(),
            Some("/user.slice/user@1000.service")
        );
        fs::set_permissions(&deleg, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(trusted_prefix(&root, &path).as_deref(), Some(path.as_str()));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn fake_proc_root() {
        let root = std::env::temp_dir().join(format!("egressd-proc-{}", std::process::id()));
        let dir = root.join("42");
        fs::create_dir_all(&dir).expect("mkdir");
        let stat = |comm: &str, start: u64| {
            fs::write(
                dir.join("stat"),
                format!("42 ({comm}) S 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 {start} 0"),
            )
            .expect("write");
        };
        stat("x", 555);
        fs::write(
            dir.join("status"),
            "Name:\tx\nUid:\t1000\t1000\t1000\t1000\n",
        )
        .expect("write");
        fs::write(dir.join("cmdline"), b"x\0--flag\0").expect("write");
        fs::write(dir.join("cgroup"), "0::/system.slice/x.service\n").expect("write");
        let mut c = Cache::new(root.clone());
        // Every read here began before the (made-up) event times: each lookup reads stat.
        c.clock = || 0;
        let tick = c.ns_per_tick;
        let claim = Claim {
            pid: 42,
            comm: "x",
            uid: 1000,
            cgroup_id: 0,
            boot_ns: 600 * tick,
        };
        let d = c.lookup(&claim);
        let info = d.info().expect("verified");
        assert_eq!(info.ppid, Some(7));
        assert_eq!(info.start_time, 555);
        assert_eq!(info.uid, Some(1000));
        assert_eq!(info.exe, None);
        assert_eq!(info.command_line.as_deref(), Some("x --flag"));
        assert_eq!(info.cgroup.as_deref(), Some("/system.slice/x.service"));
        // Served from the cache while start time and name match.
        fs::write(dir.join("cmdline"), b"y\0").expect("write");
        assert_eq!(
            c.lookup(&claim)
                .info()
                .and_then(|i| i.command_line.clone())
                .as_deref(),
            Some("x --flag")
        );
        // Another uid than the kernel recorded: withheld.
        assert_eq!(
            c.lookup(&Claim { uid: 0, ..claim }),
            Details::Mismatch("uid")
        );
        // execve since the event: another name now.
        stat("y", 555);
        assert_eq!(c.lookup(&claim), Details::Mismatch("name"));
        // The pid was reused by a process that started after the event.
        stat("x", 700);
        assert_eq!(c.lookup(&claim), Details::Mismatch("start_time"));
        // Re-read when the start time changes and it is consistent.
        stat("x", 556);
        assert_eq!(
            c.lookup(&claim)
                .info()
                .and_then(|i| i.command_line.clone())
                .as_deref(),
            Some("y")
        );
        // Arguments longer than MAX_CMDLINE: only the start is read.
        stat("x", 557);
        let mut long = vec![b'a'; 3 * MAX_CMDLINE];
        long.push(0);
        fs::write(dir.join("cmdline"), &long).expect("write");
        let cl = c.lookup(&claim).info().and_then(|i| i.command_line.clone());
        assert!(cl.is_some_and(|l| l.len() == MAX_CMDLINE && l.ends_with("...")));
        assert_eq!(c.lookup(&Claim { pid: 43, ..claim }), Details::Exited);
        assert_eq!(c.lookup(&Claim { pid: 0, ..claim }), Details::NoProcess);
        let _ = fs::remove_dir_all(&root);
    }

    /// A `stat` read answers for the events recorded before it began, and only for those.
    #[test]
    fn stat_read_answers_for_earlier_events() {
        let root = std::env::temp_dir().join(format!("egressd-proc-again-{}", std::process::id()));
        let dir = root.join("42");
        fs::create_dir_all(&dir).expect("mkdir");
        let stat = |comm: &str| {
            fs::write(
                dir.join("stat"),
                format!("42 ({comm}) S 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0"),
            )
            .expect("write");
        };
        stat("x");
        fs::write(dir.join("status"), "Uid:\t1000\t1000\t1000\t1000\n").expect("write");
        fs::write(dir.join("cmdline"), b"x\0").expect("write");
        fs::write(dir.join("cgroup"), "0::/x.service\n").expect("write");
        let mut c = Cache::new(root.clone());
        // Reads begin at 10 s after boot; the process started one tick after boot.
        c.clock = || 10 * S;
        const S: u64 = 1_000_000_000;
        let claim = Claim {
            pid: 42,
            comm: "x",
            uid: 1000,
            cgroup_id: 0,
            boot_ns: 6 * S,
        };
        assert_eq!(c.lookup(&claim).label(), "verified");
        // An execve after the read: an event recorded before it is still answered by it...
        stat("y");
        assert_eq!(
            c.lookup(&Claim {
                boot_ns: 9 * S,
                ..claim
            })
            .label(),
            "verified"
        );
        // ... one recorded after it is checked by a new read.
        assert_eq!(
            c.lookup(&Claim {
                boot_ns: 11 * S,
                ..claim
            }),
            Details::Mismatch("name")
        );
        // Gone: not answered by an older read.
        fs::remove_dir_all(&dir).expect("rm");
        assert_eq!(
            c.lookup(&Claim {
                boot_ns: 12 * S,
                ..claim
            }),
            Details::Exited
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn root_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(3_999_999_999), None);
    }
}
