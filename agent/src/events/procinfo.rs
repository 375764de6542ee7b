//! Process, user and cgroup details read from `/proc` at event time (best effort).
//!
//! Sources (see `proc(5)`): `/proc/PID/stat` (parent pid, start time: field 22, after the
//! parenthesized command name, which may itself contain spaces and parentheses),
//! `/proc/PID/exe` (executable link), `/proc/PID/cmdline` (NUL-separated arguments),
//! `/proc/PID/cgroup` (the cgroup v2 line is `0::PATH`). User and group names come from the
//! system's databases through NSS (`getpwuid_r(3)`, `getgrgid_r(3)`).
//!
//! A process can exit between the kernel event and this read (a denied `connect()` returns
//! at once, and short-lived tools exit right after): then [`Cache::process`] returns `None`
//! and the event says `process.exited: true`. A pid reused by a new process in that window
//! cannot be told apart; the start time in the cache key at least keeps stale cache entries
//! from being served.
use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
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
    /// Parent pid (`stat` field 4).
    pub ppid: Option<u32>,
    /// Target of `/proc/PID/exe`.
    pub exe: Option<String>,
    /// Arguments joined by spaces (lossy UTF-8), at most [`MAX_CMDLINE`] bytes; `None` when
    /// empty (kernel threads, zombies).
    pub command_line: Option<String>,
    /// cgroup v2 path (`0::PATH` line of `/proc/PID/cgroup`).
    pub cgroup: Option<String>,
}

/// Parses `/proc/PID/stat`: returns (ppid, start time).
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3, ppid field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// Joins NUL-separated `cmdline` bytes with spaces, bounded by [`MAX_CMDLINE`].
pub fn join_cmdline(raw: &[u8]) -> Option<String> {
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return None;
    }
    let mut s = args.join(" ");
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

/// The cgroup v2 path from `/proc/PID/cgroup` text (`0::/system.slice/x.service`).
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
        .filter(|p| !p.is_empty())
}

/// Deepest systemd unit in a cgroup path: the last component ending in `.service` or
/// `.scope` (`/user.slice/user-1000.slice/session-3.scope` -> `session-3.scope`).
pub fn systemd_unit(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// Container id and runtime shown by a cgroup path. Recognized shapes (the id is 64 hex
/// digits): `docker-ID.scope` and `/docker/ID` (Docker), `cri-containerd-ID.scope` and
/// `/kubepods/.../ID` (containerd), `crio-ID.scope` (CRI-O), `libpod-ID.scope` (Podman).
/// `crio-conmon-ID.scope` is the monitor process, not the container, and is ignored.
pub fn container(path: &str) -> Option<super::Container> {
    let comps: Vec<&str> = path.split('/').collect();
    for (i, c) in comps.iter().enumerate().rev() {
        let base = c.strip_suffix(".scope").unwrap_or(c);
        let (runtime, id) = if let Some(id) = base.strip_prefix("docker-") {
            ("docker", id)
        } else if let Some(id) = base.strip_prefix("cri-containerd-") {
            ("containerd", id)
        } else if base.starts_with("crio-conmon-") {
            continue;
        } else if let Some(id) = base.strip_prefix("crio-") {
            ("cri-o", id)
        } else if let Some(id) = base.strip_prefix("libpod-") {
            ("podman", id)
        } else {
            let parent = if i > 0 { comps[i - 1] } else { "" };
            let runtime = if parent == "docker" {
                "docker"
            } else if comps.iter().any(|p| p.starts_with("kubepods")) {
                "containerd"
            } else {
                "unknown"
            };
            (runtime, base)
        };
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(super::Container {
                id: id.to_ascii_lowercase(),
                runtime,
            });
        }
    }
    None
}

