//! The first working egressd: connect and sendmsg hooks, verdicts, events, counters.
use egressd_testbed::{EU_V4, EU_V6, PORT, US_V4, US_V6};
use libtest_mimic::Failed;
use serde_json::Value;
use std::process::Command;

use super::harness::*;

fn check_family(v4: bool) -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    check_verdicts(&tb, agent, v4)
}

/// `ipv4_lookup = "table"`: the same verdicts and events as with the trie, the allowed host
/// in a /25 (a second-level chunk of the table) and the denied one in a /24 (first level).
pub fn enforce_ipv4_table() -> Result<(), Failed> {
    let tb = testbed()?;
    let text = format!(
        "ipv4_lookup = \"table\"\n{}",
        policy("enforce").replace("198.18.1.0/24", "198.18.1.0/25")
    );
    let agent = Agent::start_with(&tb, &text)?;
    let start = agent
        .records()
        .iter()
        .find(|r| r["type"] == "agent_start")
        .cloned();
    let lookup = start.as_ref().map(|r| r["policy"]["ipv4_lookup"].clone());
    if lookup != Some(Value::from("table")) {
        return Err(format!("agent_start says ipv4_lookup {lookup:?}, not \"table\"").into());
    }
    check_verdicts(&tb, agent, true)
}

/// TCP and connected UDP to the allowed and the denied host of one family: verdicts, deny
/// events, and nothing served by the denied host.
fn check_verdicts(tb: &egressd_testbed::Testbed, agent: Agent, v4: bool) -> Result<(), Failed> {
    let (eu, us) = if v4 { (EU_V4, US_V4) } else { (EU_V6, US_V6) };
    let r = probe(tb, 1, &[tcp(eu), tcp(us), udp(eu), udp(us)])?;
    expect_ok(&r[0])?;
    expect_eperm(&r[1])?;
    expect_ok(&r[2])?;
    expect_eperm(&r[3])?;
    let recs = agent.stop()?;
    let ev = connections(&recs);
    let hook = if v4 {
        "cgroup/connect4"
    } else {
        "cgroup/connect6"
    };
    if ev.len() != 2 {
        return Err(format!("expected 2 deny events, got {ev:#?}").into());
    }
    // TCP is refused at connect(), which sends a SYN; a UDP connect() sends nothing, so
    // the first datagram is refused, by the packet hook.
    for (e, (transport, hook)) in ev.iter().zip([("tcp", hook), ("udp", "cgroup_skb/egress")]) {
        assert_field(e, "/verdict", "deny")?;
        assert_field(e, "/hook", hook)?;
        assert_field(e, "/destination/ip", us)?;
        assert_field(e, "/destination/region", "us")?;
        assert_field(e, "/network/transport", transport)?;
    }
    // The listener in "us" must never have seen a thing.
    let (_, served_us, _) = tb.served();
    if served_us != 0 {
        return Err(format!("the us host served {served_us} connections: a leak").into());
    }
    Ok(())
}

pub fn enforce_ipv4() -> Result<(), Failed> {
    check_family(true)
}

pub fn enforce_ipv6() -> Result<(), Failed> {
    check_family(false)
}

pub fn mapped() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let mapped_us = format!("::ffff:{US_V4}");
    let mapped_eu = format!("::ffff:{EU_V4}");
    let r = probe(
        &tb,
        1,
        &[
            tcp(&mapped_us),
            tcp(&mapped_eu),
            udp(&mapped_us),
            sendto(&mapped_us),
        ],
    )?;
    expect_eperm(&r[0])?;
    expect_ok(&r[1])?;
    expect_eperm(&r[2])?;
    expect_eperm(&r[3])?;
    let recs = agent.stop()?;
    let ev = connections(&recs);
    if ev.len() != 3 {
        return Err(format!("expected 3 deny events, got {ev:#?}").into());
    }
    // connect() on an AF_INET6 socket runs connect6 with the mapped address: TCP is refused
    // there. A UDP connect() sends nothing; its send() on a mapped destination is handed to
    // the IPv4 UDP stack with the address, which runs sendmsg4 and refuses it there, as it
    // refuses an unconnected sendto(). The two datagrams' events may come in either order.
    let mut hooks: Vec<&str> = ev.iter().filter_map(|e| e["hook"].as_str()).collect();
    hooks.sort_unstable();
    if hooks != ["cgroup/connect6", "cgroup/sendmsg4", "cgroup/sendmsg4"] {
        return Err(format!("hooks {hooks:?}, want connect6 and twice sendmsg4").into());
    }
    for e in &ev {
        let (hook, mapped) = if e["hook"] == "cgroup/connect6" {
            ("cgroup/connect6", "true")
        } else {
            ("cgroup/sendmsg4", "false")
        };
        assert_field(e, "/destination/ip", US_V4)?;
        assert_field(e, "/destination/mapped", mapped)?;
        assert_field(e, "/destination/region", "us")?;
        assert_field(e, "/network/type", "ipv4")?;
        assert_field(e, "/hook", hook)?;
    }
    Ok(())
}

