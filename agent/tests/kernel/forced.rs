//! Device-forced next hops (issue 21): a socket forced onto the interface facing the denied
//! us host (`SO_BINDTODEVICE`, `IP_PKTINFO`, `IP_UNICAST_IF`) sends to the *allowed* eu
//! address. No route to it leaves through that interface, so the kernel assumes it is on
//! that link and asks the link who has it: here the us host answers (it holds the eu
//! address as well), and without the next-hop check the datagram or SYN reaches it. The
//! daemon runs in the client namespace; a packet socket in the us namespace sees what
//! reaches that link. Forwarding is off everywhere (the check needs no FIB helper).
use std::time::Duration;

use egressd_testbed::{EU_V4, PORT, Testbed, forced::PAYLOAD};
use libtest_mimic::Failed;
use serde_json::Value;

use super::{
    harness::{
        LiveProbe, assert_field, expect_ok, policy, probe, require_root, stop_record, temp_dir,
        testbed,
    },
    nexthop::{Sniffer, at, forwarding},
    tc::start_in_client,
};

/// `ip ARGS`, failing the test with its stderr.
pub(super) fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// `ip route OP 198.18.1.0/24 dev veth-eu table TABLE` in namespace `ns` (the eu subnet's
/// route through the eu-facing interface).
fn eu_route(ns: &str, op: &str, table: &str) -> Result<(), Failed> {
    ip(&[
        "-n",
        ns,
        "route",
        op,
        "198.18.1.0/24",
        "dev",
        "veth-eu",
        "table",
        table,
    ])
}

/// The us host answers for the eu address too (as a host on a denied link may).
fn us_answers_for_eu(tb: &Testbed) -> Result<(), Failed> {
    ip(&[
        "-n",
        tb.us.name(),
        "addr",
        "add",
        "198.18.1.2/32",
        "dev",
        "veth0",
    ])
}

/// A datagram of the `forced` probes.
fn datagram(f: &[u8]) -> bool {
    f.windows(PAYLOAD.len()).any(|w| w == PAYLOAD)
}

/// A TCP SYN to the eu address and [`PORT`] (Ethernet, IPv4 without options).
fn syn_to_eu(f: &[u8]) -> bool {
    f.len() >= 48
        && f[12..14] == [0x08, 0x00]
        && f[23] == 6
        && f[30..34] == [198, 18, 1, 2]
        && f[36..38] == PORT.to_be_bytes()
        && f[47] & 0x02 != 0
}

/// Runs `p` in its own probe process and returns what reached the sniffer's link.
fn sniffed(tb: &Testbed, s: &Sniffer, p: &str, want: Matcher) -> Result<(u64, bool), Failed> {
    s.take_matching(|_| false);
    let r = probe(tb, 1, &[p.to_owned()])?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((s.take_matching(want), r[0].ok))
}

