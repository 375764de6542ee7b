//! Running on a fleet: pinned enforcement that survives `kill -9` and restarts, `status`
//! and `detach`, tamper repair (with bpftool), the Prometheus endpoint, and reload on file
//! change.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use std::net::Ipv4Addr;

use egressd_testbed::{EU_V4, Testbed, US_V4};
use libtest_mimic::Failed;
use serde_json::Value;

use super::harness::*;

/// Runs `egressd ARGS` to completion; its stdout, or a failure with its stderr.
pub fn egressd(args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "egressd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `egressd status --json` of `pins`.
pub fn status(pins: &Pins) -> Result<Value, Failed> {
    let dir = pins.0.to_string_lossy().into_owned();
    let text = egressd(&["status", "--json", "--pin-dir", &dir])?;
    serde_json::from_str(&text).map_err(|e| format!("status JSON {text}: {e}").into())
}

fn probe_us_denied(tb: &Testbed) -> Result<(), Failed> {
    let r = probe(tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
    expect_eperm(&r[0])?;
    expect_ok(&r[1])
}

/// kill -9: denied stays denied. Restart: adopts the pins, a connection loop across the
/// restart sees no leak and no false deny, the generation and counters continue. SIGTERM
/// leaves enforcement in place; `detach` ends it.
pub fn pinned_restart() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    probe_us_denied(&tb)?;
    let st1 = status(&pins)?;
    // Every cgroup hook, and the LSM hooks where they run.
    let on_cgroup = egressd::kernel::hooks::HOOKS
        .iter()
        .filter(|h| h.on_cgroup())
        .count();
    if st1["generation"] != 1 || st1["hooks"].as_array().map_or(0, |h| h.len()) < on_cgroup {
        return Err(format!("status after start: {st1}").into());
    }
    if st1["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["attached"] != true)
    {
        return Err(format!("a hook is not attached: {st1}").into());
    }
    // Every pinned TCX link of the tc/egress fallback (where this kernel needs it) is
    // listed by name and attached.
    let tc_pins = std::fs::read_dir(pins.0.join("tc")).map_or(0, Iterator::count);
    let tc = st1["tc_egress"].as_array().cloned().unwrap_or_default();
    if tc.len() != tc_pins
        || tc
            .iter()
            .any(|t| t["attached"] != true || !t["interface"].is_string())
    {
        return Err(format!("{tc_pins} tc pins, status lists: {tc:?}").into());
    }
    let deny1 = counter(&st1, "cgroup/connect4", "us", "deny");
    if deny1 != 1 {
        return Err(format!("want 1 deny counted, status says {deny1}: {st1}").into());
    }
    d.kill9()?;
    // No daemon: still enforced, still counted.
    probe_us_denied(&tb)?;
    let st2 = status(&pins)?;
    if counter(&st2, "cgroup/connect4", "us", "deny") != 2 {
        return Err(format!("counters after kill -9: {st2}").into());
    }
    // An older build's scratch pin (one slot per CPU, a smaller value): the restart replaces
    // it instead of refusing to adopt or running with one slot.
    let scratch = older_pin(&pins, egressd_common::maps::SCRATCH, "percpu_array", 208, 1)?;
    // An older build's unreported counts, made without `BPF_F_MMAPABLE` (the daemon reads them
    // in place every second): replaced too, and the suppression table whose pending counts
    // they held with them.
    let suppress = pins.0.join("maps").join(egressd_common::maps::SUPPRESS);
    let suppress = suppress.to_string_lossy().into_owned();
    let map_id = |path: &str| -> Result<u64, Failed> {
        let shown = pinned_map(path)?;
        shown["id"]
            .as_u64()
            .ok_or_else(|| format!("no map id for {path}: {shown}").into())
    };
    let suppress_before = map_id(&suppress)?;
    let unreported = older_pin(
        &pins,
        egressd_common::maps::UNREPORTED,
        "array",
        8,
        egressd_common::unreported::SLOTS,
    )?;
    // A loop across the restart.
    let looper = ProbeLoop::start(&tb, 3000, false, &[tcp(US_V4), tcp(EU_V4)])?;
    std::thread::sleep(Duration::from_millis(300));
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    let results = looper.finish()?;
    let us = tcp(US_V4);
    let leaks = results.iter().filter(|r| r.probe == us && r.ok).count();
    let wrong = results
        .iter()
        .filter(|r| r.probe == us && !r.ok && r.errno != Some(EPERM))
        .count();
    let eu_failed = results.iter().filter(|r| r.probe != us && !r.ok).count();
    let attempts = results.iter().filter(|r| r.probe == us).count() as u64;
    if leaks + wrong + eu_failed > 0 || attempts < 10 {
        return Err(format!(
            "across the restart: {leaks} leaks, {wrong} other errors, {eu_failed} eu failures \
             in {} attempts",
            results.len()
        )
        .into());
    }
    let shown = pinned_map(&scratch)?;
    if shown["max_entries"] != egressd_common::SCRATCH_SLOTS
        || shown["bytes_value"] != egressd_common::SCRATCH_BYTES
    {
        return Err(format!("the old scratch pin was not replaced: {shown}").into());
    }
    let shown = pinned_map(&unreported)?;
    let mmapable = u64::from(egressd::kernel::mmap::BPF_F_MMAPABLE);
    if shown["flags"].as_u64().is_none_or(|f| f & mmapable == 0) {
        return Err(format!("the old unreported pin was not replaced: {shown}").into());
    }
    if map_id(&suppress)? == suppress_before {
        return Err("the suppression pin was kept over new unreported counts".into());
    }
    let st3 = status(&pins)?;
    if st3["generation"] != 2 {
        return Err(format!("the adopting daemon should publish generation 2: {st3}").into());
    }
    let deny3 = counter(&st3, "cgroup/connect4", "us", "deny");
    if deny3 != 2 + attempts {
        return Err(format!(
            "counters must continue: want {} denies (2 before + {attempts}), got {deny3}",
            2 + attempts
        )
        .into());
    }
    // SIGTERM with pins: enforcement stays.
    let recs = d.stop()?;
    if !recs.iter().any(|r| r["type"] == "agent_stop") {
        return Err("no agent_stop".into());
    }
    probe_us_denied(&tb)?;
    egressd(&["detach", "--pin-dir", &pin_arg])?;
    if pins.0.exists() {
        return Err(format!("{} still exists after detach", pins.0.display()).into());
    }
    let r = probe(&tb, 1, &[tcp(US_V4)])?;
    expect_ok(&r[0])
}

/// `bpftool -j map show pinned PATH`: the pinned map's id, type, flags, sizes.
fn pinned_map(path: &str) -> Result<Value, Failed> {
    let shown = bpftool(&["-j", "map", "show", "pinned", path])?;
    serde_json::from_str(&shown).map_err(|e| e.to_string().into())
}

/// Replaces map pin `name` of `pins` by one an older build made: `kind` (a bpftool map type),
/// 4-byte keys, `value`-byte values, `entries` entries, no flags. Returns its path.
fn older_pin(
    pins: &Pins,
    name: &str,
    kind: &str,
    value: u32,
    entries: u32,
) -> Result<String, Failed> {
    let path = pins.0.join("maps").join(name);
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = path.to_string_lossy().into_owned();
    // The kernel keeps 15 bytes of a map's name.
    let short: String = name.chars().take(15).collect();
    bpftool(&[
        "map",
        "create",
        &path,
        "type",
        kind,
        "key",
        "4",
        "value",
        &value.to_string(),
        "entries",
        &entries.to_string(),
        "name",
        &short,
    ])?;
    Ok(path)
}

/// Layout check: a pin of another layout version is refused with a clear error.
pub fn pinned_other_layout_refused() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let pins = Pins::new();
    let maps = pins.0.join("maps");
    // bpffs: create the directories, then pin some map under a V0 name with bpftool.
    std::fs::create_dir_all(&maps).map_err(|e| e.to_string())?;
    let st = Command::new("bpftool")
        .args(["map", "create"])
        .arg(maps.join("EGRESSD_COUNTERS_V0"))
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "1", "name", "old",
        ])
        .status()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !st.success() {
        return Err("bpftool map create failed".into());
    }
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--pin-dir", &pin_arg])
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("another map layout") {
        return Err(format!("want a layout refusal, got {}: {err}", out.status).into());
    }
    Ok(())
}

