//! Issue #13 item 1: nothing unaccounted at any rate. A process floods distinct denied
//! destinations with unconnected UDP; per (hook, region, verdict) the `connection` records
//! (each `1 + suppressed`) plus the `connection_summary` counts equal the kernel's counters
//! exactly, and `lost.ringbuf_full` stays 0; with suppression on and off, with the default
//! record budget and with none (then only a full ring buffer makes summaries).
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use egressd_testbed::Testbed;
use libtest_mimic::Failed;
use serde_json::Value;

use super::harness::{
    Agent, EPERM, Pins, free_port, http_get_now, policy, require_root, stop_record, tempdir,
    testbed, write_config,
};

/// `FLOOD_ARG CGROUP NETNS MILLIS PORTS FLUSH_MS`: joins the cgroup and the namespace, then
/// sends one-byte datagrams on one unconnected UDP socket to 198.18.2.2-254 x `PORTS` ports
/// (from 20000; `PORTS` 0: a new port each round, so destinations never repeat) for
/// `MILLIS` ms (at most 50 M attempts). With `FLUSH_MS` > 0 it then waits that long and
/// sends once more to every (address, port) it used, so that each suppression entry hands
/// its count to a record or summary; with `FLUSH_MS` 0 it ends with three sends to
/// 198.18.2.2:19999 back to back, so that a suppressed count is pending at the stop. A
/// sixth argument `raw` sends from a raw `IPPROTO_UDP` socket instead (the datagram is a
/// UDP header naming the port): no socket hook judges it, the packet hook does (and counts
/// a repeat to the socket's last destination once, so the raw flood ends without the three
/// sends). Prints
/// `attempts refused` (refused: EPERM).
pub const FLOOD_ARG: &str = "__egressd_flood";

/// Entry point of the flood child (see [`FLOOD_ARG`]).
pub fn flood_main(args: &[String]) -> i32 {
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(cg), Some(ns), Some(millis), Some(ports), Some(flush_ms)) =
        (args.first(), args.get(1), num(2), num(3), num(4))
    else {
        eprintln!("usage: {FLOOD_ARG} CGROUP NETNS MILLIS PORTS FLUSH_MS");
        return 2;
    };
    if let Err(e) = std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()) {
        eprintln!("joining {cg}: {e}");
        return 2;
    }
    if let Err(e) = enter_netns(ns) {
        eprintln!("entering {ns}: {e}");
        return 2;
    }
    let raw = args.get(5).is_some_and(|a| a == "raw");
    let (ty, proto) = if raw {
        (libc::SOCK_RAW, libc::IPPROTO_UDP)
    } else {
        (libc::SOCK_DGRAM, 0)
    };
    // SAFETY: plain socket call; the fd is closed at exit.
    let fd = unsafe { libc::socket(libc::AF_INET, ty, proto) };
    if fd < 0 {
        eprintln!("socket: {}", std::io::Error::last_os_error());
        return 2;
    }
    let (mut attempts, mut refused) = (0u64, 0u64);
    let mut send = |host: u8, port: u16| {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(198, 18, 2, host)).to_be(),
            },
            sin_zero: [0; 8],
        };
        // Raw: a UDP header (source port 9, the destination port, length 9, no checksum)
        // and one byte; else the one byte.
        let mut udp = [0u8; 9];
        udp[1] = 9;
        udp[2..4].copy_from_slice(&port.to_be_bytes());
        udp[5] = 9;
        udp[8] = b'x';
        let payload: &[u8] = if raw { &udp } else { b"x" };
        // SAFETY: a valid socket and a sockaddr_in of the size given.
        let r = unsafe {
            // Never waits: before egressd attaches, datagrams to addresses whose neighbour
            // is unresolved fill the send buffer (a flood through the start must go on).
            libc::sendto(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                libc::MSG_DONTWAIT,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        attempts += 1;
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(EPERM) {
            refused += 1;
        }
    };
    let t0 = std::time::Instant::now();
    let mut round = 0u64;
    while t0.elapsed() < Duration::from_millis(millis) && round < 200_000 {
        for host in 2..=254u8 {
            let port = if ports == 0 {
                20_000 + (round % 40_000) as u16
            } else {
                20_000 + (round % ports) as u16
            };
            send(host, port);
        }
        round += 1;
    }
    if flush_ms > 0 {
        std::thread::sleep(Duration::from_millis(flush_ms));
        for p in 0..ports.min(round) {
            for host in 2..=254u8 {
                send(host, 20_000 + p as u16);
            }
        }
    } else if !raw {
        // Leave a count pending whatever the machine's pace: a destination the flood never
        // used, three times back to back (the first is reported, the two after it fall in
        // any suppression window). A stalled VM can otherwise end the flood with every
        // destination's window just expired, so that nothing is pending at the stop.
        for _ in 0..3 {
            send(2, 19_999);
        }
    }
    println!("{attempts} {refused}");
    0
}

