//! Contender: plain iptables/ip6tables, one `RETURN` rule per prefix in a chain that ends
//! with `REJECT`, jumped to from `OUTPUT`. The test host's prefix is the *last* rule, so every
//! packet of the measured connections walks the whole chain (what a destination near the
//! end of the list, or a denied one, pays). Only used up to 10k prefixes.
use std::{fmt::Write as _, path::PathBuf};

use super::{Bed, Filter, netns, prefixes::PrefixSet};

/// Largest N this contender is measured at.
pub const MAX_N: usize = 10_000;

/// The two chains.
pub struct Iptables {
    ns: String,
    files: [PathBuf; 2],
    loaded: bool,
}

fn rules<T: std::fmt::Display>(prefixes: &[(T, String)]) -> String {
    let mut s = String::from("*filter\n:EGB - [0:0]\n");
    // prefixes[0] is the test host's: put it last.
    for (n, _) in prefixes.iter().skip(1).chain(prefixes.iter().take(1)) {
        let _ = writeln!(s, "-A EGB -d {n} -j RETURN");
    }
    s.push_str("-A EGB -j REJECT\nCOMMIT\n");
    s
}

const TOOLS: [(&str, &str); 2] = [
    ("iptables", "iptables-restore"),
    ("ip6tables", "ip6tables-restore"),
];

impl Iptables {
    /// Writes the `iptables-restore` files for `set` into `dir`.
    pub fn prepare(ns: &str, dir: &std::path::Path, set: &PrefixSet) -> anyhow::Result<Self> {
        let me = Self {
            ns: ns.to_owned(),
            files: [dir.join("iptables.rules"), dir.join("ip6tables.rules")],
            loaded: false,
        };
        std::fs::write(&me.files[0], rules(&set.v4))?;
        std::fs::write(&me.files[1], rules(&set.v6))?;
        Ok(me)
    }

    /// `iptables-restore --noflush` of both chains; wall time in ns.
    pub fn load(&mut self) -> anyhow::Result<f64> {
        self.unload();
        let mut t = 0.0;
        for ((_, restore), file) in TOOLS.iter().zip(&self.files) {
            t += netns::exec_file(&self.ns, &[restore, "-w", "--noflush"], file)?;
        }
        self.loaded = true;
        Ok(t)
    }

    /// Removes both chains (the jumps must be gone).
    pub fn unload(&mut self) {
        if self.loaded {
            for (tool, _) in TOOLS {
                let _ = netns::exec(&self.ns, &[tool, "-w", "-F", "EGB"]);
                let _ = netns::exec(&self.ns, &[tool, "-w", "-X", "EGB"]);
            }
            self.loaded = false;
        }
    }
}

impl Filter for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }
    fn enable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        for (tool, _) in TOOLS {
            netns::exec(&self.ns, &[tool, "-w", "-A", "OUTPUT", "-j", "EGB"])?;
        }
        Ok(())
    }
    fn disable(&mut self, _bed: &Bed) -> anyhow::Result<()> {
        for (tool, _) in TOOLS {
            netns::exec(&self.ns, &[tool, "-w", "-D", "OUTPUT", "-j", "EGB"])?;
        }
        Ok(())
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        self.unload();
    }
}
