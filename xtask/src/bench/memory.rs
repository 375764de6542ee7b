//! Daemon resident memory and kernel map memory vs N with the real `egressd run`, and its
//! start-up time (config load + compile + program load + map fill + attach), at every N
//! (a daemon that does not start within the timeout is stopped and reported as such), for
//! this build and for the daemon of [`BASELINE`] in the same run, interleaved.
use std::{fmt::Write as _, path::Path, time::Duration};

use super::{
    daemon::{Daemon, memory_of},
    prefixes::label,
    stats::{Spread, bytes, dur},
};

/// The commit whose daemon the start-up and memory rows compare against: main before the
/// programs were loaded while the policy compiles (issue #16, item 3).
pub const BASELINE: &str = "9c4d1f7";

/// Heading of the daemon subsection (`--daemon-only` replaces it).
pub const HEADING: &str = "### Daemon start-up and memory";

/// Issue #16's targets at 1M prefixes: resident memory once started, its peak, start-up.
const TARGET_RSS: f64 = 64.0 * 1024.0 * 1024.0;
const TARGET_PEAK: f64 = 128.0 * 1024.0 * 1024.0;
const TARGET_START_NS: f64 = 1e9;

/// Which daemon ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// This tree's `target/release/egressd`.
    Current,
    /// The daemon of [`BASELINE`].
    Baseline,
}

impl Build {
    /// Name in the report.
    pub fn name(self) -> String {
        match self {
            Self::Current => "this build".into(),
            Self::Baseline => format!("{BASELINE} (before)"),
        }
    }
}