/// (hook, region, verdict) -> attempts the records account for: `connection` records count
/// `1 + suppressed`, `connection_summary` records their `count`.
fn accounted(recs: &[Value]) -> (BTreeMap<(String, String, String), u64>, u64, u64) {
    let mut by = BTreeMap::new();
    let (mut summaries, mut summarized) = (0, 0);
    for r in recs {
        let n = match r["type"].as_str() {
            Some("connection") => 1 + r["suppressed"].as_u64().unwrap_or(0),
            Some("connection_summary") => {
                summaries += 1;
                let c = r["count"].as_u64().unwrap_or(0);
                summarized += c;
                c
            }
            _ => continue,
        };
        let key = (
            r["hook"].as_str().unwrap_or("?").to_owned(),
            r["destination"]["region"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            r["verdict"].as_str().unwrap_or("?").to_owned(),
        );
        *by.entry(key).or_insert(0) += n;
    }
    (by, summaries, summarized)
}

/// `policy` with a stdout sink whose queue holds a whole flood: a slow reader of stdout (a
/// VM) must not make the sink drop records, which a test could not tell apart from records
/// never made.
fn with_big_queue(policy: &str) -> String {
    with_queue(policy, 2_000_000)
}

/// `policy` with a stdout sink whose memory queue holds `records` records and that holds
/// the ring-buffer reader back when full (`when_full = "block"`).
fn with_queue(policy: &str, records: u64) -> String {
    format!(
        "{policy}\n[[sinks]]\ntype = \"stdout\"\nqueue = {records}\nqueue_bytes = 4000000000\n\
         when_full = \"block\"\n"
    )
}

/// Records and kernel counters agree per (hook, region, verdict); else the error names both.
fn agree(
    line: &str,
    by: &BTreeMap<(String, String, String), u64>,
    kernel: &BTreeMap<(String, String, String), u64>,
) -> Result<(), Failed> {
    if by != kernel {
        return Err(
            format!("{line}: records account for {by:?}, the kernel counted {kernel:?}").into(),
        );
    }
    Ok(())
}

/// The kernel's denial and audit counters of `agent_stop` per (hook, region, verdict).
fn kernel_counts(stop: &Value) -> BTreeMap<(String, String, String), u64> {
    let mut kernel = BTreeMap::new();
    for c in stop["counters"].as_array().into_iter().flatten() {
        if c["verdict"] == "allow" {
            continue;
        }
        let key = (
            c["hook"].as_str().unwrap_or("?").to_owned(),
            c["region"].as_str().unwrap_or("?").to_owned(),
            c["verdict"].as_str().unwrap_or("?").to_owned(),
        );
        *kernel.entry(key).or_insert(0) += c["count"].as_u64().unwrap_or(0);
    }
    kernel
}

/// One process denied at two hooks for one destination within the suppression window:
/// `connect()` to an address and to its v4-mapped IPv6 form (connect4, connect6), and
/// `sendto()` then `connect()` + `send()` (sendmsg4, then the packet hook). Each attempt is
/// accounted once, at its own hook. The suppression table's key once lacked the hook: the
/// second hook's attempt was suppressed under the first's entry, carried by the first
/// hook's next record and also reported as pending at the stop (6 denials accounted as 8).
pub fn suppression_across_hooks_counted_once() -> Result<(), Failed> {
    use super::harness::{sendto, tcp, udp};
    use egressd_testbed::US_V4;
    let tb = testbed()?;
    let text = policy("enforce").replace("suppress_window_ms = 0", "suppress_window_ms = 1000");
    let agent = Agent::start_with(&tb, &text)?;
    let mapped = format!("tcp://[::ffff:{US_V4}]:{}", egressd_testbed::PORT);
    let pause = "pause://1300".to_owned();
    let probes = [
        tcp(US_V4),
        mapped,
        pause.clone(),
        tcp(US_V4),
        sendto(US_V4),
        udp(US_V4),
        pause,
        sendto(US_V4),
    ];
    let results = super::harness::probe(&tb, 1, &probes)?;
    let recs = agent.stop()?;
    for r in &results {
        if r.errno != Some(EPERM) {
            return Err(format!("want every attempt refused: {results:?}").into());
        }
    }
    let (by, _, _) = accounted(&recs);
    let kernel = kernel_counts(stop_record(&recs)?);
    let hooks: Vec<&str> = kernel.keys().map(|k| k.0.as_str()).collect();
    if by != kernel || !hooks.contains(&"cgroup/connect6") {
        return Err(format!("records account for {by:?}, the kernel counted {kernel:?}").into());
    }
    Ok(())
}

/// One flood against a fresh daemon with `settings` (policy lines), checked; `budget`: the
/// settings keep the default record budget, so the flood must make summaries (without one,
/// whether the ring buffer fills depends on the machine's speed).
fn flood_once(
    settings: &str,
    millis: u64,
    ports: u64,
    flush_ms: u64,
    budget: bool,
) -> Result<String, Failed> {
    flood_from(settings, millis, ports, flush_ms, budget, false, 2_000_000)
}

/// [`flood_once`], from a raw socket with `raw` (see [`FLOOD_ARG`]): then the packet hook,
/// `cgroup_skb/egress`, judges and reports each attempt.
fn flood_from(
    settings: &str,
    millis: u64,
    ports: u64,
    flush_ms: u64,
    budget: bool,
    raw: bool,
    queue: u64,
) -> Result<String, Failed> {
    let tb = testbed()?;
    let text = with_queue(
        &policy("enforce").replace("suppress_window_ms = 0", settings),
        queue,
    );
    let mut agent = Agent::start_with(&tb, &text)?;
    let out = child(
        &tb,
        FLOOD_ARG,
        &[
            &millis.to_string(),
            &ports.to_string(),
            &flush_ms.to_string(),
            if raw { "raw" } else { "udp" },
        ],
    )?
    .output()
    .map_err(|e| format!("spawning the flood: {e}"))?;
    if !out.status.success() {
        return Err(format!("flood failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let said = String::from_utf8_lossy(&out.stdout);
    let mut it = said
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let (attempts, refused) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if attempts == 0 || refused != attempts {
        return Err(format!("flood: {refused} of {attempts} attempts refused with EPERM").into());
    }
    if !budget {
        // Without a budget every attempt the ring buffer takes is a record: let the daemon
        // write the backlog before the stop, which may take 20 s (a VM, or a loaded machine,
        // writes a few thousand records a second).
        agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, summaries, summarized) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let lost = stop["lost"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX);
    let dropped = stop["lost"]["sink_write_failed"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let suppressed = stop["lost"]["suppressed"].as_u64().unwrap_or(0);
    let connections = recs.iter().filter(|r| r["type"] == "connection").count();
    // Counts flushed at the stop: suppressed and not yet carried by a record.
    let pending: u64 = recs
        .iter()
        .filter(|r| r["type"] == "connection_summary" && r["rule"]["name"] == "suppressed")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let line = format!(
        "[{settings}] {attempts} attempts in {millis} ms: {connections} connection records, \
         {summaries} summaries counting {summarized}, {suppressed} suppressed \
         ({pending} pending at stop), ringbuf_full {lost}, sink drops {dropped}"
    )
    .replace('\n', ", ");
    println!("{line}");
    let hook = if raw {
        "cgroup_skb/egress"
    } else {
        "cgroup/sendmsg4"
    };
    let us = (hook.to_owned(), "us".to_owned(), "deny".to_owned());
    if kernel.get(&us).copied() != Some(attempts) {
        return Err(format!(
            "{line}: kernel counted {:?}, not every attempt",
            kernel.get(&us)
        )
        .into());
    }
    agree(&line, &by, &kernel)?;
    if lost != 0 {
        return Err(format!("{line}: records lost").into());
    }
    let stats = &stop["summaries"];
    if stats["records"].as_u64() != Some(summaries)
        || stats["attempts"].as_u64() != Some(summarized)
    {
        return Err(format!("{line}: agent_stop says summaries {stats}").into());
    }
    // Aggregated by the kernel (not only the pending counts the stop flushed, cgroup 0).
    let aggregated = recs
        .iter()
        .any(|r| r["type"] == "connection_summary" && r["cgroup"]["id"] != 0);
    if !aggregated {
        if budget {
            return Err(format!("{line}: the flood made no connection_summary").into());
        }
        return Ok(line);
    }
    // A summary of a second of the flood names many of its 253 destinations.
    let widest = recs
        .iter()
        .filter(|r| r["type"] == "connection_summary" && r["cgroup"]["id"] != 0)
        .max_by_key(|r| r["count"].as_u64().unwrap_or(0))
        .ok_or("no summary")?;
    let distinct = widest["destination"]["distinct"].as_u64().unwrap_or(0);
    let samples = widest["destination"]["samples"]
        .as_array()
        .map_or(0, Vec::len);
    let ordered = widest["start"].as_str() <= widest["end"].as_str();
    if !(200..=300).contains(&distinct) || samples == 0 || !ordered || widest["cgroup"]["id"] == 0 {
        return Err(format!("{line}: implausible summary {widest}").into());
    }
    Ok(line)
}

/// Suppression off: every attempt a new destination; with the default budget (the key's
/// records are capped, so the ring buffer never fills) and with none (the ring buffer fills,
/// and the attempts it cannot take are aggregated).
pub fn flood_invariant_unsuppressed() -> Result<(), Failed> {
    require_root()?;
    flood_once("suppress_window_ms = 0", 3000, 0, 0, true)?;
    flood_once(
        "suppress_window_ms = 0\nsummary_after = 0",
        3000,
        0,
        0,
        false,
    )?;
    Ok(())
}

/// The packet hook's records have the same budget as the socket hooks': a raw socket
/// floods distinct destinations (only `cgroup_skb/egress` judges it) for 2 s; at most
/// `summary_after` (1,000) connection records per second reach the SIEM, the rest of each
/// second arrives as `connection_summary` records, and the invariant holds.
pub fn flood_packet_hook_budgeted() -> Result<(), Failed> {
    require_root()?;
    let line = flood_from("suppress_window_ms = 0", 2000, 0, 0, true, true, 2_000_000)?;
    let records: u64 = line
        .split(" connection records")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{line}: no record count"))?;
    // One budget per second the flood touches (2 s, plus the seconds it starts and ends
    // in).
    if records > 4 * 1000 {
        return Err(format!("{line}: more records than the budget lets through").into());
    }
    Ok(())
}

/// A sink slower than the flood holds the ring-buffer reader back instead of dropping
/// records: no budget and no suppression, a stdout sink whose queue holds 1,000 records
/// (the test reads it: slower than a flood's million attempts a second); the ring buffer
/// fills, the kernel aggregates the rest, and the records the SIEM gets (connection and
/// summary) account for every attempt, with no sink drop. Before, the reader took the
/// ring buffer's 10,000 records at a time and the full queue dropped most of them
/// (counted as `sink_write_failed`, missing from the records).
pub fn flood_slow_sink_aggregated_not_dropped() -> Result<(), Failed> {
    require_root()?;
    let line = flood_from(
        "suppress_window_ms = 0\nsummary_after = 0",
        2000,
        0,
        0,
        false,
        false,
        1000,
    )?;
    if !line.ends_with("sink drops 0") {
        return Err(format!("{line}: the sink dropped records").into());
    }
    Ok(())
}

/// Suppression on (destinations repeat over 4 ports, so most attempts are suppressed); a
/// last sweep after the window hands every suppressed count to a record or summary; and
/// without the sweep, the counts still pending in the kernel's suppression at the stop
/// reach `connection_summary` records of the stop (issue 13 item 1).
pub fn flood_invariant_suppressed() -> Result<(), Failed> {
    require_root()?;
    let line = flood_once("suppress_window_ms = 500", 3000, 4, 0, true)?;
    if line.contains("(0 pending at stop)") {
        return Err(format!("{line}: no suppressed count was pending at the stop").into());
    }
    flood_once("suppress_window_ms = 500", 3000, 4, 700, true)?;
    flood_once(
        "suppress_window_ms = 500\nsummary_after = 0",
        3000,
        4,
        700,
        false,
    )?;
    Ok(())
}

/// `CGROUPS_ARG CGROUP NETNS N MILLIS`: joins the namespace, then for each of `N` new
/// child cgroups `CGROUP/k{i}` joins it and sends one datagram (from a socket made there;
/// the socket hooks key an attempt by the calling task's cgroup, the packet hook by the
/// cgroup the socket was made in) to 198.18.2.2:20000; then, in the
/// last one, floods distinct ports of 198.18.2.2-254 for `MILLIS` ms. Prints
/// `attempts refused`. The caller removes the child cgroups (it cannot leave the last).
pub const CGROUPS_ARG: &str = "__egressd_cgroups";

/// Entry point of the many-cgroups child (see [`CGROUPS_ARG`]).
pub fn cgroups_main(args: &[String]) -> i32 {
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(cg), Some(ns), Some(n), Some(millis)) = (args.first(), args.get(1), num(2), num(3))
    else {
        eprintln!("usage: {CGROUPS_ARG} CGROUP NETNS N MILLIS");
        return 2;
    };
    if let Err(e) = enter_netns(ns) {
        eprintln!("entering {ns}: {e}");
        return 2;
    }
    let (mut attempts, mut refused) = (0u64, 0u64);
    let mut send = |fd: i32, host: u8, port: u16| {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(198, 18, 2, host)).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a valid socket and a sockaddr_in of the size given.
        let r = unsafe {
            libc::sendto(
                fd,
                b"x".as_ptr().cast(),
                1,
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        attempts += 1;
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(EPERM) {
            refused += 1;
        }
    };
    let mut fd = -1;
    for i in 0..n {
        let dir = format!("{cg}/k{i}");
        let joined = std::fs::create_dir(&dir).and_then(|()| {
            std::fs::write(
                format!("{dir}/cgroup.procs"),
                std::process::id().to_string(),
            )
        });
        if let Err(e) = joined {
            eprintln!("joining {dir}: {e}");
            return 2;
        }
        if fd >= 0 {
            // SAFETY: our own socket.
            unsafe { libc::close(fd) };
        }
        // SAFETY: plain socket call.
        fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            eprintln!("socket: {}", std::io::Error::last_os_error());
            return 2;
        }
        send(fd, 2, 20_000);
    }
    let t0 = std::time::Instant::now();
    let mut round = 0u64;
    while t0.elapsed() < Duration::from_millis(millis) && round < 200_000 {
        for host in 2..=254u8 {
            send(fd, host, 20_000 + (round % 40_000) as u16);
        }
        round += 1;
    }
    println!("{attempts} {refused}");
    0
}

/// Removes the child cgroups `k*` of `parent` (after their process exited).
struct Children(std::path::PathBuf);

impl Drop for Children {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        let dirs: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('k'))
            })
            .collect();
        for d in dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `RACE_ARG CGROUP NETNS MILLIS`: joins the cgroup and the namespace, then two threads,
/// each pinned to a CPU of its own with a UDP socket of its own, send one-byte datagrams to
/// 198.18.2.50:9999 as fast as they can for `MILLIS` ms: one suppression key from two CPUs
/// at once. Prints `attempts refused`; exits 3 on a machine with one CPU.
pub const RACE_ARG: &str = "__egressd_race";

/// Entry point of the race child (see [`RACE_ARG`]).
pub fn race_main(args: &[String]) -> i32 {
    let (Some(cg), Some(ns), Some(millis)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|v| v.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: {RACE_ARG} CGROUP NETNS MILLIS");
        return 2;
    };
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("one CPU: no race to run");
        return 3;
    }
    if let Err(e) = std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()) {
        eprintln!("joining {cg}: {e}");
        return 2;
    }
    if let Err(e) = enter_netns(ns) {
        eprintln!("entering {ns}: {e}");
        return 2;
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let threads: Vec<_> = (0..2usize)
        .map(|cpu| {
            std::thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
                }
                // SAFETY: plain socket call; the fd is closed at exit.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 9999u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(Ipv4Addr::new(198, 18, 2, 50)).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let (mut attempts, mut refused) = (0u64, 0u64);
                while fd >= 0 && std::time::Instant::now() < deadline {
                    // SAFETY: a valid socket and a sockaddr_in of the size given.
                    let r = unsafe {
                        libc::sendto(
                            fd,
                            b"x".as_ptr().cast(),
                            1,
                            0,
                            (&raw const sa).cast(),
                            size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                    attempts += 1;
                    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(EPERM) {
                        refused += 1;
                    }
                }
                (attempts, refused)
            })
        })
        .collect();
    let (mut attempts, mut refused) = (0u64, 0u64);
    for t in threads {
        let (a, r) = t.join().unwrap_or((0, 1));
        attempts += a;
        refused += r;
    }
    println!("{attempts} {refused}");
    0
}

