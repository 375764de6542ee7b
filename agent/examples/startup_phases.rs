//! Where `egressd run`'s start-up time and memory go, phase by phase, for one policy file:
//! `startup_phases FILE [CGROUP] [--overlap]` (as root; with CGROUP the programs are attached
//! there too; with `--overlap`, which needs CGROUP, the programs load on another thread
//! while the policy compiles, as the daemon does, and the two are one phase).
//!
//! Each phase runs as the daemon runs it (read and validate: [`config::load_sources`];
//! compile: [`policy::compile`]; program load: [`Enforcer::open_with`]; table build and map
//! fill: [`Enforcer::install`]; attach), with the peak resident memory reset before it
//! (`5` to `/proc/self/clear_refs`), so the peak printed is the phase's own; the resident
//! memory after it counts what the earlier phases still hold. One line per phase, then a
//! JSON object with the same figures on the last line.
use std::{path::PathBuf, sync::Arc, time::Instant};

use egressd::{
    config,
    kernel::loader::{Capacity, Enforcer, Tables},
    policy,
};

/// The policy part of the configuration's raw schema, as serde sees it (the real one is
/// private to `config`): what the TOML parse alone costs.
#[derive(serde::Deserialize)]
struct RawConfig {
    allowlist: Vec<toml::Spanned<String>>,
    #[serde(default)]
    regions: std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<RawRegion>>,
}

#[derive(serde::Deserialize)]
struct RawRegion {
    #[allow(dead_code)]
    prefixes: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
}

/// (`VmRSS`, `VmHWM`) in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Resets `VmHWM` to the current `VmRSS` (Linux 4.0+, `Documentation/filesystems/proc.rst`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Phases {
    rows: Vec<serde_json::Value>,
    start: Instant,
}

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        reset_peak();
        let (rss0, _) = memory();
        let t = Instant::now();
        let out = f()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (rss, hwm) = memory();
        eprintln!(
            "{name:<28} {ms:>9.1} ms   peak {:>7.1} MiB (+{:.1})   after {:>7.1} MiB",
            hwm as f64 / 1024.0,
            hwm.saturating_sub(rss0) as f64 / 1024.0,
            rss as f64 / 1024.0
        );
        self.rows.push(serde_json::json!({
            "phase": name, "ms": ms, "peak_kib": hwm, "rss_before_kib": rss0, "rss_after_kib": rss,
        }));
        Ok(out)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let file = PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: startup_phases POLICY.toml [CGROUP] [--overlap]")
    })?);
    let mut cgroup = None;
    let mut overlap = false;
    for a in args {
        if a == "--overlap" {
            overlap = true;
        } else {
            cgroup = Some(PathBuf::from(a));
        }
    }
    let mut p = Phases {
        rows: Vec::new(),
        start: Instant::now(),
    };
    p.run("process start", || Ok(()))?;
    let text = p.run("read the file", || Ok(std::fs::read_to_string(&file)?))?;
    p.run("TOML parse alone (raw schema)", || {
        let raw: RawConfig = toml::from_str(&text)?;
        Ok(raw.regions.len() + raw.allowlist.len())
    })?;
    drop(text);
    let (cfg, output, sources) = p.run("read + parse + validate", || {
        config::load_sources(&file).map_err(anyhow::Error::from)
    })?;
    let e = if overlap {
        // The daemon's order: the maps sized from the configuration, the programs loaded
        // and verified on another thread while the policy compiles and its tables are
        // worked out; then the install and the attach.
        let cg = cgroup
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--overlap needs a CGROUP"))?;
        let cap = Capacity::for_config(&cfg)
            .ok_or_else(|| anyhow::anyhow!("the map sizes depend on the compile"))?;
        let (policy, prepared) = p.run("compile | program load + verify", || {
            std::thread::scope(|s| {
                let load = s.spawn(|| Enforcer::prepare(cap, cg));
                let policy = Arc::new(policy::compile(&cfg));
                let tables = Tables::compile(&policy, cap);
                let prepared = load
                    .join()
                    .map_err(|_| anyhow::anyhow!("the load panicked"))??;
                anyhow::ensure!(
                    cap.covers(&Capacity::for_policy(&policy)),
                    "the maps do not fit the policy"
                );
                Ok((policy, prepared.with_tables(tables)))
            })
        })?;
        drop(sources);
        p.run("tables + map fill + attach", || {
            Ok(prepared.finish(policy, cg)?.0)
        })?
    } else {
        let policy = p.run("compile (entries, merge)", || {
            Ok(Arc::new(policy::compile(&cfg)))
        })?;
        drop(sources);
        let cap = Capacity::for_policy(&policy);
        let mut e = p.run("program load + verify", || Enforcer::open_with(cap))?;
        p.run("tables + map fill", || e.install(policy.clone()))?;
        if let Some(cg) = &cgroup {
            p.run("attach", || e.attach(cg))?;
        }
        e
    };
    let total = p.start.elapsed().as_secs_f64() * 1e3;
    let (rss, _) = memory();
    eprintln!(
        "total {total:.1} ms, held at the end {:.1} MiB (config, policy, loaded object)",
        rss as f64 / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({ "phases": p.rows, "total_ms": total, "rss_kib": rss })
    );
    drop((cfg, output, e));
    Ok(())
}
