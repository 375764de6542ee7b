//! Contender: ipset `hash:net` sets (one per family) and one iptables/ip6tables rule each
//! that rejects destinations outside them.
use std::{fmt::Write as _, path::PathBuf};

use super::{Bed, Filter, netns, prefixes::PrefixSet};

/// The two sets.
pub struct Ipset {
    ns: String,
    load_file: PathBuf,
    reload_file: PathBuf,
    loaded: bool,
}

const RULE4: &[&str] = &[
    "-m",
    "set",
    "!",
    "--match-set",
    "egb4",
    "dst",
    "-j",
    "REJECT",
];
const RULE6: &[&str] = &[
    "-m",
    "set",
    "!",
    "--match-set",
    "egb6",
    "dst",
    "-j",
    "REJECT",
];

fn restore(set: &PrefixSet, suffix: &str) -> String {
    let max = (set.v4.len().max(set.v6.len()) * 2).max(65536);
    let mut s = format!(
        "create egb4{suffix} hash:net family inet hashsize 65536 maxelem {max}\n\
         create egb6{suffix} hash:net family inet6 hashsize 65536 maxelem {max}\n"
    );
    for (n, _) in &set.v4 {
        let _ = writeln!(s, "add egb4{suffix} {n}");
    }
    for (n, _) in &set.v6 {
        let _ = writeln!(s, "add egb6{suffix} {n}");
    }
    s
}

impl Ipset {
    /// Writes the `ipset restore` files for `set` into `dir`.
    pub fn prepare(ns: &str, dir: &std::path::Path, set: &PrefixSet) -> anyhow::Result<Self> {
        let me = Self {
            ns: ns.to_owned(),
            load_file: dir.join("ipset-load.restore"),
            reload_file: dir.join("ipset-reload.restore"),
            loaded: false,
        };
        std::fs::write(&me.load_file, restore(set, ""))?;
        // Reload the usual way: fill new sets, swap them in atomically, drop the old ones.
        let mut reload = restore(set, "n");
        reload.push_str("swap egb4n egb4\nswap egb6n egb6\ndestroy egb4n\ndestroy egb6n\n");
        std::fs::write(&me.reload_file, reload)?;
        Ok(me)
    }

    /// `ipset restore` of both sets; wall time in ns.
    pub fn load(&mut self) -> anyhow::Result<f64> {
        self.unload();
        let t = netns::exec(
            &self.ns,
            &[
                "ipset",
                "restore",
                "-f",
                self.load_file.to_str().unwrap_or(""),
            ],
        )?;
        self.loaded = true;
        Ok(t)
    }

    /// Fill-and-swap reload; wall time in ns.
    pub fn reload(&mut self) -> anyhow::Result<f64> {
        netns::exec(
            &self.ns,
            &[
                "ipset",
                "restore",
                "-f",
                self.reload_file.to_str().unwrap_or(""),
            ],
        )
    }

    /// Destroys both sets (the rules must be gone).
    pub fn unload(&mut self) {
        if self.loaded {
            let _ = netns::exec(&self.ns, &["ipset", "destroy", "egb4"]);
            let _ = netns::exec(&self.ns, &["ipset", "destroy", "egb6"]);
            self.loaded = false;
        }
    }
}

fn rule(ns: &str, tool: &str, op: &str, r: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![tool, "-w", op, "OUTPUT"];
    args.extend(r);
    netns::exec(ns, &args).map(drop)
}

impl Filter for Ipset {
    fn name(&self) -> &'static str {
        "ipset+iptables"
    }
    fn enable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        rule(&self.ns, "iptables", "-A", RULE4)?;
        rule(&self.ns, "ip6tables", "-A", RULE6)
    }
    fn disable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        rule(&self.ns, "iptables", "-D", RULE4)?;
        rule(&self.ns, "ip6tables", "-D", RULE6)
    }
}

impl Drop for Ipset {
    fn drop(&mut self) {
        self.unload();
    }
}
