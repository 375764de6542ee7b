//! `cargo xtask bench`: egressd side by side with nftables, ipset + iptables, plain iptables,
//! no-op programs on egressd's hooks and no filter at all, measured in one run on this
//! machine; writes `docs/benchmarks.md` and `docs/benchmarks-connect.svg`.
//!
//! Everything runs in the test bed (client namespace in a cgroup, "eu" host namespace), so
//! nothing outside is filtered. Measurements, each in its own module:
//! - [`connect`]: connect() rate and latency vs N for every contender ([`egressd`], [`nft`],
//!   [`ipset`], [`iptables`], [`noop`]: the floor of any agent on egressd's cgroup hooks, no
//!   filter), interleaved with the no-filter baseline, plus the per-call cost of egressd's
//!   hooks from BPF run-time statistics;
//! - the `bench_kernel` example (egressd's library): skb program test runs, policy load and
//!   reload, map memory, and the destination lookup alone (LPM trie vs DIR-24-8);
//! - [`nft`], [`ipset`], [`iptables`]: their load and reload times for the same sets;
//! - [`events`]: denials per second from the kernel to the daemon's JSON sink, with losses;
//! - [`spool`]: records per second through a syslog TCP sink with and without its spool as
//!   write-ahead log (the `bench_spool` example);
//! - [`memory`]: the real daemon's resident and map memory, and its start-up time, vs N.
mod connect;
mod daemon;
mod egressd;
mod events;
mod ipset;
mod iptables;
mod machine;
mod memory;
mod netns;
mod nft;
mod noop;
mod plot;
mod prefixes;
mod report;
mod spool;
mod stats;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egressd_testbed::{Cgroup, Testbed, unique};
use serde_json::Value;

pub use connect::Bed;

use crate::sh;

/// `cargo xtask bench` options.
#[derive(clap::Args)]
pub struct Args {
    /// Fast smoke run: N up to 10k, 2 repetitions, short measurements (about a minute).
    #[arg(long)]
    quick: bool,
    /// Measure only these prefix counts (comma-separated, e.g. `0,1000000`) instead of the
    /// plan's; the report then says which were left out.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    ns: Vec<usize>,
    /// Only the destination lookups alone (LPM tries, IPv4 table, IPv6 range table, side by
    /// side in one `bench_kernel` run per N): prints a table and writes
    /// `target/bench-lookup.json`; no connect, firewall, event or daemon runs, and
    /// `docs/benchmarks.md` is left as it is.
    #[arg(long)]
    lookup_only: bool,
    /// Only the event throughput (ring buffer to JSON file sink: read-only limit, the
    /// baseline commit's daemon and this build's, in one run): rewrites that section of
    /// `docs/benchmarks.md` and leaves the rest as it is.
    #[arg(long)]
    events_only: bool,
    /// Only the daemon's start-up and memory (`egressd run` on each set's policy file, this
    /// build and the daemon of the memory baseline commit alternately, 3 rounds; 1 with
    /// `--quick`): rewrites that subsection and the daemon target rows of
    /// `docs/benchmarks.md` and leaves the rest as it is. The policy files stay in
    /// `target/bench-daemon/`.
    #[arg(long)]
    daemon_only: bool,
    /// Internal: the connect worker inside namespace NETNS.
    #[arg(long, hide = true, value_name = "NETNS")]
    worker: Option<String>,
}

/// A contender of the connect() benchmark that can be switched on and off between
/// measurements without reloading its prefixes.
pub trait Filter {
    /// Name in the report.
    fn name(&self) -> &'static str;
    /// Makes it judge the worker's connections.
    fn enable(&mut self, bed: &Bed) -> anyhow::Result<()>;
    /// Stops it judging them.
    fn disable(&mut self, bed: &Bed) -> anyhow::Result<()>;
}

/// A `bench_kernel` process whose programs' BPF run-time statistics can be read: egressd's
/// and the no-op programs'.
pub trait Stats: Filter {
    /// Sends one command line and returns its JSON answer.
    fn command(&mut self, cmd: &str) -> anyhow::Result<Value>;

