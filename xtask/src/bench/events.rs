//! Event throughput: denials per second from the kernel to the JSON sink of the real daemon
//! (`egressd run`, events on stdout into a file), with the loss counters of `agent_stop`.
//!
//! The worker, in the filtered cgroup, makes denied `connect()`s as fast as it can to the
//! test bed's "us" region, cycling through 254 destination addresses (so per-destination
//! event suppression, where the daemon has it, applies as little as it can). Every attempt is
//! one event unless suppressed or lost, or counted in a `connection_summary` (attempts the
//! kernel aggregated when the ring buffer was full or the key had written its record budget
//! for the second): records plus summaries must account for every counted denial.
use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{connect::Bed, daemon::Daemon};

/// One flood.
#[derive(Clone, Debug, Default)]
pub struct Flood {
    /// Denied attempts made by the worker.
    pub attempts: u64,
    /// Attempts per second (the kernel side).
    pub attempt_rate: f64,
    /// `connection` records written by the sink.
    pub delivered: u64,
    /// Records per second from the first attempt until the sink stopped writing.
    pub sink_rate: f64,
    /// `lost.ringbuf_full` of `agent_stop`.
    pub ringbuf_full: u64,
    /// Sum of the `suppressed` fields of the records, plus `lost.suppressed` if present.
    pub suppressed: u64,
    /// Deny counter of the connect hooks in `agent_stop` (exact whatever was lost).
    pub counted: u64,
    /// `connection_summary` records written (attempts the kernel aggregated).
    pub summaries: u64,
    /// Attempts those summaries count.
    pub summarized: u64,
    /// `counted` minus what the records account for (each `connection` record `1 +
    /// suppressed`, each summary its `count`): 0 when nothing went unreported.
    pub unaccounted: i64,
}

/// The policy for the flood: the test bed's, with event suppression off when the daemon
/// has that setting.
pub fn policy(dir: &Path, egressd: &Path) -> anyhow::Result<std::path::PathBuf> {
    let base = egressd_testbed::POLICY.replace("{mode}", "enforce");
    let path = dir.join("events.toml");
    let with = format!("suppress_window_ms = 0\n{base}");
    std::fs::write(&path, &with)?;
    let accepted = std::process::Command::new(egressd)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .is_ok_and(|o| o.status.success());
    if !accepted {
        std::fs::write(&path, base)?;
    }
    Ok(path)
}

/// Runs one flood of `millis` against a fresh daemon.
pub fn flood(
    bed: &mut Bed,
    egressd: &Path,
    config: &Path,
    out: &Path,
    millis: u64,
) -> anyhow::Result<Flood> {
    let daemon = Daemon::start(egressd, config, &bed.filtered, out, Duration::from_secs(30))?
        .context("egressd did not start within 30 s")?;
    bed.worker.move_to(&bed.filtered)?;
    let t0 = Instant::now();
    let target: IpAddr = egressd_testbed::US_V4.parse()?;
    let s = bed.worker.run(target, egressd_testbed::PORT, millis, true);
    bed.worker.move_to(&bed.plain)?;
    let s = s?;
    // Wait for the sink to catch up: until the file stops growing for 300 ms (20 s at most).
    let (mut last, mut last_change) = (daemon.lines(), Instant::now());
    let mut end = t0.elapsed();
    while last_change.elapsed() < Duration::from_millis(300)
        && t0.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
        let n = daemon.lines();
        if n != last {
            last = n;
            last_change = Instant::now();
            end = t0.elapsed();
        }
    }
    let records = daemon.stop()?;
    let mut f = Flood {
        attempts: s.attempts,
        attempt_rate: s.rate(),
        ..Default::default()
    };
    for r in &records {
        match r["type"].as_str() {
            Some("connection") => {
                f.delivered += 1;
                f.suppressed += r["suppressed"].as_u64().unwrap_or(0);
            }
            Some("connection_summary") => {
                f.summaries += 1;
                f.summarized += r["count"].as_u64().unwrap_or(0);
            }
            Some("agent_stop") => {
                f.ringbuf_full = r["lost"]["ringbuf_full"].as_u64().unwrap_or(0);
                f.suppressed += r["lost"]["suppressed"].as_u64().unwrap_or(0);
                f.counted = r["counters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| {
                        c["verdict"] == "deny"
                            && c["hook"]
                                .as_str()
                                .is_some_and(|h| h.starts_with("cgroup/connect"))
                    })
                    .filter_map(|c| c["count"].as_u64())
                    .sum();
            }
            _ => {}
        }
    }
    f.sink_rate = f.delivered as f64 / end.as_secs_f64().max(1e-3);
    // Suppression is off (see `policy`): `suppressed` is 0 unless the daemon lacks the setting.
    f.unaccounted = f.counted as i64 - (f.delivered + f.suppressed + f.summarized) as i64;
    Ok(f)
}

/// `Value` summary of floods for the JSON dump.
pub fn to_json(f: &Flood) -> Value {
    serde_json::json!({
        "attempts": f.attempts, "attempt_rate": f.attempt_rate, "delivered": f.delivered,
        "sink_rate": f.sink_rate, "ringbuf_full": f.ringbuf_full, "suppressed": f.suppressed,
        "counted": f.counted, "summaries": f.summaries, "summarized": f.summarized,
        "unaccounted": f.unaccounted,
    })
}