/// Moves the calling thread (and threads it makes later) into network namespace `ns`.
fn enter_netns(ns: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a valid namespace fd; setns changes only the calling thread's namespace.
    match unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Red team: two threads on two CPUs denied for one destination, suppression window 1 ms.
/// Taking a key's suppressed count is a read and a subtraction (5.10 has no fetching
/// atomics); on a table the CPUs shared, both could take the same count (counted twice)
/// and leave it below zero, and the next record claimed 4,294,967,295 suppressed attempts
/// (57 such records in 3 s). Per CPU, every record's count is real and records and
/// counters agree.
pub fn suppression_race_across_cpus() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let text = with_big_queue(
        &policy("enforce").replace("suppress_window_ms = 0", "suppress_window_ms = 1"),
    );
    let mut agent = Agent::start_with(&tb, &text)?;
    let out = child(&tb, RACE_ARG, &["3000"])?.output();
    let (attempts, refused) = child_said(out)?;
    if attempts == 0 || refused != attempts {
        return Err(format!("race: {refused} of {attempts} attempts refused with EPERM").into());
    }
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, _, _) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let connections: Vec<&Value> = recs.iter().filter(|r| r["type"] == "connection").collect();
    let most = connections
        .iter()
        .map(|r| r["suppressed"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let line = format!(
        "{attempts} attempts from 2 CPUs: {} records, largest suppressed count {most}",
        connections.len()
    );
    println!("{line}");
    if most > attempts {
        return Err(format!("{line}: a record claims more attempts than were made").into());
    }
    agree(&line, &by, &kernel)?;
    Ok(())
}

/// Red team: a flood already running when egressd starts (a boot, an upgrade, a restart
/// after a crash). The summary control of a fresh start was zeros until the first drain: read
/// as an older build's, so the keys aggregated between the attach and that drain counted as
/// reported (56,046 denials in no record), and no record budget applied meanwhile. Every
/// attempt the programs counted is in a record or summary.
pub fn flood_through_start_all_accounted() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let text = with_big_queue(&policy("enforce"));
    // Runs until killed, however long the start takes (20-30 s in a VM under TCG).
    let mut flood = child(&tb, FLOOD_ARG, &["600000", "0", "0", "udp"])?
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning the flood: {e}"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let started = Agent::start_with(&tb, &text);
    std::thread::sleep(Duration::from_secs(3));
    let _ = flood.kill();
    let _ = flood.wait();
    let mut agent = started?;
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, summaries, summarized) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let counted: u64 = kernel.values().sum();
    let line = format!(
        "a flood through the start: {counted} attempts counted, {summaries} summaries \
         counting {summarized}"
    );
    println!("{line}");
    if counted == 0 || summaries == 0 {
        return Err(format!("{line}: want a flood through the start, aggregated").into());
    }
    agree(&line, &by, &kernel)?;
    Ok(())
}

