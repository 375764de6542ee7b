//! Sink throughput with and without the spool as write-ahead log: runs the `bench_spool`
//! example (egressd's pipeline in-process, a syslog TCP sink to a receiver on loopback) and
//! reports its figures side by side.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    Results,
    stats::{Spread, count},
};

/// One variant's measurement in one round.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `memory queue (no spool)`, `spool WAL, fsync interval`, `spool WAL, fsync batch`.
    pub name: String,
    /// Records per second the submitting (ring-buffer reader) thread handed over.
    pub submit: f64,
    /// Records per second through to the receiver.
    pub through: f64,
    /// Milliseconds from the last record received to its commit.
    pub commit_lag_ms: f64,
    /// The example's JSON line.
    pub raw: Value,
}

/// Runs `bench_spool` `rounds` times with its spool in `dir` (on the build's disk).
///
/// # Errors
/// The example fails or prints something else than its JSON lines.
pub fn measure(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<Vec<Variant>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let o = Command::new(bin)
            .arg("--dir")
            .arg(dir)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !o.status.success() {
            bail!(
                "{} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("bench_spool: {line}"))?;
            out.push(Variant {
                name: v["variant"].as_str().unwrap_or_default().to_owned(),
                submit: v["submit_per_s"].as_f64().unwrap_or(0.0),
                through: v["through_per_s"].as_f64().unwrap_or(0.0),
                commit_lag_ms: v["commit_lag_ms"].as_f64().unwrap_or(0.0),
                raw: v,
            });
        }
    }
    Ok(out)
}

/// The report's section.
pub fn table(s: &mut String, r: &Results) {
    if r.spool.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Sink write-ahead log: records/s with and without the spool\n\n\
         `bench_spool` (egressd's pipeline in-process): 200,000 native JSON `connection` \
         records submitted by one thread to one syslog TCP sink whose receiver, on loopback, \
         reads every message. *Submit/s*: what the submitting thread (the ring-buffer reader's \
         role) sustains: encoding, and with the spool one `write(2)` per record to it. \
         *Through/s*: first submit to last message read by the receiver. *Commit lag*: from \
         then until the last record is committed (the spool's head may pass it): the \
         one-second grace after the receiver's TCP acknowledged it. The spool is on the \
         build's disk (`target/bench-spool`). Median (min–max) over rounds.\n\n\
         | variant | submit/s | through/s | through vs no spool | commit lag |\n\
         | --- | ---: | ---: | ---: | ---: |"
    );
    let mut names: Vec<&str> = Vec::new();
    for v in &r.spool {
        if !names.contains(&v.name.as_str()) {
            names.push(&v.name);
        }
    }
    let base = Spread::of(
        &r.spool
            .iter()
            .filter(|v| v.name == names[0])
            .map(|v| v.through)
            .collect::<Vec<_>>(),
    );
    for name in names {
        let of = |f: fn(&Variant) -> f64| {
            Spread::of(
                &r.spool
                    .iter()
                    .filter(|v| v.name == name)
                    .map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let through = of(|v| v.through);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:+.0} % | {:.0} ms |",
            of(|v| v.submit).show(count),
            through.show(count),
            (through.median / base.median.max(1e-9) - 1.0) * 100.0,
            of(|v| v.commit_lag_ms).median,
        );
    }
    s.push('\n');
}
