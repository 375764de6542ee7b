//! The BPF LSM cover (issue 12 part 1, issue 21 item 2): packet sockets and the next hop of
//! raw sockets that write their own IP header. Each test decides by probing the kernel
//! (`bpf` in /sys/kernel/security/lsm, as `egressd coverage` reads it) which branch it
//! asserts: where the BPF LSM is active, the attempts are denied (or reported) as the
//! policy says; where it is not, the coverage report, `agent_start` and the send itself
//! show the gap. Neither branch passes vacuously.
use std::{process::Command, time::Duration};

use egressd_testbed::{EU_V4, PORT, Testbed, US_V4};
use libtest_mimic::Failed;
use serde_json::Value;

use super::harness::{
    Agent, assert_field, connections, counter, expect_eperm, expect_ok, patience, policy, probe,
    require_root, stop_record, testbed,
};

/// Hand-built IPv4/UDP datagrams to the us host on AF_PACKET SOCK_DGRAM and SOCK_RAW.
pub fn packet_probes() -> Vec<String> {
    vec![
        format!("packet-dgram://{US_V4}:{PORT}"),
        format!("packet-raw://{US_V4}:{PORT}"),
    ]
}

/// A raw IP_HDRINCL datagram whose header names the eu host (allowed), sent to the us host
/// (denied) as next hop.
fn hdrincl_probe() -> String {
    format!("hdrincl://{US_V4}:{PORT}/{EU_V4}")
}

