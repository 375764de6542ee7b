//! Issue 15: records from real runs of the daemon, written by file sinks in every format,
//! verified by `egressd audit verify`; damage done to the exported files afterwards is
//! found and located.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egressd_testbed::{Testbed, US_V4};
use libtest_mimic::Failed;
use serde_json::Value;

use super::{
    fleet::{tempdir, write_config},
    harness::*,
};

const FORMATS: [&str; 4] = ["json", "ecs", "ocsf", "cef"];

/// The test bed policy with 1 s heartbeats, a stdout sink (the harness reads it) and one
/// file sink per format in `dir`.
fn config(dir: &Path) -> String {
    let mut text = format!("heartbeat_secs = 1\n{}", policy("enforce"));
    text.push_str("\n[[sinks]]\ntype = \"stdout\"\n");
    for f in FORMATS {
        text.push_str(&format!(
            "\n[[sinks]]\nname = \"file-{f}\"\ntype = \"file\"\nformat = \"{f}\"\npath = \"{}\"\n",
            dir.join(format!("{f}.log")).display()
        ));
    }
    text
}

/// `egressd audit verify --json FILES ARGS`: exit success and the report.
fn verify(files: &[&Path], args: &[&str]) -> Result<(bool, Value), Failed> {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["audit", "verify", "--json"])
        .args(files)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if report["proven"] != out.status.success() {
        return Err(format!("exit status {} disagrees with {report}", out.status).into());
    }
    Ok((out.status.success(), report))
}

