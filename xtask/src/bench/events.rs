//! Event throughput: records per second from the kernel's ring buffer to the JSON file
//! sink of the real daemon (`egressd run`, one `[[sinks]] type = "file"`), with the loss
//! counters of `agent_stop`, for three readers of the same flood in one run:
//! - [`Reader::RingOnly`]: this build with `EGRESSD_BENCH_RING_ONLY=1`, which reads every
//!   ring-buffer record and discards it (no enrichment, no sinks): the limit;
//! - [`Reader::Baseline`]: the daemon built from [`BASELINE`] (main before the hand-written
//!   JSON record and the batched sink queue);
//! - [`Reader::Current`]: this build.
//!
//! The worker, in the filtered cgroup, sends one-byte UDP datagrams on one unconnected socket
//! as fast as it can to 254 addresses of the test bed's denied "us" region: every datagram is
//! one denied `cgroup/sendmsg4` event. The policy sets `summary_after = 0` (no per-key record
//! budget), so the kernel aggregates into `connection_summary` only when the ring buffer is
//! full: every attempt the reader keeps up with is a `connection` record. Records plus
//! summaries must account for every counted denial.
use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{connect::Bed, daemon::Daemon};

/// The commit the "before" figures are built from (main of 2026-12-01 18:00 UTC, before the
/// hand-written JSON record and the batched sink queue).
pub const BASELINE: &str = "30469fd";

/// Who reads the ring buffer in a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// This build, reading and discarding (`EGRESSD_BENCH_RING_ONLY=1`).
    RingOnly,
    /// The daemon of [`BASELINE`].
    Baseline,
    /// This build.
    Current,
}

impl Reader {
    /// All, in the order they run in a round.
    pub const ALL: [Self; 3] = [Self::RingOnly, Self::Baseline, Self::Current];

    /// Name in the report.
    pub fn name(self) -> String {
        match self {
            Self::RingOnly => "ring buffer read only (the limit)".into(),
            Self::Baseline => format!("egressd {BASELINE} (before)"),
            Self::Current => "egressd (this build)".into(),
        }
    }

    /// Key in the JSON dump.
    pub fn key(self) -> &'static str {
        match self {
            Self::RingOnly => "ring_only",
            Self::Baseline => "baseline",
            Self::Current => "current",
        }
    }
}

/// One flood.
#[derive(Clone, Debug)]
pub struct Flood {
    /// Who read the ring buffer.
    pub reader: Reader,
    /// Denied attempts made by the worker.
    pub attempts: u64,
    /// Attempts per second (the kernel side).
    pub attempt_rate: f64,
    /// `connection` records written by the sink (read from the ring buffer for
    /// [`Reader::RingOnly`]: `connection_events` of `agent_stop`).
    pub delivered: u64,
    /// Records per second from the first attempt until the sink stopped writing (until the
    /// flood ended for [`Reader::RingOnly`]).
    pub sink_rate: f64,
    /// `lost.ringbuf_full` of `agent_stop`.
    pub ringbuf_full: u64,
    /// `lost.sink_write_failed` of `agent_stop` (records a sink dropped: queue full, ...).
    pub sink_dropped: u64,
    /// Sum of the `suppressed` fields of the records, plus `lost.suppressed` if present.
    pub suppressed: u64,
    /// Deny counter of the connect and sendmsg hooks in `agent_stop` (exact whatever was
    /// lost).
    pub counted: u64,
    /// `connection_summary` records written (attempts the kernel aggregated).
    pub summaries: u64,
    /// Attempts those summaries count.
    pub summarized: u64,
    /// `counted` minus what the records account for (each `connection` record `1 +
    /// suppressed`, each summary its `count`) and the records the sink reported dropping: 0
    /// when nothing went unreported.
    pub unaccounted: i64,
    /// Before the flood, one datagram on an idle daemon: from the send until its record is
    /// in the file (polled every millisecond); `None` for [`Reader::RingOnly`].
    pub latency: Option<Duration>,
    /// Bytes the sink wrote from the start of the flood until it stopped writing.
    pub bytes: u64,
    /// The daemon's CPU from the start of the flood until the sink stopped writing.
    pub cpu: Cpu,
}

