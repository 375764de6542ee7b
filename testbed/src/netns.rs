//! Network namespaces made with iproute2 (`ip netns add`), deleted on drop.
use std::{
    fs::File,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// A named network namespace (`/run/netns/<name>`).
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_with_input(args, None)
}

/// Runs `lines` (`ip` commands without the `ip`) in namespace `ns` through one `ip -batch`
/// process: under TCG in the VM runs a process start costs 0.1-0.2 s, and a test bed took
/// 26 of them (3-4 s of each kernel test).
fn ip_batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    ip_with_input(&["-n", ns, "-batch", "-"], Some(&lines.join("\n")))
        .with_context(|| format!("commands: {}", lines.join("; ")))
}

/// `ip ARGS` with `input` on its standard input; an error with its stderr when it fails.
fn ip_with_input(args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates the namespace, brings its loopback up and turns IPv6 duplicate address
    /// detection off in it.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        // The rest from a thread inside the namespace, without a process per step.
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<()> {
                ns.enter_current_thread()?;
                // No duplicate address detection: link-local addresses would stay
                // "tentative" for a second and delay the first neighbour discovery. Set
                // before any veth is created here ("default" is copied into new devices).
                // /proc/sys/net shows the namespace of the thread that opens it.
                for conf in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
                    std::fs::write(&path, "0")
                        .with_context(|| format!("writing {path} in {name}"))?;
                }
                loopback_up().with_context(|| format!("bringing lo up in {name}"))
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("netns set-up thread panicked")))
        })?;
        Ok(ns)
    }

    /// A handle on a namespace that someone else owns (not deleted on drop: forget it).
    pub(crate) fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The namespace name (for `ip netns exec` and `/run/netns/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates a veth pair between `self` (interface `ifname`) and `peer` (interface
    /// `veth0`-style name derived from `ifname`), with the given addresses on each end.
    /// IPv6 addresses are added with `nodad` so they are usable at once.
    pub fn link_to(
        &self,
        peer: &Netns,
        ifname: &str,
        mine: [&str; 2],
        theirs: [&str; 2],
    ) -> anyhow::Result<()> {
        let peer_if = "veth0";
        let side = |dev: &str, addrs: [&str; 2]| -> Vec<String> {
            let mut lines: Vec<String> = addrs
                .iter()
                .map(|a| {
                    let nodad = if a.contains(':') { " nodad" } else { "" };
                    format!("addr add {a} dev {dev}{nodad}")
                })
                .collect();
            lines.push(format!("link set {dev} up"));
            lines
        };
        let mut mine_lines = vec![format!(
            "link add {ifname} type veth peer name {peer_if} netns {}",
            peer.name
        )];
        mine_lines.extend(side(ifname, mine));
        ip_batch(&self.name, &mine_lines)?;
        ip_batch(&peer.name, &side(peer_if, theirs))
    }

    /// Moves the calling *thread* into this namespace (`setns(2)` with `CLONE_NEWNET`
    /// changes only the caller's thread). Sockets it creates afterwards live here.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // What `ip netns del` does, without a process: detach the namespace's bind mount
        // and remove it; the namespace (with its veth ends, and their peers) goes once no
        // process or socket holds it.
        let path = format!("/run/netns/{}", self.name);
        let Ok(c) = std::ffi::CString::new(path.as_str()) else {
            return;
        };
        // SAFETY: a NUL-terminated path; MNT_DETACH only unmounts it.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "testbed: umount {path}: {}",
                std::io::Error::last_os_error()
            );
        }
        if let Err(e) = std::fs::remove_file(&path) {
            eprintln!("testbed: removing {path}: {e}");
        }
    }
}

/// Sets `IFF_UP` on `lo` of the calling thread's network namespace (`SIOCSIFFLAGS`, as
/// `ip link set lo up`).
fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: a fresh fd nothing else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid socket and ifreq for these two requests.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
        }
    }
    Ok(())
}