/// Detach a pinned link and reset the policy generation with bpftool: egressd notices
/// within a second, restores both, and reports `tamper_repaired`.
pub fn tamper_repaired() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let mut d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    probe_us_denied(&tb)?;
    let bpftool = |args: &[&str]| -> Result<(), Failed> {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .map_err(|e| format!("bpftool: {e}"))?;
        if !out.status.success() {
            return Err(
                format!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        Ok(())
    };
    let link = pins.0.join("links/connect4").to_string_lossy().into_owned();
    let t0 = Instant::now();
    bpftool(&["link", "detach", "pinned", &link])?;
    let rec = d.wait_for("tamper_repaired", Duration::from_secs(1))?;
    let took = t0.elapsed();
    if !rec["repairs"].to_string().contains("connect4") {
        return Err(format!("repair record does not name connect4: {rec}").into());
    }
    probe_us_denied(&tb)?;
    // Generation 0 means "no policy: allow everything".
    let genmap = pins
        .0
        .join("maps/EGRESSD_GENERATION_V1")
        .to_string_lossy()
        .into_owned();
    let mut cmd = vec![
        "map", "update", "pinned", &genmap, "key", "0", "0", "0", "0", "value",
    ];
    cmd.extend(["0"; 8]);
    bpftool(&cmd)?;
    let rec = d.wait_for("tamper_repaired", Duration::from_secs(1))?;
    if !rec["repairs"].to_string().contains("generation") {
        return Err(format!("repair record does not name the generation: {rec}").into());
    }
    probe_us_denied(&tb)?;
    // Settings and the NAT64 trie of the set in force (generation 1: set B, index 1) are
    // compared too: switching the set to audit mode, or adding a NAT64 prefix, is undone.
    let settings = pins
        .0
        .join("maps/EGRESSD_SETTINGS_V1")
        .to_string_lossy()
        .into_owned();
    let mut cmd = vec![
        "map", "update", "pinned", &settings, "key", "1", "0", "0", "0", "value",
    ];
    // generation 1, mode audit, cut 0, v4_table 0, pad, suppress_ms 0.
    cmd.extend(["1", "0", "0", "0", "0", "0", "0", "0", "1", "0", "0", "0"]);
    cmd.extend(["0"; 4]);
    bpftool(&cmd)?;
    let rec = d.wait_for("tamper_repaired", Duration::from_secs(2))?;
    if !rec["repairs"].to_string().contains("policy maps") {
        return Err(format!("settings change not repaired as a map change: {rec}").into());
    }
    let nat64 = pins
        .0
        .join("maps/EGRESSD_NAT64_B_V1")
        .to_string_lossy()
        .into_owned();
    // 2001:db8:2::/96 (a us prefix) as a NAT64 prefix would judge us addresses by the IPv4
    // inside them.
    let mut cmd = vec![
        "map", "update", "pinned", &nat64, "key", "96", "0", "0", "0",
    ];
    cmd.extend(["0x20", "0x01", "0x0d", "0xb8", "0", "2"]);
    cmd.extend(["0"; 10]);
    cmd.extend(["value", "1", "0", "0", "0"]);
    bpftool(&cmd)?;
    let rec = d.wait_for("tamper_repaired", Duration::from_secs(2))?;
    if !rec["repairs"].to_string().contains("policy maps") {
        return Err(format!("NAT64 change not repaired: {rec}").into());
    }
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &nat64])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).contains("\"0xb8\"") {
        return Err("the forged NAT64 prefix is still in the map".into());
    }
    // `egressd detach` while the daemon runs removes every pin and detaches every link:
    // the daemon puts enforcement back and says so (before, it logged an error every
    // 250 ms and the SIEM saw nothing while traffic flowed).
    // (Where LSM links exist, detach waits for their release, which the running daemon
    // prevents: it then fails after 10 s, saying so; the repair is what is checked.)
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["detach", "--pin-dir", &pin_arg])
        .output()
        .map_err(|e| format!("egressd detach: {e}"))?;
    eprintln!("detach: {}", String::from_utf8_lossy(&out.stderr).trim());
    // The tamper check may run mid-detach (single pins gone, or the whole directory): any
    // repair counts, then the links must be attached and pinned again.
    d.wait_for("tamper_repaired", Duration::from_secs(5))?;
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    while !pins.0.join("links/connect4").exists() {
        if Instant::now() > deadline {
            return Err("the links were not pinned again after detach".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    probe_us_denied(&tb)?;
    eprintln!("link detach noticed and repaired in {took:?}");
    Ok(())
}

/// Value of the sample `name{labels}` in a Prometheus text body (labels in any order).
pub fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, rest) = head.split_once('{').unwrap_or((head, "}"));
        if n != name {
            return None;
        }
        let set = rest.trim_end_matches('}');
        let ok = labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if ok { value.parse().ok() } else { None }
    })
}