/// CPU time of a daemon's threads over an interval, in seconds, by kind of thread, from
/// `/proc/PID/task/TID/stat` (`utime`, `stime`: clock ticks of `sysconf(_SC_CLK_TCK)`,
/// 10 ms at 100 Hz, so a flood's few seconds are measured to about 1 %).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Threads named `sink-*` (one per sink): user space.
    pub sink_user: f64,
    /// The same threads in the kernel: the sink's `write(2)` into the page cache, mostly.
    pub sink_system: f64,
    /// `egressd-enrich` (the `/proc` reads and the event's assembly), user and kernel.
    pub enrich: f64,
    /// Every other thread: the ring-buffer reader (the main thread: reading, rendering,
    /// SHA-256 of the chain) and tokio's helpers, user and kernel.
    pub reader: f64,
}

/// The CPU each thread of a daemon has run until one moment: thread id -> (name, user
/// seconds, system seconds).
pub struct Threads(std::collections::HashMap<String, (String, f64, f64)>);

impl Threads {
    /// The threads of the daemon `pid` now.
    pub fn of(pid: u32) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut m = std::collections::HashMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Self(m);
        };
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ...`: comm may hold spaces, so split after its last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // Fields 14 and 15 of proc_pid_stat(5); `f[0]` is field 3 (state).
            let tick = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / hz
            };
            m.insert(
                t.file_name().to_string_lossy().into_owned(),
                (stat[open + 1..close].to_string(), tick(14), tick(15)),
            );
        }
        Self(m)
    }
}

impl Cpu {
    /// What each thread alive at `after` ran since `before` (a thread that ended between
    /// them is not counted), summed by kind.
    pub fn between(before: &Threads, after: &Threads) -> Self {
        let mut c = Self::default();
        for (tid, (comm, user, system)) in &after.0 {
            let (u0, s0) = before.0.get(tid).map_or((0.0, 0.0), |t| (t.1, t.2));
            let (user, system) = (user - u0, system - s0);
            if comm.starts_with("sink-") {
                c.sink_user += user;
                c.sink_system += system;
            } else if comm == "egressd-enrich" {
                c.enrich += user + system;
            } else {
                c.reader += user + system;
            }
        }
        c
    }

    /// All threads.
    pub fn total(&self) -> f64 {
        self.sink_user + self.sink_system + self.enrich + self.reader
    }
}

/// The policy for the flood: the test bed's (event suppression off), no record budget, and
/// native JSON lines to the file `out`.
pub fn policy(dir: &Path, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let base = egressd_testbed::POLICY.replace("{mode}", "enforce");
    let path = dir.join("events.toml");
    let with = format!(
        "summary_after = 0\n{base}\n[[sinks]]\ntype = \"file\"\npath = {:?}\n",
        out.display().to_string()
    );
    std::fs::write(&path, with)?;
    Ok(path)
}

/// Runs one flood of `millis` against a fresh daemon `egressd` whose config (from
/// [`policy`]) writes its records to `out`.
pub fn flood(
    bed: &mut Bed,
    egressd: &Path,
    reader: Reader,
    config: &Path,
    out: &Path,
    millis: u64,
) -> anyhow::Result<Flood> {
    let envs: &[(&str, &str)] = match reader {
        Reader::RingOnly => &[("EGRESSD_BENCH_RING_ONLY", "1")],
        _ => &[],
    };
    let _ = std::fs::remove_file(out);
    let stdout = out.with_extension("stdout");
    // The records go to the file sink at `out`; `Daemon` waits for `agent_start` there.
    let daemon = Daemon::start_with(
        egressd,
        config,
        &bed.filtered,
        (&stdout, out),
        Duration::from_secs(30),
        envs,
    )?
    .context("egressd did not start within 30 s")?;
    bed.worker.move_to(&bed.filtered)?;
    let target: IpAddr = egressd_testbed::US_V4.parse()?;
    let latency = match reader {
        Reader::RingOnly => None,
        _ => Some(first_record(bed, target, out)?),
    };
    let (cpu0, bytes0) = (Threads::of(daemon.pid()), daemon.bytes());
    let t0 = Instant::now();
    let s = bed.worker.udp_flood(target, egressd_testbed::PORT, millis);
    bed.worker.move_to(&bed.plain)?;
    let s = s?;
    // Wait for the sink to catch up: until the file stops growing for 300 ms (30 s at most).
    let (mut last, mut last_change) = (daemon.bytes(), Instant::now());
    let mut end = t0.elapsed();
    while last_change.elapsed() < Duration::from_millis(300)
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
        let n = daemon.bytes();
        if n != last {
            last = n;
            last_change = Instant::now();
            end = t0.elapsed();
        }
    }
    // Up to 300 ms after the last write: idle time, a few ticks at most.
    let cpu = Cpu::between(&cpu0, &Threads::of(daemon.pid()));
    let bytes = last.saturating_sub(bytes0);
    daemon.stop_only()?;
    let mut f = Flood {
        reader,
        attempts: s.attempts,
        attempt_rate: s.rate(),
        delivered: 0,
        sink_rate: 0.0,
        ringbuf_full: 0,
        sink_dropped: 0,
        suppressed: 0,
        counted: 0,
        summaries: 0,
        summarized: 0,
        unaccounted: 0,
        latency,
        bytes,
        cpu,
    };
    let mut read = 0;
    // Streamed: a flood writes gigabytes. Only the lines that need a field are parsed.
    let file = std::fs::File::open(out)?;
    for line in std::io::BufRead::lines(std::io::BufReader::with_capacity(1 << 20, file)) {
        let line = line?;
        if line.contains("\"agent_stop\"") {
            let r: Value = serde_json::from_str(&line)?;
            f.ringbuf_full = r["lost"]["ringbuf_full"].as_u64().unwrap_or(0);
            f.sink_dropped = r["lost"]["sink_write_failed"].as_u64().unwrap_or(0);
            f.suppressed += r["lost"]["suppressed"].as_u64().unwrap_or(0);
            read = r["connection_events"].as_u64().unwrap_or(0);
            f.counted = r["counters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| {
                    c["verdict"] == "deny"
                        && c["hook"].as_str().is_some_and(|h| {
                            h.starts_with("cgroup/connect") || h.starts_with("cgroup/sendmsg")
                        })
                })
                .filter_map(|c| c["count"].as_u64())
                .sum();
            continue;
        }
        if line.contains("\"type\":\"connection_summary\"") {
            let r: Value = serde_json::from_str(&line)?;
            f.summaries += 1;
            f.summarized += r["count"].as_u64().unwrap_or(0);
        } else if line.contains("\"type\":\"connection\"") {
            f.delivered += 1;
            if let Some((_, rest)) = line.split_once("\"suppressed\":") {
                let digits = rest.split(|c: char| !c.is_ascii_digit()).next();
                f.suppressed += digits.and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(&stdout);
    if reader == Reader::RingOnly {
        // Nothing is written: records read from the ring buffer while the flood ran.
        f.delivered = read;
        end = Duration::from_nanos(s.elapsed_ns as u64);
    }
    f.sink_rate = f.delivered as f64 / end.as_secs_f64().max(1e-3);
    // Suppression is off (see `policy`): `suppressed` is 0 unless the daemon lacks the setting.
    // Records a sink dropped are losses reported in `lost.*`, not unaccounted ones.
    f.unaccounted =
        f.counted as i64 - (f.delivered + f.suppressed + f.summarized + f.sink_dropped) as i64;
    Ok(f)
}

/// Sends one datagram and times it until its `connection` record is in `out` (5 s at most).
fn first_record(bed: &mut Bed, target: IpAddr, out: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    bed.worker.udp_once(target, egressd_testbed::PORT)?;
    while t.elapsed() < Duration::from_secs(5) {
        if std::fs::read_to_string(out)
            .unwrap_or_default()
            .contains("\"type\":\"connection\"")
        {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::bail!("the record of one denied datagram did not reach the file within 5 s")
}

/// `Value` summary of floods for the JSON dump.
pub fn to_json(f: &Flood) -> Value {
    serde_json::json!({
        "reader": f.reader.key(), "sink_dropped": f.sink_dropped,
        "latency_ms": f.latency.map(|l| l.as_secs_f64() * 1e3),
        "attempts": f.attempts, "attempt_rate": f.attempt_rate, "delivered": f.delivered,
        "sink_rate": f.sink_rate, "ringbuf_full": f.ringbuf_full, "suppressed": f.suppressed,
        "counted": f.counted, "summaries": f.summaries, "summarized": f.summarized,
        "unaccounted": f.unaccounted, "bytes": f.bytes,
        "cpu_s": {"reader": f.cpu.reader, "enrich": f.cpu.enrich,
                  "sink_user": f.cpu.sink_user, "sink_system": f.cpu.sink_system},
    })
}
