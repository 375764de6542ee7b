//! The `tc/egress` fallback for packet sockets (issue 12 part 1, where the BPF LSM hooks do
//! not run). The daemon runs in the test bed's client namespace (`nsenter --net`), so the
//! fallback attaches to the client's veths, where the probe's frames leave. Each test
//! decides by what the daemon put in force (`agent_start.coverage`), checked against the
//! kernel: with the LSM hooks in force, they decide and no `sched_cls` program is loaded;
//! without them, `packet_socket` is `partial` and the fallback drops (or reports) frames.
use std::{path::Path, time::Duration};

use egressd_testbed::{EU_V4, PORT, Testbed, US_V4};
use libtest_mimic::Failed;
use serde_json::Value;

use super::{
    harness::{
        Agent, START_WITHIN, TempDir, assert_field, connections, counter, expect_eperm,
        expect_errno, expect_ok, patience, policy, probe, stop_record, tcp, temp_dir, testbed, udp,
    },
    lsm::{coverage_status, lsm_in_force, packet_probes, served_us, start_lists},
};

/// `ENOBUFS`: what `sendto` on a packet socket returns when a tc program drops the frame
/// (`NET_XMIT_DROP` from the queueing layer).
const ENOBUFS: i32 = 105;

/// Starts `egressd run` with policy `text` (and `extra` arguments) inside the client
/// namespace of `tb`; `dir` holds the policy file.
pub fn start_in_client(
    tb: &Testbed,
    dir: &TempDir,
    text: &str,
    extra: &[&str],
) -> Result<Agent, Failed> {
    let cfg = dir
        .0
        .join(format!("{}.toml", egressd_testbed::unique("policy-")));
    std::fs::write(&cfg, text).map_err(|e| format!("writing policy: {e}"))?;
    let net = format!("--net=/run/netns/{}", tb.client.name());
    let mut agent = Agent::spawn_under(tb, &cfg, extra, &["nsenter", &net])?;
    agent.wait_for("agent_start", START_WITHIN)?;
    Ok(agent)
}

/// `sched_cls` programs the process `pid` holds (`prog_type: 3` in its descriptors'
/// fdinfo).
fn sched_cls_programs(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| {
                t.lines()
                    .any(|l| l.split_whitespace().eq(["prog_type:", "3"]))
            })
        })
        .count()
}

/// Where the fallback is in force: `agent_start` lists `packet_socket` as partial, and
/// the kernel has no BPF LSM doing the job (checked like `lsm_in_force`).
fn fallback_in_force(agent: &Agent) -> Result<bool, Failed> {
    if lsm_in_force(agent)? {
        if start_lists(agent, "partial", "packet_socket") {
            return Err("packet_socket is both enforced by the LSM and partial".into());
        }
        return Ok(false);
    }
    if !start_lists(agent, "partial", "packet_socket") {
        return Err(format!(
            "without the LSM hooks packet_socket should be partial (tc/egress): {:?}",
            agent
                .records()
                .iter()
                .find(|r| r["type"] == "agent_start")
                .map(|r| &r["coverage"])
        )
        .into());
    }
    Ok(true)
}

/// The checks of one `tc/egress` event.
fn check_event(e: &Value, verdict: &str) -> Result<(), Failed> {
    assert_field(e, "/verdict", verdict)?;
    assert_field(e, "/network/type", "packet")?;
    assert_field(e, "/rule/name", "packet_sockets")?;
    assert_field(e, "/process/attribution", "socket_uid")?;
    if e["network"]["ethertype"] != 0x0800 || e.get("destination").is_some() {
        return Err(format!("tc/egress event fields: {e}").into());
    }
    Ok(())
}