    /// Switches BPF run-time statistics on or off (`BPF_ENABLE_STATS`, the switch behind
    /// `kernel.bpf_stats_enabled`).
    fn stats_enabled(&mut self, on: bool) -> anyhow::Result<()> {
        self.command(if on { "stats-on" } else { "stats-off" })
            .map(drop)
    }

    /// `run_time_ns`/`run_cnt` per program, keyed by egressd's program name for the hook.
    fn stats(&mut self) -> anyhow::Result<Value> {
        self.command("stats")
    }
}

/// Programs whose BPF time per connect the issue sums: the connect hooks and the skb
/// programs (not `cgroup/sock_create`: its cost is the owner-record floor's, measured as
/// time per connect by the [`noop::OWNER_NAME`] contender).
const CONNECT_PROGRAMS: [&str; 4] = [
    "egressd_connect4",
    "egressd_connect6",
    "egressd_skb_egress",
    "egressd_skb_ingress",
];

/// One connect run of `f` to `family`'s host with BPF run-time statistics on: each of
/// [`CONNECT_PROGRAMS`]'s run time per call and calls over the run.
fn hook_costs(
    bed: &mut Bed,
    f: &mut dyn Stats,
    n: usize,
    family: Family,
    millis: u64,
) -> anyhow::Result<HookCost> {
    f.stats_enabled(true)?;
    let before = f.stats();
    let s = connect::measure(bed, f, family.host(), 0, millis);
    let after = f.stats();
    // Off again whatever failed: the statistics' clock reads would burden later runs.
    f.stats_enabled(false)?;
    let (before, s, after) = (before?, s?, after?);
    let programs = CONNECT_PROGRAMS
        .iter()
        .map(|p| {
            let d = |k: &str| {
                after[p][k]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(before[p][k].as_u64().unwrap_or(0))
            };
            let (t, c) = (d("run_time_ns"), d("run_cnt"));
            ((*p).to_owned(), t as f64 / c.max(1) as f64, c)
        })
        .collect();
    Ok(HookCost {
        n,
        family,
        programs,
        sample: s,
    })
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Quick smoke run.
    pub quick: bool,
    /// `ns` was chosen with `--ns` (a partial run).
    pub custom_ns: bool,
    /// Prefix counts.
    pub ns: Vec<usize>,
    /// Rounds of the connect benchmark (each measures every contender once per family).
    pub reps: usize,
    /// Length of one connect measurement.
    pub millis: u64,
    /// Warm-up before each.
    pub warm_ms: u64,
    /// Distinct destinations of the first-packet and lookup timings.
    pub first_runs: usize,
    /// Load/reload repetitions for the firewalls and egressd.
    pub load_reps: usize,
    /// Event floods and their length.
    pub floods: usize,
    /// Length of one flood.
    pub flood_ms: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                custom_ns: false,
                ns: vec![0, 1_000, 10_000],
                reps: 2,
                millis: 200,
                warm_ms: 50,
                first_runs: 2_000,
                load_reps: 2,
                floods: 1,
                flood_ms: 500,
            }
        } else {
            Self {
                quick,
                custom_ns: false,
                ns: vec![0, 1_000, 10_000, 100_000, 1_000_000],
                reps: 5,
                millis: 800,
                warm_ms: 100,
                first_runs: 20_000,
                load_reps: 3,
                floods: 3,
                // At 500k records/s a 3 s flood writes about 2 GB of JSON.
                flood_ms: 3_000,
            }
        }
    }
}

/// IP family of a connect measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`connect4`).
    V4,
    /// IPv6 (`connect6`).
    V6,
}

impl Family {
    /// `IPv4` / `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
    fn host(self) -> IpAddr {
        match self {
            Self::V4 => egressd_testbed::EU_V4.parse().expect("valid address"),
            Self::V6 => egressd_testbed::EU_V6.parse().expect("valid address"),
        }
    }
}