/// Caches of process details (by pid + start time) and of user and group names.
pub struct Cache {
    root: PathBuf,
    procs: HashMap<u32, Arc<ProcInfo>>,
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Cache {
    /// A cache reading `root` (normally `/proc`).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            procs: HashMap::new(),
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Details of `pid` now, or `None` if it has exited (or `/proc` is unreadable).
    /// One `stat` read per call; the rest is read again only for a new start time.
    pub fn process(&mut self, pid: u32) -> Option<Arc<ProcInfo>> {
        let dir = self.root.join(pid.to_string());
        let (ppid, start_time) = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
        if let Some(hit) = self.procs.get(&pid)
            && hit.start_time == start_time
        {
            return Some(hit.clone());
        }
        let info = Arc::new(read_details(&dir, ppid, start_time)?);
        if self.procs.len() >= CACHE_CAP {
            self.procs.clear();
        }
        self.procs.insert(pid, info.clone());
        Some(info)
    }

    /// User name of `uid`, cached (also when unknown).
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        if self.users.len() >= CACHE_CAP {
            self.users.clear();
        }
        self.users
            .entry(uid)
            .or_insert_with(|| user_name(uid))
            .clone()
    }

    /// Group name of `gid`, cached (also when unknown).
    pub fn group_name(&mut self, gid: u32) -> Option<String> {
        if self.groups.len() >= CACHE_CAP {
            self.groups.clear();
        }
        self.groups
            .entry(gid)
            .or_insert_with(|| group_name(gid))
            .clone()
    }
}

/// Reads exe, cmdline and cgroup; `None` if the process vanished meanwhile (its cmdline and
/// cgroup files then fail to read).
fn read_details(dir: &Path, ppid: u32, start_time: u64) -> Option<ProcInfo> {
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let cmdline = fs::read(dir.join("cmdline")).ok()?;
    let cgroup = fs::read_to_string(dir.join("cgroup")).ok()?;
    Some(ProcInfo {
        start_time,
        ppid: Some(ppid),
        exe,
        command_line: join_cmdline(&cmdline),
        cgroup: parse_cgroup(&cgroup),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_name() {
        let stat = "123 (a) b (c)) S 45 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    98765 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((45, 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cmdline_joined_and_bounded() {
        assert_eq!(
            join_cmdline(b"curl\0-s\0http://x/\0").as_deref(),
            Some("curl -s http://x/")
        );
        assert_eq!(join_cmdline(b""), None);
        let long = vec![b'a'; MAX_CMDLINE * 2];
        let s = join_cmdline(&long).expect("non-empty");
        assert_eq!(s.len(), MAX_CMDLINE);
        assert!(s.ends_with("..."));
        let mut multi = "é".repeat(MAX_CMDLINE).into_bytes();
        multi.push(0);
        let s = join_cmdline(&multi).expect("non-empty");
        assert!(s.len() <= MAX_CMDLINE && s.ends_with("..."));
    }

    #[test]
    fn cgroup_v2_line() {
        let hybrid =
            "12:memory:/x\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(
            parse_cgroup(hybrid).as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(parse_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_cgroup("1:cpu:/x\n"), None);
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
            assert_eq!((c.id.as_str(), c.runtime), (id.as_str(), runtime), "{path}");
        }
        assert_eq!(container(&format!("/x/crio-conmon-{id}.scope")), None);
        assert_eq!(container("/system.slice/nginx.service"), None);
        assert_eq!(container(&format!("/docker/{}", &id[..63])), None);
    }

    #[test]
    fn fake_proc_root() {
        let root = std::env::temp_dir().join(format!("egressd-proc-{}", std::process::id()));
        let dir = root.join("42");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("stat"),
            "42 (x) S 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 555 0",
        )
        .expect("write");
        fs::write(dir.join("cmdline"), b"x\0--flag\0").expect("write");
        fs::write(dir.join("cgroup"), "0::/system.slice/x.service\n").expect("write");
        let mut c = Cache::new(root.clone());
        let info = c.process(42).expect("present");
        assert_eq!(info.ppid, Some(7));
        assert_eq!(info.start_time, 555);
        assert_eq!(info.exe, None);
        assert_eq!(info.command_line.as_deref(), Some("x --flag"));
        assert_eq!(info.cgroup.as_deref(), Some("/system.slice/x.service"));
        // Served from the cache while the start time matches; re-read when it changes.
        fs::write(dir.join("cmdline"), b"y\0").expect("write");
        assert_eq!(
            c.process(42).expect("present").command_line.as_deref(),
            Some("x --flag")
        );
        fs::write(
            dir.join("stat"),
            "42 (y) S 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 556 0",
        )
        .expect("write");
        assert_eq!(
            c.process(42).expect("present").command_line.as_deref(),
            Some("y")
        );
        assert!(c.process(43).is_none());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn root_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(3_999_999_999), None);
    }
}