/// Scrape /metrics after a known number of attempts: the connection counters equal them
/// and equal the kernel counters in `agent_stop`; /healthz is 200.
pub fn metrics_equal_counters() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let d = Agent::start_at(&tb, &cfg, &["--metrics", &addr])?;
    let n = 7;
    let r = probe(&tb, n, &[tcp(US_V4), tcp(EU_V4), udp(US_V4)])?;
    if r.iter().filter(|x| x.ok).count() != n as usize {
        return Err(format!("want {n} successes: {r:?}").into());
    }
    let (code, health) = http_get(port, "/healthz")?;
    if code != 200 {
        return Err(format!("/healthz: {code} {health}").into());
    }
    let (code, body) = http_get(port, "/metrics")?;
    if code != 200 {
        return Err(format!("/metrics: {code} {body}").into());
    }
    let conn = |hook: &str, region: &str, verdict: &str| {
        sample(
            &body,
            "egressd_connections_total",
            &[("hook", hook), ("region", region), ("verdict", verdict)],
        )
        .unwrap_or(0.0) as u64
    };
    // TCP is judged at connect(); connected UDP at its first datagram.
    let want = [
        ("cgroup/connect4", "us", "deny", u64::from(n)),
        ("cgroup_skb/egress", "us", "deny", u64::from(n)),
        ("cgroup/connect4", "eu", "allow", u64::from(n)),
    ];
    for (h, reg, v, w) in want {
        if conn(h, reg, v) != w {
            return Err(format!(
                "{h} {reg} {v}: metrics say {}, want {w}\n{body}",
                conn(h, reg, v)
            )
            .into());
        }
    }
    for (name, labels, w) in [
        ("egressd_policy_generation", vec![], 1.0),
        ("egressd_policy_prefixes", vec![("family", "ipv4")], 2.0),
        (
            "egressd_hook_attached",
            vec![("hook", "cgroup/connect4")],
            1.0,
        ),
        ("egressd_reloads_total", vec![("outcome", "ok")], 0.0),
        (
            "egressd_build_info",
            vec![("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
    ] {
        if sample(&body, name, &labels) != Some(w) {
            return Err(format!("{name}{labels:?}: want {w}\n{body}").into());
        }
    }
    let emitted = sample(
        &body,
        "egressd_events_total",
        &[("stage", "ringbuf"), ("outcome", "emitted")],
    )
    .unwrap_or(-1.0);
    let suppressed = sample(
        &body,
        "egressd_events_total",
        &[("stage", "kernel"), ("outcome", "suppressed")],
    )
    .unwrap_or(-1.0);
    if emitted + suppressed != f64::from(n * 2) || emitted < 1.0 {
        return Err(format!(
            "events: {emitted} emitted + {suppressed} suppressed != {}\n{body}",
            n * 2
        )
        .into());
    }
    let recs = d.stop()?;
    let stop = stop_record(&recs)?;
    for (h, reg, v, w) in want {
        if counter(stop, h, reg, v) != w {
            return Err(format!("agent_stop disagrees for {h} {reg} {v}: {stop}").into());
        }
    }
    Ok(())
}

/// `--watch`: replacing the policy file (rename over it, as editors and Ansible do) reloads
/// it; an invalid replacement changes nothing and is reported with `reload_failed`; a new
/// drop-in file reloads too. Nothing else reloads: not the daemon's own reads of the files,
/// nor anyone else's.
pub fn watch_reloads_on_change() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let base = "[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n[regions.us]\nprefixes = [\"198.18.2.0/24\"]\n";
    let cfg = write_config(&dir, &format!("allowlist = [\"eu\"]\n{base}"))?;
    let mut d = Agent::start_at(&tb, &cfg, &["--watch"])?;
    probe_us_denied(&tb)?;
    // Reads are not changes (inotify reports opens and reads too).
    let no_reload = |d: &mut Agent, why: &str| -> Result<(), Failed> {
        match d.wait_for("policy_loaded", Duration::from_millis(1500)) {
            Ok(rec) => Err(format!("reloaded {why}: {rec}").into()),
            // Only a quiet timeout is the answer wanted, not an exited daemon.
            Err(e)
                if e.message()
                    .is_some_and(|m| m.starts_with("no policy_loaded")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    no_reload(&mut d, "without a change")?;
    std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?;
    no_reload(&mut d, "after a read of the file")?;
    let replace = |text: &str| -> Result<(), Failed> {
        let tmp = dir.0.join(".policy.toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &cfg).map_err(|e| e.to_string().into())
    };
    replace(&format!("allowlist = [\"eu\", \"us\"]\n{base}"))?;
    let rec = d.wait_for("policy_loaded", Duration::from_secs(5))?;
    assert_field(&rec, "/policy/generation", "2")?;
    // One change, one reload: the reload's own read of the file does not start another.
    no_reload(&mut d, "a second time after one change")?;
    let r = probe(&tb, 1, &[tcp(US_V4)])?;
    expect_ok(&r[0])?;
    // Invalid: host bits set. Nothing changes.
    replace("allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"198.18.1.1/24\"]\n")?;
    let rec = d.wait_for("reload_failed", Duration::from_secs(5))?;
    assert_field(&rec, "/generation_in_force", "2")?;
    let r = probe(&tb, 1, &[tcp(US_V4)])?;
    expect_ok(&r[0])?;
    // Back to eu only, then a drop-in that allowlists us.
    replace(&format!("allowlist = [\"eu\"]\n{base}"))?;
    let rec = d.wait_for("policy_loaded", Duration::from_secs(5))?;
    assert_field(&rec, "/policy/generation", "3")?;
    probe_us_denied(&tb)?;
    let dropins = dir.0.join("policy.d");
    std::fs::create_dir_all(&dropins).map_err(|e| e.to_string())?;
    let rec = d.wait_for("policy_loaded", Duration::from_secs(5))?;
    assert_field(&rec, "/policy/generation", "4")?;
    std::fs::write(dropins.join("us.toml"), "allowlist = [\"us\"]\n").map_err(|e| e.to_string())?;
    let rec = d.wait_for("policy_loaded", Duration::from_secs(5))?;
    assert_field(&rec, "/policy/generation", "5")?;
    let r = probe(&tb, 1, &[tcp(US_V4)])?;
    expect_ok(&r[0])?;
    d.stop()?;
    Ok(())
}

/// The test bed's eu region allowlisted, us not, and a region of 100,000 /24s in 11.0.0.0/8
/// and up: start-up takes long enough (seconds in a debug build) to signal into it, or to
/// see what happens before the attach.
fn large_policy() -> String {
    let mut text = String::from(
        "allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
         [regions.us]\nprefixes = [\"198.18.2.0/24\"]\n[regions.big]\nprefixes = [",
    );
    for i in 0..100_000u32 {
        text.push_str(&format!(
            "\"{}/24\",",
            std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8))
        ));
    }
    text.push_str("]\n");
    text
}

/// Signals while a large policy loads: SIGHUP (`systemctl reload`) and SIGUSR1 (logrotate)
/// must not kill the daemon, whose handlers are installed before it reads the policy; the
/// SIGHUP is served once it runs (a reload). A SIGTERM during load stops it cleanly. Then
/// 1,000 SIGHUPs at exec ([`sighup_at_exec`]; fewer under a test patience): none kills it.
pub fn signals_during_start() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &large_policy())?;
    let t0 = Instant::now();
    let mut d = Agent::spawn(&tb, &cfg, &[])?;
    d.catches(libc::SIGHUP, Duration::from_secs(10))?;
    d.catches(libc::SIGUSR1, Duration::from_secs(1))?;
    let handlers = t0.elapsed();
    d.signal(libc::SIGHUP);
    d.signal(libc::SIGUSR1);
    d.wait_for("agent_start", Duration::from_secs(60))?;
    let started = t0.elapsed();
    // Reading and compiling the policy is most of the start-up: handlers installed after
    // it would show up late in it.
    if handlers * 2 > started {
        return Err(format!(
            "signal handlers appeared {handlers:?} after spawn, agent_start at {started:?}: \
             a signal during the policy load would kill the daemon"
        )
        .into());
    }
    let rec = d.wait_for("policy_loaded", Duration::from_secs(60))?;
    assert_field(&rec, "/policy/generation", "2")?;
    probe_us_denied(&tb)?;
    d.stop()?;
    // SIGTERM while loading: attach, then detach at once, with a clean exit and agent_stop.
    let d = Agent::spawn(&tb, &cfg, &[])?;
    d.catches(libc::SIGTERM, Duration::from_secs(10))?;
    let recs = d.stop()?;
    if !recs.iter().any(|r| r["type"] == "agent_stop") {
        return Err(format!("no agent_stop after a SIGTERM during start-up: {recs:?}").into());
    }
    let small = write_config(&dir, &policy("enforce"))?;
    // 1,000 tries natively; where everything runs slower (a VM under TCG, patience 4) 60,
    // about 25 s there: what the signal meets is the daemon's own start-up code, which the
    // native run's tries cover; the kernels only deliver the signal.
    let slower = patience(Duration::from_secs(1)).as_secs_f64();
    let tries = if slower > 1.0 { 60 } else { 1000 };
    sighup_at_exec(&tb, &small, tries)
}

/// `tries` times: spawn `egressd run`, SIGHUP it as soon as its code runs, and check that
/// the signal is served (caught, no longer pending) while the process lives; then kill it.
///
/// "As soon as its code runs" is when the Rust runtime has set SIGPIPE to ignored, which it
/// does just before `main` (the earliest moment a process can be told apart from the
/// `execve` that started it; a signal before that meets the default action of any
/// program). A quarter of the tries signal at that moment, the rest 0-3 ms later, across
/// argument parsing, logging and runtime set-up and the installation of the handlers.
fn sighup_at_exec(tb: &Testbed, cfg: &Path, tries: u32) -> Result<(), Failed> {
    let mut rng = fastrand::Rng::with_seed(14);
    let t0 = Instant::now();
    let mut before_handler = 0u32;
    for i in 0..tries {
        let mut d = Agent::spawn(tb, cfg, &[])?;
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        while !d.signals().is_ignored(libc::SIGPIPE) {
            if let Some(st) = d.exited() {
                return Err(format!("try {i}: egressd exited ({st}) before main").into());
            }
            if Instant::now() > deadline {
                return Err(format!("try {i}: egressd did not reach main within 10 s").into());
            }
            std::hint::spin_loop();
        }
        if i % 4 != 0 {
            std::thread::sleep(Duration::from_micros(rng.u64(0..3000)));
        }
        let handled_already = d.signals().caught(libc::SIGHUP);
        d.signal(libc::SIGHUP);
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        loop {
            if let Some(st) = d.exited() {
                return Err(format!(
                    "try {i}: a SIGHUP sent {} the handler was installed killed egressd ({st})",
                    if handled_already { "after" } else { "before" }
                )
                .into());
            }
            let s = d.signals();
            if s.caught(libc::SIGHUP) && !s.is_pending(libc::SIGHUP) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("try {i}: SIGHUP not served within 10 s: {s:?}").into());
            }
            std::hint::spin_loop();
        }
        if !handled_already {
            before_handler += 1;
        }
        d.kill9()?;
    }
    eprintln!(
        "SIGHUP at exec: {tries} of {tries} survived ({before_handler} sent before the handler \
         was installed) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if before_handler == 0 {
        return Err(
            "no SIGHUP arrived before the handler was installed: the loop did not \
                    test the start-up window"
                .into(),
        );
    }
    Ok(())
}

