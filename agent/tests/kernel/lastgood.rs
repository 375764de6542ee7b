//! The last good policy (issue 19): a daemon started on an invalid policy enforces the last
//! policy it had in force, says so (record, metric, /healthz), and leaves that state at the
//! first valid reload; without a kept policy it refuses to start as before.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use egressd::daemon::lastgood::StateDir;
use egressd_testbed::{EU_V4, Testbed, US_V4};
use libtest_mimic::Failed;
use serde_json::Value;

use super::harness::*;

/// `egressd_policy_fallback` in a /metrics body.
fn fallback_metric(port: u16) -> Result<Option<f64>, Failed> {
    let (code, body) = http_get(port, "/metrics")?;
    if code != 200 {
        return Err(format!("/metrics: {code} {body}").into());
    }
    Ok(body.lines().find_map(|l| {
        l.strip_prefix("egressd_policy_fallback ")
            .and_then(|v| v.trim().parse().ok())
    }))
}

fn expect_us_denied_eu_allowed(tb: &Testbed, when: &str) -> Result<(), Failed> {
    let r = probe(tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
    expect_eperm(&r[0]).map_err(|e| format!("{when}: us: {e:?}"))?;
    expect_ok(&r[1]).map_err(|e| format!("{when}: eu: {e:?}"))?;
    Ok(())
}

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// Start on a valid policy with a state directory, stop, break the policy (malformed TOML,
/// an unknown allowlisted region, a drop-in that redefines `eu`), start again: the daemon
/// starts on the last good policy (us denied, eu allowed), a `policy_fallback` record names
/// the bad file, line and field, `/healthz` is degraded and `egressd_policy_fallback` 1;
/// fixing the file and SIGHUP clear all of it.
pub fn fallback_on_invalid_policy_at_start() -> Result<(), Failed> {
    let tb = testbed()?;
    let good = policy("enforce");
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "malformed TOML",
            "mode = \"enforce\"\nallowlist = [\"eu\"\n[regions.eu]\nprefixes = []\n".into(),
            None,
            "policy.toml:",
        ),
        (
            "unknown allowlisted region",
            good.replace("allowlist = [\"eu\"]", "allowlist = [\"eu\", \"mars\"]"),
            None,
            "allowlist[1]",
        ),
        (
            "drop-in redefining eu",
            good.clone(),
            Some("[regions.eu]\nprefixes = [\"198.18.2.0/24\"]\n"),
            "team-b.toml:1",
        ),
    ];
    for (name, bad, drop_in, want_in_error) in cases {
        let dir = tempdir()?;
        let cfg = dir.0.join("policy.toml");
        let state = dir.0.join("state/last-good");
        std::fs::write(&cfg, &good).map_err(|e| e.to_string())?;
        let state_arg = state.to_string_lossy().into_owned();
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let args = ["--state-dir", &state_arg, "--metrics", &addr];

        let first = Agent::start_at(&tb, &cfg, &args)?;
        let recs = first.stop()?;
        let loaded = of_type(&recs, "policy_loaded");
        let digest = loaded
            .first()
            .and_then(|r| r["policy"]["digest"].as_str())
            .ok_or("no policy_loaded digest")?
            .to_owned();
        // One record per policy file (daemons of several cgroups may share the directory).
        if !StateDir::new(&state).file(&cfg).is_file() {
            return Err(format!("{name}: nothing kept in {}", state.display()).into());
        }

        std::fs::write(&cfg, &bad).map_err(|e| e.to_string())?;
        if let Some(text) = drop_in {
            let d = dir.0.join("policy.d");
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            std::fs::write(d.join("team-b.toml"), text).map_err(|e| e.to_string())?;
        }
        let mut d = Agent::start_at(&tb, &cfg, &args).map_err(|e| {
            format!("{name}: the daemon did not start on its last good policy: {e:?}")
        })?;
        let fb = of_type(d.records(), "policy_fallback")
            .first()
            .copied()
            .cloned()
            .ok_or_else(|| format!("{name}: no policy_fallback record: {:?}", d.records()))?;
        let error = fb["error"].as_str().unwrap_or("");
        if !error.contains(want_in_error) {
            return Err(format!("{name}: the error does not say {want_in_error:?}: {fb}").into());
        }
        if fb["policy"]["digest"] != digest.as_str() || fb["last_good"]["digest"] != digest.as_str()
        {
            return Err(format!("{name}: not the last good policy {digest}: {fb}").into());
        }
        expect_us_denied_eu_allowed(&tb, name)?;
        let (code, body) = http_get(port, "/healthz")?;
        if code != 200 || !body.starts_with("degraded: policy fallback:") {
            return Err(format!("{name}: /healthz while falling back: {code} {body}").into());
        }
        if fallback_metric(port)? != Some(1.0) {
            return Err(format!("{name}: egressd_policy_fallback is not 1").into());
        }

        // Still broken: a reload fails and the fallback stays.
        let answer = d.reload(&bad)?;
        if answer["type"] != "reload_failed" {
            return Err(format!("{name}: reload of the bad file: {answer}").into());
        }
        let (_, body) = http_get(port, "/healthz")?;
        if !body.starts_with("degraded") || fallback_metric(port)? != Some(1.0) {
            return Err(format!("{name}: not degraded after a failed reload: {body}").into());
        }
        // Fixed: SIGHUP loads it and the degraded state is over.
        let _ = std::fs::remove_dir_all(dir.0.join("policy.d"));
        let answer = d.reload(&good)?;
        if answer["type"] != "policy_loaded" {
            return Err(format!("{name}: reload of the fixed file: {answer}").into());
        }
        let (code, body) = http_get(port, "/healthz")?;
        if code != 200 || body != "ok\n" {
            return Err(format!("{name}: /healthz after the fix: {code} {body}").into());
        }
        if fallback_metric(port)? != Some(0.0) {
            return Err(format!("{name}: egressd_policy_fallback is not 0 after the fix").into());
        }
        expect_us_denied_eu_allowed(&tb, name)?;
        d.stop()?;
    }
    Ok(())
}