/// One connect measurement.
#[derive(Clone, Debug)]
pub struct ConnectCell {
    /// N.
    pub n: usize,
    /// Family.
    pub family: Family,
    /// Contender name.
    pub contender: String,
    /// Round.
    pub rep: usize,
    /// The measurement.
    pub sample: connect::Sample,
}

/// BPF run-time statistics of egressd's programs over one stats-enabled connect run.
#[derive(Clone, Debug)]
pub struct HookCost {
    /// N.
    pub n: usize,
    /// Family.
    pub family: Family,
    /// (program, ns per run, runs) for connect4/6 and the skb programs.
    pub programs: Vec<(String, f64, u64)>,
    /// The connect run it was taken over (stats on).
    pub sample: connect::Sample,
}

/// Load or reload times of one tool at one N.
#[derive(Clone, Debug)]
pub struct ToolLoad {
    /// N.
    pub n: usize,
    /// `nft -f`, `ipset restore`, `iptables-restore`.
    pub tool: String,
    /// `load` or `reload`.
    pub kind: &'static str,
    /// Wall times in ns, `ip netns exec` overhead subtracted.
    pub ns: Vec<f64>,
}

/// Everything measured in one run.
pub struct Results {
    /// The plan.
    pub plan: Plan,
    /// Machine description.
    pub machine: machine::Machine,
    /// Load average at the start and at the end.
    pub load: ((f64, f64, f64), (f64, f64, f64)),
    /// Start (RFC 3339-ish UTC).
    pub started: String,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Unique and disjoint real prefixes per family, the files, and where they were read
    /// ([`prefixes::DataDir::describe`]).
    pub real: ((usize, usize), (usize, usize), Vec<String>, String),
    /// (N, label, source, v4, v6) of each set.
    pub sets: Vec<(usize, String, String, usize, usize)>,
    /// connect() measurements.
    pub connect: Vec<ConnectCell>,
    /// egressd hook costs.
    pub hooks: Vec<HookCost>,
    /// The same of the no-op programs (the floor), per N and family.
    pub floor_hooks: Vec<HookCost>,
    /// The hooks the no-op programs were attached to ([`noop::Noop::hooks`]).
    pub noop_hooks: Vec<String>,
    /// `bench_kernel` measurement per N, and its memory once attached.
    pub kernel: Vec<(usize, Value, Value)>,
    /// Firewall load/reload times.
    pub tools: Vec<ToolLoad>,
    /// `ip netns exec true`, subtracted from the tool times.
    pub netns_overhead_ns: f64,
    /// Event floods.
    pub floods: Vec<events::Flood>,
    /// Real daemon starts.
    pub daemon: Vec<memory::DaemonRun>,
    /// Sink throughput with and without the write-ahead log, per round.
    pub spool: Vec<spool::Variant>,
}

/// Stops a `bench_kernel` child: `quit` on its stdin, up to 5 s to exit, then SIGKILL.
fn quit(child: &mut std::process::Child, stdin: &mut std::process::ChildStdin) {
    use std::io::Write as _;
    let _ = writeln!(stdin, "quit");
    let _ = stdin.flush();
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| sh::root().join("target"))
}