/// A name lookup is not an attempt: glibc's getaddrinfo connects a UDP socket to each
/// candidate address to sort them (RFC 6724) and sends nothing. Such connects to denied
/// destinations (IPv4, IPv6, IPv4-mapped) give no event and leave every counter at zero;
/// a datagram on such a socket is refused with EPERM and reported once, by the packet hook.
pub fn lookup_is_not_an_attempt() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let mapped_us = format!("::ffff:{US_V4}");
    let lookups: Vec<String> = [US_V4, US_V6, mapped_us.as_str(), EU_V4]
        .iter()
        .map(|h| udp(h).replacen("udp", "udp-connect", 1))
        .collect();
    for r in probe(&tb, 1, &lookups)? {
        expect_ok(&r)?;
    }
    let quiet = agent.stop()?;
    if !connections(&quiet).is_empty() {
        return Err(format!("a lookup produced events: {:#?}", connections(&quiet)).into());
    }
    let stop = stop_record(&quiet)?;
    if stop["counters"].as_array().is_some_and(|c| !c.is_empty()) {
        return Err(format!("a lookup moved counters: {}", stop["counters"]).into());
    }
    let agent = Agent::start(&tb, "enforce")?;
    let r = probe(&tb, 1, &[udp(US_V4), udp(US_V6)])?;
    expect_eperm(&r[0])?;
    expect_eperm(&r[1])?;
    let recs = agent.stop()?;
    let ev = connections(&recs);
    if ev.len() != 2 {
        return Err(format!("want one event per refused datagram, got {ev:#?}").into());
    }
    for e in &ev {
        assert_field(e, "/hook", "cgroup_skb/egress")?;
        assert_field(e, "/verdict", "deny")?;
        assert_field(e, "/destination/region", "us")?;
        assert_field(e, "/process/attribution", "socket_owner")?;
    }
    let stop = stop_record(&recs)?;
    let denied = counter(stop, "cgroup_skb/egress", "us", "deny");
    if denied != 2 {
        return Err(format!("want 2 denied datagrams counted, got {denied}: {stop}").into());
    }
    Ok(())
}

pub fn unconnected_udp() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let r = probe(
        &tb,
        1,
        &[sendto(EU_V4), sendto(US_V4), sendto(EU_V6), sendto(US_V6)],
    )?;
    expect_ok(&r[0])?;
    expect_eperm(&r[1])?;
    expect_ok(&r[2])?;
    expect_eperm(&r[3])?;
    let recs = agent.stop()?;
    let hooks: Vec<_> = connections(&recs)
        .iter()
        .map(|e| e["hook"].clone())
        .collect();
    if hooks != ["cgroup/sendmsg4", "cgroup/sendmsg6"] {
        return Err(format!("expected sendmsg4 and sendmsg6 events, got {hooks:?}").into());
    }
    if tb.served().1 != 0 {
        return Err("a datagram reached the us host".into());
    }
    Ok(())
}

pub fn unknown_region() -> Result<(), Failed> {
    let tb = testbed()?;
    // Without egressd this address is unroutable from the client (ENETUNREACH); with it the
    // attempt must be refused before routing (EPERM).
    let before = probe(&tb, 1, &[tcp("198.18.3.3")])?;
    if before[0].errno == Some(EPERM) {
        return Err("EPERM before egressd started: the test cannot tell the cases apart".into());
    }
    let agent = Agent::start(&tb, "enforce")?;
    let r = probe(&tb, 1, &[tcp("198.18.3.3"), tcp("2001:db8:3::3")])?;
    expect_eperm(&r[0])?;
    expect_eperm(&r[1])?;
    let recs = agent.stop()?;
    for e in connections(&recs) {
        assert_field(e, "/destination/region", "unknown")?;
        assert_field(e, "/verdict", "deny")?;
    }
    if connections(&recs).len() != 2 {
        return Err("expected 2 events".into());
    }
    Ok(())
}

pub fn loopback() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let r = probe(
        &tb,
        1,
        &[
            tcp("127.0.0.1"),
            tcp("::1"),
            udp("127.0.0.1"),
            tcp("::ffff:127.0.0.1"),
        ],
    )?;
    for x in &r {
        expect_ok(x)?;
    }
    let recs = agent.stop()?;
    if !connections(&recs).is_empty() {
        return Err("loopback attempts produced events".into());
    }
    let stop = stop_record(&recs)?;
    // Three TCP connect()s; the UDP datagrams (the probe's and the echo it sends back over
    // loopback) are judged by the packet hook: a UDP connect() sends nothing.
    let local = counter(stop, "cgroup/connect4", "local", "allow")
        + counter(stop, "cgroup/connect6", "local", "allow");
    let udp = counter(stop, "cgroup_skb/egress", "local", "allow");
    if local != 3 || udp == 0 {
        return Err(format!(
            "expected 3 local connects and UDP packets, got {local} and {udp}: {stop}"
        )
        .into());
    }
    Ok(())
}

