//! Kernel-side half of `cargo xtask bench` (see `docs/benchmarks.md`): everything that needs
//! the egressd library and its eBPF programs.
//!
//! `bench_kernel --set FILE [--cgroup DIR] [--reps R] [--first-runs K] [--proto]`
//! `bench_kernel --noop DIR [--owner]`
//!
//! `FILE` holds one `REGION CIDR` per line; every region is allowlisted (the benchmark
//! policy allows exactly the prefixes of the set). The tool
//! 1. times policy load (compile + `Enforcer::open` + `install`) `R` times and reload
//!    (compile + install into the idle set) `R` times, and reads this process's RSS and the
//!    kernel memory of egressd's maps;
//! 2. times the `cgroup_skb/egress` program with `BPF_PROG_TEST_RUN`: the path of a packet of
//!    an already-judged socket (one run of a large `repeat`, the kernel's average) and the
//!    first-packet path (one run per distinct destination, `repeat = 1`), each beside the
//!    same measurement of a trivial program so the test-run overhead can be subtracted;
//! 3. with `--proto`, times one destination lookup alone in a bare LPM trie, in egressd's
//!    DIR-24-8 table for IPv4 and in its range table for IPv6 (module `lookup`);
//!
//! and prints all of it as one JSON line. With `--cgroup` it then attaches egressd to `DIR`,
//! prints `{"ready":true}`, and serves commands on stdin, one per line: `stats-on` /
//! `stats-off` (BPF run-time statistics, the same switch as `kernel.bpf_stats_enabled`),
//! `stats` (one JSON line of `run_time_ns`/`run_cnt` per program), `quit`.
//!
//! With `--noop DIR` it does none of that: it attaches a program that allows at once to each
//! of egressd's cgroup hooks on `DIR` (module `noop`, the floor of the connect benchmark),
//! prints `{"ready":true,...}` and keeps them attached until `quit`. With `--owner`, the
//! `cgroup/sock_create` hook gets egressd's own program instead (it records each socket's
//! owner in socket-local storage and does nothing else): the floor of an agent that names
//! the process behind each packet.
mod lookup;
mod noop;
mod rawbpf;

use std::{
    io::{BufRead as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, bail};
use egressd::{
    config::{Config, Ipv4Lookup},
    kernel::loader::{Capacity, Enforcer},
    kernel::testrun,
    policy::{self, Policy},
};
use egressd_common::programs;
use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// The allowlisted test host of the benchmark (the test bed's "eu" host).
const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// IPv6 address of the same host.
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Samples per repeated measurement.
const SAMPLES: usize = 9;
/// Largest `repeat` tried while looking for noise under 5 %.
const MAX_REPEAT: u32 = 2_000_000;

struct Args {
    set: PathBuf,
    noop: Option<PathBuf>,
    owner: bool,
    cgroup: Option<PathBuf>,
    reps: usize,
    first_runs: usize,
    proto: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        set: PathBuf::new(),
        noop: None,
        owner: false,
        cgroup: None,
        reps: 3,
        first_runs: 20_000,
        proto: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--set" => a.set = val()?.into(),
            "--noop" => a.noop = Some(val()?.into()),
            "--owner" => a.owner = true,
            "--cgroup" => a.cgroup = Some(val()?.into()),
            "--reps" => a.reps = val()?.parse()?,
            "--first-runs" => a.first_runs = val()?.parse()?,
            "--proto" => a.proto = true,
            other => bail!("unexpected argument {other:?}"),
        }
    }
    if a.set.as_os_str().is_empty() && a.noop.is_none() {
        bail!(
            "usage: bench_kernel --set FILE [--cgroup DIR] [--reps R] [--first-runs K] [--proto]\n       bench_kernel --noop DIR [--owner]"
        );
    }
    a.reps = a.reps.max(1);
    Ok(a)
}