/// Red team: with pins, attempts past a full summary table while no daemon runs (between a
/// pinned stop and the adopting start). The adopting run took the overflow counts it found
/// as reported: 1,280,872 denials in no record. What each run reported of the overflow is
/// kept with the pins ([`egressd_common::unreported::REPORTED`]); the next run reports the
/// rest.
pub fn overflow_between_pinned_runs_reported() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = tempdir()?;
    let text = with_big_queue(&policy("enforce"));
    let cfg = write_config(&dir, &text)?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let first = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?.stop()?;
    let _children = Children(tb.cgroup.path().to_path_buf());
    let n = u64::from(egressd_common::SUMMARY_ENTRIES) + 100;
    let out = child(&tb, CGROUPS_ARG, &[&n.to_string(), "1000"])?.output();
    let (attempts, refused) = child_said(out)?;
    if attempts <= n || refused != attempts {
        return Err(format!("{refused} of {attempts} attempts refused with EPERM").into());
    }
    let mut second = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    second.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let second = second.stop()?;
    let stop = stop_record(&second)?;
    let kernel = kernel_counts(stop);
    let overflow: u64 = second
        .iter()
        .filter(|r| r["type"] == "connection_summary" && r["rule"]["name"] == "summary_table_full")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let all: Vec<Value> = first.into_iter().chain(second).collect();
    let (by, summaries, summarized) = accounted(&all);
    let line = format!(
        "{attempts} attempts from {n} cgroups between two pinned runs: {summaries} summaries \
         counting {summarized} ({overflow} past the full table)"
    );
    println!("{line}");
    agree(&line, &by, &kernel)?;
    if overflow == 0 {
        return Err(format!("{line}: want the overflow of the gap reported").into());
    }
    Ok(())
}