/// One daemon start.
#[derive(Clone, Debug)]
pub struct DaemonRun {
    /// N of the set.
    pub n: usize,
    /// Which daemon.
    pub build: Build,
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
    build: Build,
    egressd: &Path,
    config: &Path,
    cgroup: &Path,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<DaemonRun> {
    let mut r = DaemonRun {
        n,
        build,
        started: false,
        timeout_s: timeout.as_secs_f64(),
        start_ns: 0.0,
        rss_kib: 0,
        hwm_kib: 0,
        maps_bytes: 0,
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

/// `rounds` starts of each daemon at every N of `sets` (N, policy file), alternating
/// baseline and this build within a round (the baseline first in even rounds).
pub fn runs(
    sets: &[(usize, std::path::PathBuf)],
    current: &Path,
    baseline: Option<&Path>,
    cgroup: &Path,
    work: &Path,
    rounds: usize,
) -> anyhow::Result<Vec<DaemonRun>> {
    let timeout = Duration::from_secs(180);
    let mut all = Vec::new();
    for round in 0..rounds {
        for (n, toml) in sets {
            let mut order = vec![(Build::Current, current)];
            if let Some(b) = baseline {
                order.push((Build::Baseline, b));
            }
            if round % 2 == 0 {
                order.reverse();
            }
            for (build, bin) in order {
                let out = work.join(format!("daemon-{n}.jsonl"));
                let _ = std::fs::remove_file(&out);
                let r = daemon_run(*n, build, bin, toml, cgroup, &out, timeout)?;
                eprintln!(
                    "bench: daemon {} N = {}: {}, RSS {}, peak {}",
                    build.name(),
                    label(*n),
                    if r.started {
                        dur(r.start_ns)
                    } else {
                        "not started".into()
                    },
                    bytes(r.rss_kib as f64 * 1024.0),
                    bytes(r.hwm_kib as f64 * 1024.0)
                );
                all.push(r);
            }
        }
    }
    Ok(all)
}

/// Medians of `build`'s started runs at `n`: (start-up ns, RSS, peak, maps) as spreads, and
/// how many did not start.
fn medians(runs: &[DaemonRun], n: usize, build: Build) -> Option<([Spread; 4], usize)> {
    let mine: Vec<&DaemonRun> = runs
        .iter()
        .filter(|d| d.n == n && d.build == build)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let ok: Vec<&&DaemonRun> = mine.iter().filter(|d| d.started).collect();
    let of =
        |f: &dyn Fn(&DaemonRun) -> f64| Spread::of(&ok.iter().map(|d| f(d)).collect::<Vec<_>>());
    Some((
        [
            of(&|d| d.start_ns),
            of(&|d| d.rss_kib as f64 * 1024.0),
            of(&|d| d.hwm_kib as f64 * 1024.0),
            of(&|d| d.maps_bytes as f64),
        ],
        mine.len() - ok.len(),
    ))
}

/// The daemon subsection of the report: the table of both builds per N.
pub fn section(s: &mut String, runs: &[DaemonRun]) {
    let _ = writeln!(s, "{HEADING}\n");
    let _ = writeln!(
        s,
        "The real `egressd run` with the set as a policy file (every region allowlisted), \
         attached to an empty cgroup, for this build and for the daemon of {BASELINE} (main \
         before the programs loaded during the compile), started alternately in every round. Start-up is \
         spawn to the `agent_start` record: config parse and validation, compile, program load \
         and verification, map fill, attach. RSS is `VmRSS` 200 ms after `agent_start`, peak \
         RSS is `VmHWM`. Median (min–max) over the rounds.\n"
    );
    let _ = writeln!(
        s,
        "| N | daemon | start-up | RSS | peak RSS | kernel maps |\n| --- | --- | ---: | ---: | ---: | ---: |"
    );
    let mut ns: Vec<usize> = runs.iter().map(|d| d.n).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        for build in [Build::Current, Build::Baseline] {
            let Some(([start, rss, peak, maps], failed)) = medians(runs, n, build) else {
                continue;
            };
            if start.n == 0 {
                let _ = writeln!(
                    s,
                    "| {} | {} | not started after {:.0} s (stopped) | – | – | – |",
                    label(n),
                    build.name(),
                    runs.first().map_or(0.0, |d| d.timeout_s)
                );
                continue;
            }
            let failed = if failed > 0 {
                format!(" ({failed} did not start)")
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {}{failed} | {} | {} | {} |",
                label(n),
                build.name(),
                start.show(dur),
                rss.show(bytes),
                peak.show(bytes),
                maps.show(bytes),
            );
        }
    }
    s.push('\n');
}

/// The two daemon targets as rows of the "Targets of the issue" table (at the
/// largest N measured); empty without runs.
pub fn target_rows(runs: &[DaemonRun]) -> Vec<String> {
    let Some(top) = runs.iter().map(|d| d.n).max() else {
        return Vec::new();
    };
    let Some(([start, rss, peak, _], _)) = medians(runs, top, Build::Current) else {
        return Vec::new();
    };
    let before = medians(runs, top, Build::Baseline).filter(|(m, _)| m[0].n > 0);
    let was = |i: usize| {
        before.as_ref().map_or(String::new(), |(m, _)| match i {
            0 => format!("; {BASELINE}: {}", dur(m[0].median)),
            _ => format!(
                "; {BASELINE}: {} (peak {})",
                bytes(m[1].median),
                bytes(m[2].median)
            ),
        })
    };
    let pm = |pass: bool| if pass { "**pass**" } else { "**miss**" };
    if start.n == 0 {
        return vec![format!(
            "| daemon RSS ≤ 64 MiB (peak ≤ 128 MiB) and `egressd run` to `agent_start` < 1 s with a {}-prefix policy file | **miss** | not started |",
            label(top)
        )];
    }
    vec![
        format!(
            "| daemon RSS ≤ 64 MiB (peak ≤ 128 MiB) with a {}-prefix policy file | {} | {} (peak {}){} |",
            label(top),
            pm(rss.median <= TARGET_RSS && peak.median <= TARGET_PEAK),
            bytes(rss.median),
            bytes(peak.median),
            was(1)
        ),
        format!(
            "| `egressd run` from a {}-prefix policy file to `agent_start` in under 1 s | {} | {}{}{} |",
            label(top),
            pm(start.median < TARGET_START_NS),
            start.show(dur),
            was(0),
            if start.median < TARGET_START_NS {
                ""
            } else {
                " (where the time goes and its floors: [by phase](#daemon-start-up-by-phase))"
            }
        ),
    ]
}

/// Replaces, in the report `md`, the daemon subsection with `section` and the daemon
/// target rows with `rows` (appended to the targets table when it has none yet).
pub fn patch_report(md: &str, section: &str, rows: &[String]) -> anyhow::Result<String> {
    let start = md
        .find(HEADING)
        .ok_or_else(|| anyhow::anyhow!("docs/benchmarks.md has no daemon section"))?;
    let rest = &md[start + HEADING.len()..];
    let end = rest
        .find("\n## ")
        .or_else(|| rest.find("\n### "))
        .map_or(md.len(), |i| start + HEADING.len() + i + 1);
    let mut out = format!("{}{section}{}", &md[..start], &md[end..]);
    let is_daemon_row =
        |l: &str| l.starts_with("| daemon RSS ≤") || l.starts_with("| `egressd run` from a");
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.retain(|l| !is_daemon_row(l));
    if let Some(h) = lines.iter().position(|l| l == "## Targets of the issue") {
        let first = (h..lines.len()).find(|&i| lines[i].starts_with("| --- "));
        if let Some(mut i) = first {
            while lines.get(i + 1).is_some_and(|l| l.starts_with('|')) {
                i += 1;
            }
            for (k, row) in rows.iter().enumerate() {
                lines.insert(i + 1 + k, row.clone());
            }
        }
    }
    out = lines.join("\n");
    out.push('\n');
    Ok(out)
}