pub fn audit() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "audit")?;
    let r = probe(&tb, 1, &[tcp(US_V4), udp(US_V6), sendto(US_V4), tcp(EU_V4)])?;
    for x in &r {
        expect_ok(x)?;
    }
    let recs = agent.stop()?;
    let ev = connections(&recs);
    if ev.len() != 3 {
        return Err(format!("expected 3 audit events, got {ev:#?}").into());
    }
    for e in &ev {
        assert_field(e, "/verdict", "audit")?;
        assert_field(e, "/policy/mode", "audit")?;
        assert_field(e, "/destination/region", "us")?;
    }
    if tb.served().1 < 3 {
        return Err(format!(
            "audit mode should let 3 attempts reach us, served {:?}",
            tb.served()
        )
        .into());
    }
    Ok(())
}

pub fn counters() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let n = 25;
    let r = probe(
        &tb,
        n,
        &[
            tcp(EU_V4),
            tcp(US_V4),
            tcp(US_V6),
            sendto(US_V4),
            url("tcp-echo", EU_V6, PORT),
        ],
    )?;
    if r.len() != 5 * n as usize || r.iter().any(|r| r.probe.contains(EU_V6) && !r.ok) {
        return Err(format!("probe did not make every attempt: {r:?}").into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let n = u64::from(n);
    for (hook, region, verdict) in [
        ("cgroup/connect4", "eu", "allow"),
        ("cgroup/connect4", "us", "deny"),
        ("cgroup/connect6", "us", "deny"),
        ("cgroup/sendmsg4", "us", "deny"),
        // Connections that carry data are counted once, at connect(): the packet hook
        // confirms them without counting them again.
        ("cgroup/connect6", "eu", "allow"),
    ] {
        let got = counter(stop, hook, region, verdict);
        if got != n {
            return Err(format!("{hook} {region} {verdict}: {got} != {n} attempts: {stop}").into());
        }
    }
    let again = counter(stop, "cgroup_skb/egress", "eu", "allow");
    if again != 0 {
        return Err(format!("{again} allowed connections counted again at the packet hook").into());
    }
    let events = connections(&recs).len() as u64;
    let lost = stop["lost"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX);
    if events + lost != 3 * n || stop["connection_events"].as_u64() != Some(events) {
        return Err(format!("events {events} + lost {lost} != {} denials", 3 * n).into());
    }
    Ok(())
}

pub fn event_fields() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let before = time_now();
    let r = probe(&tb, 1, &[tcp(US_V4)])?;
    expect_eperm(&r[0])?;
    let recs = agent.stop()?;
    let ev = connections(&recs);
    let e = ev.first().ok_or("no event")?;
    let ts = e["@timestamp"].as_str().ok_or("no @timestamp")?;
    // RFC 3339, UTC, nanoseconds: 2026-11-29T09:30:00.123456789Z
    let ok_shape = ts.len() == 30
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.';
    if !ok_shape || ts[..19] < before[..19] {
        return Err(format!("timestamp {ts} (test started {before})").into());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_field(e, "/host/name", host.trim())?;
    assert_field(e, "/destination/port", &PORT.to_string())?;
    assert_field(e, "/network/transport", "tcp")?;
    assert_field(e, "/network/iana_number", "6")?;
    assert_field(e, "/user/id", "0")?;
    assert_field(e, "/process/attribution", "task")?;
    assert_field(e, "/policy/generation", "1")?;
    let pid = e
        .pointer("/process/pid")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let comm = e
        .pointer("/process/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if pid == 0 || comm.is_empty() {
        return Err(format!("process fields missing: {e}").into());
    }
    // The probe is this test binary re-executed: its comm is a prefix of the file name.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.starts_with(comm) {
        return Err(format!("process.name {comm} is not the probe ({name})").into());
    }
    Ok(())
}

fn time_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn unprivileged() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = std::env::temp_dir().join(egressd_testbed::unique("egressd-test-"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("policy.toml");
    std::fs::write(&cfg, egressd_testbed::POLICY.replace("{mode}", "enforce"))
        .map_err(|e| e.to_string())?;
    let _guard = TempDir(dir);
    // Drop to nobody with no capabilities (util-linux setpriv).
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || !err.contains("insufficient privileges")
        || !err.contains("run it as root")
    {
        return Err(format!("expected a privileges error, got {}: {err}", out.status).into());
    }
    Ok(())
}
