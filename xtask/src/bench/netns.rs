//! Running firewall tools inside the client namespace (`ip netns exec`), timed.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Runs `args` inside namespace `ns`; returns the wall time in ns. Fails with the tool's
/// stderr.
pub fn exec(ns: &str, args: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    let ns_spent = t.elapsed().as_nanos() as f64;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "ip netns exec {ns} {}: {}",
            args.join(" "),
            err.chars().take(2000).collect::<String>().trim()
        );
    }
    Ok(ns_spent)
}

/// Runs a tool that reads `file` (e.g. `nft -f FILE`) inside `ns`; wall time in ns.
pub fn exec_file(ns: &str, tool: &[&str], file: &Path) -> anyhow::Result<f64> {
    let path = file.to_str().context("non-UTF-8 path")?;
    let mut args = tool.to_vec();
    args.push(path);
    exec(ns, &args)
}

/// Wall time of `ip netns exec NS true` in ns: the fixed cost inside every [`exec`].
pub fn overhead(ns: &str) -> f64 {
    let mut v: Vec<f64> = (0..5).filter_map(|_| exec(ns, &["true"]).ok()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
