//! `docs/benchmarks.md`: every figure with its spread and its ratio to the no-filter
//! baseline of the same run, the targets with pass/miss, and the reasons.
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    Family, HookCost, Results,
    noop::{NAME as NOOP, OWNER_NAME as OWNER},
    stats::{Spread, bytes, count, dur, ratio},
};

const CONTENDERS: [&str; 7] = [
    "none",
    NOOP,
    OWNER,
    "egressd",
    "nftables",
    "ipset+iptables",
    "iptables",
];
/// The contenders that filter (egressd's peers; the no-op programs are its floors).
const FIREWALLS: [&str; 3] = ["nftables", "ipset+iptables", "iptables"];
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Time per connect (ns) of `name` at (`n`, `family`) over the rounds.
pub fn cost_spread(r: &Results, n: usize, family: Family, name: &str) -> Option<Spread> {
    let v: Vec<f64> = r
        .connect
        .iter()
        .filter(|c| c.n == n && c.family == family && c.contender == name)
        .map(|c| c.sample.per_connect())
        .collect();
    (!v.is_empty()).then(|| Spread::of(&v))
}

/// Ratio of `name`'s time per connect to the no-filter time of the same round.
pub fn ratio_spread(r: &Results, n: usize, family: Family, name: &str) -> Option<Spread> {
    ratio_to(r, n, family, name, "none")
}

/// Ratio of `name`'s time per connect to `base`'s of the same round.
fn ratio_to(r: &Results, n: usize, family: Family, name: &str, base: &str) -> Option<Spread> {
    let v: Vec<f64> = r
        .connect
        .iter()
        .filter(|c| c.n == n && c.family == family && c.contender == name)
        .filter_map(|c| {
            r.connect
                .iter()
                .find(|b| b.n == n && b.family == family && b.rep == c.rep && b.contender == base)
                .map(|b| c.sample.per_connect() / b.sample.per_connect())
        })
        .collect();
    (!v.is_empty()).then(|| Spread::of(&v))
}

/// egressd's ratio to no filter at `n`, then the floor's (the no-op programs on the same
/// hooks) and egressd's ratio to the floor, each per family, for the 3 % target's row.
fn connect_ratios(r: &Results, n: usize) -> String {
    let each = |name: &str, base: &str| {
        FAMILIES
            .iter()
            .filter_map(|&fam| {
                ratio_to(r, n, fam, name, base).map(|x| format!("{} {}", fam.name(), x.show(ratio)))
            })
            .collect::<Vec<_>>()
    };
    let mut out = format!(
        "ratio to no filter: {} (median of rounds, min–max).",
        each("egressd", "none").join("; ")
    );
    let floor = each(NOOP, "none");
    if !floor.is_empty() {
        let _ = write!(
            out,
            " **Floor** (no-op programs on the same hooks, what any agent there costs): {}; \
             egressd over the floor (to the no-op programs of the same round): {}.",
            floor.join("; "),
            each("egressd", NOOP).join("; ")
        );
    }
    let owner = each(OWNER, "none");
    if !owner.is_empty() {
        let _ = write!(
            out,
            " **Floor with the owner record** (the no-op programs but egressd's own \
             `cgroup/sock_create`, which records each socket's owner for packet events): {}; \
             egressd over it (to the same round's): {}, its programs' judging.",
            owner.join("; "),
            each("egressd", OWNER).join("; ")
        );
    }
    out
}

fn latency(r: &Results, n: usize, family: Family, name: &str) -> Option<(Spread, Spread)> {
    let cells: Vec<_> = r
        .connect
        .iter()
        .filter(|c| c.n == n && c.family == family && c.contender == name)
        .collect();
    if cells.is_empty() {
        return None;
    }
    let p50: Vec<f64> = cells.iter().map(|c| c.sample.p50).collect();
    let p99: Vec<f64> = cells.iter().map(|c| c.sample.p99).collect();
    Some((Spread::of(&p50), Spread::of(&p99)))
}

fn kernel(r: &Results, n: usize) -> Option<&Value> {
    r.kernel.iter().find(|(k, _, _)| *k == n).map(|(_, v, _)| v)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn arr(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}

/// (raw median, trivial median, net) of the cache-hit test run; net is the median of the
/// per-pair differences when the run recorded them (samples taken in alternation).
fn hit(k: &Value, fam: &str) -> (Spread, f64, f64) {
    let h = &k["testrun"][fam]["hit"];
    let p = Spread::of(&arr(&h["prog"]));
    let t = Spread::of(&arr(&h["trivial"])).median;
    let pairs = arr(&h["net"]);
    let net = if pairs.is_empty() {
        p.median - t
    } else {
        Spread::of(&pairs).median
    };
    (p, t, net)
}

/// (raw median, trivial median, net) of the first-packet test run.
fn first(k: &Value, fam: &str) -> (f64, f64, f64) {
    let h = &k["testrun"][fam]["first"];
    let p = f(&h["prog"]["median"]);
    let t = f(&h["trivial"]["median"]);
    (p, t, p - t)
}

/// Net lookup time (cold median minus the trivial program's) of a prototype.
fn lookup_net(k: &Value, which: &str, fam: &str, temp: &str) -> (f64, f64) {
    let p = f(&k["proto"][which][temp]["median"]);
    let t = f(&k["proto"][&format!("trivial_{fam}")][temp]["median"]);
    (p, p - t)
}

/// Net ns per lookup of a stream program (median run minus the empty loop's, over the
/// batch), see `bench_kernel`'s `lookup` module.
fn stream_net(k: &Value, which: &str, fam: &str) -> f64 {
    let s = &k["proto"]["stream"];
    let med = |v: &Value| Spread::of(&arr(v)).median;
    (med(&s[which]) - med(&s[&format!("empty_{fam}")])) / f(&s["batch"]).max(1.0)
}

/// The IPv4 lookup egressd used at this N (`"table"` or `"trie"`).
fn v4_lookup(k: &Value) -> &str {
    k["ipv4_lookup"].as_str().unwrap_or("trie")
}

/// The IPv6 lookup egressd used at this N (`"table"` or `"trie"`).
fn v6_lookup(k: &Value) -> &str {
    k["ipv6_lookup"].as_str().unwrap_or("trie")
}

/// egressd load time (compile + install) samples in ns.
fn load_ns(k: &Value) -> Vec<f64> {
    let c = arr(&k["load"]["compile_ns"]);
    let i = arr(&k["load"]["install_ns"]);
    c.iter().zip(&i).map(|(a, b)| a + b).collect()
}

fn hook(hooks: &[HookCost], n: usize, family: Family, prog: &str) -> Option<(f64, u64, u64)> {
    hooks
        .iter()
        .find(|h| h.n == n && h.family == family)
        .and_then(|h| {
            h.programs
                .iter()
                .find(|(p, _, _)| p == prog)
                .map(|(_, ns, cnt)| (*ns, *cnt, h.sample.attempts))
        })
}

fn label(n: usize) -> String {
    super::prefixes::label(n)
}

fn pm(pass: bool) -> &'static str {
    if pass { "**pass**" } else { "**miss**" }
}

/// Every raw figure as JSON (written to `target/bench-results.json`).
pub fn dump(r: &Results) -> Value {
    json!({
        "connect": r.connect.iter().map(|c| json!({
            "n": c.n, "family": c.family.name(), "contender": c.contender, "rep": c.rep,
            "attempts": c.sample.attempts, "ok": c.sample.ok, "elapsed_ns": c.sample.elapsed_ns,
            "p50": c.sample.p50, "p99": c.sample.p99,
        })).collect::<Vec<_>>(),
        "hooks": hooks_json(&r.hooks),
        "floor_hooks": hooks_json(&r.floor_hooks),
        "kernel": r.kernel.iter().map(|(n, v, a)| json!({"n": n, "measured": v, "attached": a})).collect::<Vec<_>>(),
        "tools": r.tools.iter().map(|t| json!({"n": t.n, "tool": t.tool, "kind": t.kind, "ns": t.ns})).collect::<Vec<_>>(),
        "floods": r.floods.iter().map(super::events::to_json).collect::<Vec<_>>(),
        "spool": r.spool.iter().map(|v| v.raw.clone()).collect::<Vec<_>>(),
        "daemon": r.daemon.iter().map(|d| json!({
            "n": d.n, "build": d.build.name(), "started": d.started, "start_ns": d.start_ns, "rss_kib": d.rss_kib,
            "hwm_kib": d.hwm_kib, "maps_bytes": d.maps_bytes, "timeout_s": d.timeout_s,
        })).collect::<Vec<_>>(),
    })
}