/// What is kept is what the last successful reload installed, not what the daemon started
/// with, and an invalid reload does not replace it: start with us denied, reload to a
/// policy that allowlists us, reload an invalid file, stop, start on the invalid file: us is
/// allowed (the reloaded policy), the record's digest is the reloaded one.
pub fn kept_policy_is_the_last_installed() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = dir.0.join("policy.toml");
    let state = dir.0.join("last-good");
    let good = policy("enforce");
    std::fs::write(&cfg, &good).map_err(|e| e.to_string())?;
    let state_arg = state.to_string_lossy().into_owned();
    let args = ["--state-dir", &state_arg];
    let mut d = Agent::start_at(&tb, &cfg, &args)?;
    let both = good.replace("allowlist = [\"eu\"]", "allowlist = [\"eu\", \"us\"]");
    let loaded = d.reload(&both)?;
    if loaded["type"] != "policy_loaded" {
        return Err(format!("reload: {loaded}").into());
    }
    let bad = good.replace("allowlist = [\"eu\"]", "allowlist = [\"mars\"]");
    let failed = d.reload(&bad)?;
    if failed["type"] != "reload_failed" {
        return Err(format!("invalid reload: {failed}").into());
    }
    d.stop()?;
    let mut d = Agent::start_at(&tb, &cfg, &args)?;
    let fb = of_type(d.records(), "policy_fallback")
        .first()
        .copied()
        .cloned()
        .ok_or("no policy_fallback record")?;
    if fb["policy"]["digest"] != loaded["policy"]["digest"] {
        return Err(format!("not the reloaded policy {loaded}: {fb}").into());
    }
    let r = probe(&tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
    expect_ok(&r[0]).map_err(|e| format!("us (allowlisted by the reload): {e:?}"))?;
    expect_ok(&r[1])?;
    let fixed = d.reload(&good)?;
    if fixed["type"] != "policy_loaded" {
        return Err(format!("fixed reload: {fixed}").into());
    }
    expect_us_denied_eu_allowed(&tb, "after the fix")?;
    d.stop()?;
    Ok(())
}

