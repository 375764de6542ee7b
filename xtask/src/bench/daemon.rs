//! The real daemon, `egressd run --config FILE --cgroup DIR`, with its JSON event stream
//! written to a file.
use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// A running `egressd run`.
pub struct Daemon {
    child: Child,
    out: PathBuf,
    /// Time from spawn to the `agent_start` record (config load, compile, program load, map
    /// fill, attach).
    pub start_ns: f64,
}

impl Daemon {
    /// Starts the daemon and waits up to `timeout` for `agent_start`; `Ok(None)` when it did
    /// not start in time (it is killed).
    pub fn start(
        bin: &Path,
        config: &Path,
        cgroup: &Path,
        out: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Option<Self>> {
        let t = Instant::now();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .arg("--cgroup")
            .arg(cgroup)
            .env("EGRESSD_LOG", "warn")
            .stdout(File::create(out)?)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self {
            child,
            out: out.to_owned(),
            start_ns: 0.0,
        };
        while t.elapsed() < timeout {
            if std::fs::read_to_string(out)?.contains("\"agent_start\"") {
                me.start_ns = t.elapsed().as_nanos() as f64;
                return Ok(Some(me));
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("egressd exited with {status} before starting (its log is above)");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(None)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines written so far.
    pub fn lines(&self) -> usize {
        File::open(&self.out)
            .map(|f| BufReader::new(f).lines().count())
            .unwrap_or(0)
    }

    /// SIGTERM, wait (20 s at most), and return every JSON record written.
    pub fn stop(mut self) -> anyhow::Result<Vec<Value>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                bail!("egressd did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let f = File::open(&self.out)?;
        Ok(BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS`, `VmHWM` (KiB) and the sum of `memlock` of its BPF map descriptors (bytes).
pub fn memory_of(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let mut maps = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("map_type:") {
                maps += text
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    (kib("VmRSS:"), kib("VmHWM:"), maps)
}