/// `egressd coverage --json`: status of row `path`.
pub fn coverage_status(path: &str) -> Result<String, Failed> {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["coverage", "--json"])
        .output()
        .map_err(|e| format!("egressd coverage: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "coverage --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    v["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["path"] == path)
        .and_then(|p| p["status"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("no row {path} in {v}").into())
}

/// Which branch to assert: whether the daemon put the LSM hooks in force
/// (`agent_start.coverage`). Checked against what the test reads itself: without `bpf` in
/// /sys/kernel/security/lsm the LSM cannot judge, so a daemon claiming it does fails the
/// test; with `bpf` listed, a kernel may still refuse LSM programs (this project's 6.18
/// machines refuse BPF_PROG_TYPE_LSM loads with EPERM: `bpftool feature` agrees), and then
/// the not-covered branch must hold in full.
pub fn lsm_in_force(agent: &Agent) -> Result<bool, Failed> {
    let enforced = start_lists(agent, "enforced", "packet_socket");
    let listed =
        egressd::kernel::coverage::bpf_lsm_active() == egressd::kernel::coverage::Probe::Yes;
    if enforced && !listed {
        return Err("agent_start says packet_socket is enforced without an active BPF LSM".into());
    }
    Ok(enforced)
}

/// `agent_start.coverage.LIST` holds `path`.
pub fn start_lists(agent: &Agent, list: &str, path: &str) -> bool {
    agent
        .records()
        .iter()
        .find(|r| r["type"] == "agent_start")
        .and_then(|r| r["coverage"][list].as_array())
        .is_some_and(|a| a.iter().any(|p| p == path))
}

/// Datagrams the us host received, waited for up to a second to reach `want`.
pub fn served_us(tb: &Testbed, want: u64) -> u64 {
    for _ in 0..20 {
        if tb.served().1 >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tb.served().1
}

/// Where the BPF LSM is not active: the report, `agent_start` and the send show the gap.
/// `packet_socket` and `raw_next_hop` may be `partial` (the `tc/egress` fallback, see
/// `tc.rs` and `nexthop.rs`), which judges
/// frames on the interfaces of the daemon's network namespace only: this daemon runs in
/// the host's, the probe sends from the client namespace.
fn not_covered(tb: &Testbed, agent: Agent) -> Result<(), Failed> {
    for path in ["packet_socket", "raw_next_hop"] {
        let st = coverage_status(path)?;
        if st == "enforced"
            && egressd::kernel::coverage::bpf_lsm_active() != egressd::kernel::coverage::Probe::Yes
        {
            return Err(format!("{path}: coverage says {st} without an active BPF LSM").into());
        }
        let partial = start_lists(&agent, "partial", path);
        if !partial && !start_lists(&agent, "not_covered", path) {
            return Err(format!("agent_start.coverage.not_covered lacks {path}").into());
        }
    }
    // The gap is real: the frames leave (this is what the README warns about).
    let r = probe(tb, 1, &packet_probes())?;
    for x in &r {
        expect_ok(x)?;
    }
    let got = served_us(tb, 2);
    if got < 2 {
        return Err(format!("packet frames should reach us without the LSM, served {got}").into());
    }
    agent.stop()?;
    Ok(())
}

/// Enforce mode, default `packet_sockets` (deny): socket() of both packet socket types
/// fails with EPERM, an event names the LSM hook, the counters count it; the IP_HDRINCL
/// datagram to a denied next hop is refused at sendto.
pub fn packet_sockets_denied() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    if !lsm_in_force(&agent)? {
        return not_covered(&tb, agent);
    }
    for path in ["packet_socket", "raw_next_hop"] {
        if !start_lists(&agent, "enforced", path) {
            return Err(format!("agent_start.coverage.enforced lacks {path}").into());
        }
    }
    let before = tb.served().1;
    let mut probes = packet_probes();
    probes.push(hdrincl_probe());
    let r = probe(&tb, 1, &probes)?;
    for x in &r {
        expect_eperm(x)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    if tb.served().1 != before {
        return Err(format!("a denied frame reached us: served {:?}", tb.served()).into());
    }
    let recs = agent.stop()?;
    let ev = connections(&recs);
    let created: Vec<&&Value> = ev
        .iter()
        .filter(|e| e["hook"] == "lsm/socket_create")
        .collect();
    if created.len() != 2 {
        return Err(format!("expected 2 lsm/socket_create events, got {ev:#?}").into());
    }
    for e in &created {
        assert_field(e, "/verdict", "deny")?;
        assert_field(e, "/network/type", "packet")?;
        assert_field(e, "/rule/name", "packet_sockets")?;
        if e["network"]["ethertype"] != 0x0800 || e.get("destination").is_some() {
            return Err(format!("packet event fields: {e}").into());
        }
        if e["process"]["pid"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("packet event without the task: {e}").into());
        }
    }
    let hop: Vec<&&Value> = ev
        .iter()
        .filter(|e| e["hook"] == "lsm/socket_sendmsg")
        .collect();
    if hop.len() != 1 {
        return Err(format!("expected 1 lsm/socket_sendmsg event, got {ev:#?}").into());
    }
    assert_field(hop[0], "/verdict", "deny")?;
    assert_field(hop[0], "/destination/ip", US_V4)?;
    assert_field(hop[0], "/destination/region", "us")?;
    let stop = stop_record(&recs)?;
    let n = counter(stop, "lsm/socket_create", "unknown", "deny");
    if n != 2 {
        return Err(format!("lsm/socket_create deny counter {n}, want 2").into());
    }
    let n = counter(stop, "lsm/socket_sendmsg", "us", "deny");
    if n != 1 {
        return Err(format!("lsm/socket_sendmsg deny counter for us {n}, want 1").into());
    }
    Ok(())
}

/// Audit mode (default `packet_sockets` audit): the frames arrive and each socket is
/// reported; `packet_sockets = "allow"` in enforce mode: they arrive, nothing is reported.
pub fn packet_sockets_audit_and_allow() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "audit")?;
    if !lsm_in_force(&agent)? {
        return not_covered(&tb, agent);
    }
    let before = tb.served().1;
    let r = probe(&tb, 1, &packet_probes())?;
    for x in &r {
        expect_ok(x)?;
    }
    let got = served_us(&tb, before + 2);
    if got < before + 2 {
        return Err(format!("audit mode should let both frames reach us, served {got}").into());
    }
    let recs = agent.stop()?;
    let audits: Vec<&Value> = connections(&recs)
        .into_iter()
        .filter(|e| e["hook"] == "lsm/socket_create" && e["verdict"] == "audit")
        .collect();
    if audits.len() != 2 {
        return Err(format!("expected 2 audit events at socket_create, got {audits:#?}").into());
    }
    let stop = stop_record(&recs)?;
    if counter(stop, "lsm/socket_create", "unknown", "audit") != 2 {
        return Err(format!("audit counters: {}", stop["counters"]).into());
    }

    let text = policy("enforce").replace(
        "suppress_window_ms = 0",
        "suppress_window_ms = 0\npacket_sockets = \"allow\"",
    );
    let agent = Agent::start_with(&tb, &text)?;
    let before = tb.served().1;
    let r = probe(&tb, 1, &packet_probes())?;
    for x in &r {
        expect_ok(x)?;
    }
    let got = served_us(&tb, before + 2);
    if got < before + 2 {
        return Err(format!("packet_sockets = allow should let both through, served {got}").into());
    }
    let recs = agent.stop()?;
    let n = connections(&recs)
        .iter()
        .filter(|e| e["hook"].as_str().is_some_and(|h| h.starts_with("lsm/")))
        .count();
    if n != 0 {
        return Err(format!("packet_sockets = allow reported {n} events").into());
    }
    let stop = stop_record(&recs)?;
    if counter(stop, "lsm/socket_create", "unknown", "allow") != 2 {
        return Err(format!("allow counters: {}", stop["counters"]).into());
    }
    Ok(())
}

/// Runs the probe client from executable `exe` (a copy of this test binary, or itself).
fn probe_as(
    exe: &std::path::Path,
    tb: &Testbed,
    probes: &[String],
) -> Result<Vec<egressd_testbed::client::ProbeResult>, Failed> {
    let out = Command::new(exe)
        .arg(super::harness::PROBE_ARG)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name()])
        .args(probes)
        .output()
        .map_err(|e| format!("spawning probe {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    super::harness::parse_probe_output(&out.stdout)
}

/// The executable allowlist: `packet_socket_open` lets the listed executable (identified by
/// device and inode, not by name) create packet sockets but not send; a byte-identical copy
/// at another path is refused at `socket()`; `packet_socket_send` lets it send too.
pub fn packet_socket_executables() -> Result<(), Failed> {
    let tb = testbed()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir =
        super::harness::TempDir(std::env::temp_dir().join(egressd_testbed::unique("egressd-exe-")));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let copy = dir.0.join("kernel-copy");
    std::fs::copy(&me, &copy).map_err(|e| format!("copying the test binary: {e}"))?;
    let with = |key: &str| {
        policy("enforce").replace(
            "suppress_window_ms = 0",
            &format!(
                "suppress_window_ms = 0\n{key} = [{:?}]",
                me.display().to_string()
            ),
        )
    };
    let agent = Agent::start_with(&tb, &with("packet_socket_open"))?;
    if !lsm_in_force(&agent)? {
        return not_covered(&tb, agent);
    }
    let before = tb.served().1;
    let dgram = format!("packet-dgram://{US_V4}:{PORT}");
    let listed = probe_as(&me, &tb, std::slice::from_ref(&dgram))?;
    let copied = probe_as(&copy, &tb, std::slice::from_ref(&dgram))?;
    expect_eperm(&listed[0])?;
    if !listed[0]
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("sendto"))
    {
        return Err(format!(
            "the listed executable should open and fail at sendto: {:?}",
            listed[0]
        )
        .into());
    }
    expect_eperm(&copied[0])?;
    if !copied[0]
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("socket"))
    {
        return Err(format!("the copy should be refused at socket(): {:?}", copied[0]).into());
    }
    std::thread::sleep(Duration::from_millis(300));
    if tb.served().1 != before {
        return Err("a frame of an open-only executable reached us".into());
    }
    let recs = agent.stop()?;
    let ev = connections(&recs);
    let hooks: Vec<&str> = ev.iter().filter_map(|e| e["hook"].as_str()).collect();
    // The listed executable's send, then the copy's socket().
    if hooks != ["lsm/socket_sendmsg", "lsm/socket_create"] {
        return Err(format!("events: {ev:#?}").into());
    }

    let agent = Agent::start_with(&tb, &with("packet_socket_send"))?;
    let ok = probe_as(&me, &tb, std::slice::from_ref(&dgram))?;
    expect_ok(&ok[0])?;
    let got = served_us(&tb, before + 1);
    if got < before + 1 {
        return Err(
            format!("a send-allowed executable's frame should arrive, served {got}").into(),
        );
    }
    let copied = probe_as(&copy, &tb, std::slice::from_ref(&dgram))?;
    expect_eperm(&copied[0])?;
    agent.stop()?;
    Ok(())
}