/// A service manager's notification socket (`NOTIFY_SOCKET`): a unix datagram socket in a
/// temporary directory; each datagram is one `sd_notify` message of `KEY=VALUE` lines.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &TempDir) -> Result<Self, Failed> {
        let path = dir.0.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path)
            .map_err(|e| format!("binding {}: {e}", path.display()))?;
        Ok(Self { sock, path })
    }

    /// The next message, or `None` if none came within `within`.
    fn next(&self, within: Duration) -> Result<Option<Vec<String>>, Failed> {
        self.sock
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("reading {}: {e}", self.path.display()).into()),
        }
    }

    /// Messages other than watchdog pings, up to and including the first that holds `line`;
    /// the number of pings among them is returned too.
    fn until(&self, line: &str, within: Duration) -> Result<(Vec<Vec<String>>, u32), Failed> {
        let deadline = Instant::now() + patience(within);
        let (mut seen, mut pings) = (Vec::new(), 0);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = self.next(left)? else { break };
            if msg == ["WATCHDOG=1"] {
                pings += 1;
                continue;
            }
            let done = msg.iter().any(|l| l == line);
            seen.push(msg);
            if done {
                return Ok((seen, pings));
            }
        }
        Err(format!("no {line} within {within:?}; got {seen:?}").into())
    }
}

