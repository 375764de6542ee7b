//! Network namespaces made with iproute2 (`ip netns add`), deleted on drop.
use std::{fs::File, os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, bail};

/// A named network namespace (`/run/netns/<name>`).
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
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
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        // No duplicate address detection: link-local addresses would stay "tentative" for a
        // second and delay the first neighbour discovery.
        for conf in ["all", "default"] {
            let out = Command::new("ip")
                .args(["netns", "exec", name, "sysctl", "-q", "-w"])
                .arg(format!("net.ipv6.conf.{conf}.accept_dad=0"))
                .output()
                .context("running sysctl")?;
            if !out.status.success() {
                bail!(
                    "sysctl accept_dad in {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
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
        ip(&[
            "-n", &self.name, "link", "add", ifname, "type", "veth", "peer", "name", peer_if,
            "netns", &peer.name,
        ])?;
        for (ns, dev, addrs) in [(&self.name, ifname, mine), (&peer.name, peer_if, theirs)] {
            for a in addrs {
                if a.contains(':') {
                    ip(&["-n", ns, "addr", "add", a, "dev", dev, "nodad"])?;
                } else {
                    ip(&["-n", ns, "addr", "add", a, "dev", dev])?;
                }
            }
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
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
        // Deleting a namespace removes its veth ends (and their peers) with it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("testbed: {e}");
        }
    }
}