/// Enforce mode, default `packet_sockets` (deny). Without the LSM hooks: both hand-built
/// frames (SOCK_DGRAM, SOCK_RAW) to the us host are dropped at `tc/egress` (`sendto` gets
/// ENOBUFS, nothing arrives), each is an event and a count under `tc/egress`; a UDP
/// datagram to eu (an INET socket) is left to the cgroup hooks and arrives; a frame sent
/// with `PACKET_QDISC_BYPASS` skips the queueing layer and arrives, as the coverage report
/// says. With the LSM hooks in force: they refuse the sockets and no tc program is loaded.
pub fn tc_packet_frames_denied() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = temp_dir("egressd-tc-")?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    if !fallback_in_force(&agent)? {
        let n = sched_cls_programs(agent.pid());
        if n != 0 {
            return Err(format!("{n} sched_cls programs loaded though the LSM hooks judge").into());
        }
        for x in &probe(&tb, 1, &packet_probes())? {
            expect_eperm(x)?;
        }
        let recs = agent.stop()?;
        if connections(&recs).iter().any(|e| e["hook"] == "tc/egress") {
            return Err("a tc/egress event though the LSM hooks judge".into());
        }
        return Ok(());
    }
    if sched_cls_programs(agent.pid()) == 0 {
        return Err("coverage says tc/egress but the daemon holds no sched_cls program".into());
    }
    let st = coverage_status("packet_socket")?;
    if st != "partial" {
        return Err(format!("egressd coverage says packet_socket is {st}, want partial").into());
    }
    let before = tb.served();
    let r = probe(&tb, 1, &packet_probes())?;
    for x in &r {
        expect_errno(x, ENOBUFS)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    if tb.served().1 != before.1 {
        return Err(format!("a dropped frame reached us: served {:?}", tb.served()).into());
    }
    // INET sockets are not the fallback's: an allowed datagram to eu arrives.
    expect_ok(&probe(&tb, 1, &[udp(EU_V4)])?[0])?;
    // Measured gap: PACKET_QDISC_BYPASS hands the frame to the driver past the queueing
    // layer (packet_direct_xmit -> dev_direct_xmit), where no tc program runs.
    let bypass = format!("packet-bypass://{US_V4}:{PORT}");
    let b0 = tb.served().1;
    expect_ok(&probe(&tb, 1, std::slice::from_ref(&bypass))?[0])?;
    if served_us(&tb, b0 + 1) < b0 + 1 {
        return Err("the PACKET_QDISC_BYPASS frame was expected to arrive (not covered)".into());
    }
    let recs = agent.stop()?;
    let ev: Vec<&Value> = connections(&recs)
        .into_iter()
        .filter(|e| e["hook"] == "tc/egress")
        .collect();
    if ev.len() != 2 {
        return Err(format!("expected 2 tc/egress events, got {ev:#?}").into());
    }
    for e in &ev {
        check_event(e, "deny")?;
    }
    let kinds: Vec<&str> = ev
        .iter()
        .filter_map(|e| e["network"]["transport"].as_str())
        .collect();
    if !(kinds.contains(&"dgram") && kinds.contains(&"raw")) {
        return Err(format!("expected a dgram and a raw socket, got {kinds:?}").into());
    }
    let stop = stop_record(&recs)?;
    let n = counter(stop, "tc/egress", "unknown", "deny");
    if n != 2 {
        return Err(format!("tc/egress deny counter {n}, want 2").into());
    }
    Ok(())
}

/// Audit mode (`packet_sockets` audit): the frames arrive and each is reported at
/// `tc/egress`; `packet_sockets = "allow"`: they arrive, are counted, and nothing is
/// reported. Without the LSM hooks only (with them, `lsm_packet_sockets_audit_and_allow`).
pub fn tc_packet_frames_audit_and_allow() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = temp_dir("egressd-tc-")?;
    let agent = start_in_client(&tb, &dir, &policy("audit"), &[])?;
    if !fallback_in_force(&agent)? {
        agent.stop()?;
        return Ok(());
    }
    let before = tb.served().1;
    for x in &probe(&tb, 1, &packet_probes())? {
        expect_ok(x)?;
    }
    if served_us(&tb, before + 2) < before + 2 {
        return Err(format!(
            "audit: both frames should reach us, served {:?}",
            tb.served()
        )
        .into());
    }
    let recs = agent.stop()?;
    let ev: Vec<&Value> = connections(&recs)
        .into_iter()
        .filter(|e| e["hook"] == "tc/egress")
        .collect();
    if ev.len() != 2 {
        return Err(format!("expected 2 tc/egress audit events, got {ev:#?}").into());
    }
    for e in &ev {
        check_event(e, "audit")?;
    }
    if counter(stop_record(&recs)?, "tc/egress", "unknown", "audit") != 2 {
        return Err(format!("audit counters: {}", stop_record(&recs)?["counters"]).into());
    }

    let text = policy("enforce").replace(
        "suppress_window_ms = 0",
        "suppress_window_ms = 0\npacket_sockets = \"allow\"",
    );
    let agent = start_in_client(&tb, &dir, &text, &[])?;
    let before = tb.served().1;
    for x in &probe(&tb, 1, &packet_probes())? {
        expect_ok(x)?;
    }
    if served_us(&tb, before + 2) < before + 2 {
        return Err("packet_sockets = allow should let both through".into());
    }
    let recs = agent.stop()?;
    if connections(&recs).iter().any(|e| e["hook"] == "tc/egress") {
        return Err("packet_sockets = allow reported a tc/egress event".into());
    }
    if counter(stop_record(&recs)?, "tc/egress", "unknown", "allow") != 2 {
        return Err(format!("allow counters: {}", stop_record(&recs)?["counters"]).into());
    }
    Ok(())
}