fn hooks_json(hooks: &[HookCost]) -> Value {
    hooks
        .iter()
        .map(|h| {
            json!({
                "n": h.n, "family": h.family.name(),
                "programs": h.programs.iter().map(|(p, ns, c)| json!({"program": p, "ns": ns, "runs": c})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// In-kernel time per connect of the programs of `hooks` (egressd's, or the no-op
/// programs' on the same hooks), from the hook statistics: each program's time per call
/// times its calls, over the connects of the run.
fn bpf_per_connect(hooks: &[HookCost], n: usize, family: Family) -> Option<f64> {
    let h = hooks.iter().find(|h| h.n == n && h.family == family)?;
    let total: f64 = h.programs.iter().map(|(_, ns, c)| ns * *c as f64).sum();
    Some(total / h.sample.attempts.max(1) as f64)
}

/// The report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let ns: Vec<usize> = r.plan.ns.clone();
    let top = ns.iter().copied().max().unwrap_or(0);
    let _ = writeln!(
        s,
        "# Benchmarks: egressd side by side with nftables, ipset, iptables and no filter\n\n\
         Generated by `cargo xtask bench{}{}` on {} in {:.0} s; regenerate with the same command \
         (as root; it runs entirely in private network namespaces). Raw figures: \
         `target/bench-results.json`. Plot: [benchmarks-connect.svg](benchmarks-connect.svg).\n",
        if r.plan.quick { " --quick" } else { "" },
        if r.plan.custom_ns {
            format!(
                " --ns {}",
                ns.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        },
        r.started,
        r.elapsed.as_secs_f64()
    );
    if r.plan.quick {
        let _ = writeln!(
            s,
            "> **Quick smoke run**: N up to 10k, {} rounds of {} ms. The targets at 1M \
             prefixes are not evaluated; run `cargo xtask bench` for the full report.\n",
            r.plan.reps, r.plan.millis
        );
    }

    // Machine.
    let m = &r.machine;
    let (l0, l1) = r.load;
    // The end-of-run figure includes the benchmark's own worker and listener: judge by the
    // load before it started.
    let busy = l0.0 > 0.5 * m.cores as f64;
    let _ = writeln!(
        s,
        "## Machine\n\n| | |\n| --- | --- |\n| CPU | {} ({} cores, hypervisor: {}) |\n\
         | kernel | {} |\n| memory | {} |\n| tools | {} |\n\
         | load average at start | {:.2} {:.2} {:.2} |\n| load average at end | {:.2} {:.2} {:.2} |\n",
        m.cpu,
        m.cores,
        m.hypervisor,
        m.kernel,
        m.memory,
        m.tools.join("; "),
        l0.0,
        l0.1,
        l0.2,
        l1.0,
        l1.1,
        l1.2
    );
    let _ = writeln!(
        s,
        "{}\n",
        if busy {
            "The machine was **busy** when this run started (1-minute load average above half \
             the core count: other work was running; the end-of-run figure also counts the \
             benchmark's own worker and listener). Absolute times are inflated and noisy; \
             compare the ratios to the no-filter baseline, which was measured interleaved \
             with every contender in the same rounds."
        } else {
            "The machine was otherwise idle when this run started (1-minute load average \
             below half the core count; the end-of-run figure counts the benchmark's own \
             worker and listener, and other work may have started meanwhile). Ratios to the \
             no-filter baseline, measured interleaved with every contender, remain the \
             figures to compare."
        }
    );

    // Method.
    let ((u4, u6), (l4, l6), files, from) = &r.real;
    let _ = writeln!(
        s,
        "## What was measured, and how\n\n\
         - **Prefix sets.** From {} \
           ({}): {} unique prefixes ({} IPv4, {} IPv6). nftables interval sets refuse \
           overlapping elements, so every set is made of disjoint prefixes: the *leaves* \
           (prefixes containing no other listed prefix), {} IPv4 + {} IPv6. Every filter \
           holds exactly the same prefixes, and every set also holds the allowlisted test \
           host's `198.18.1.0/24` and `2001:db8:1::/48` (so N + 2 entries in total). \
           egressd allowlists every region of the set; the firewalls allow the set and \
           reject everything else.\n\
         - **connect().** A worker process in the test bed's client namespace loops \
           `socket()`, `SO_LINGER {{1,0}}`, `connect()` to the \"eu\" host (port 9100, an \
           accept-and-close listener with backlog 4096 in its own namespace), `close()` (RST, \
           so no TIME_WAIT), for {} ms after a {} ms warm-up, {} rounds. In every round each \
           contender is measured once per family, in a rotating order, interleaved with the \
           no-filter baseline; ratios are taken to the baseline *of the same round*. \
           Switching a contender on and off does not reload it: egressd and the no-op \
           programs stay attached to their cgroups and the worker is moved into or out of \
           them; the firewalls' sets stay loaded and only the referencing rules are \
           added/removed. The figure is wall time per \
           iteration (socket + connect + close); p50/p99 are of the `connect()` call alone.\n\
         - **Contenders.** *egressd*: the real programs and maps, loaded by \
           `egressd::kernel::loader::Enforcer` (the `bench_kernel` example) with the map sizes the \
           daemon picks for the policy (`ipv4_lookup = \"auto\"`: the LPM trie for IPv4 \
           below 65,536 IPv4 prefixes, the DIR-24-8 table from there), attached to the \
           cgroup (its cgroup hooks: sock_create, connect4/6, sendmsg4/6, cgroup_skb \
           egress/ingress; its global programs, the BPF LSM hooks or where those cannot run \
           the tc/egress fallback, stay attached while every contender is measured, the \
           baseline included). *{NOOP}*: the floor of any agent on these hooks: a program \
           that allows at once (`r0 = 1; exit`, loaded with raw `bpf(2)` with the program \
           and attach type egressd's has) on each of egressd's cgroup hooks ({}), attached \
           with bpf_links as egressd's are, to a cgroup of its own. *{OWNER}*: the same, \
           but on `cgroup/sock_create` egressd's own program (loaded from egressd's object, \
           with its owner map), which records the creating task in socket-local storage and \
           does nothing else. *nftables*: one \
           `flags interval` set per family and a stateless rule per family \
           (`ip daddr != @allow4 reject`) in an output chain. *ipset+iptables*: one \
           `hash:net` set per family and one `-m set ! --match-set ... -j REJECT` rule each \
           in `OUTPUT`. *iptables*: one `-d PREFIX -j RETURN` rule per prefix, test host \
           last (every packet walks the whole chain), then `REJECT` (up to 10k). `iptables` \
           here is Debian's default, the nf_tables backend. The firewalls judge every \
           outgoing packet (SYN, ACK, RST); egressd judges the connect() once and looks \
           each packet's socket up in its verdict cache.\n\
         - **Kernel-side costs.** BPF run-time statistics (`BPF_ENABLE_STATS`, the switch \
           behind `kernel.bpf_stats_enabled`) during one extra egressd connect run per family \
           and N: `run_time_ns / run_cnt` per program. `BPF_PROG_TEST_RUN` of the \
           `cgroup_skb/egress` program on UDP frames: the *already-judged* path is one run \
           with a large `repeat` (the kernel's average per run; `repeat` doubled until the \
           interquartile range of 9 samples is under 5 % of the median, at most 2M), the \
           *first-packet* path is one run (`repeat = 1`) per distinct destination ({} \
           destinations drawn from the set; every test run gets a fresh socket, so the \
           verdict cache misses). A trivial program (`r0 = 1; exit`, loaded with raw \
           `bpf(2)` as `BPF_PROG_TYPE_CGROUP_SKB`) is timed the same way; *net* = raw − \
           trivial. The destination lookup alone is timed with hand-assembled programs that \
           do nothing else: one `bpf_map_lookup_elem` in a bare LPM trie holding the set, \
           and the array reads of egressd's IPv4 table (DIR-24-8 with a paged first level, \
           compiled by egressd's own compiler) holding the same set; once as a single cold lookup per test run, \
           once as a stream of 262,144 distinct destinations (below).\n\
         - **Load and reload.** egressd: `policy::compile` + `Enforcer::install` into fresh \
           maps (load; `Enforcer::open`, which loads and verifies the programs, is shown \
           apart), and compile + install of the same policy into the idle set of the \
           double buffer (reload). nftables: `nft -f` of the table with both sets (load) and \
           of one transaction that flushes both sets and adds the elements again (reload). \
           ipset: `ipset restore` (load) and restore into new sets + `ipset swap` (reload). \
           iptables: `iptables-restore` + `ip6tables-restore`. Times are wall clock with the \
           `ip netns exec` overhead ({}) subtracted.\n\
         - **Events.** The real daemon (`egressd run`, test bed policy, events to a file \
           sink) while the worker sends denied UDP datagrams as fast as it can to 254 \
           addresses of the denied region for {} ms ({} rounds of three readers).\n\
         - **Memory.** RSS of the process holding the policy and kernel map memory (sum of \
           `memlock` in `/proc/PID/fdinfo` of its map descriptors), for the `bench_kernel` \
           process at every N and for the real daemon where it can load the policy file.\n",
        from,
        files.join(", "),
        count((u4 + u6) as f64),
        count(*u4 as f64),
        count(*u6 as f64),
        count(*l4 as f64),
        count(*l6 as f64),
        r.plan.millis,
        r.plan.warm_ms,
        r.plan.reps,
        r.noop_hooks.join(", "),
        count(r.plan.first_runs as f64),
        dur(r.netns_overhead_ns),
        r.plan.flood_ms,
        r.plan.floods
    );
    let _ = writeln!(
        s,
        "| N | IPv4 | IPv6 | source |\n| --- | ---: | ---: | --- |"
    );
    for (_, l, src, v4, v6) in &r.sets {
        let _ = writeln!(
            s,
            "| {l} | {} | {} | {src} |",
            count(*v4 as f64),
            count(*v6 as f64)
        );
    }
    s.push('\n');

    targets(&mut s, r, &ns, top);
    connect_tables(&mut s, r, &ns);
    hooks_table(&mut s, r, &ns);
    testrun_table(&mut s, r, &ns);
    lookup_table(&mut s, r, &ns);
    load_tables(&mut s, r, &ns);
    events_table(&mut s, &r.floods, &r.plan);
    super::spool::table(&mut s, r);
    memory_tables(&mut s, r, &ns);
    s
}

fn targets(s: &mut String, r: &Results, ns: &[usize], top: usize) {
    let _ = writeln!(s, "## Targets of the issue\n");
    let _ = writeln!(s, "| target | result | |\n| --- | --- | --- |");
    // 1. Cheapest at every N >= 1k.
    let mut worst: Option<(f64, usize, Family, &str)> = None;
    let mut all = true;
    for &n in ns.iter().filter(|n| **n >= 1000) {
        for fam in FAMILIES {
            let Some(e) = cost_spread(r, n, fam, "egressd") else {
                continue;
            };
            for other in FIREWALLS {
                if let Some(o) = cost_spread(r, n, fam, other) {
                    let margin = e.median / o.median;
                    if margin >= 1.0 {
                        all = false;
                    }
                    if worst.is_none_or(|w| margin > w.0) {
                        worst = Some((margin, n, fam, other));
                    }
                }
            }
        }
    }
    let detail = match worst {
        Some((m, n, fam, o)) => format!(
            "closest (or worst) case: N = {}, {}: egressd takes {} the time per connect of {o} \
             ({}).",
            label(n),
            fam.name(),
            ratio(m),
            if m < 1.0 { "cheaper" } else { "more expensive" }
        ),
        None => "not measured".into(),
    };
    let _ = writeln!(
        s,
        "| egressd costs less than every other filter at every N ≥ 1k (median time per \
         connect) | {} | {detail} |",
        pm(all && worst.is_some())
    );
    // 1b. At most +3 % at 1M.
    if top >= 1_000_000 {
        let within = |base: &str| {
            FAMILIES
                .iter()
                .all(|&fam| ratio_to(r, top, fam, "egressd", base).is_none_or(|x| x.median <= 1.03))
        };
        // Where the target is missed, whether egressd's judging alone (over the floor that
        // records each socket's owner, measured in the same rounds) stays within it.
        let judging = if within("none") || ratio_spread(r, top, Family::V4, OWNER).is_none() {
            String::new()
        } else {
            format!(
                "; over the floor with the owner record: {}",
                pm(within(OWNER))
            )
        };
        let _ = writeln!(
            s,
            "| egressd adds no more than 3 % to connect() at 1M prefixes | {}{judging} | {} |",
            pm(within("none")),
            connect_ratios(r, top)
        );
    } else {
        let _ = writeln!(
            s,
            "| egressd adds no more than 3 % to connect() at 1M prefixes | not evaluated | quick \
             run (N ≤ {}); at N = {}: {} |",
            label(top),
            label(top),
            connect_ratios(r, top)
        );
    }
    // 2. Lookup under 100 ns at 1M.
    if let Some(k) = kernel(r, top) {
        let (t4, l4, l6, r6) = (
            stream_net(k, "dir24", "v4"),
            stream_net(k, "lpm4", "v4"),
            stream_net(k, "lpm6", "v6"),
            stream_net(k, "range6", "v6"),
        );
        let (_, c4) = lookup_net(k, "dir24", "v4", "cold");
        let (_, cl4) = lookup_net(k, "lpm4", "v4", "cold");
        let (_, cl6) = lookup_net(k, "lpm6", "v6", "cold");
        let hookc = hook(&r.hooks, top, Family::V4, "egressd_connect4").map(|h| h.0);
        let used = if v4_lookup(k) == "table" {
            "the table"
        } else {
            "the LPM trie"
        };
        let used6 = if v6_lookup(k) == "table" {
            "the range table"
        } else {
            "the LPM trie"
        };
        let _ = writeln!(
            s,
            "| one destination lookup under 100 ns at {} prefixes | IPv4: {} (egressd's \
             DIR-24-8 table; the LPM trie: {}); IPv6: {} (egressd's range table; the LPM \
             trie: {}) | per lookup in a stream of distinct destinations, net of the loop: \
             IPv4 table {}, IPv4 trie {}, IPv6 range table {}, IPv6 trie {}. A single lookup \
             with cold caches (one test run each, net of the test-run overhead): table {}, \
             IPv4 trie {}, IPv6 trie {}. egressd used {} for IPv4 and {used6} for IPv6 at \
             this N; whole connect4 program per call (bpf stats): {}. |",
            label(top),
            pm(t4 < 100.0),
            pm(l4 < 100.0),
            pm(r6 < 100.0),
            pm(l6 < 100.0),
            dur(t4),
            dur(l4),
            dur(r6),
            dur(l6),
            dur(c4),
            dur(cl4),
            dur(cl6),
            used,
            hookc.map_or("–".into(), dur)
        );
    }
    // 3. Already-judged packet under 50 ns.
    let mut pass = true;
    let mut parts = Vec::new();
    for &n in ns {
        if let Some(k) = kernel(r, n) {
            let (_, _, n4) = hit(k, "v4");
            let (_, _, n6) = hit(k, "v6");
            pass &= n4 < 50.0 && n6 < 50.0;
            parts.push(format!("{}: {}/{}", label(n), dur(n4), dur(n6)));
        }
    }
    let _ = writeln!(
        s,
        "| a packet of an already-judged socket costs under 50 ns in the skb program | {} | net \
         (raw − trivial) IPv4/IPv6 by N: {}. |",
        pm(pass),
        parts.join("; ")
    );
    // BPF time per connect at the top N (issue #16).
    let per = FAMILIES.map(|fam| bpf_per_connect(&r.hooks, top, fam));
    if per.iter().all(Option::is_some) {
        let [v4, v6] = per.map(|p| p.unwrap_or(f64::NAN));
        let floor = FAMILIES.map(|fam| bpf_per_connect(&r.floor_hooks, top, fam));
        let floor = match floor {
            [Some(f4), Some(f6)] => format!(
                " **Floor**, the no-op programs on the same hooks measured the same way (the \
                 program call and the statistics' own two clock reads): {} / {}; egressd over \
                 it: {} / {}.",
                dur(f4),
                dur(f6),
                dur(v4 - f4),
                dur(v6 - f6)
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| BPF time per connect (connect hook + skb egress + skb ingress) ≤ 1 µs at {}, \
             IPv4 and IPv6 | IPv4: {}; IPv6: {} | {} / {} (BPF statistics during the connect \
             benchmark: each program's run time per call times its calls per connect).{floor} |",
            label(top),
            pm(v4 <= 1000.0),
            pm(v6 <= 1000.0),
            dur(v4),
            dur(v6)
        );
    }
    // 4. 1M load under 2 s.
    if let Some(k) = kernel(r, top) {
        let l = Spread::of(&load_ns(k));
        let open = Spread::of(&arr(&k["load"]["open_ns"]));
        let nft = r
            .tools
            .iter()
            .find(|t| t.n == top && t.tool == "nft -f" && t.kind == "load")
            .map(|t| Spread::of(&t.ns).median);
        let _ = writeln!(
            s,
            "| {} prefixes load in under 2 s | {} | compile + install {} with IPv4 in {} \
             (plus {} to create the maps and load and verify the programs once); nft -f {}; \
             the daemon from its policy file (parse, compile, program load, fill, attach): \
             {}. |",
            label(top),
            pm(l.median < 2e9),
            l.show(dur),
            if v4_lookup(k) == "table" {
                "the table"
            } else {
                "the trie"
            },
            dur(open.median),
            nft.map_or("–".into(), dur),
            r.daemon
                .iter()
                .find(|d| d.n == top && d.build == super::memory::Build::Current)
                .map_or("–".into(), |d| if d.started {
                    dur(d.start_ns)
                } else {
                    format!("not started after {:.0} s", d.timeout_s)
                })
        );
    }
    for row in super::memory::target_rows(&r.daemon) {
        let _ = writeln!(s, "{row}");
    }
    table_memory_row(s, r, ns);
    s.push('\n');
    why(s, r, ns, top);
}

/// The first level of the IPv4 table before it was paged (issue #16): 2^24 four-byte
/// entries per set, for both sets, whatever the policy.
const UNPAGED_FIRST_LEVEL: f64 = 2.0 * 64.0 * 1024.0 * 1024.0;

/// Issue #16's row for the IPv4 table's kernel memory with `ipv4_lookup = "table"` at the
/// N where `auto` keeps the trie (`bench_kernel`'s `table_forced`): sized to the policy when
/// the smallest costs under 1 % of [`UNPAGED_FIRST_LEVEL`] and none costs more than it.
fn table_memory_row(s: &mut String, r: &Results, ns: &[usize]) {
    let measured: Vec<(usize, f64, f64)> = ns
        .iter()
        .filter_map(|&n| {
            let t = &kernel(r, n)?["table_forced"];
            Some((n, t["kernel_bytes"].as_f64()?, t["prefixes_v4"].as_f64()?))
        })
        .collect();
    let Some(&(_, smallest, _)) = measured.first() else {
        return;
    };
    let pass = smallest < UNPAGED_FIRST_LEVEL / 100.0
        && measured.iter().all(|m| m.1 < UNPAGED_FIRST_LEVEL);
    let parts: Vec<String> = measured
        .iter()
        .map(|&(n, b, v4)| {
            format!(
                "N = {} ({} IPv4 prefixes after merging): {}",
                label(n),
                count(v4),
                bytes(b)
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "| kernel memory of the IPv4 table with `ipv4_lookup = \"table\"` sized to the \
         policy | {} | both sets' table maps (`memlock`, the kernel's account) where `auto` \
         keeps the trie: {}; before the paging, {} of first level alone whatever the \
         policy. |",
        pm(pass),
        parts.join("; "),
        bytes(UNPAGED_FIRST_LEVEL)
    );
}

fn why(s: &mut String, r: &Results, ns: &[usize], top: usize) {
    let _ = writeln!(s, "### Why\n");
    // Per-connect BPF time vs the firewalls.
    for fam in FAMILIES {
        let mut parts = Vec::new();
        for &n in ns {
            if let (Some(b), Some(base), Some(e)) = (
                bpf_per_connect(&r.hooks, n, fam),
                cost_spread(r, n, fam, "none"),
                cost_spread(r, n, fam, "egressd"),
            ) {
                let over = |name: &str, what: &str| {
                    cost_spread(r, n, fam, name).map_or(String::new(), |f| {
                        format!(
                            "; {what} {}, {} over no filter",
                            ratio(f.median / base.median),
                            dur(f.median - base.median)
                        )
                    })
                };
                let floor =
                    over(NOOP, "floor: no-op programs") + &over(OWNER, "with the owner record");
                parts.push(format!(
                    "N = {}: {} in BPF per connect, {} of the no-filter time per connect \
                     (measured ratio {}, {} over no filter{floor})",
                    label(n),
                    dur(b),
                    format_args!("{:.1} %", 100.0 * b / base.median),
                    ratio(e.median / base.median),
                    dur(e.median - base.median)
                ));
            }
        }
        let _ = writeln!(
            s,
            "- **egressd's share of a connect ({}).** From the BPF statistics, egressd's \
             programs (connect hook once, skb egress per outgoing packet, skb ingress per \
             incoming packet) spend: {}. The floor is what programs that return at once on \
             the same hooks cost a connect (the kernel's cgroup-BPF path around each program \
             call, which the BPF statistics do not count, and the calls themselves); egressd's \
             own work is above it: its programs' run time (the statistics) and what they leave \
             to the kernel outside any program, which the statistics do not count either \
             (freeing each socket's local storage at close and after an RCU grace period). \
             *With the owner record* is that floor plus egressd's own `cgroup/sock_create` \
             program alone: the socket's owner recorded in socket-local storage, created per \
             socket and freed at close, the price of naming the process behind a packet \
             event (kernels before 6.10 refuse the current-task helpers in `cgroup_skb`, and \
             packets are often sent outside their task).",
            fam.name(),
            parts.join("; ")
        );
    }
    if let (Some(k0), Some(kt)) = (kernel(r, ns[0]), kernel(r, top)) {
        let (_, c4) = lookup_net(kt, "dir24", "v4", "cold");
        let (_, cl4) = lookup_net(kt, "lpm4", "v4", "cold");
        let l6 = stream_net(kt, "lpm6", "v6");
        let _ = writeln!(
            s,
            "- **The lookup.** The kernel's LPM trie is a binary (one bit per level, path \
             compressed) trie: a lookup visits about one node per distinguishing bit, log2(N) \
             of them for N spread-out prefixes, each a dependent pointer load that misses the \
             cache once the trie outgrows it. In a stream of distinct destinations (net per \
             lookup): IPv4 {} at N = {} → {} at N = {}; IPv6 {} → {}. egressd's IPv4 table \
             (DIR-24-8 with its first level paged: a directory of 16,384 entries, one per /14, \
             each the entry id of a /14 whose /24s all decide alike or the index of that /14's \
             4 KiB page of 1,024 /24 entries in a pool sized to the policy, whose entry is an \
             id or the index of a 256-entry second-level chunk for prefixes longer than /24; \
             three `BPF_F_MMAPABLE` array maps of 4 KiB pages per policy set, compiled in \
             userspace and copied in with one memcpy each) costs {} → {}: at most three array \
             reads whatever N, the first in a 64 KiB directory. egressd picks it by itself \
             from 65,536 IPv4 prefixes (`ipv4_lookup = \"auto\"`), for 64 KiB of directory \
             per set plus 4 KiB per /14 holding a prefix longer than itself and 512 bytes per \
             chunk; below that the trie is about as fast and smaller. A single lookup \
             with everything cold (one test run) costs more at N = {}: table {}, trie {}; the \
             table's pool spans up to 16,384 pages, so a cold lookup also misses the TLB (a \
             two-dimensional page walk under KVM). For IPv6 (where a 2^24 table does not \
             apply) egressd's range table (the address space cut into disjoint ranges of one \
             decision each, sorted; one index element per /16, and under a /16 holding more \
             than 8 ranges a chunk of 16 elements per 4 further bits down to /40, give the \
             ranges starting in the destination's bucket, binary-searched in at most 22 steps \
             of one array read) costs {} → {}, the trie {} the target at N = {}; egressd picks \
             the range table from 1,024 IPv6 prefixes (`ipv6_lookup = \"auto\"`), for 512 KiB \
             per set plus 24 bytes per range and 16 bytes of chunks per range of room; its \
             programs contain the search on every kernel tested (5.10, 6.1, 6.12, 6.18). The \
             floor of both tables is the last read: a destination in a 12-64 MiB array of 4 \
             KiB pages (`BPF_F_MMAPABLE` arrays are not backed by huge pages) misses the cache \
             and the TLB; the IPv4 table's stream figure is that read plus one or two more.",
            dur(stream_net(k0, "lpm4", "v4")),
            label(ns[0]),
            dur(stream_net(kt, "lpm4", "v4")),
            label(top),
            dur(stream_net(k0, "lpm6", "v6")),
            dur(l6),
            dur(stream_net(k0, "dir24", "v4")),
            dur(stream_net(kt, "dir24", "v4")),
            label(top),
            dur(c4),
            dur(cl4),
            dur(stream_net(k0, "range6", "v6")),
            dur(stream_net(kt, "range6", "v6")),
            if l6 < 100.0 {
                "within".to_owned()
            } else {
                format!("{} over", ratio(l6 / 100.0))
            },
            label(top),
        );
    }
    if let (Some(k0), Some(k)) = (kernel(r, ns[0]), kernel(r, top)) {
        let (p, t, n4) = hit(k, "v4");
        let (_, _, first0) = first(k0, "v4");
        let (_, _, hit0) = hit(k0, "v4");
        let _ = writeln!(
            s,
            "- **The connect hook and the handshake.** Per call, connect4 costs {} at N = {} \
             and {} at N = {} (BPF statistics, during the connect benchmark, where every \
             connect goes to the same destination, so the lookup is warm). For an allowed TCP \
             connection under `established = \"cut\"` (the default) egressd does not create \
             the socket's verdict storage at connect: the packet hook judges the handshake \
             packets again and caches the verdict from the first data segment on, because \
             creating socket storage (`bpf_sk_storage_get` with \
             `BPF_SK_STORAGE_GET_F_CREATE`: two allocations charged to the socket) costs more \
             than those few decisions. The skb program's first packet of a UDP socket, which \
             does create it, shows the price: {} net at N = {} (decision plus storage) \
             against {} for a packet of a judged socket. The connections of this benchmark \
             carry no data (connect, then RST), so each of their packets is judged (skb \
             egress and ingress per packet in the table below); with `established = \"keep\"` \
             or an audit verdict the verdict is stored at connect instead.",
            hook(&r.hooks, ns[0], Family::V4, "egressd_connect4").map_or("–".into(), |h| dur(h.0)),
            label(ns[0]),
            hook(&r.hooks, top, Family::V4, "egressd_connect4").map_or("–".into(), |h| dur(h.0)),
            label(top),
            dur(first0),
            label(ns[0]),
            dur(hit0),
        );
        let _ = writeln!(
            s,
            "- **The already-judged packet.** The skb program's fast path at N = {} takes {} \
             raw, {} for the trivial program, so {} net: before any header walk, it finds \
             the verdict on the socket (`bpf_sk_storage_get`: a pointer from the socket, no \
             hash), reads the plain IP header and ports by direct packet access (no scratch \
             space, no helper), reads the generation and the route epoch (two array reads), \
             compares the flow, generation and next-hop check, and adds the packet and its \
             bytes to the per-CPU flow counters (two atomic adds). A packet with IPv4 \
             options or IPv6 extension headers takes the header walk instead.",
            label(top),
            dur(p.median),
            dur(t),
            dur(n4)
        );
        let l = Spread::of(&load_ns(k)).median;
        let total = f(&k["prefixes_v4"]) + f(&k["prefixes_v6"]);
        let how = if v4_lookup(k) == "table" {
            "the IPv4 prefixes are compiled into the table and copied into the set's two \
             arrays through `mmap` (no syscall per prefix); the IPv6 prefixes go into the LPM \
             trie with batched `BPF_MAP_UPDATE_BATCH` calls (the trie allocates a node per \
             prefix)"
        } else {
            "every prefix goes into the LPM tries with batched `BPF_MAP_UPDATE_BATCH` calls \
             (the trie allocates a node per prefix)"
        };
        let _ = writeln!(
            s,
            "- **Loading.** `policy::compile` + `Enforcer::install`: {} for {} prefixes ({} \
             per prefix); {how}.",
            dur(l),
            count(total),
            dur(l / total.max(1.0))
        );
    }
    if let Some(d) = r
        .daemon
        .iter()
        .filter(|d| d.build == super::memory::Build::Current)
        .max_by_key(|d| d.n)
    {
        let _ = writeln!(
            s,
            "- **The daemon's path.** `egressd run` with the {}-prefix policy file {}: TOML \
             parse and validation, compile, program load, map fill and attach (see \
             [Daemon](#daemon-start-up-and-memory)).",
            label(d.n),
            if d.started {
                format!("reached `agent_start` in {}", dur(d.start_ns))
            } else {
                format!("had not started after {:.0} s", d.timeout_s)
            }
        );
    }
    s.push('\n');
}

fn connect_tables(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## connect() cost vs N\n\n![connect() cost vs N](benchmarks-connect.svg)\n\n\
         Time per connect (socket + connect + close) and, below it, the ratio to the no-filter \
         baseline of the same round: median over {} rounds (min–max). *{NOOP}* is the floor \
         of any agent on egressd's cgroup hooks: programs there that return at once. \
         *{OWNER}* is the same but for egressd's own `cgroup/sock_create` program, which \
         records each socket's owner and does nothing else.\n",
        r.plan.reps
    );
    for fam in FAMILIES {
        let _ = writeln!(s, "### {}\n", fam.name());
        contender_table(s, ns, |n, c| {
            match (cost_spread(r, n, fam, c), ratio_spread(r, n, fam, c)) {
                (Some(x), Some(q)) if c != "none" => {
                    format!("{}<br>{}", x.show(dur), q.show(ratio))
                }
                (Some(x), _) => format!("{}<br>{:.0}/s", x.show(dur), 1e9 / x.median),
                _ => "–".into(),
            }
        });
        let _ = writeln!(s, "\nconnect() latency p50 / p99 (median over rounds):\n");
        contender_table(s, ns, |n, c| match latency(r, n, fam, c) {
            Some((p50, p99)) => format!("{} / {}", dur(p50.median), dur(p99.median)),
            None => "–".into(),
        });
        s.push('\n');
    }
}

/// A table with a row per N and a column per contender, cells from `cell(n, contender)`.
fn contender_table(s: &mut String, ns: &[usize], cell: impl Fn(usize, &str) -> String) {
    let _ = writeln!(
        s,
        "| N | {} |\n| --- |{}",
        CONTENDERS.join(" | "),
        " ---: |".repeat(CONTENDERS.len())
    );
    for &n in ns {
        let mut row = format!("| {} |", label(n));
        for c in CONTENDERS {
            let _ = write!(row, " {} |", cell(n, c));
        }
        let _ = writeln!(s, "{row}");
    }
}

fn hooks_table(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## egressd's programs per call during the connect benchmark (BPF run-time statistics)\n\n\
         `run_time_ns / run_cnt` over one stats-enabled connect run per family. Every program \
         here looks up the same destination again and again (the test host), so lookups are \
         warm: what grows with N is the depth of the trie walk (IPv6 at every N, IPv4 below \
         65,536 IPv4 prefixes; above, IPv4 is in the table). The skb programs judge each \
         packet of these connections, which carry no data (see above). Runs per connect in \
         parentheses. The *floor* rows are the no-op programs on the same hooks (a program \
         that returns at once), measured the same way in the same rounds: the program call and \
         the statistics' own two clock reads, which no program on these hooks can go below.\n"
    );
    let _ = writeln!(
        s,
        "| N | connect4 | skb egress (v4 run) | skb ingress (v4 run) | connect6 | skb egress (v6 run) | skb ingress (v6 run) | BPF time per connect v4 / v6 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let row = |s: &mut String, hooks: &[HookCost], what: &str, n: usize| {
        let cell = |fam, p: &str| {
            hook(hooks, n, fam, p).map_or("–".into(), |(ns, c, a)| {
                format!("{} ({:.1})", dur(ns), c as f64 / a.max(1) as f64)
            })
        };
        let _ = writeln!(
            s,
            "| {what}{} | {} | {} | {} | {} | {} | {} | {} / {} |",
            label(n),
            cell(Family::V4, "egressd_connect4"),
            cell(Family::V4, "egressd_skb_egress"),
            cell(Family::V4, "egressd_skb_ingress"),
            cell(Family::V6, "egressd_connect6"),
            cell(Family::V6, "egressd_skb_egress"),
            cell(Family::V6, "egressd_skb_ingress"),
            bpf_per_connect(hooks, n, Family::V4).map_or("–".into(), dur),
            bpf_per_connect(hooks, n, Family::V6).map_or("–".into(), dur),
        );
    };
    for &n in ns {
        row(s, &r.hooks, "", n);
    }
    // The floor does not depend on N: its run at each N, for the spread of the machine.
    for &n in ns {
        if r.floor_hooks.iter().any(|h| h.n == n) {
            row(s, &r.floor_hooks, "floor (no-op programs), during N = ", n);
        }
    }
    s.push('\n');
}

fn testrun_table(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## Per-packet cost of the skb program (`BPF_PROG_TEST_RUN`)\n\n\
         Raw = kernel-measured ns per run; trivial = `r0 = 1; exit` measured the same way; \
         net = raw − trivial. Already-judged: median of 9 samples (min–max), `repeat` as \
         shown, the program and the trivial one sampled in alternation; net is the median of \
         the 9 paired differences. First packet: median over distinct destinations, `repeat = 1` (includes the \
         kernel's timer reads, which the trivial program's figure also holds).\n"
    );
    let _ = writeln!(
        s,
        "| N | family | already-judged raw | trivial | **net** | repeat, noise (IQR/median) | first packet raw | trivial | **net** |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &n in ns {
        let Some(k) = kernel(r, n) else { continue };
        for (fam, key) in [("IPv4", "v4"), ("IPv6", "v6")] {
            let (p, t, net) = hit(k, key);
            let (fp, ft, fnet) = first(k, key);
            let h = &k["testrun"][key]["hit"];
            let _ = writeln!(
                s,
                "| {} | {fam} | {} | {} | **{}** | {}, {:.1} % | {} | {} | **{}** |",
                label(n),
                p.show(dur),
                dur(t),
                dur(net),
                count(f(&h["repeat"])),
                100.0 * f(&h["spread"]),
                dur(fp),
                dur(ft),
                dur(fnet)
            );
        }
    }
    s.push('\n');
}

fn lookup_table(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## One destination lookup alone: LPM trie vs egressd's tables\n\n\
         Hand-assembled `cgroup_skb` programs that only do the lookup, over maps holding the \
         set: a bare LPM trie per family, the IPv4 table and the IPv6 range table as egressd \
         compiles them (each checked against egressd's reference model, `Policy::region_of`, \
         on 2000 destinations before timing; the range search is assembled step for step as \
         `ebpf/src/decide.rs` does it). *Stream*: a program looks up 64 destinations per run from an array of \
         262,144 distinct destinations drawn from the set, advancing a cursor each run; a \
         repeated run (4096 runs: every destination once) gives the kernel's mean per run; \
         per lookup = (median of 9 − the same loop without a lookup) / 64. *Cold*: one test \
         run per destination (`repeat = 1`), minus the trivial program's. *Warm*: the same \
         destination repeated 100k times (median over 16 destinations).\n"
    );
    let _ = writeln!(
        s,
        "| N | egressd's IPv4 / IPv6 lookup | stream: table v4 / trie v4 / range table v6 / trie v6 | cold: table v4 / trie v4 / trie v6 | warm: table v4 / trie v4 / trie v6 | trie fill v4 + v6 | table compile + copy | table memory (chunks) | range table v6: compile + copy, memory (ranges, chunks) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &n in ns {
        let Some(k) = kernel(r, n) else { continue };
        let three = |temp: &str| {
            let [a, b, c] = [("dir24", "v4"), ("lpm4", "v4"), ("lpm6", "v6")]
                .map(|(w, fam)| dur(lookup_net(k, w, fam, temp).1));
            format!("{a} / {b} / {c}")
        };
        let p = &k["proto"];
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} / {} / {} / {} | {} | {} | {} | {} + {} | {} ({}) | {} + {}, {} ({}, {}) |",
            label(n),
            v4_lookup(k),
            v6_lookup(k),
            dur(stream_net(k, "dir24", "v4")),
            dur(stream_net(k, "lpm4", "v4")),
            dur(stream_net(k, "range6", "v6")),
            dur(stream_net(k, "lpm6", "v6")),
            three("cold"),
            three("warm"),
            dur(f(&p["lpm4"]["fill_ns"]) + f(&p["lpm6"]["fill_ns"])),
            dur(f(&p["dir24"]["compile_ns"])),
            dur(f(&p["dir24"]["load_ns"])),
            bytes(f(&p["dir24"]["bytes"])),
            count(f(&p["dir24"]["chunks"])),
            dur(f(&p["range6"]["compile_ns"])),
            dur(f(&p["range6"]["load_ns"])),
            bytes(f(&p["range6"]["bytes"])),
            count(f(&p["range6"]["ranges"])),
            count(f(&p["range6"]["chunks"]))
        );
    }
    s.push('\n');
}

fn load_tables(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## Policy load and reload vs N\n\nMedian (min–max) over repetitions; prefixes per \
         second in parentheses.\n"
    );
    let _ = writeln!(
        s,
        "| N | egressd load (compile + install) | egressd reload (idle set) | egressd program load (once) | nft -f load | nft -f reload | ipset restore load | ipset reload (swap) | iptables-restore load |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &n in ns {
        let total = r
            .sets
            .iter()
            .find(|x| x.0 == n)
            .map_or(0.0, |x| (x.3 + x.4) as f64);
        let rate = |sp: Spread| {
            if sp.median <= 0.0 {
                "below the netns-exec overhead".to_owned()
            } else {
                format!("{} ({}/s)", sp.show(dur), count(total / (sp.median / 1e9)))
            }
        };
        let k = kernel(r, n);
        let tool = |t: &str, kind: &str| {
            r.tools
                .iter()
                .find(|x| x.n == n && x.tool == t && x.kind == kind)
                .map_or("–".into(), |x| rate(Spread::of(&x.ns)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            label(n),
            k.map_or("–".into(), |k| rate(Spread::of(&load_ns(k)))),
            k.map_or("–".into(), |k| rate(Spread::of(&arr(&k["reload_ns"])))),
            k.map_or("–".into(), |k| Spread::of(&arr(&k["load"]["open_ns"]))
                .show(dur)),
            tool("nft -f", "load"),
            tool("nft -f", "reload"),
            tool("ipset restore", "load"),
            tool("ipset restore", "reload"),
            tool("iptables-restore", "load"),
        );
    }
    s.push('\n');
}

/// Start of the event throughput section's heading (`--events-only` replaces the section).
pub const EVENTS_HEADING: &str = "## Event throughput";

/// The event throughput section: one line per flood, then the medians side by side.
pub fn events_table(s: &mut String, floods: &[super::events::Flood], plan: &super::Plan) {
    use super::events::Reader;
    let _ = writeln!(
        s,
        "{EVENTS_HEADING}: ring buffer to the JSON file sink\n\n\
         The real daemon (`egressd run`, test bed policy with `summary_after = 0` and \
         suppression off, one `type = \"file\"` sink of native JSON lines) while the worker \
         sends one-byte UDP datagrams as fast as it can to 254 addresses of the denied region \
         for {} ms: every datagram is one denied `cgroup/sendmsg4` event in the kernel, and \
         with no record budget the kernel aggregates into `connection_summary` only when the \
         ring buffer is full. Three readers of the same flood, in turn in every round: *{}* \
         (this build with `EGRESSD_BENCH_RING_ONLY=1`: reads every ring-buffer record and \
         discards it, no enrichment, no sink: the limit), *{}* (main of 2026-12-01 before \
         the hand-written JSON record and the batched sink queue, built by the bench from \
         that commit) and *{}*.\n\n\
         *First record*: before the flood, one denied datagram on the idle daemon, from the \
         send until its record is in the file (the latency of a single event; nothing on the \
         path waits for a timer). *Records/s*: `connection` records written to the file, per second from the start \
         of the flood until the file stopped growing (for the read-only reader: records read \
         per second of flood). *Ring buffer full*: attempts the kernel could not queue \
         (`connection_summary` counts them: *summarized*). *Sink dropped*: \
         `lost.sink_write_failed`, records the sink's memory queue (10,000 records by default) could not take: losses, counted. *Unaccounted*: counted denials minus \
         records, summarized attempts and records the sink dropped, 0 when nothing went \
         unreported.\n",
        plan.flood_ms,
        Reader::RingOnly.name(),
        Reader::Baseline.name(),
        Reader::Current.name(),
    );
    let _ = writeln!(
        s,
        "| reader | first record | attempts/s | records | records/s | ring buffer full | summarized (summaries) | sink dropped | counted denials | unaccounted |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for fl in floods {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} ({:.1} %) | {} ({}) | {} | {} | {} |",
            fl.reader.name(),
            fl.latency
                .map_or("–".into(), |l| format!("{:.1} ms", l.as_secs_f64() * 1e3)),
            count(fl.attempt_rate),
            count(fl.delivered as f64),
            count(fl.sink_rate),
            count(fl.ringbuf_full as f64),
            100.0 * fl.ringbuf_full as f64 / fl.attempts.max(1) as f64,
            count(fl.summarized as f64),
            fl.summaries,
            count(fl.sink_dropped as f64),
            count(fl.counted as f64),
            fl.unaccounted
        );
    }
    if !floods.is_empty() {
        let _ = writeln!(
            s,
            "\n| reader | records/s, median (min–max) |\n| --- | ---: |"
        );
        for reader in Reader::ALL {
            let rates: Vec<f64> = floods
                .iter()
                .filter(|f| f.reader == reader)
                .map(|f| f.sink_rate)
                .collect();
            if !rates.is_empty() {
                let _ = writeln!(
                    s,
                    "| {} | {} |",
                    reader.name(),
                    Spread::of(&rates).show(count)
                );
            }
        }
        s.push('\n');
        cpu_table(s, floods);
    }
    let _ = writeln!(
        s,
        "Where the time goes. *The limit*: the kernel wakes a ring-buffer reader for the \
         first record after it caught up, so a reader that keeps up with a flood is woken, \
         and the producer interrupted, for nearly every record: before, the read-only \
         reader managed 350,000-565,000 records/s on this machine, limited by those \
         wake-ups. Now a read that finds 64 records or more is followed by the next one 1 ms \
         later (a quiet stream is still read at once): one wake-up per batch, and the \
         read-only figure above. *The daemon*: `bench_pipeline` (the same path in-process \
         from decoded events to the file sink, its reader paced to the pipeline so that \
         every record takes the full `/proc` path, `cargo run --release -p egressd \
         --example bench_pipeline`, which also gives each thread's CPU from schedstat) \
         measures each step in alternating pairs with the build before it (see `git log`). \
         On 2026-12-02: 3.02 µs of CPU per record over the three threads (reader 1.77, \
         enrichment 0.62, sink 0.64; 531,000 records/s in-process), against 3.43 µs for \
         b9e3858 of the same day, 5.35 µs for its morning's main and 8.1-10.3 µs for \
         30469fd (before the hand-written JSON record). On 2026-12-03 (a slow day for this \
         machine: the read-only limit measured 1.21 million records/s, against 2.73 million \
         the day before), four more steps: the escape check of a record's strings without a \
         byte loop (reader 2.88 → 2.48 µs, 6 of 8 pairs lower); a process's systemd unit \
         and container found once with its `/proc` details (enrichment 1.47 → 1.16 µs, 6 of \
         6); the native record written in its RFC 8785 form, so that its body is its hash \
         chain's canonical bytes and the pass that copied them out of the body is gone \
         (reader 3.5 → 2.9 µs, all threads 5.7 → 5.0 µs, 4 of 4 pairs); a record's \
         timestamp, id and process name kept inline instead of allocated (reader 2.65 → \
         2.53 µs, 4 of 4). `cargo xtask bench --events-only` the same afternoon, after the \
         third step: 249,481 records/s for this build against 80,803 for 30469fd and \
         1,206,740 for the limit; after the fourth: 281,779 against 93,165 and 1,213,455 \
         (medians of 3 floods each, same runs): 3.0-3.1× the baseline, where the \
         2026-12-02 run of the table above gave 2.1×. On the evening of 2026-12-03, a fifth \
         step: an event handed back for reuse is written over in place, its shared strings (host, agent, policy digest, region, \
         user, group, executable, command line, cgroup path, unit, container) kept where \
         they are the same, so a flood from one process touches no reference count per \
         record (about 20 atomic operations per record before, on cache lines the reader \
         thread then read): enrichment 0.72-0.86 → 0.53-0.62 µs, all threads 3.0 → \
         2.5-2.7 µs (3 of 4 pairs lower). `cargo xtask bench --events-only` after it, on \
         a slow stretch (limit 1,424,587): 292,953 records/s against 90,994 for 30469fd, \
         3.2×; an hour before, on a fast stretch (limit 2,219,405), the build before this \
         step made 447,520 against 137,085 (3.3×). `perf record -a` of that fast flood: \
         the reader thread ran about 80 % of the flood's time, SHA-256 43 % of it, \
         rendering the JSON body 33 %, allocation 4 %; the daemon's three threads spent \
         about 2.9 µs of CPU per record and the flood kept the other core busy, so both \
         cores were saturated and every µs off any thread counts. The floor: the \
         reader's SHA-256 of about a kilobyte per record stays while every record carries \
         its own link, and on this machine one of the 2 cores is busy with the flood. Tried \
         and not kept: sealing the link on the sink's thread (the sink got 1 µs slower, and \
         records a full queue drops would leave that sink's chain); more spare frames or \
         spare events: no measurable difference; without any SHA-256 at all (a throwaway \
         build) the flood's records/s rose by only 6 % in median, so moving the chain to a \
         thread of its own is not where the rest of the way lies. On 2026-12-04, \
         schedstat of the flood's worker and the daemon's threads during a flood: the worker \
         ran a full core (2,006-2,038 ms of every 2 s) and the daemon's three threads \
         shared the other, so the daemon's CPU per record over all its threads is what sets \
         the rate. Two steps: the members of a record that repeat from one record of a \
         process to the next (agent, cgroup, container, host, policy, process; two thirds \
         of its bytes) are copied from the last record's rendering when they hold the same \
         values (`bench_pipeline`, 6 pairs: all threads 2.62 → 2.32 µs, reader 1.44 → 1.28 \
         µs, medians); the enrichment queue takes one reference to the enricher per batch, \
         not one per event (an `--events-only` run with the baseline set by hand to the \
         build before: 522,710 against 515,788 records/s, higher in 3 of 3 pairs by \
         0.3-1.3 %). Then the pools of events and frames handed back for reuse were made \
         big enough for a flood's read (up to a sink queue's 10,000 records): 4,096 spare \
         events instead of 1,024, 1,024 spare frames instead of 256; before, most of a \
         flood's events and frames were freed on one thread and allocated on the other \
         (two `--events-only` runs against the build before: 5 of 6 pairs higher, medians \
         389,697 → 431,276 and 508,020 → 531,732 records/s; the machine's state moved the \
         two runs' figures by a quarter). Tried and not kept: handing the sink 256 records per wake-up instead \
         of 64 (443,873 against 442,917 for the build before, same run); SHA-256 computed \
         on the sink's thread instead of the reader's (a throwaway build: 404,105 against \
         360,418-397,088 in runs before it, within the spread of runs). That evening, the \
         CPU table above (added then) showed where the rest went: the file sink's thread in \
         the kernel, 1.05-1.60 µs per record, half of the daemon's CPU, in `write(2)` \
         copying each record into a fresh page-cache page. On this machine (a VM whose \
         virtio-balloon reports free memory to the hypervisor, `page_reporting`) the first \
         touch of such a page faults in the hypervisor: `dd` of 1.3 GB to a new file took \
         0.4-3.4 s of system time from run to run, depending on how much memory had been \
         handed back. Two steps: write-behind in the file sink (every 8 MiB appended, their \
         writeback started and the 8 MiB before dropped from the page cache once written \
         back, so the same few MiB of pages are reused: 1.3 GB written this way cost \
         0.5-0.6 s of CPU over the whole machine, writeback included, against 2.3-3.6 s; an \
         `--events-only` run against the build before: sink kernel time 1.05 → 0.52 µs per \
         record, all threads 2.63 → 1.90 µs, 441,504 → 532,020 records/s); then a burst's \
         writes ending at 64 KiB offsets of the file, one `writev(2)` of the buffer and the \
         head of the frame that reaches the boundary (whole aligned folios for the page \
         cache, and that head not copied: sink kernel 0.59 → 0.47 µs, user 0.19 → 0.12 \
         µs, all threads 2.04 → 1.86 µs, 475,749 → 571,248 records/s, 2 of 3 pairs \
         higher).\n"
    );
}

/// The daemon's CPU per record during the floods, by thread, from `/proc` (see
/// [`super::events::Cpu`]).
fn cpu_table(s: &mut String, floods: &[super::events::Flood]) {
    use super::events::Reader;
    let _ = writeln!(
        s,
        "The daemon's CPU per record written (for the read-only reader: per record read), by \
         thread, from the threads' user and system time in `/proc/PID/task/*/stat` from the \
         start of the flood until the file stopped growing (10 ms ticks), median (min–max) \
         of the floods. *Reader*: the main thread (ring-buffer reads, the JSON record, its \
         SHA-256 chain link) and tokio's helpers; *enrichment*: `egressd-enrich` (`/proc` \
         reads, the event's assembly); *sink, user* and *sink, kernel*: the file sink's \
         thread in user space and in the kernel (its `write(2)` into the page cache). \
         *Bytes/record*: what the sink wrote, per record.\n\n\
         | reader | reader | enrichment | sink, user | sink, kernel | all threads | bytes/record |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let us = |v: f64| format!("{v:.2} µs");
    for reader in Reader::ALL {
        let of: Vec<&super::events::Flood> = floods
            .iter()
            .filter(|f| f.reader == reader && f.delivered > 0)
            .collect();
        if of.is_empty() {
            continue;
        }
        let per = |g: &dyn Fn(&super::events::Flood) -> f64| {
            let v: Vec<f64> = of.iter().map(|f| g(f) / f.delivered as f64).collect();
            Spread::of(&v)
        };
        let bytes = if reader == Reader::RingOnly {
            "–".to_string()
        } else {
            per(&|f| f.bytes as f64).show(count)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            reader.name(),
            per(&|f| f.cpu.reader * 1e6).show(us),
            per(&|f| f.cpu.enrich * 1e6).show(us),
            per(&|f| f.cpu.sink_user * 1e6).show(us),
            per(&|f| f.cpu.sink_system * 1e6).show(us),
            per(&|f| f.cpu.total() * 1e6).show(us),
            bytes,
        );
    }
    s.push('\n');
}

fn memory_tables(s: &mut String, r: &Results, ns: &[usize]) {
    let _ = writeln!(
        s,
        "## Memory vs N\n\n`bench_kernel` holds the policy through egressd's library exactly as \
         the daemon does (compiled `Policy` + loaded object), after the first install and \
         after reloads, when sets A and B of the double buffer are both full (the steady \
         state). The IPv4 tables of both sets are allocated when the programs are loaded, so \
         they count in full from the first install. *Per prefix*: tries and tables of \
         both sets over the prefixes of the set (the table's directory is a fixed 64 KiB \
         per set, its pool and chunks grow with the policy).\n"
    );
    let _ = writeln!(
        s,
        "| N | IPv4 lookup | RSS (peak) | kernel maps after the first install | after reloads (both sets full) | of which LPM tries | of which IPv4 tables | per prefix |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &n in ns {
        let Some(k) = kernel(r, n) else { continue };
        let a = &k["memory_loaded"];
        let b = &k["memory_both_sets"];
        let total = f(&k["prefixes_v4"]) + f(&k["prefixes_v6"]);
        let lookup = f(&b["tries_bytes"]) + f(&b["tables_bytes"]);
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            label(n),
            v4_lookup(k),
            bytes(f(&a["rss_kib"]) * 1024.0),
            bytes(f(&b["hwm_kib"]) * 1024.0),
            bytes(f(&a["maps_bytes"])),
            bytes(f(&b["maps_bytes"])),
            bytes(f(&b["tries_bytes"])),
            bytes(f(&b["tables_bytes"])),
            bytes(lookup / total.max(1.0))
        );
    }
    s.push('\n');
    super::memory::section(s, &r.daemon);
    let _ = ns;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::{ConnectCell, Plan, connect::Sample, machine::Machine};

    /// A run at N = 0 and 1M, two rounds, with only the connect cells of no filter, the
    /// no-op programs, their twin with the owner record and egressd: 10, 11, 11.3 and 11.5 µs
    /// per connect in every round.
    fn run() -> Results {
        let mut plan = Plan::new(false);
        plan.ns = vec![0, 1_000_000];
        plan.reps = 2;
        let mut connect = Vec::new();
        for n in [0, 1_000_000] {
            for rep in 0..2 {
                for family in FAMILIES {
                    for (contender, us) in [
                        ("none", 10.0),
                        (NOOP, 11.0),
                        (OWNER, 11.3),
                        ("egressd", 11.5),
                    ] {
                        connect.push(ConnectCell {
                            n,
                            family,
                            contender: contender.to_owned(),
                            rep,
                            sample: Sample {
                                attempts: 1000,
                                ok: 1000,
                                elapsed_ns: us * 1e6,
                                p50: us * 400.0,
                                p99: us * 900.0,
                                errno: None,
                            },
                        });
                    }
                }
            }
        }
        Results {
            plan,
            machine: Machine {
                cpu: "test".into(),
                cores: 2,
                kernel: "test".into(),
                memory: "test".into(),
                hypervisor: "none".into(),
                tools: Vec::new(),
            },
            load: ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
            started: "test".into(),
            elapsed: Duration::from_secs(1),
            real: ((0, 0), (0, 0), Vec::new(), "test".into()),
            sets: Vec::new(),
            connect,
            hooks: Vec::new(),
            floor_hooks: Vec::new(),
            noop_hooks: vec!["cgroup/connect4".into(), "cgroup/connect6".into()],
            kernel: Vec::new(),
            tools: Vec::new(),
            netns_overhead_ns: 0.0,
            floods: Vec::new(),
            daemon: Vec::new(),
            spool: Vec::new(),
        }
    }

    #[test]
    fn floor_beside_egressd() {
        let md = markdown(&run());
        assert!(
            md.contains(
                "| N | none | no-op programs | no-op + owner record | egressd | nftables | ipset+iptables | iptables |"
            ),
            "{md}"
        );
        assert!(md.contains("cgroup/connect4, cgroup/connect6"), "{md}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| egressd adds no more than 3 %"))
            .expect("the 3 % row");
        for part in [
            "| **miss**; over the floor with the owner record: **pass** |",
            "ratio to no filter: IPv4 1.150×",
            "IPv6 1.150×",
            "**Floor** (no-op programs on the same hooks, what any agent there costs): IPv4 1.100×",
            "egressd over the floor (to the no-op programs of the same round): IPv4 1.045×",
            "**Floor with the owner record**",
            "IPv4 1.130×",
            "egressd over it (to the same round's): IPv4 1.018×",
        ] {
            assert!(row.contains(part), "{part:?} not in {row}");
        }
        // The floor filters nothing: it is no peer of the "cheapest" target.
        let cheapest = md
            .lines()
            .find(|l| l.starts_with("| egressd costs less than every other filter"))
            .expect("the cheapest row");
        assert!(cheapest.contains("not measured"), "{cheapest}");
    }
}
