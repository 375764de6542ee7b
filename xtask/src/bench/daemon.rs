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
        Self::start_with(bin, config, cgroup, (out, out), timeout, &[])
    }

    /// [`Self::start`] with extra environment variables, stdout to `files.0` and the records
    /// read from `files.1` (the file sink of the config; the same file for stdout).
    pub fn start_with(
        bin: &Path,
        config: &Path,
        cgroup: &Path,
        files: (&Path, &Path),
        timeout: Duration,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Option<Self>> {
        let (stdout, out) = files;
        let t = Instant::now();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .arg("--cgroup")
            .arg(cgroup)
            .env("EGRESSD_LOG", "warn")
            // Last good policies (up to 25 MB each at 1M prefixes) and locks in the build
            // directory, not in the host's /var/lib/egressd and /run/egressd.
            .env("EGRESSD_STATE_DIR", super::target_dir().join("bench-state"))
            .env("EGRESSD_RUN_DIR", super::target_dir().join("bench-run"))
            .envs(envs.iter().copied())
            .stdout(File::create(stdout)?)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self {
            child,
            out: out.to_owned(),
            start_ns: 0.0,
        };
        while t.elapsed() < timeout {
            // The file sink creates its file when it opens.
            if std::fs::read_to_string(out)
                .unwrap_or_default()
                .contains("\"agent_start\"")
            {
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

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.out).map_or(0, |m| m.len())
    }

    /// SIGTERM, wait (20 s at most), and return every JSON record written.
    pub fn stop(self) -> anyhow::Result<Vec<Value>> {
        let out = self.out.clone();
        self.stop_only()?;
        let f = File::open(&out)?;
        Ok(BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect())
    }

    /// SIGTERM and wait (20 s at most); the records stay in the file.
    pub fn stop_only(mut self) -> anyhow::Result<()> {
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
        Ok(())
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
