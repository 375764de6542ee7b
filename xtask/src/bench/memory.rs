//! Daemon resident memory and kernel map memory vs N with the real `egressd run`, and its
//! start-up time (config load + compile + program load + map fill + attach), at every N
//! (a daemon that does not start within the timeout is stopped and reported as such).
use std::{path::Path, time::Duration};

use super::daemon::{Daemon, memory_of};

/// One daemon start.
#[derive(Clone, Debug, Default)]
pub struct DaemonRun {
    /// N of the set.
    pub n: usize,
    /// Started within the timeout.
    pub started: bool,
    /// Seconds waited.
    pub timeout_s: f64,
    /// Spawn to `agent_start`, ns.
    pub start_ns: f64,
    /// `VmRSS` once started, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS during load), KiB.
    pub hwm_kib: u64,
    /// Sum of `memlock` over its map descriptors, bytes.
    pub maps_bytes: u64,
}

/// Starts the daemon on `config` (attached to `cgroup`, which holds no process), measures,
/// stops it.
pub fn daemon_run(
    n: usize,
    egressd: &Path,
    config: &Path,
    cgroup: &Path,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<DaemonRun> {
    let mut r = DaemonRun {
        n,
        timeout_s: timeout.as_secs_f64(),
        ..Default::default()
    };
    let Some(d) = Daemon::start(egressd, config, cgroup, out, timeout)? else {
        return Ok(r);
    };
    r.started = true;
    r.start_ns = d.start_ns;
    // Let the event loop settle before reading RSS.
    std::thread::sleep(Duration::from_millis(200));
    let (rss, hwm, maps) = memory_of(d.pid());
    r.rss_kib = rss;
    r.hwm_kib = hwm;
    r.maps_bytes = maps;
    d.stop()?;
    Ok(r)
}