/// The value of `KEY=` in a message.
fn field<'a>(msg: &'a [String], key: &str) -> Option<&'a str> {
    msg.iter()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// systemd's readiness protocol, read from a `NOTIFY_SOCKET` the test binds (no systemd runs
/// here). With the large policy, `READY=1` is the first message and comes only once the
/// hooks judge: the us host is refused the moment it is read. `STATUS=` names generation 1
/// and the digest of `policy_loaded`. `WATCHDOG=1` comes every half `WATCHDOG_USEC`. A
/// SIGHUP gives `RELOADING=1` with `MONOTONIC_USEC=`, then `READY=1` with generation 2; an
/// invalid reload the same, with the failure in `STATUS=` and generation 2 still in force.
/// SIGTERM gives `STOPPING=1`.
pub fn systemd_notify() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &large_policy())?;
    let socket = NotifySocket::bind(&dir)?;
    // 400 ms natively; stretched by the patience where the guest itself stalls for hundreds
    // of milliseconds (TCG beside another VM), which a 200 ms period would measure instead.
    let watchdog = patience(Duration::from_millis(400));
    let watchdog_usec = watchdog.as_micros().to_string();
    let t0 = Instant::now();
    let mut d = Agent::spawn_with_env(
        &tb,
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", socket.path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new(&watchdog_usec)),
        ],
    )?;
    let (msgs, _) = socket.until("READY=1", Duration::from_secs(60))?;
    probe_us_denied(&tb)?;
    let ready_after = t0.elapsed();
    if msgs.len() != 1 {
        return Err(format!("messages before READY=1: {msgs:?}").into());
    }
    let rec = d.wait_for("agent_start", Duration::from_secs(5))?;
    let digest = rec["policy"]["digest"]
        .as_str()
        .ok_or("agent_start without policy.digest")?;
    let status = field(&msgs[0], "STATUS").ok_or("READY=1 without STATUS=")?;
    if !status.contains("generation 1,") || !status.contains(digest) {
        return Err(format!("STATUS= {status:?} does not name generation 1 and {digest}").into());
    }
    // Watchdog: every half WATCHDOG_USEC. Pings queued while the test was busy are drained
    // first; the period is then the median gap between 7 pings as they arrive, which a
    // stalled guest (a late ping, then one soon after) does not move.
    while let Some(m) = socket.next(Duration::from_millis(1))? {
        if m != ["WATCHDOG=1"] {
            return Err(format!("unexpected message {m:?}").into());
        }
    }
    let mut arrivals = Vec::new();
    while arrivals.len() < 7 {
        match socket.next(patience(Duration::from_secs(2)))? {
            Some(m) if m == ["WATCHDOG=1"] => arrivals.push(Instant::now()),
            Some(m) => return Err(format!("unexpected message {m:?}").into()),
            None => return Err(format!("WATCHDOG=1 stopped after {}", arrivals.len()).into()),
        }
    }
    let mut gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    let want = watchdog / 2;
    if !(want.mul_f64(0.7)..=want.mul_f64(1.4)).contains(&median) {
        return Err(format!(
            "WATCHDOG=1 every {median:?} (median of {gaps:?}) with WATCHDOG_USEC={watchdog_usec}, \
             want {want:?}"
        )
        .into());
    }

    // A reload, valid, then invalid.
    let small = "allowlist = [\"eu\", \"us\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
                 [regions.us]\nprefixes = [\"198.18.2.0/24\"]\n";
    let rec = d.reload(small)?;
    assert_field(&rec, "/type", "policy_loaded")?;
    let digest = rec["policy"]["digest"].as_str().ok_or("no digest")?;
    let (msgs, _) = socket.until("READY=1", Duration::from_secs(10))?;
    reload_frame(&msgs)?;
    let status = field(&msgs[1], "STATUS").ok_or("READY=1 without STATUS=")?;
    if !status.contains("generation 2,") || !status.contains(digest) {
        return Err(format!("STATUS= {status:?} does not name generation 2 and {digest}").into());
    }
    let rec = d.reload("allowlist = [\"mars\"]\n")?;
    assert_field(&rec, "/type", "reload_failed")?;
    let (msgs, _) = socket.until("READY=1", Duration::from_secs(10))?;
    reload_frame(&msgs)?;
    let status = field(&msgs[1], "STATUS").ok_or("READY=1 without STATUS=")?;
    if !status.contains("generation 2,") || !status.contains("reload failed") {
        return Err(format!("STATUS= {status:?} after an invalid reload").into());
    }

    d.stop()?;
    let (msgs, _) = socket.until("STOPPING=1", Duration::from_secs(5))?;
    if msgs.len() != 1 {
        return Err(format!("messages before STOPPING=1: {msgs:?}").into());
    }
    eprintln!("systemd notify: READY=1 {ready_after:?} after spawn, us denied then");
    Ok(())
}