/// Datagrams the eu host served, waited for up to a second to reach `want`.
fn served_eu(tb: &Testbed, want: u64) -> u64 {
    for _ in 0..20 {
        if tb.served().0 >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tb.served().0
}

/// Sends `p` and checks whether the eu host served it.
fn reaches_eu(tb: &Testbed, p: &str) -> Result<bool, Failed> {
    let before = tb.served().0;
    let _ = probe(tb, 1, &[p.to_owned()])?;
    Ok(served_eu(tb, before + 1) > before)
}

/// Which sniffed frames a probe's traffic is.
type Matcher = fn(&[u8]) -> bool;

/// The probes that force the us-facing interface onto a datagram or connection to eu.
fn forced_probes() -> Vec<(String, Matcher)> {
    vec![
        (format!("dev-udp://{EU_V4}:{PORT}/veth-us"), datagram),
        (format!("pktinfo-udp://{EU_V4}:{PORT}/veth-us"), datagram),
        (format!("unicastif-udp://{EU_V4}:{PORT}/veth-us"), datagram),
        (format!("dev-tcp://{EU_V4}:{PORT}/veth-us"), syn_to_eu),
    ]
}

/// `cgroup_skb/egress` events of the next-hop check.
fn forced_events(recs: &[Value]) -> Vec<&Value> {
    at(recs, "cgroup_skb/egress")
        .into_iter()
        .filter(|e| {
            e["rule"]["name"]
                .as_str()
                .is_some_and(|r| r.contains("next hop forced"))
        })
        .collect()
}

/// Enforce mode: each forced send to eu through the us-facing interface is dropped (nothing
/// reaches the us link), reported and counted as `next_hop_forced`. Normal traffic passes
/// with forwarding off: plain UDP to eu, a datagram forced onto the eu-facing interface (a
/// route leaves there), and one routed by an `ip rule fwmark` table added after the daemon
/// started (the mirror follows route changes). Removing that table's route takes effect:
/// the same forced send through the eu interface is then denied too.
pub fn forced_next_hop_denied() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-forced-")?;
    forwarding(&tb.client, false)?;
    us_answers_for_eu(&tb)?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    let sniffer = Sniffer::open(&tb.us)?;
    let mut leaks = Vec::new();
    for (p, want) in forced_probes() {
        let (got, ok) = sniffed(&tb, &sniffer, &p, want)?;
        if got != 0 || ok {
            leaks.push(format!(
                "{p}: {got} frame(s) reached the us link (probe ok: {ok})"
            ));
        }
    }
    if !leaks.is_empty() {
        return Err(leaks.join("; ").into());
    }
    // Normal traffic, forwarding off.
    let plain = format!("udp-sendto://{EU_V4}:{PORT}");
    expect_ok(&probe(&tb, 1, std::slice::from_ref(&plain))?[0])?;
    let eu_dev = format!("dev-udp://{EU_V4}:{PORT}/veth-eu");
    if !reaches_eu(&tb, &eu_dev)? {
        return Err(
            format!("{eu_dev}: a send through the interface eu is routed by was denied").into(),
        );
    }
    // Policy routing: eu only in table 100, for mark 7 (added while the daemon runs).
    let ns = tb.client.name();
    eu_route(ns, "add", "100")?;
    ip(&[
        "-n", ns, "rule", "add", "fwmark", "7", "lookup", "100", "pref", "100",
    ])?;
    eu_route(ns, "del", "main")?;
    std::thread::sleep(Duration::from_millis(300));
    let marked = format!("mark-udp://{EU_V4}:{PORT}/7");
    if !reaches_eu(&tb, &marked)? {
        return Err(format!("{marked}: a send routed by an ip rule table was denied").into());
    }
    // The last route through veth-eu to eu goes: a forced send there is the on-link fallback.
    eu_route(ns, "del", "100")?;
    std::thread::sleep(Duration::from_millis(300));
    if reaches_eu(&tb, &eu_dev)? {
        return Err(format!("{eu_dev}: allowed after its route was removed").into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let ev = forced_events(&recs);
    // One per UDP probe, at least one for the SYN(s), one after the removal.
    if ev.len() < 5 {
        return Err(format!("expected >= 5 next_hop_forced events, got {ev:#?}").into());
    }
    for e in &ev {
        assert_field(e, "/verdict", "deny")?;
        assert_field(e, "/destination/ip", EU_V4)?;
        assert_field(e, "/process/attribution", "socket_owner")?;
    }
    let n = stop["fail_closed"]["next_hop_forced"].as_u64().unwrap_or(0);
    if n < 5 {
        return Err(format!("fail_closed.next_hop_forced {n}, want >= 5: {stop}").into());
    }
    Ok(())
}

/// A verdict cached on a long-lived socket meets a route change: a socket bound to the
/// eu-facing interface sends to eu while a route leaves there (allowed; the verdict is
/// cached on the socket with the route epoch it was checked under), the route goes, and the
/// same socket's next datagram (the on-link fallback) is dropped, reported and counted: the
/// cached allow is checked again under the new epoch, by the fast path and the walk alike.
pub fn forced_next_hop_cached() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-forced-")?;
    forwarding(&tb.client, false)?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    let served = tb.served().0;
    let mut live = LiveProbe::start(&tb, &[format!("dev-udp-hold://{EU_V4}:{PORT}/veth-eu")])?;
    expect_ok(&live.next()?)?;
    if served_eu(&tb, served + 1) <= served {
        return Err("the first datagram, routed through veth-eu, did not reach eu".into());
    }
    let ns = tb.client.name();
    eu_route(ns, "del", "main")?;
    // The daemon's route mirror follows the change (and bumps the epoch).
    std::thread::sleep(Duration::from_millis(300));
    let served = tb.served().0;
    live.resume()?;
    let second = live.next()?;
    if served_eu(&tb, served + 1) > served {
        return Err(format!(
            "the cached allow outlived its route: the second datagram reached eu ({second:?})"
        )
        .into());
    }
    if second.ok {
        return Err(format!("the second datagram was sent: {second:?}").into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let ev = forced_events(&recs);
    if ev.len() != 1 {
        return Err(format!("expected 1 next_hop_forced event, got {ev:#?}").into());
    }
    assert_field(ev[0], "/verdict", "deny")?;
    assert_field(ev[0], "/destination/ip", EU_V4)?;
    let n = stop["fail_closed"]["next_hop_forced"].as_u64().unwrap_or(0);
    if n != 1 {
        return Err(format!("fail_closed.next_hop_forced {n}, want 1: {stop}").into());
    }
    Ok(())
}

/// Audit mode: the forced datagram reaches the us link (and is echoed), reported as audit with the
/// next-hop reason; no fail-closed denial is counted.
pub fn forced_next_hop_audit() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-forced-")?;
    forwarding(&tb.client, false)?;
    us_answers_for_eu(&tb)?;
    let agent = start_in_client(&tb, &dir, &policy("audit"), &[])?;
    let sniffer = Sniffer::open(&tb.us)?;
    let p = format!("dev-udp://{EU_V4}:{PORT}/veth-us");
    let (got, _) = sniffed(&tb, &sniffer, &p, datagram)?;
    // The us host's echo passes the sniffer too.
    if got == 0 {
        return Err("audit: the datagram should reach us".into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let ev = forced_events(&recs);
    if ev.len() != 1 {
        return Err(format!("expected 1 next_hop_forced event, got {ev:#?}").into());
    }
    assert_field(ev[0], "/verdict", "audit")?;
    if stop["fail_closed"].get("next_hop_forced").is_some() {
        return Err(format!("audit counted a denial: {}", stop["fail_closed"]).into());
    }
    Ok(())
}

/// Measurement, not a check, run only with `EGRESSD_COST=1` (it switches the host-wide
/// `kernel.bpf_stats_enabled` on and off): BPF run-time statistics of `cgroup_skb/egress`
/// over 2,000 fresh UDP sockets (each first packet misses the verdict cache), printed.
pub fn forced_next_hop_cost() -> Result<(), Failed> {
    if std::env::var_os("EGRESSD_COST").is_none() {
        return Ok(());
    }
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-forced-")?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").map_err(|e| e.to_string())?;
    let stats = || -> (u64, u64) {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show", "name", "egressd_skb_egress"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut t = (0, 0);
        for l in out.lines() {
            for v in serde_json::Deserializer::from_str(l)
                .into_iter::<Value>()
                .flatten()
            {
                let progs = if v.is_array() {
                    v.as_array().cloned().unwrap_or_default()
                } else {
                    vec![v]
                };
                for p in progs {
                    t.0 += p["run_time_ns"].as_u64().unwrap_or(0);
                    t.1 += p["run_cnt"].as_u64().unwrap_or(0);
                }
            }
        }
        t
    };
    for (label, p) in [
        ("fresh sockets", format!("udp-sendto://{EU_V4}:{PORT}*2000")),
        (
            "fresh sockets, device-bound",
            format!("dev-udp://{EU_V4}:{PORT}/veth-eu*2000"),
        ),
    ] {
        let a = stats();
        let _ = probe(&tb, 1, &[p])?;
        let b = stats();
        let (ns, n) = (b.0 - a.0, b.1 - a.1);
        eprintln!(
            "COST {label}: {n} runs, {} ns/run",
            ns.checked_div(n).unwrap_or(0)
        );
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    drop(agent);
    Ok(())
}