/// Pinned LSM links: pinned under `DIR/links`, shown by `status`, kept after `kill -9`
/// (packet sockets still refused with no daemon), replaced by the next pinned start (tracing
/// links have no BPF_LINK_UPDATE), re-attached when removed behind egressd's back (a
/// `tamper_repaired` record), and gone after `egressd detach`.
pub fn pinned_lsm_links() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = super::harness::TempDir(
        std::env::temp_dir().join(egressd_testbed::unique("egressd-lsmpin-")),
    );
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let cfg = dir.0.join("policy.toml");
    std::fs::write(&cfg, policy("enforce")).map_err(|e| e.to_string())?;
    let pins = std::path::Path::new("/sys/fs/bpf").join(egressd_testbed::unique("egressd-lsm-"));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let dir = egressd::kernel::pin::PinDir::new(&self.0);
            if dir.exists() {
                let _ = dir.remove_all();
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pins.clone());
    let pin_arg = pins.display().to_string();
    let agent = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    let links = pins.join("links");
    let lsm_pins = ["lsm_socket_create", "lsm_socket_sendmsg"];
    if !lsm_in_force(&agent)? {
        // Nothing of the LSM is pinned where it does not run.
        for p in lsm_pins {
            if links.join(p).exists() {
                return Err(format!("{p} pinned though the LSM hooks do not run").into());
            }
        }
        agent.kill9()?;
        let _ = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["detach", "--pin-dir", &pin_arg])
            .output();
        return Ok(());
    }
    for p in lsm_pins {
        if !links.join(p).exists() {
            return Err(format!("{p} not pinned under {}", links.display()).into());
        }
    }
    let dgram = vec![format!("packet-dgram://{US_V4}:{PORT}")];
    agent.kill9()?;
    expect_eperm(&probe(&tb, 1, &dgram)?[0])?;
    // A new start adopts: the LSM links are replaced, enforcement never stops.
    let mut agent = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    expect_eperm(&probe(&tb, 1, &dgram)?[0])?;
    std::fs::remove_file(links.join("lsm_socket_create")).map_err(|e| e.to_string())?;
    let rec = agent.wait_for("tamper_repaired", Duration::from_secs(10))?;
    if !rec.to_string().contains("lsm/socket_create") {
        return Err(format!("tamper record does not name the LSM hook: {rec}").into());
    }
    if !links.join("lsm_socket_create").exists() {
        return Err("the LSM link was not pinned again".into());
    }
    expect_eperm(&probe(&tb, 1, &dgram)?[0])?;
    agent.stop()?;
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["detach", "--pin-dir", &pin_arg])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("detach: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    // Detached: nothing judges packet sockets any more. The kernel frees an LSM link's
    // trampoline asynchronously (slow under TCG), so allow it some time.
    let before = tb.served().1;
    let t0 = std::time::Instant::now();
    let mut r = probe(&tb, 1, &dgram)?;
    while !r[0].ok && t0.elapsed() < patience(std::time::Duration::from_secs(30)) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        r = probe(&tb, 1, &dgram)?;
    }
    expect_ok(&r[0])?;
    if served_us(&tb, before + 1) < before + 1 {
        return Err("after detach the frame should arrive".into());
    }
    Ok(())
}

/// The LSM programs pass this kernel's verifier wherever it offers LSM programs at all
/// (aya's probe loads a trivial one), also where the BPF LSM is not active (5.10): a
/// kernel booted with `lsm=...,bpf` gets them.
pub fn lsm_programs_verify() -> Result<(), Failed> {
    require_root()?;
    let offered = aya::sys::is_program_supported(aya::programs::ProgramType::Lsm(
        aya::programs::LsmAttachType::Mac,
    ));
    let e = egressd::kernel::loader::Enforcer::open(0).map_err(|e| format!("{e:#}"))?;
    match (offered, e.lsm_load_error()) {
        (Ok(true), None) => Ok(()),
        (Ok(true), Some(why)) => Err(format!("LSM programs rejected: {why}").into()),
        // The kernel refuses LSM programs to anyone (this project's 6.18 machines): the
        // refusal must be the kernel's, before any verification.
        (_, Some(why)) if why.contains("before verification") => Ok(()),
        (o, why) => Err(format!("probe {o:?}, load {why:?}").into()),
    }
}