/// A reload's messages: `RELOADING=1` with `MONOTONIC_USEC=`, then `READY=1`.
fn reload_frame(msgs: &[Vec<String>]) -> Result<(), Failed> {
    let ok = msgs.len() == 2
        && msgs[0].iter().any(|l| l == "RELOADING=1")
        && field(&msgs[0], "MONOTONIC_USEC").is_some_and(|v| v.parse::<u64>().is_ok())
        && msgs[1].iter().any(|l| l == "READY=1");
    if !ok {
        return Err(format!("a reload sent {msgs:?}").into());
    }
    Ok(())
}

/// Without `--pin-dir`, links detached behind egressd's back (`bpftool link detach`) are
/// attached again within a second and reported (`tamper_repaired`), as with pins; while
/// the cgroup is gone `/healthz` answers 503 naming the hooks and `egressd_hook_attached`
/// is 0, and both recover when it is made again.
pub fn health_without_pins() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut d = Agent::start_at(&tb, &cfg, &["--metrics", &addr])?;
    let (code, _) = http_get(port, "/healthz")?;
    if code != 200 {
        return Err(format!("/healthz before: {code}").into());
    }
    // Every link attached to the test cgroup (its id is the directory's inode).
    let cgroup_id = std::fs::metadata(tb.cgroup.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|e| e.to_string())?;
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    let links: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let ids: Vec<u64> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
        .filter_map(|l| l["id"].as_u64())
        .collect();
    let on_cgroup = egressd::kernel::hooks::HOOKS
        .iter()
        .filter(|h| h.on_cgroup())
        .count();
    if ids.len() != on_cgroup {
        return Err(format!("want one link per hook on the cgroup, found {ids:?}").into());
    }
    for id in &ids {
        let st = Command::new("bpftool")
            .args(["link", "detach", "id", &id.to_string()])
            .status()
            .map_err(|e| format!("bpftool: {e}"))?;
        if !st.success() {
            return Err(format!("bpftool link detach id {id} failed").into());
        }
    }
    // The links went one by one (a bpftool each): a check may have come between two, so
    // the repairs can come in more than one record.
    let mut repaired = String::new();
    while egressd::kernel::hooks::HOOKS
        .iter()
        .any(|h| h.on_cgroup() && !repaired.contains(&format!("{}:", h.name)))
    {
        let rec = d.wait_for("tamper_repaired", Duration::from_secs(1))?;
        repaired.push_str(&rec["repairs"].to_string());
    }
    probe_us_denied(&tb)?;
    let (code, body) = http_get(port, "/healthz")?;
    if code != 200 {
        return Err(format!("/healthz after the repair: {code} {body} ({repaired})").into());
    }
    let cg = tb.cgroup.path();
    std::fs::remove_dir(cg).map_err(|e| format!("removing {}: {e}", cg.display()))?;
    let (code, body) = http_get(port, "/healthz")?;
    if code != 503 || !body.contains("cgroup/connect4") {
        return Err(format!("/healthz with the cgroup gone: {code} {body}").into());
    }
    let (_, metrics) = http_get(port, "/metrics")?;
    if !metrics.contains("egressd_hook_attached{hook=\"cgroup/connect4\"} 0") {
        return Err(format!("hook_attached not 0 with the cgroup gone:\n{metrics}").into());
    }
    std::fs::create_dir(cg).map_err(|e| format!("making {}: {e}", cg.display()))?;
    d.wait_for("tamper_repaired", Duration::from_secs(2))?;
    let (code, body) = http_get(port, "/healthz")?;
    if code != 200 {
        return Err(format!("/healthz after the cgroup was made again: {code} {body}").into());
    }
    d.stop()?;
    Ok(())
}