/// The test binary as child `arg` (a `*_ARG` entry point above) in the test bed's cgroup
/// and client namespace, with the arguments `rest` after those two.
fn child(tb: &Testbed, arg: &str, rest: &[&str]) -> Result<std::process::Command, Failed> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = std::process::Command::new(exe);
    c.arg(arg)
        .arg(tb.cgroup.path())
        .arg(tb.client.name())
        .args(rest);
    Ok(c)
}

/// `attempts refused` as a flood or cgroups child printed it. Errors: the child could not
/// be spawned or failed.
fn child_said(out: std::io::Result<std::process::Output>) -> Result<(u64, u64), Failed> {
    let out = out.map_err(|e| format!("spawning the child: {e}"))?;
    if !out.status.success() {
        return Err(format!("child failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let said = String::from_utf8_lossy(&out.stdout);
    let mut it = said
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

/// The red team's table filler: one attempt from each of more cgroups than the summary
/// table has keys, all in one second (the daemon stopped meanwhile), fills the table; a
/// few seconds later a flood of one key past its record budget (10 a second, which a
/// flood under TCG also passes) must still be aggregated
/// under its own cgroup, because every second's keys are removed once reported. (They
/// used to stay for good: the flood's key found no room and its attempts past the ring
/// buffer lost their cgroup, counted only by hook, region and verdict.)
pub fn summary_table_refilled_each_second() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let text = with_big_queue(&policy("enforce").replace(
        "suppress_window_ms = 0",
        "suppress_window_ms = 0\nsummary_after = 10",
    ));
    let mut agent = Agent::start_with(&tb, &text)?;
    let _children = Children(tb.cgroup.path().to_path_buf());
    let n = u64::from(egressd_common::SUMMARY_ENTRIES) + 100;
    agent.signal(libc::SIGSTOP);
    let out = child(&tb, CGROUPS_ARG, &[&n.to_string(), "0"])?.output();
    agent.signal(libc::SIGCONT);
    let (filled, refused) = child_said(out)?;
    if filled != n || refused != n {
        return Err(format!("filler: {refused} of {filled} attempts refused with EPERM").into());
    }
    // The filler's records, then two seconds end.
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_millis(2500));
    let out = child(&tb, FLOOD_ARG, &["1500", "0", "0", "udp"])?.output();
    let (attempts, refused) = child_said(out)?;
    if attempts == 0 || refused != attempts {
        return Err(format!("flood: {refused} of {attempts} attempts refused with EPERM").into());
    }
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, _, _) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let of = |why: &str| -> u64 {
        recs.iter()
            .filter(|r| r["type"] == "connection_summary" && r["rule"]["name"] == why)
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let overflow = of("summary_table_full");
    let own: u64 = recs
        .iter()
        .filter(|r| {
            r["type"] == "connection_summary"
                && r["cgroup"]["id"] != 0
                && r["hook"] == "cgroup/sendmsg4"
        })
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let lost = stop["lost"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX);
    let line = format!(
        "{n} cgroups filled the table; {attempts} flood attempts a few seconds later: \
         {own} aggregated under their cgroup, {overflow} past a full table, ringbuf_full {lost}"
    );
    println!("{line}");
    agree(&line, &by, &kernel)?;
    if own == 0 || overflow != 0 || lost != 0 {
        return Err(format!("{line}: want the flood aggregated under its cgroup").into());
    }
    Ok(())
}

/// A local user requesting `/metrics` in a loop during a flood. Each scrape used to end the
/// summary interval, so the record budget (`summary_after`, records per key and second)
/// was spent anew at every scrape and the flood came through as records instead of
/// summaries; and each scrape read every counter map on the daemon's loop. The interval is
/// the daemon's second whatever the scrapes: the flood's key writes at most its budget a
/// second.
pub fn budget_kept_under_scrape_loop() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = tempdir()?;
    let budget = 10u64;
    let text = with_big_queue(&policy("enforce").replace(
        "suppress_window_ms = 0",
        &format!("suppress_window_ms = 0\nsummary_after = {budget}"),
    ));
    let cfg = write_config(&dir, &text)?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Agent::start_at(&tb, &cfg, &["--metrics", &addr])?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if matches!(http_get_now(port, "/metrics"), Ok((200, _))) {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let millis = 2000u64;
    let out = child(&tb, FLOOD_ARG, &[&millis.to_string(), "0", "0", "udp"])?.output();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u64 = scrapers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let (attempts, refused) = child_said(out)?;
    if attempts == 0 || refused != attempts {
        return Err(format!("flood: {refused} of {attempts} attempts refused with EPERM").into());
    }
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, _, summarized) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let records = recs
        .iter()
        .filter(|r| r["type"] == "connection" && r["hook"] == "cgroup/sendmsg4")
        .count() as u64;
    // The flood's seconds, one more for its last sends, and one for the boundaries.
    let most = budget * (millis / 1000 + 2);
    let line = format!(
        "{scrapes} scrapes during {attempts} flood attempts: {records} records, \
         {summarized} attempts summarized (budget {budget} a second: at most {most} records)"
    );
    println!("{line}");
    agree(&line, &by, &kernel)?;
    if scrapes < 3 || records > most {
        return Err(format!("{line}: want the budget kept under the scrapes").into());
    }
    Ok(())
}

/// Issue 13 item 1, the summary table full: more cgroups than the table has keys
/// ([`egressd_common::SUMMARY_ENTRIES`]) each make an attempt, then the last floods; its
/// attempts that neither the ring buffer nor the (full) table takes are counted by hook,
/// region and verdict in the kernel and reported at the stop (`connection_summary`, rule
/// `summary_table_full`), so records and kernel counters still agree exactly and nothing
/// counts as lost.
pub fn summary_table_full() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let text = with_big_queue(&policy("enforce"));
    let mut agent = Agent::start_with(&tb, &text)?;
    let _children = Children(tb.cgroup.path().to_path_buf());
    let n = u64::from(egressd_common::SUMMARY_ENTRIES) + 100;
    // The daemon stopped while the child runs: the ring buffer (about 10,000 records) fills
    // whatever the machine's pace, so the flood's attempts past it, with no summary entry
    // left for their key, must be counted as overflow. (Reading as it goes, a daemon that
    // keeps up with a slow VM's flood never lets it fill.)
    agent.signal(libc::SIGSTOP);
    let out = child(&tb, CGROUPS_ARG, &[&n.to_string(), "2000"])?.output();
    agent.signal(libc::SIGCONT);
    let (attempts, refused) = child_said(out)?;
    if attempts <= n || refused != attempts {
        return Err(format!("{refused} of {attempts} attempts refused with EPERM").into());
    }
    // Reported within a second of running again, not only at the stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r = agent.wait_for("connection_summary", left)?;
        if r["rule"]["name"] == "summary_table_full" {
            break;
        }
    }
    // The ring buffer's backlog written before the stop (a VM writes a few thousand
    // records a second).
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(300))?;
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (by, summaries, summarized) = accounted(&recs);
    let kernel = kernel_counts(stop);
    let overflow: u64 = recs
        .iter()
        .filter(|r| r["type"] == "connection_summary" && r["rule"]["name"] == "summary_table_full")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let lost = stop["lost"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX);
    let line = format!(
        "{n} cgroups, {attempts} attempts: {summaries} summaries counting {summarized} \
         ({overflow} past the full table), ringbuf_full {lost}"
    );
    println!("{line}");
    agree(&line, &by, &kernel)?;
    if overflow == 0 || lost != 0 {
        return Err(
            format!("{line}: want attempts past the full table reported, none lost").into(),
        );
    }
    Ok(())
}