/// Pinned: the fallback outlives the daemon (frames still dropped after `kill -9`), a new
/// start takes over, an interface created later is covered within the rescan period, and
/// `egressd detach` (run in the same namespace) removes the filters or links: the frame
/// arrives again.
pub fn tc_pinned_and_detach() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = temp_dir("egressd-tcpin-")?;
    let pins = Path::new("/sys/fs/bpf").join(egressd_testbed::unique("egressd-tc-"));
    let pin_arg = pins.display().to_string();
    let net = format!("--net=/run/netns/{}", tb.client.name());
    let detach = || {
        std::process::Command::new("nsenter")
            .arg(&net)
            .arg(env!("CARGO_BIN_EXE_egressd"))
            .args(["detach", "--pin-dir", &pin_arg])
            .output()
    };
    struct Cleanup<F: Fn() -> std::io::Result<std::process::Output>>(F);
    impl<F: Fn() -> std::io::Result<std::process::Output>> Drop for Cleanup<F> {
        fn drop(&mut self) {
            let _ = (self.0)();
        }
    }
    let _cleanup = Cleanup(detach);
    let text = policy("enforce");
    let agent = start_in_client(&tb, &dir, &text, &["--pin-dir", &pin_arg])?;
    if !fallback_in_force(&agent)? {
        agent.stop()?;
        return Ok(());
    }
    let dgram = vec![format!("packet-dgram://{US_V4}:{PORT}")];
    agent.kill9()?;
    expect_errno(&probe(&tb, 1, &dgram)?[0], ENOBUFS)?;
    let agent = start_in_client(&tb, &dir, &text, &["--pin-dir", &pin_arg])?;
    expect_errno(&probe(&tb, 1, &dgram)?[0], ENOBUFS)?;
    // An interface created after the start is attached at the next rescan.
    let (a, b) = (
        egressd_testbed::unique("tca"),
        egressd_testbed::unique("tcb"),
    );
    let (a, b) = (&a[..a.len().min(15)], &b[..b.len().min(15)]);
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["-n", tb.client.name()])
            .args(args)
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("ip {args:?}: {s}"))
                }
            })
    };
    ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ip(&["link", "set", a, "up"])?;
    ip(&["link", "set", b, "up"])?;
    let t0 = std::time::Instant::now();
    let mut attached = false;
    while t0.elapsed() < patience(Duration::from_secs(10)) {
        if sched_cls_attached_on(&tb, a) {
            attached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ip(&["link", "del", a]);
    if !attached {
        return Err(format!("tc/egress not attached to the new interface {a} within 10 s").into());
    }
    agent.stop()?;
    expect_errno(&probe(&tb, 1, &dgram)?[0], ENOBUFS)?;
    let out = (_cleanup.0)().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("detach: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let before = tb.served().1;
    expect_ok(&probe(&tb, 1, &dgram)?[0])?;
    if served_us(&tb, before + 1) < before + 1 {
        return Err("after detach the frame should arrive".into());
    }
    Ok(())
}

/// systemd removes a service's cgroup and makes it anew at every restart. With pins and
/// without, egressd attaches to the new cgroup within a second and says so
/// (`tamper_repaired`); the packet-socket hooks (BPF LSM or `tc/egress`), which test the
/// cgroup by a reference to it, follow it too. (Before: unpinned, nothing happened and the
/// new cgroup ran unenforced; pinned, the links came back but packet sockets stayed
/// unjudged.)
pub fn cgroup_made_anew_is_enforced() -> Result<(), Failed> {
    for pinned in [false, true] {
        let tb = testbed()?;
        let dir = temp_dir("egressd-anew-")?;
        let pins = Path::new("/sys/fs/bpf").join(egressd_testbed::unique("egressd-anew-"));
        let pin_arg = pins.display().to_string();
        let extra: &[&str] = if pinned {
            &["--pin-dir", &pin_arg]
        } else {
            &[]
        };
        let mut agent = start_in_client(&tb, &dir, &policy("enforce"), extra)?;
        let packet_errno = if fallback_in_force(&agent)? {
            ENOBUFS
        } else {
            libc::EPERM
        };
        let probes = |tb: &Testbed| -> Result<(), Failed> {
            let r = probe(tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
            expect_eperm(&r[0])?;
            expect_ok(&r[1])?;
            for x in &probe(tb, 1, &packet_probes())? {
                expect_errno(x, packet_errno)?;
            }
            Ok(())
        };
        probes(&tb)?;
        let cg = tb.cgroup.path();
        std::fs::remove_dir(cg).map_err(|e| format!("removing {}: {e}", cg.display()))?;
        std::fs::create_dir(cg).map_err(|e| format!("making {}: {e}", cg.display()))?;
        let rec = agent.wait_for("tamper_repaired", Duration::from_secs(2))?;
        if !rec["repairs"].to_string().contains("made anew") {
            return Err(
                format!("pinned {pinned}: the repair does not name the cgroup: {rec}").into(),
            );
        }
        probes(&tb)?;
        agent.stop()?;
        if pinned {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"))
                .args(["detach", "--pin-dir", &pin_arg])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("detach: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
        }
    }
    Ok(())
}

/// Whether interface `name` of the client namespace has a tc egress program (a TCX
/// program, or a `bpf` filter on its clsact qdisc), asked of `tc` and `bpftool`-free:
/// `tc filter show` for netlink filters, the TCX query through aya for links.
fn sched_cls_attached_on(tb: &Testbed, name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            tb.client.name(),
            "tc",
            "filter",
            "show",
            "dev",
            name,
            "egress",
        ])
        .output();
    if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("egressd_tc_egress")) {
        return true;
    }
    let name = name.to_owned();
    let ns = tb.client.name().to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).ok()?;
        // SAFETY: moves this short-lived thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        aya::programs::SchedClassifier::query_tcx(&name, aya::programs::TcAttachType::Egress)
            .ok()
            .map(|(_, p)| !p.is_empty())
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or(false)
}