/// Id of the map pinned at `path`.
fn pinned_map_id(path: &Path) -> Result<u32, Failed> {
    aya::maps::MapInfo::from_pin(path)
        .map(|i| i.id())
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

/// What a crashed or failed start leaves behind never decides: a prefix left in the idle
/// set (as a start that failed after filling it would leave) is gone once an adopting start
/// fills that set; a generation map removed between runs does not make generations repeat
/// (they continue from the pinned state) and the per-socket verdict cache, whose entries
/// carry generations, is replaced instead of being trusted.
pub fn pinned_leftovers_never_decide() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    probe_us_denied(&tb)?;
    d.kill9()?;
    // Generation 1 is served by set B; the next start fills set A. Leave in A what a failed
    // start would: the us host's address mapped to what eu's prefix maps to in B.
    let map_path = |name: &str| pins.0.join("maps").join(name);
    let b = aya::maps::MapData::from_pin(map_path("EGRESSD_PREFIXES_V4_B_V1"))
        .map_err(|e| format!("set B: {e}"))?;
    let b: aya::maps::LpmTrie<_, [u8; 4], u32> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(b)).map_err(|e| e.to_string())?;
    let eu_id = b
        .get(&aya::maps::lpm_trie::Key::new(24, [198, 18, 1, 0]), 0)
        .map_err(|e| format!("eu prefix in set B: {e}"))?;
    let a = aya::maps::MapData::from_pin(map_path("EGRESSD_PREFIXES_V4_A_V1"))
        .map_err(|e| format!("set A: {e}"))?;
    let mut a: aya::maps::LpmTrie<_, [u8; 4], u32> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(a)).map_err(|e| e.to_string())?;
    let us_host: Ipv4Addr = US_V4.parse().map_err(|e| format!("{e}"))?;
    a.insert(
        &aya::maps::lpm_trie::Key::new(32, us_host.octets()),
        eu_id,
        0,
    )
    .map_err(|e| format!("planting a stale prefix in set A: {e}"))?;
    let mut d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    if status(&pins)?["generation"] != 2 {
        return Err("the adopting start should publish generation 2 (set A)".into());
    }
    probe_us_denied(&tb)?;
    // The tamper check (first run at start) would remove the stale prefix too, but only
    // after it decided for a while: the set must be clean before it is published.
    if let Ok(rec) = d.wait_for("tamper_repaired", Duration::from_millis(1500)) {
        return Err(format!("the adopted set still held the stale prefix: {rec}").into());
    }
    d.stop()?;

    // The generation map is removed between runs: the next start continues from the
    // generation the pinned state recorded, and the verdict cache, whose entries carry
    // generations, is replaced rather than trusted.
    let cache_before = pinned_map_id(&map_path("EGRESSD_SOCKETS_V1"))?;
    std::fs::remove_file(map_path("EGRESSD_GENERATION_V1")).map_err(|e| e.to_string())?;
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    let st = status(&pins)?;
    if st["generation"] != 3 {
        return Err(format!("generation after the map was recreated: {st}, want 3").into());
    }
    if pinned_map_id(&map_path("EGRESSD_SOCKETS_V1"))? == cache_before {
        return Err("the verdict cache outlived its generation map".into());
    }
    probe_us_denied(&tb)?;
    d.stop()?;
    Ok(())
}

/// Runs `egressd run` on the test bed's cgroup with `extra` and `env`, expecting it to refuse
/// to start: its stderr, or a failure if it ran (it is killed after 20 s) or exited 0.
fn refused_start(
    tb: &Testbed,
    cfg: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<String, Failed> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning egressd: {e}"))?;
    let deadline = Instant::now() + patience(Duration::from_secs(20));
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("a second egressd on the same cgroup kept running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    if status.success() {
        return Err(format!("a second egressd on the same cgroup exited 0: {err}").into());
    }
    Ok(err)
}

/// egressd programs attached to the test bed's cgroup at `cgroup/connect4`.
fn egressd_programs_at_connect4(tb: &Testbed) -> Result<usize, Failed> {
    let cg = std::fs::File::open(tb.cgroup.path()).map_err(|e| e.to_string())?;
    let hook = egressd::kernel::hooks::HOOKS
        .iter()
        .find(|h| h.name == "cgroup/connect4")
        .ok_or("no connect4 hook")?;
    let ids =
        egressd::kernel::pin::attached_programs(std::os::fd::AsFd::as_fd(&cg), hook.attach_type)
            .map_err(|e| format!("{e:#}"))?;
    Ok(aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("egressd_")))
        .count())
}