/// Reads a prefix set file into a config that allowlists every region in it.
///
/// The config is parsed by egressd from a skeleton naming each region with its first prefix
/// (so it has whatever defaults the config format gives), then the full prefix lists are put
/// in place: the load figures are compile + install, without TOML parsing (the daemon
/// start-up figure of the report includes that).
fn read_set(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lists: Vec<(String, Vec<IpNetwork>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (no, line) in text.lines().enumerate() {
        let Some((name, cidr)) = line.split_once(' ') else {
            continue;
        };
        let net: IpNetwork = cidr
            .parse()
            .with_context(|| format!("{}:{}: {cidr:?}", path.display(), no + 1))?;
        let i = *index.entry(name.to_owned()).or_insert_with(|| {
            lists.push((name.to_owned(), Vec::new()));
            lists.len() - 1
        });
        lists[i].1.push(net);
    }
    let names: Vec<String> = lists.iter().map(|(n, _)| format!("{n:?}")).collect();
    let mut skeleton = format!("mode = \"enforce\"\nallowlist = [{}]\n", names.join(", "));
    for (name, prefixes) in &lists {
        let first = prefixes.first().context("empty region")?;
        skeleton.push_str(&format!("[regions.{name}]\nprefixes = [\"{first}\"]\n"));
    }
    let mut cfg = egressd::config::parse(path, &skeleton).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (region, (_, prefixes)) in cfg.regions.iter_mut().zip(lists) {
        region.prefixes = prefixes;
    }
    Ok(cfg)
}

fn ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Median, percentiles and extremes of `v` (sorted in place).
fn summary(v: &mut [u64]) -> Value {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    json!({
        "n": v.len(), "median": at(0.5), "p10": at(0.1), "p90": at(0.9), "p99": at(0.99),
        "min": v.first(), "max": v.last(),
    })
}

/// Runs `prog` on `frame` with `repeat`, `SAMPLES` times: the kernel's average ns per run.
fn repeated(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> anyhow::Result<Vec<u64>> {
    (0..SAMPLES)
        .map(|_| Ok(u64::from(testrun::run(prog, frame, repeat)?.duration_ns)))
        .collect()
}

/// Timing noise of samples: interquartile range over median.
fn spread(v: &[u64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize] as f64;
    (q(0.75) - q(0.25)) / q(0.5).max(1.0)
}

/// Cache-hit (already-judged) path: `prog` and `trivial` on the same frame with a `repeat`
/// grown until the noise of both is under 5 % (or `MAX_REPEAT`). The two are sampled in
/// alternation, so that each sample of `prog` has a sample of `trivial` taken under the same
/// interference from the rest of the machine: `net` holds the per-pair differences.
fn hit_path(prog: BorrowedFd<'_>, trivial: BorrowedFd<'_>, frame: &[u8]) -> anyhow::Result<Value> {
    let mut repeat = 250_000;
    loop {
        let (mut p, mut t) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
        for _ in 0..SAMPLES {
            p.push(u64::from(testrun::run(prog, frame, repeat)?.duration_ns));
            t.push(u64::from(testrun::run(trivial, frame, repeat)?.duration_ns));
        }
        let worst = spread(&p).max(spread(&t));
        if worst < 0.05 || repeat >= MAX_REPEAT {
            let net: Vec<i64> = p
                .iter()
                .zip(&t)
                .map(|(a, b)| {
                    i64::try_from(*a).unwrap_or(i64::MAX) - i64::try_from(*b).unwrap_or(0)
                })
                .collect();
            return Ok(json!({
                "repeat": repeat, "prog": p, "trivial": t, "net": net, "spread": worst,
            }));
        }
        repeat *= 2;
    }
}

/// First-packet path: one run per frame (`repeat = 1`); every run builds a new socket in
/// the kernel, so the verdict cache never hits.
fn first_path(
    prog: BorrowedFd<'_>,
    trivial: BorrowedFd<'_>,
    frames: &[Vec<u8>],
) -> anyhow::Result<Value> {
    let mut p = Vec::with_capacity(frames.len());
    let mut t = Vec::with_capacity(frames.len());
    for f in frames {
        p.push(u64::from(testrun::run(prog, f, 1)?.duration_ns));
        t.push(u64::from(testrun::run(trivial, f, 1)?.duration_ns));
    }
    Ok(json!({ "prog": summary(&mut p), "trivial": summary(&mut t) }))
}

fn frames_v4(policy: &Policy, rng: &mut fastrand::Rng, k: usize) -> Vec<(Vec<u8>, Ipv4Addr)> {
    (0..k)
        .filter_map(|_| lookup::sample_v4(rng, &policy.v4))
        .map(|a| (testrun::udp_frame(IpAddr::V4(a), 443, 0), a))
        .collect()
}

fn frames_v6(policy: &Policy, rng: &mut fastrand::Rng, k: usize) -> Vec<Vec<u8>> {
    (0..k)
        .filter_map(|_| lookup::sample_v6(rng, &policy.v6))
        .map(|a| testrun::udp_frame(IpAddr::V6(a), 443, 0))
        .collect()
}

/// Lookup-only programs: one run per destination (cold) and a repeated run on a few
/// destinations (warm caches).
fn lookup_timings(
    prog: BorrowedFd<'_>,
    frames: &[Vec<u8>],
    warm: &[Vec<u8>],
) -> anyhow::Result<Value> {
    let mut cold = Vec::with_capacity(frames.len());
    for f in frames {
        cold.push(u64::from(testrun::run(prog, f, 1)?.duration_ns));
    }
    let mut hot = Vec::new();
    for f in warm {
        hot.push(u64::from(testrun::run(prog, f, 100_000)?.duration_ns));
    }
    Ok(json!({ "cold": summary(&mut cold), "warm": summary(&mut hot) }))
}

/// Stream timing of `prog` (see `lookup`): the kernel's average ns per run of
/// `STREAM / BATCH` runs (one pass over the destinations), `SAMPLES` times.
fn stream_timing(prog: BorrowedFd<'_>, frame: &[u8]) -> anyhow::Result<Vec<u64>> {
    let repeat = lookup::STREAM / lookup::BATCH as u32;
    // One unmeasured pass first, so every sample starts from the same state.
    testrun::run(prog, frame, repeat)?;
    repeated(prog, frame, repeat)
}

/// Stream timings of the tries and the table, with the empty loop of each family.
fn streams(
    policy: &Policy,
    trie4: &lookup::Trie,
    trie6: &lookup::Trie,
    table: &lookup::Dir24,
    range6: &lookup::Range6,
) -> anyhow::Result<Value> {
    let mut rng = fastrand::Rng::with_seed(11);
    let n = lookup::STREAM as usize;
    let a4: Vec<Vec<u8>> = (0..n)
        .filter_map(|_| lookup::sample_v4(&mut rng, &policy.v4))
        .map(|a| a.octets().to_vec())
        .collect();
    let a6: Vec<Vec<u8>> = (0..n)
        .filter_map(|_| lookup::sample_v6(&mut rng, &policy.v6))
        .map(|a| a.octets().to_vec())
        .collect();
    let frame = testrun::udp_frame(IpAddr::V4(HOST_V4), 443, 0);
    let m4 = lookup::StreamMaps::new(4, &a4)?;
    let m6 = lookup::StreamMaps::new(16, &a6)?;
    let time = |m: &lookup::StreamMaps, s: lookup::Stream<'_>| -> anyhow::Result<Vec<u64>> {
        let prog = m.program(&s)?;
        stream_timing(prog.as_fd(), &frame)
    };
    Ok(json!({
        "batch": lookup::BATCH,
        "distinct": lookup::STREAM,
        "empty_v4": time(&m4, lookup::Stream::Empty)?,
        "empty_v6": time(&m6, lookup::Stream::Empty)?,
        "lpm4": time(&m4, lookup::Stream::Trie(trie4))?,
        "lpm6": time(&m6, lookup::Stream::Trie(trie6))?,
        "dir24": time(&m4, lookup::Stream::Table(table))?,
        "range6": time(&m6, lookup::Stream::Range6(range6))?,
    }))
}

fn proto(policy: &Policy, first_runs: usize) -> anyhow::Result<Value> {
    let mut rng = fastrand::Rng::with_seed(7);
    let f4 = frames_v4(policy, &mut rng, first_runs);
    let f6 = frames_v6(policy, &mut rng, first_runs);
    let plain4: Vec<Vec<u8>> = f4.iter().map(|(f, _)| f.clone()).collect();
    let warm4: Vec<Vec<u8>> = plain4.iter().take(16).cloned().collect();
    let warm6: Vec<Vec<u8>> = f6.iter().take(16).cloned().collect();
    let trivial = lookup::trivial()?;
    let mut out = json!({
        "trivial_v4": lookup_timings(trivial.as_fd(), &plain4, &warm4)?,
        "trivial_v6": lookup_timings(trivial.as_fd(), &f6, &warm6)?,
    });
    let trie4 = lookup::Trie::new(4, &lookup::entries_v4(&policy.v4))?;
    {
        let prog = trie4.program()?;
        let mut v = lookup_timings(prog.as_fd(), &plain4, &warm4)?;
        v["fill_ns"] = json!(trie4.fill_ns);
        out["lpm4"] = v;
    }
    let trie6 = lookup::Trie::new(16, &lookup::entries_v6(&policy.v6))?;
    {
        let prog = trie6.program()?;
        let mut v = lookup_timings(prog.as_fd(), &f6, &warm6)?;
        v["fill_ns"] = json!(trie6.fill_ns);
        out["lpm6"] = v;
    }
    {
        let expect: Vec<(Ipv4Addr, u32)> = f4
            .iter()
            .take(2000)
            .map(|(_, a)| (*a, policy.region_of(IpAddr::V4(*a))))
            .chain([(HOST_V4, policy.region_of(IpAddr::V4(HOST_V4)))])
            .collect();
        let dir = lookup::Dir24::new(&policy.v4, &expect)?;
        let prog = dir.program()?;
        let mut v = lookup_timings(prog.as_fd(), &plain4, &warm4)?;
        v["compile_ns"] = json!(dir.compile_ns);
        v["load_ns"] = json!(dir.load_ns);
        v["chunks"] = json!(dir.chunks);
        v["pages"] = json!(dir.pages);
        v["bytes"] = json!(dir.bytes);
        out["dir24"] = v;
        let mut rng = fastrand::Rng::with_seed(12);
        let expect6: Vec<(Ipv6Addr, u32)> = (0..2000)
            .filter_map(|_| lookup::sample_v6(&mut rng, &policy.v6))
            .chain([HOST_V6])
            .map(|a| (a, policy.region_of(IpAddr::V6(a))))
            .collect();
        let r6 = lookup::Range6::new(&policy.v6, &expect6)?;
        out["range6"] = json!({
            "compile_ns": r6.compile_ns,
            "load_ns": r6.load_ns,
            "ranges": r6.len,
            "chunks": r6.chunks,
            "bytes": r6.bytes,
        });
        out["stream"] = streams(policy, &trie4, &trie6, &dir, &r6)?;
    }
    Ok(out)
}

fn memory() -> Value {
    let (rss, hwm) = rawbpf::own_rss_kib();
    let (maps, tries, tables) = rawbpf::own_map_memory().unwrap_or((0, 0, 0));
    json!({
        "rss_kib": rss, "hwm_kib": hwm, "maps_bytes": maps, "tries_bytes": tries,
        "tables_bytes": tables,
    })
}

/// The IPv4 table's kernel memory for this set with `ipv4_lookup = "table"` (issue #16:
/// sized to the policy), when `auto` kept IPv4 in the trie: loaded into maps of their own,
/// installed once, then the `memlock` of both sets' table maps as the kernel accounts it
/// (`Enforcer::table_memory`) beside what `Capacity::table_bytes` planned. `null` when the
/// daemon's own choice is already the table (its figures are the main ones).
fn table_forced(cfg: &Config, policy: &Policy) -> anyhow::Result<Value> {
    if Capacity::for_policy(policy).table_chunks.is_some() {
        return Ok(Value::Null);
    }
    let mut forced = cfg.clone();
    forced.ipv4_lookup = Ipv4Lookup::Table;
    let p = Arc::new(policy::compile(&forced));
    let cap = Capacity::for_policy(&p);
    let planned = cap.table_bytes();
    let mut e = Enforcer::open_with(cap)?;
    e.install(p.clone())?;
    if e.ipv4_lookup() != "table" {
        bail!(
            "ipv4_lookup = table: the set was installed in the {}",
            e.ipv4_lookup()
        );
    }
    Ok(json!({
        "kernel_bytes": e.table_memory()?,
        "planned_bytes": planned,
        "prefixes_v4": p.lpm_v4.len(),
    }))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if let Some(cgroup) = &a.noop {
        return noop::serve(cgroup, a.owner);
    }
    let cfg = read_set(&a.set)?;
    let mut out = json!({});

    // 1. Load, then reload, timings.
    let (mut compile, mut open, mut install) = (Vec::new(), Vec::new(), Vec::new());
    let mut main_enforcer = None;
    let mut policy = None;
    for _ in 0..a.reps {
        let t = Instant::now();
        let p = Arc::new(policy::compile(&cfg));
        compile.push(ns(t));
        let t = Instant::now();
        // What the daemon does: tries, plus the IPv4 table from 65,536 IPv4 prefixes.
        let mut e = Enforcer::open_with(Capacity::for_policy(&p))?;
        open.push(ns(t));
        let t = Instant::now();
        e.install(p.clone())?;
        install.push(ns(t));
        if main_enforcer.is_none() {
            out["memory_loaded"] = memory();
            main_enforcer = Some(e);
            policy = Some(p);
        }
    }
    let (Some(mut enforcer), Some(policy)) = (main_enforcer, policy) else {
        bail!("no load");
    };
    out["ipv4_lookup"] = json!(if Capacity::for_policy(&policy).table_chunks.is_some() {
        "table"
    } else {
        "trie"
    });
    out["ipv6_lookup"] = json!(if Capacity::for_policy(&policy).table6_ranges.is_some() {
        "table"
    } else {
        "trie"
    });
    out["table_forced"] = table_forced(&cfg, &policy)?;
    out["kernel_prefixes"] = json!([policy.lpm_v4.len(), policy.lpm_v6.len()]);
    out["prefixes_v4"] = json!(policy.v4.len());
    out["prefixes_v6"] = json!(policy.v6.len());
    out["regions"] = json!(policy.regions.len() - 1);
    out["load"] = json!({ "compile_ns": compile, "open_ns": open, "install_ns": install });
    let mut reload = Vec::new();
    for _ in 0..a.reps.max(2) {
        let t = Instant::now();
        let p = Arc::new(policy::compile(&cfg));
        enforcer.install(p)?;
        reload.push(ns(t));
    }
    out["reload_ns"] = json!(reload);
    out["memory_both_sets"] = memory();

    // 2. The skb program with BPF_PROG_TEST_RUN.
    let trivial = lookup::trivial()?;
    let skb = enforcer.program_fd(programs::SKB_EGRESS)?;
    let mut rng = fastrand::Rng::with_seed(42);
    let f4: Vec<Vec<u8>> = frames_v4(&policy, &mut rng, a.first_runs)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    let f6 = frames_v6(&policy, &mut rng, a.first_runs);
    let h4 = testrun::udp_frame(IpAddr::V4(HOST_V4), 8080, 0);
    let h6 = testrun::udp_frame(IpAddr::V6(HOST_V6), 8080, 0);
    if testrun::run(skb, &h4, 1)?.retval != 1 || testrun::run(skb, &h6, 1)?.retval != 1 {
        bail!("the skb program drops packets to the allowlisted test host");
    }
    out["testrun"] = json!({
        "v4": { "hit": hit_path(skb, trivial.as_fd(), &h4)?,
                "first": first_path(skb, trivial.as_fd(), &f4)? },
        "v6": { "hit": hit_path(skb, trivial.as_fd(), &h6)?,
                "first": first_path(skb, trivial.as_fd(), &f6)? },
    });
    drop(trivial);

    // 3. The lookup alone, trie and replacement.
    if a.proto {
        out["proto"] = proto(&policy, a.first_runs.min(5000))?;
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    writeln!(w, "{out}")?;
    w.flush()?;

    let Some(cgroup) = a.cgroup else {
        return Ok(());
    };
    enforcer.attach(&cgroup)?;
    writeln!(w, "{}", json!({ "ready": true, "memory": memory() }))?;
    w.flush()?;
    serve_commands(&mut w, || {
        let mut v = json!({});
        for name in [
            programs::CONNECT4,
            programs::CONNECT6,
            programs::SKB_EGRESS,
            programs::SKB_INGRESS,
        ] {
            let s = rawbpf::prog_stats(enforcer.program_fd(name)?, name)?;
            v[name] = json!({ "run_time_ns": s.run_time_ns, "run_cnt": s.run_cnt });
        }
        Ok(v)
    })
}

/// Serves the commands on stdin, one per line, each answered with one JSON line on `w`:
/// `stats-on` / `stats-off` (BPF run-time statistics, held on while the returned
/// descriptor is open), `stats` (what `stats` returns), `quit` (or the end of stdin).
///
/// # Errors
/// Reading stdin or writing `w` fails, or switching the statistics or `stats` does.
pub fn serve_commands(
    w: &mut impl std::io::Write,
    mut stats: impl FnMut() -> anyhow::Result<Value>,
) -> anyhow::Result<()> {
    let mut stats_fd = None;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "stats-on" => {
                stats_fd = Some(aya::sys::enable_stats(aya::sys::Stats::RunTime)?);
                writeln!(w, "{}", json!({ "stats": true }))?;
            }
            "stats-off" => {
                stats_fd = None;
                writeln!(w, "{}", json!({ "stats": false }))?;
            }
            "stats" => writeln!(w, "{}", stats()?)?,
            "quit" => break,
            other => writeln!(
                w,
                "{}",
                json!({ "error": format!("unknown command {other}") })
            )?,
        }
        w.flush()?;
    }
    drop(stats_fd);
    Ok(())
}