fn utc_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(ns) = args.worker {
        return connect::worker_main(&ns);
    }
    if !crate::setup::is_root() {
        bail!(
            "the benchmark creates namespaces, loads eBPF programs and firewall rules: run it as root"
        );
    }
    crate::setup::ensure()?;
    // The "before" daemon first: its build replaces target/release/egressd, which the build
    // below puts back.
    let baseline = if args.lookup_only || args.daemon_only {
        PathBuf::new()
    } else {
        baseline_daemon(&target_dir(), events::BASELINE)?
    };
    let daemon_baseline = if args.lookup_only || args.events_only {
        None
    } else {
        Some(baseline_daemon(&target_dir(), memory::BASELINE)?)
    };
    // Release builds: the daemon, the kernel-side tool, and this tool for the connect worker.
    sh::cargo(&[
        "build",
        "--release",
        "-p",
        "egressd",
        "--bins",
        "--example",
        "bench_kernel",
        "--example",
        "bench_spool",
        "-p",
        "xtask",
    ])?;
    let mut plan = Plan::new(args.quick);
    if !args.ns.is_empty() {
        plan.ns = args.ns.clone();
        plan.custom_ns = true;
    }
    let t = Instant::now();
    if args.lookup_only {
        return lookups(&plan);
    }
    if args.events_only {
        return events_only(&plan, &baseline, t);
    }
    if args.daemon_only {
        return daemon_only(&plan, daemon_baseline.as_deref(), t);
    }
    let results = measure(plan, &baseline, daemon_baseline.as_deref(), t)?;
    let docs = sh::root().join("docs");
    std::fs::create_dir_all(&docs)?;
    let svg = docs.join("benchmarks-connect.svg");
    plot::connect(&results, &svg)?;
    let md = report::markdown(&results);
    std::fs::write(docs.join("benchmarks.md"), md)?;
    eprintln!(
        "bench: wrote docs/benchmarks.md and docs/benchmarks-connect.svg in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The daemon of `commit`, built once into `target/bench-baseline/` from a temporary
/// worktree, in a target directory of its own (`target/bench-baseline/target-COMMIT`):
/// cargo names a workspace crate's artifacts by its path relative to the workspace, so a
/// worktree sharing this target directory overwrites this build's `egressd-common` with
/// the old one, which the next build here then takes as fresh.
fn baseline_daemon(target: &Path, commit: &str) -> anyhow::Result<PathBuf> {
    let bin = target.join(format!("bench-baseline/egressd-{commit}"));
    if bin.exists() {
        return Ok(bin);
    }
    let own = target.join(format!("bench-baseline/target-{commit}"));
    std::fs::create_dir_all(&own)?;
    let tree = std::env::temp_dir().join(unique("egressd-baseline-"));
    eprintln!("bench: building egressd {commit} in {}", tree.display());
    let root = sh::root();
    sh::run(
        std::process::Command::new("git")
            .current_dir(&root)
            .args(["worktree", "add", "--detach"])
            .arg(&tree)
            .arg(commit),
    )?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = sh::run(
        std::process::Command::new(cargo)
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", &own)
            .env("PATH", sh::path())
            .args(["build", "--release", "-p", "egressd", "--bin", "egressd"]),
    )
    .and_then(|()| {
        std::fs::copy(own.join("release/egressd"), &bin)?;
        Ok(())
    });
    let _ = std::process::Command::new("git")
        .current_dir(&root)
        .args(["worktree", "remove", "--force"])
        .arg(&tree)
        .status();
    built.map(|()| bin)
}

/// The event floods: per round, each [`events::Reader`] once, in turn.
fn floods(
    plan: &Plan,
    bed: &mut Bed,
    work: &Path,
    egressd_bin: &Path,
    baseline: &Path,
) -> anyhow::Result<Vec<events::Flood>> {
    let out = work.join("events.jsonl");
    let config = events::policy(work, &out)?;
    let mut all = Vec::new();
    for _ in 0..plan.floods {
        for reader in events::Reader::ALL {
            let bin = match reader {
                events::Reader::Baseline => baseline,
                _ => egressd_bin,
            };
            let f = events::flood(bed, bin, reader, &config, &out, plan.flood_ms)?;
            eprintln!(
                "bench: {}: {:.0} attempts/s, {:.0} records/s, ring buffer full {}, summarized {}, dropped by the sink {}, unaccounted {}",
                reader.name(),
                f.attempt_rate,
                f.sink_rate,
                f.ringbuf_full,
                f.summarized,
                f.sink_dropped,
                f.unaccounted
            );
            all.push(f);
        }
    }
    Ok(all)
}

/// `--events-only`: the test bed and the floods, then the event section of
/// `docs/benchmarks.md` replaced.
fn events_only(plan: &Plan, baseline: &Path, t0: Instant) -> anyhow::Result<()> {
    let target = target_dir();
    let load_start = machine::loadavg();
    let started = utc_now();
    let work = TempDir(std::env::temp_dir().join(unique("egressd-bench-")));
    std::fs::create_dir_all(&work.0)?;
    let tb = Testbed::new().context("creating the test bed")?;
    let plain = Cgroup::create(&unique("egressd-bench-plain-"))?;
    let worker = connect::Worker::spawn(&target.join("release/xtask"), tb.client.name())?;
    worker.move_to(plain.path())?;
    let mut bed = Bed {
        ns: tb.client.name().to_owned(),
        filtered: tb.cgroup.path().to_owned(),
        plain: plain.path().to_owned(),
        worker,
    };
    let floods = floods(
        plan,
        &mut bed,
        &work.0,
        &target.join("release/egressd"),
        baseline,
    )?;
    let load_end = machine::loadavg();
    let mut section = String::new();
    report::events_table(&mut section, &floods, plan);
    let _ = std::fmt::Write::write_fmt(
        &mut section,
        format_args!(
            "This section was measured on its own (`cargo xtask bench --events-only`{}), on {started}, load average {:.1} at the start and {:.1} at the end (2 cores shared with other work), in {:.0} s.\n\n",
            if plan.quick { " --quick" } else { "" },
            load_start.0,
            load_end.0,
            t0.elapsed().as_secs_f64()
        ),
    );
    print!("{section}");
    let md_path = sh::root().join("docs/benchmarks.md");
    let md = std::fs::read_to_string(&md_path)?;
    let start = md
        .find(report::EVENTS_HEADING)
        .context("docs/benchmarks.md has no event throughput section")?;
    let end = md[start + 3..]
        .find("\n## ")
        .map_or(md.len(), |i| start + 3 + i + 1);
    std::fs::write(&md_path, format!("{}{section}{}", &md[..start], &md[end..]))?;
    eprintln!("bench: rewrote the event throughput section of docs/benchmarks.md");
    Ok(())
}

/// `--daemon-only`: the policy file of each N of `plan` (kept in `target/bench-daemon/`), the
/// daemon of this build and of [`memory::BASELINE`] started alternately on each, then the
/// daemon subsection and target rows of `docs/benchmarks.md` replaced.
fn daemon_only(plan: &Plan, baseline: Option<&Path>, t0: Instant) -> anyhow::Result<()> {
    let target = target_dir();
    let files = target.join("bench-daemon");
    std::fs::create_dir_all(&files)?;
    let data = prefixes::DataDir::find();
    let real = prefixes::Real::load(&data.path)?;
    let mut sets = Vec::new();
    for &n in &plan.ns {
        let set = real.set(n);
        let toml = files.join(format!("policy-{}.toml", set.label));
        std::fs::write(&toml, set.toml())?;
        sets.push((n, toml));
    }
    let load_start = machine::loadavg();
    let started = utc_now();
    let work = TempDir(std::env::temp_dir().join(unique("egressd-bench-")));
    std::fs::create_dir_all(&work.0)?;
    let idle = Cgroup::create(&unique("egressd-bench-idle-"))?;
    let rounds = if plan.quick { 1 } else { 3 };
    let runs = memory::runs(
        &sets,
        &target.join("release/egressd"),
        baseline,
        idle.path(),
        &work.0,
        rounds,
    )?;
    let load_end = machine::loadavg();
    let mut section = String::new();
    memory::section(&mut section, &runs);
    let _ = std::fmt::Write::write_fmt(
        &mut section,
        format_args!(
            "This subsection was measured on its own (`cargo xtask bench --daemon-only{}`, {} rounds, sets from {}), on {started}, load average {:.1} at the start and {:.1} at the end (2 cores shared with other work), in {:.0} s.\n\n",
            if plan.custom_ns {
                format!(
                    " --ns {}",
                    plan.ns
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            } else {
                String::new()
            },
            rounds,
            data.describe(),
            load_start.0,
            load_end.0,
            t0.elapsed().as_secs_f64()
        ),
    );
    let rows = memory::target_rows(&runs);
    print!("{section}");
    for row in &rows {
        println!("{row}");
    }
    let md_path = sh::root().join("docs/benchmarks.md");
    let md = std::fs::read_to_string(&md_path)?;
    std::fs::write(&md_path, memory::patch_report(&md, &section, &rows)?)?;
    eprintln!("bench: rewrote the daemon start-up and memory section of docs/benchmarks.md");
    Ok(())
}

/// `--lookup-only`: `bench_kernel --proto` (without attaching) per N of `plan`, and the net
/// per-lookup stream figures of each structure.
fn lookups(plan: &Plan) -> anyhow::Result<()> {
    let target = target_dir();
    let kernel_bin = target.join("release/examples/bench_kernel");
    let work = TempDir(std::env::temp_dir().join(unique("egressd-bench-")));
    std::fs::create_dir_all(&work.0)?;
    let real = prefixes::Real::load(&prefixes::DataDir::find().path)?;
    let load_start = machine::loadavg();
    let mut all = Vec::new();
    println!(
        "| N | IPv4 / IPv6 prefixes | egressd's lookups v4 / v6 | stream: table v4 / trie v4 / range table v6 / trie v6 | range table: ranges, memory, compile + copy |\n| --- | ---: | --- | ---: | ---: |"
    );
    for &n in &plan.ns {
        let set = real.set(n);
        let (v4, v6) = set.total();
        let file = work.0.join(format!("set-{n}.txt"));
        set.write_set_file(&file)?;
        let out = std::process::Command::new(&kernel_bin)
            .arg("--set")
            .arg(&file)
            .args(["--reps", "1", "--first-runs", "2000", "--proto"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", kernel_bin.display()))?;
        if !out.status.success() {
            bail!("bench_kernel failed for N = {n}: {}", out.status);
        }
        let k: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let st = &k["proto"]["stream"];
        let med = |v: &serde_json::Value| {
            let mut x: Vec<f64> = v
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            x.sort_by(f64::total_cmp);
            x.get(x.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let batch = st["batch"].as_f64().unwrap_or(1.0).max(1.0);
        let net = |w: &str, fam: &str| (med(&st[w]) - med(&st[&format!("empty_{fam}")])) / batch;
        let r6 = &k["proto"]["range6"];
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {v4} / {v6} | {} / {} | {:.0} ns / {:.0} ns / {:.0} ns / {:.0} ns | {}, {:.1} MiB, {:.1} ms + {:.1} ms |",
            set.label,
            k["ipv4_lookup"].as_str().unwrap_or("?"),
            k["ipv6_lookup"].as_str().unwrap_or("?"),
            net("dir24", "v4"),
            net("lpm4", "v4"),
            net("range6", "v6"),
            net("lpm6", "v6"),
            num(&r6["ranges"]),
            num(&r6["bytes"]) / f64::from(1 << 20),
            num(&r6["compile_ns"]) / 1e6,
            num(&r6["load_ns"]) / 1e6,
        );
        all.push(serde_json::json!({ "n": n, "kernel": k }));
    }
    let load_end = machine::loadavg();
    println!("load average at start / end: {load_start:?} / {load_end:?}");
    std::fs::write(
        target.join("bench-lookup.json"),
        serde_json::to_string(&all)?,
    )?;
    Ok(())
}

/// Deletes a directory tree on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn measure(
    plan: Plan,
    baseline: &Path,
    daemon_baseline: Option<&Path>,
    t0: Instant,
) -> anyhow::Result<Results> {
    let target = target_dir();
    let kernel_bin = target.join("release/examples/bench_kernel");
    let egressd_bin = target.join("release/egressd");
    let machine = machine::Machine::describe();
    let load_start = machine::loadavg();
    let started = utc_now();
    let work = TempDir(std::env::temp_dir().join(unique("egressd-bench-")));
    std::fs::create_dir_all(&work.0)?;

    let data = prefixes::DataDir::find();
    let real = prefixes::Real::load(&data.path)?;
    eprintln!(
        "bench: {} unique real prefixes, {} disjoint (IPv4 {}, IPv6 {})",
        real.unique.0 + real.unique.1,
        real.leaves().0 + real.leaves().1,
        real.leaves().0,
        real.leaves().1
    );

    let tb = Testbed::new().context("creating the test bed")?;
    let plain = Cgroup::create(&unique("egressd-bench-plain-"))?;
    let idle = Cgroup::create(&unique("egressd-bench-idle-"))?;
    let _server = connect::Server::start(&tb.eu)?;
    let worker = connect::Worker::spawn(&target.join("release/xtask"), tb.client.name())?;
    worker.move_to(plain.path())?;
    let mut bed = Bed {
        ns: tb.client.name().to_owned(),
        filtered: tb.cgroup.path().to_owned(),
        plain: plain.path().to_owned(),
        worker,
    };
    let mut noop = noop::Noop::start(&kernel_bin, false)?;
    let mut owner = noop::Noop::start(&kernel_bin, true)?;
    let overhead = netns::overhead(&bed.ns);
    let mut r = Results {
        plan: plan.clone(),
        machine,
        load: (load_start, load_start),
        started,
        elapsed: Duration::ZERO,
        real: (
            real.unique,
            real.leaves(),
            real.files.clone(),
            data.describe(),
        ),
        sets: Vec::new(),
        connect: Vec::new(),
        hooks: Vec::new(),
        floor_hooks: Vec::new(),
        noop_hooks: noop.hooks.clone(),
        kernel: Vec::new(),
        tools: Vec::new(),
        netns_overhead_ns: overhead,
        floods: Vec::new(),
        daemon: Vec::new(),
        spool: Vec::new(),
    };
    let mut daemon_sets = Vec::new();
    for &n in &plan.ns {
        let set = real.set(n);
        let (v4, v6) = set.total();
        r.sets
            .push((n, set.label.clone(), set.source.clone(), v4, v6));
        let dir = work.0.join(&set.label);
        std::fs::create_dir_all(&dir)?;
        let set_file = dir.join("set.txt");
        set.write_set_file(&set_file)?;
        let toml = dir.join("policy.toml");
        std::fs::write(&toml, set.toml())?;
        daemon_sets.push((n, toml));
        eprintln!(
            "bench: N = {} ({v4} IPv4 + {v6} IPv6 prefixes), {:.0} s in",
            set.label,
            t0.elapsed().as_secs_f64()
        );
        per_n(
            &plan,
            &mut r,
            &mut bed,
            &mut noop,
            &mut owner,
            &set,
            &dir,
            &set_file,
            &kernel_bin,
            overhead,
        )?;
    }

    eprintln!(
        "bench: event throughput, {:.0} s in",
        t0.elapsed().as_secs_f64()
    );
    r.floods = floods(&plan, &mut bed, &work.0, &egressd_bin, baseline)?;

    eprintln!(
        "bench: sink write-ahead log, {:.0} s in",
        t0.elapsed().as_secs_f64()
    );
    let rounds = if plan.floods > 1 { 3 } else { 1 };
    r.spool = spool::measure(
        &target.join("release/examples/bench_spool"),
        &target.join("bench-spool"),
        rounds,
    )?;

    eprintln!(
        "bench: daemon memory, {:.0} s in",
        t0.elapsed().as_secs_f64()
    );
    let rounds = if plan.quick { 1 } else { 3 };
    r.daemon = memory::runs(
        &daemon_sets,
        &egressd_bin,
        daemon_baseline,
        idle.path(),
        &work.0,
        rounds,
    )?;
    r.load.1 = machine::loadavg();
    r.elapsed = t0.elapsed();
    if let Ok(dump) = serde_json::to_string(&report::dump(&r)) {
        let _ = std::fs::write(target.join("bench-results.json"), dump);
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn per_n(
    plan: &Plan,
    r: &mut Results,
    bed: &mut Bed,
    noop: &mut noop::Noop,
    owner: &mut noop::Noop,
    set: &prefixes::PrefixSet,
    dir: &Path,
    set_file: &Path,
    kernel_bin: &Path,
    overhead: f64,
) -> anyhow::Result<()> {
    let n = set.n;
    let filtered = bed.filtered.clone();
    let mut eg = egressd::Egressd::start(
        &egressd::Options {
            bin: kernel_bin,
            set: set_file,
            cgroup: &filtered,
            reps: plan.load_reps,
            first_runs: plan.first_runs,
            proto: true,
        },
        Duration::from_secs(600),
    )?;
    r.kernel.push((n, eg.measured.clone(), eg.attached.clone()));
    let net = |t: f64| (t - overhead).max(0.0);
    let mut nft = nft::Nft::prepare(&bed.ns, dir, set)?;
    let mut nft_load = vec![net(nft.load()?)];
    let mut ips = ipset::Ipset::prepare(&bed.ns, dir, set)?;
    let mut ips_load = vec![net(ips.load()?)];
    let mut ipt = if n <= iptables::MAX_N {
        let mut i = iptables::Iptables::prepare(&bed.ns, dir, set)?;
        let t = i.load()?;
        Some((i, vec![(t - 2.0 * overhead).max(0.0)]))
    } else {
        None
    };

    let mut none = connect::NoFilter;
    for rep in 0..plan.reps {
        for family in [Family::V4, Family::V6] {
            let mut order: Vec<&mut dyn Filter> = vec![
                &mut none,
                &mut *noop,
                &mut *owner,
                &mut eg,
                &mut nft,
                &mut ips,
            ];
            if let Some((i, _)) = ipt.as_mut() {
                order.push(i);
            }
            let k = order.len();
            order.rotate_left((rep * 2 + usize::from(family == Family::V6)) % k);
            for f in order {
                let s = connect::measure(bed, f, family.host(), plan.warm_ms, plan.millis)?;
                r.connect.push(ConnectCell {
                    n,
                    family,
                    contender: f.name().to_owned(),
                    rep,
                    sample: s,
                });
            }
        }
    }
    // Hook costs: one extra run per family with BPF statistics on, of egressd and of the
    // no-op programs (its floor, measured the same way).
    for family in [Family::V4, Family::V6] {
        r.hooks
            .push(hook_costs(bed, &mut eg, n, family, plan.millis)?);
        r.floor_hooks
            .push(hook_costs(bed, noop, n, family, plan.millis)?);
    }
    drop(eg);

    // Firewall load and reload times.
    let reps = if n >= 1_000_000 {
        plan.load_reps.min(2)
    } else {
        plan.load_reps
    };
    let mut nft_reload = Vec::new();
    let mut ips_reload = Vec::new();
    for i in 0..reps {
        if i > 0 {
            nft_load.push(net(nft.load()?));
            ips_load.push(net(ips.load()?));
            if let Some((t, v)) = ipt.as_mut() {
                let x = t.load()?;
                v.push((x - 2.0 * overhead).max(0.0));
            }
        }
        nft_reload.push(net(nft.reload()?));
        ips_reload.push(net(ips.reload()?));
    }
    let mut push = |tool: &str, kind, ns| {
        r.tools.push(ToolLoad {
            n,
            tool: tool.to_owned(),
            kind,
            ns,
        })
    };
    push("nft -f", "load", nft_load);
    push("nft -f", "reload", nft_reload);
    push("ipset restore", "load", ips_load);
    push("ipset restore", "reload", ips_reload);
    if let Some((_, v)) = ipt {
        push("iptables-restore", "load", v);
    }
    Ok(())
}