/// One daemon per cgroup: a second `egressd run` on a cgroup one enforces refuses to start
/// and names the first (pid, pin directory) through the lock; with another run directory
/// (no common lock) it still refuses, because egressd programs are attached; pinned links
/// of a daemon that is gone are adopted through the same pin directory and refused through
/// another one. Exactly one egressd program stays attached per hook throughout.
pub fn second_daemon_refused() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let other_run = dir.0.join("run");
    let other_run_s = other_run.to_string_lossy().into_owned();
    let mut first = Agent::start_at(&tb, &cfg, &[])?;
    let err = refused_start(&tb, &cfg, &[], &[])?;
    let pid = format!("pid {}", first.pid());
    if !err.contains("another egressd already enforces") || !err.contains(&pid) {
        return Err(format!("the refusal must name the other daemon ({pid}): {err}").into());
    }
    if !err.contains("pin dir none") {
        return Err(format!("the refusal must name the other's pin directory: {err}").into());
    }
    let err = refused_start(&tb, &cfg, &[], &[("EGRESSD_RUN_DIR", &other_run_s)])?;
    if !err.contains("egressd programs are already attached") || !err.contains("egressd_connect") {
        return Err(
            format!("without the lock, the attached programs must refuse it: {err}").into(),
        );
    }
    if egressd_programs_at_connect4(&tb)? != 1 {
        return Err("the refused daemons attached something".into());
    }
    probe_us_denied(&tb)?;
    if first.exited().is_some() {
        return Err("the first daemon died".into());
    }
    first.stop()?;
    // Pinned: kill -9 leaves the links; the same pin directory adopts them, another one is
    // refused (by the lock while the adopter runs, by the attached programs once it is gone).
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let other_pins = Pins::new();
    let other_arg = other_pins.0.to_string_lossy().into_owned();
    Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?.kill9()?;
    let adopter = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    let err = refused_start(&tb, &cfg, &["--pin-dir", &other_arg], &[])?;
    if !err.contains(&format!("pin dir {pin_arg}"))
        || !err.contains(&format!("pid {}", adopter.pid()))
    {
        return Err(format!("the refusal must name the adopter and its pin dir: {err}").into());
    }
    adopter.stop()?;
    let err = refused_start(&tb, &cfg, &["--pin-dir", &other_arg], &[])?;
    if !err.contains("egressd programs are already attached") {
        return Err(format!("pinned links of another pin dir must refuse it: {err}").into());
    }
    if egressd_programs_at_connect4(&tb)? != 1 {
        return Err("more than one egressd program at connect4".into());
    }
    probe_us_denied(&tb)?;
    // The same pin directory still adopts.
    let again = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    probe_us_denied(&tb)?;
    again.stop()?;
    egressd(&["detach", "--pin-dir", &pin_arg])?;
    if egressd_programs_at_connect4(&tb)? != 0 {
        return Err("programs left after detach".into());
    }
    // Nothing attached, the lock free: a start on the cgroup works again.
    Agent::start_at(&tb, &cfg, &[])?.stop()?;
    Ok(())
}

/// An upgrade from an egressd whose IPv4 table had an unpaged first level: its pins
/// (`EGRESSD_TABLE24_{A,B}_V1`, 64 MiB each) are dropped, not adopted or refused; the first
/// generation over the adopted links looks IPv4 up in the trie, the next one (installed once
/// the links run the new programs) in the table, which enforces.
pub fn pinned_old_table_dropped() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(
        &dir,
        &format!("ipv4_lookup = \"table\"\n{}", policy("enforce")),
    )?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    probe_us_denied(&tb)?;
    d.kill9()?;
    // What an older egressd left: the first level under its old names, no directory.
    let maps = pins.0.join("maps");
    for set in 0..2 {
        for name in [
            egressd_common::maps::TABLE14[set],
            egressd_common::maps::TABLE24[set],
        ] {
            std::fs::remove_file(maps.join(name)).map_err(|e| format!("{name}: {e}"))?;
        }
        let old = maps.join(egressd_common::maps::LEGACY_TABLE24[set]);
        bpftool(&[
            "map",
            "create",
            &old.to_string_lossy(),
            "type",
            "array",
            "key",
            "4",
            "value",
            "4096",
            "entries",
            "16",
            "name",
            "EGRESSD_TABLE24",
            "flags",
            "1024",
        ])?;
    }
    let d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    let start = d
        .records()
        .iter()
        .find(|r| r["type"] == "agent_start")
        .cloned()
        .unwrap_or_default();
    if start["policy"]["ipv4_lookup"] != "table" {
        return Err(format!("agent_start after the upgrade: {start}").into());
    }
    for set in 0..2 {
        if maps
            .join(egressd_common::maps::LEGACY_TABLE24[set])
            .exists()
            || !maps.join(egressd_common::maps::TABLE14[set]).exists()
            || !maps.join(egressd_common::maps::TABLE24[set]).exists()
        {
            return Err("the old table pins were not replaced by the paged ones".into());
        }
    }
    // Generation 1 before; 2 in the trie over the adopted links, 3 in the table.
    let st = status(&pins)?;
    if st["generation"] != 3 {
        return Err(format!("want generation 3 after the upgrade: {st}").into());
    }
    probe_us_denied(&tb)?;
    d.stop()?;
    Ok(())
}