/// Every failing finding as (kind, at).
fn failures(report: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for h in report["hosts"].as_array().into_iter().flatten() {
        let run_findings = h["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["findings"].as_array().into_iter().flatten());
        let host_findings = h["findings"].as_array().into_iter().flatten();
        for f in run_findings.chain(host_findings) {
            if f["fails"] == true {
                out.push((
                    f["kind"].as_str().unwrap_or_default().to_owned(),
                    f["at"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out
}

fn lines(path: &Path) -> Result<Vec<String>, Failed> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Writes `lines` as a damaged copy and checks that verify fails with `kind` at `line`.
fn expect_damage(
    dir: &Path,
    name: &str,
    lines: &[String],
    kind: &str,
    line: Option<usize>,
) -> Result<(), Failed> {
    let path: PathBuf = dir.join(format!("{name}.log"));
    std::fs::write(&path, format!("{}\n", lines.join("\n"))).map_err(|e| e.to_string())?;
    let (ok, report) = verify(&[&path], &[])?;
    let got = failures(&report);
    let want_at = line.map(|l| format!("{}:{l}", path.display()));
    let found = got
        .iter()
        .any(|(k, at)| k == kind && want_at.as_ref().is_none_or(|w| w == at));
    if ok || !found {
        return Err(
            format!("{name}: want {kind} at {want_at:?}, verify says proven={ok} {got:?}").into(),
        );
    }
    Ok(())
}

/// Runs the daemon with [`config`]: denials, heartbeats, a refused reload, a stop.
/// Returns the digest of its policy (from `agent_start`).
fn run_daemon(tb: &Testbed, dir: &Path) -> Result<String, Failed> {
    let cfg = dir.join("policy.toml");
    std::fs::write(&cfg, config(dir)).map_err(|e| format!("writing policy: {e}"))?;
    let mut d = Agent::start_at(tb, &cfg, &[])?;
    let digest = d
        .records()
        .iter()
        .find(|r| r["type"] == "agent_start")
        .and_then(|r| r["policy"]["digest"].as_str())
        .ok_or("agent_start without a policy digest")?
        .to_owned();
    let r = probe(tb, 3, &[tcp(US_V4)])?;
    for x in &r {
        expect_eperm(x)?;
    }
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    let bad = config(dir).replace("allowlist = [\"eu\"]", "allowlist = [\"mars\"]");
    let answer = d.reload(&bad)?;
    if answer["type"] != "reload_failed" {
        return Err(format!("an invalid reload answered {answer}").into());
    }
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    let recs = d.stop()?;
    if !recs.iter().any(|r| r["type"] == "agent_stop") {
        return Err("no agent_stop".into());
    }
    Ok(digest)
}

/// A clean run proves continuous enforcement in every format, with its policy, flows,
/// coverage and the refused reload reported; deleting, editing, reordering, inserting a
/// record or cutting the tail of the exported file each fail, located.
pub fn clean_run_and_damage() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = tempdir()?;
    let digest = run_daemon(&tb, &dir.0)?;
    for f in FORMATS {
        let path = dir.0.join(format!("{f}.log"));
        let (ok, report) = verify(&[&path], &["--expect-digest", &digest])?;
        if !ok {
            return Err(format!("{f}: a clean run is not proven: {report}").into());
        }
        let run = &report["hosts"][0]["runs"][0];
        if run["enforcement"].as_array().map(Vec::len) != Some(1)
            || run["policies"][0]["digest"] != digest.as_str()
            || run["policies"][0]["mode"] != "enforce"
            || run["coverage"]["enforced"].as_str().is_none()
        {
            return Err(format!("{f}: report lacks interval, policy or coverage: {run}").into());
        }
        let noted = |kind: &str| {
            run["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["kind"] == kind)
        };
        if !noted("reload_failed") {
            return Err(format!("{f}: the refused reload is not reported: {run}").into());
        }
        if f != "cef" && run["flows"]["us/deny"].as_u64().unwrap_or(0) < 3 {
            return Err(format!("{f}: flows lack the 3 denials: {run}").into());
        }
        let (ok, _) = verify(&[&path], &["--expect-digest", "0000000000000000"])?;
        if ok {
            return Err(format!("{f}: another expected digest still proves").into());
        }
        let all = lines(&path)?;
        if all.len() < 8 {
            return Err(format!("{f}: only {} records", all.len()).into());
        }
        // Record 4 (a heartbeat or an event) is the victim; lines are numbered from 1.
        let mut d = all.clone();
        d.remove(3);
        expect_damage(&dir.0, &format!("{f}-deleted"), &d, "sequence_gap", Some(4))?;
        let mut d = all.clone();
        d[3] = edit(&d[3]);
        expect_damage(&dir.0, &format!("{f}-edited"), &d, "chain_broken", Some(4))?;
        let mut d = all.clone();
        d.swap(3, 4);
        expect_damage(
            &dir.0,
            &format!("{f}-reordered"),
            &d,
            "out_of_order",
            Some(5),
        )?;
        let mut d = all.clone();
        d.insert(5, edit(&all[3]));
        expect_damage(&dir.0, &format!("{f}-inserted"), &d, "fork", Some(6))?;
        let d = &all[..all.len() - 1];
        expect_damage(&dir.0, &format!("{f}-cut"), d, "no_stop", None)?;
    }
    Ok(())
}

/// Changes a value that every record carries a digit of (its time), keeping the line
/// readable.
fn edit(line: &str) -> String {
    // The last digit of the first time field: `@timestamp` (JSON, ECS), `time` (OCSF),
    // `rt` (CEF).
    let key = ["\"@timestamp\":\"", "\"time\":", "rt="]
        .iter()
        .find_map(|k| line.find(k).map(|i| i + k.len()))
        .unwrap_or(0);
    let mut b = line.as_bytes().to_vec();
    if let Some(i) = b[key..].iter().position(u8::is_ascii_digit) {
        let i = key + i + 3;
        b[i] = if b[i] == b'1' { b'2' } else { b'1' };
    }
    String::from_utf8(b).unwrap_or_default()
}

/// `kill -9` and a restart that adopts the pins, then a tamper (`bpftool link detach`):
/// verify shows the first run without a stop, the gap until the second, the adoption and
/// the repair; `--trust-adoption` bridges the gap, the repair still fails the verdict.
pub fn kill9_adoption_and_tamper() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &config(&dir.0))?;
    let pins = Pins::new();
    let pin_arg = pins.0.to_string_lossy().into_owned();
    let mut d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    d.kill9()?;
    let mut d = Agent::start_at(&tb, &cfg, &["--pin-dir", &pin_arg])?;
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    let link = pins.0.join("links/connect4").to_string_lossy().into_owned();
    let out = Command::new("bpftool")
        .args(["link", "detach", "pinned", &link])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!("bpftool: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    d.wait_for("tamper_repaired", Duration::from_secs(2))?;
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    d.stop()?;
    for f in FORMATS {
        let path = dir.0.join(format!("{f}.log"));
        let (ok, report) = verify(&[&path], &[])?;
        let got = failures(&report);
        let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        let runs = report["hosts"][0]["runs"].as_array().map_or(0, Vec::len);
        if ok
            || runs != 2
            || !kinds.contains(&"no_stop")
            || !kinds.contains(&"window_gap")
            || !kinds.contains(&"tamper_repaired")
            || kinds.contains(&"chain_broken")
            || kinds.contains(&"sequence_gap")
        {
            return Err(format!("{f}: {runs} runs, failures {got:?}").into());
        }
        let second = &report["hosts"][0]["runs"][1];
        let noted = second["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["kind"] == "adoption");
        if !noted || second["adopted_generation"] != 1 {
            return Err(format!("{f}: the adoption is not reported: {second}").into());
        }
        // Trusting the adoption bridges the kill; the tamper still fails the verdict.
        let (ok, report) = verify(&[&path], &["--trust-adoption"])?;
        let got = failures(&report);
        if ok || got.iter().any(|(k, _)| k != "tamper_repaired") {
            return Err(format!("{f}: with --trust-adoption: {got:?}").into());
        }
    }
    Ok(())
}

/// `chain_key_file`: the daemon's links are HMAC-SHA-256; verify proves the run only with
/// the key, and a wrong key is one `key_mismatch`.
pub fn keyed_chain() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    require_root()?;
    let tb = testbed()?;
    let dir = tempdir()?;
    let key = dir.0.join("chain.key");
    std::fs::write(&key, b"0123456789abcdef-egressd-test").map_err(|e| e.to_string())?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let text = format!("chain_key_file = \"{}\"\n{}", key.display(), config(&dir.0));
    let cfg = write_config(&dir, &text)?;
    let mut d = Agent::start_at(&tb, &cfg, &[])?;
    d.wait_for("heartbeat", Duration::from_secs(5))?;
    d.stop()?;
    let wrong = dir.0.join("wrong.key");
    std::fs::write(&wrong, b"another key of enough bytes").map_err(|e| e.to_string())?;
    let key_arg = key.to_string_lossy().into_owned();
    let wrong_arg = wrong.to_string_lossy().into_owned();
    for f in FORMATS {
        let path = dir.0.join(format!("{f}.log"));
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        if !text.contains("hmac-sha256:") || text.contains("\"sha256:") {
            return Err(format!("{f}: links are not keyed: {text}").into());
        }
        let (ok, report) = verify(&[&path], &["--key-file", &key_arg])?;
        if !ok {
            return Err(format!("{f}: not proven with the key: {report}").into());
        }
        let (ok, report) = verify(&[&path], &[])?;
        if ok
            || !failures(&report)
                .iter()
                .any(|(k, _)| k == "chain_unverified")
        {
            return Err(format!("{f}: without the key: {report}").into());
        }
        // A wrong key is said as such, once, not as every record edited.
        let (ok, report) = verify(&[&path], &["--key-file", &wrong_arg])?;
        let got = failures(&report);
        if ok || got != [("key_mismatch".to_owned(), String::new())] {
            return Err(format!("{f}: with a wrong key: {got:?} {report}").into());
        }
    }
    Ok(())
}
