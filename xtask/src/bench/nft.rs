//! Contender: nftables, the prefixes in one interval set per family and a stateless rule per
//! family in an output chain that rejects destinations outside them.
use std::{fmt::Write as _, path::PathBuf};

use super::{Bed, Filter, netns, prefixes::PrefixSet};

/// nftables table holding the sets.
pub struct Nft {
    ns: String,
    load_file: PathBuf,
    reload_file: PathBuf,
    enable_file: PathBuf,
    loaded: bool,
}

fn elements<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut s = String::new();
    for (i, p) in items.enumerate() {
        if i > 0 {
            s.push_str(",\n");
        }
        let _ = write!(s, "{p}");
    }
    s
}

impl Nft {
    /// Writes the rule files for `set` into `dir`.
    pub fn prepare(ns: &str, dir: &std::path::Path, set: &PrefixSet) -> anyhow::Result<Self> {
        let e4 = elements(set.v4.iter().map(|(n, _)| n));
        let e6 = elements(set.v6.iter().map(|(n, _)| n));
        let load = format!(
            "add table inet egb\n\
             add set inet egb allow4 {{ type ipv4_addr; flags interval; }}\n\
             add set inet egb allow6 {{ type ipv6_addr; flags interval; }}\n\
             add chain inet egb out {{ type filter hook output priority 0; policy accept; }}\n\
             add element inet egb allow4 {{\n{e4}\n}}\n\
             add element inet egb allow6 {{\n{e6}\n}}\n"
        );
        // A reload replaces the set contents in one transaction (nft -f is atomic).
        let reload = format!(
            "flush set inet egb allow4\nflush set inet egb allow6\n\
             add element inet egb allow4 {{\n{e4}\n}}\n\
             add element inet egb allow6 {{\n{e6}\n}}\n"
        );
        let enable = "add rule inet egb out ip daddr != @allow4 reject\n\
                      add rule inet egb out ip6 daddr != @allow6 reject\n";
        let me = Self {
            ns: ns.to_owned(),
            load_file: dir.join("nft-load.nft"),
            reload_file: dir.join("nft-reload.nft"),
            enable_file: dir.join("nft-enable.nft"),
            loaded: false,
        };
        std::fs::write(&me.load_file, load)?;
        std::fs::write(&me.reload_file, reload)?;
        std::fs::write(&me.enable_file, enable)?;
        Ok(me)
    }

    /// `nft -f` of the whole table (removing an earlier one first); wall time in ns.
    pub fn load(&mut self) -> anyhow::Result<f64> {
        self.unload();
        let t = netns::exec_file(&self.ns, &["nft", "-f"], &self.load_file)?;
        self.loaded = true;
        Ok(t)
    }

    /// `nft -f` of a transaction that flushes both sets and adds the elements again.
    pub fn reload(&mut self) -> anyhow::Result<f64> {
        netns::exec_file(&self.ns, &["nft", "-f"], &self.reload_file)
    }

    /// Deletes the table.
    pub fn unload(&mut self) {
        if self.loaded {
            let _ = netns::exec(&self.ns, &["nft", "delete", "table", "inet", "egb"]);
            self.loaded = false;
        }
    }
}

impl Filter for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }
    fn enable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        netns::exec_file(&self.ns, &["nft", "-f"], &self.enable_file).map(drop)
    }
    fn disable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        netns::exec(&self.ns, &["nft", "flush", "chain", "inet", "egb", "out"]).map(drop)
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        self.unload();
    }
}