/// `egressd status` of pinned enforcement says when the policy in force is the last good
/// one: start pinned on a valid policy, stop, add a drop-in that redefines `eu`, start
/// again: `status` (text and JSON) names the error, the kept policy's digest and the
/// generation it was kept as; after the fix and SIGHUP it no longer does.
pub fn status_shows_the_fallback() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let pins = Pins::new();
    let cfg = dir.0.join("policy.toml");
    let good = policy("enforce");
    std::fs::write(&cfg, &good).map_err(|e| e.to_string())?;
    let state_arg = dir.0.join("last-good").to_string_lossy().into_owned();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let args = ["--state-dir", &state_arg, "--pin-dir", &pin_arg];
    let status = || -> Result<(Value, String), Failed> {
        let run = |json: bool| -> Result<String, Failed> {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
            cmd.args(["status", "--pin-dir", &pin_arg]);
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("egressd status: {}: {err}", out.status).into());
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let json = run(true)?;
        let json = serde_json::from_str(&json).map_err(|e| format!("status JSON {json}: {e}"))?;
        Ok((json, run(false)?))
    };

    let first = Agent::start_at(&tb, &cfg, &args)?;
    let recs = first.stop()?;
    let digest = of_type(&recs, "policy_loaded")
        .first()
        .and_then(|r| r["policy"]["digest"].as_str())
        .ok_or("no policy_loaded digest")?
        .to_owned();
    let (json, text) = status()?;
    if !json["state"]["fallback"].is_null() || text.contains("FALLBACK") {
        return Err(format!("a fallback before any: {json}\n{text}").into());
    }

    let d = dir.0.join("policy.d");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    std::fs::write(
        d.join("team-b.toml"),
        "[regions.eu]\nprefixes = [\"198.18.2.0/24\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let mut agent = Agent::start_at(&tb, &cfg, &args)?;
    let (json, text) = status()?;
    let fb = &json["state"]["fallback"];
    let error = fb["error"].as_str().unwrap_or("");
    if !error.contains("team-b.toml:1") || !error.contains("regions.eu") {
        return Err(format!("status does not name the bad file and field: {json}").into());
    }
    if fb["last_good_digest"] != digest.as_str()
        || fb["last_good_generation"] != 1
        || json["state"]["digest"] != digest.as_str()
        || json["state"]["generation"] != 2
    {
        return Err(format!("status: not last good policy {digest} (generation 1): {json}").into());
    }
    for want in [
        "POLICY FALLBACK: the policy on disk was invalid",
        "team-b.toml:1",
        &format!("enforcing the last good policy instead: digest {digest}, kept as generation 1"),
    ] {
        if !text.contains(want) {
            return Err(format!("status text does not say {want:?}:\n{text}").into());
        }
    }
    expect_us_denied_eu_allowed(&tb, "while falling back")?;

    std::fs::remove_dir_all(&d).map_err(|e| e.to_string())?;
    let answer = agent.reload(&good)?;
    if answer["type"] != "policy_loaded" {
        return Err(format!("reload of the fixed set: {answer}").into());
    }
    let (json, text) = status()?;
    if !json["state"]["fallback"].is_null() || text.contains("FALLBACK") {
        return Err(format!("status still says fallback after the fix: {json}\n{text}").into());
    }
    if json["state"]["generation"] != 3 {
        return Err(format!("status after the fix: {json}").into());
    }
    agent.stop()?;
    Ok(())
}

/// With no last good policy (an empty state directory) and an invalid file, `egressd run`
/// exits 1 naming the file, line and field, and says no last good policy was kept.
pub fn no_kept_policy_refuses_to_start() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = dir.0.join("policy.toml");
    let bad = policy("enforce").replace("allowlist = [\"eu\"]", "allowlist = [\"eu\", \"mars\"]");
    std::fs::write(&cfg, bad).map_err(|e| e.to_string())?;
    let state: PathBuf = dir.0.join("last-good");
    let out = run_to_exit(&tb, &cfg, &state)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) {
        return Err(format!("want exit 1, got {}: {stderr}", out.status).into());
    }
    if !stderr.contains("policy.toml:4:") || !stderr.contains("allowlist[1]") {
        return Err(format!("the error does not name file, line and field: {stderr}").into());
    }
    if !stderr.contains("no last good policy was kept") {
        return Err(format!("the error does not say nothing was kept: {stderr}").into());
    }
    if String::from_utf8_lossy(&out.stdout).contains("agent_start") {
        return Err("it started".into());
    }
    Ok(())
}

/// Runs `egressd run` on the test bed's cgroup and waits (20 s at most) for it to exit.
fn run_to_exit(tb: &Testbed, cfg: &Path, state: &Path) -> Result<std::process::Output, Failed> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning egressd: {e}"))?;
    let deadline = Instant::now() + patience(Duration::from_secs(20));
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("egressd ran on an invalid policy with nothing kept".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().map_err(|e| e.to_string().into())
}
