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

use super::harness::*;

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

/// How long [`day_like_run`] runs the daemon, seconds (`EGRESSD_AUDIT_RUN_SECS` overrides
/// it, e.g. to try the test quickly; the outage and reload keep their share of the time).
const DAY_LIKE_SECS: u64 = 150;

/// The name of [`day_like_run`]; `cargo xtask test` skips it in the VMs by this name.
pub const DAY_LIKE_TEST: &str = "audit_verify_day_like_run";

/// A syslog TCP receiver that keeps the raw bytes of each connection in a file of its own
/// (`capture-N.raw` in `dir`), as a packet capture of the stream would: RFC 6587 frames
/// back to back, no line breaks. [`Capture::stop`] closes the listener and the connection
/// (an outage); [`Capture::start`] listens again on the same port.
struct Capture {
    dir: PathBuf,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Connections so far (names the next file).
    conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Capture {
    fn new(dir: &Path) -> Result<Self, Failed> {
        let mut c = Self {
            dir: dir.to_path_buf(),
            port: free_port()?,
            stop: std::sync::Arc::default(),
            thread: None,
            conns: std::sync::Arc::default(),
        };
        c.start()?;
        Ok(c)
    }

    fn start(&mut self) -> Result<(), Failed> {
        use std::{io::Read as _, sync::atomic::Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))
            .map_err(|e| format!("capture listen on {}: {e}", self.port))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        self.stop.store(false, Ordering::SeqCst);
        let (stop, conns, dir) = (self.stop.clone(), self.conns.clone(), self.dir.clone());
        self.thread = Some(std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::SeqCst) {
                let (mut sock, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                };
                sock.set_nonblocking(false).map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .map_err(|e| e.to_string())?;
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                let path = dir.join(format!("capture-{n}.raw"));
                let mut out = std::fs::File::create(&path).map_err(|e| e.to_string())?;
                let mut buf = vec![0; 64 * 1024];
                // Until the peer closes or the outage; what the kernel holds unread then
                // is reset, and the sink sends it again.
                while !stop.load(Ordering::SeqCst) {
                    match sock.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => std::io::Write::write_all(&mut out, &buf[..k])
                            .map_err(|e| e.to_string())?,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
            }
            Ok(())
        }));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Failed> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Err(e))) => Err(format!("capture: {e}").into()),
            Some(Err(_)) => Err("capture thread panicked".into()),
            _ => Ok(()),
        }
    }

    /// The capture files so far, in connection order.
    fn files(&self) -> Vec<PathBuf> {
        let n = self.conns.load(std::sync::atomic::Ordering::SeqCst);
        (1..=n)
            .map(|i| self.dir.join(format!("capture-{i}.raw")))
            .collect()
    }

    /// Whether some capture file holds `needle`.
    fn holds(&self, needle: &str) -> bool {
        self.files().iter().any(|f| {
            std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `2026-12-01T07:04:36.741715123Z` -> `2026-12-01T07:04:36.741Z`: a time no later than
/// the record's in every format (OCSF and CEF carry milliseconds).
fn to_millis(ts: &str) -> String {
    match ts.split_once('.') {
        Some((secs, frac)) => format!("{secs}.{}Z", &frac[..3.min(frac.len())]),
        None => ts.to_owned(),
    }
}

/// Issue 15, "an exported stream from a day-like run (minutes here) verifies": the daemon
/// runs for minutes ([`DAY_LIKE_SECS`]) with a heartbeat every second, allowed and denied
/// connections throughout, a syslog TCP sink (CEF) whose receiver goes away for a stretch
/// in the middle (its records wait in the spool) and a reload to another policy after it.
/// Every file sink's export, and the raw TCP stream the receiver captured (RFC 6587 octet
/// counting, one file per connection), verifies with exit 0: over the whole run, and over
/// each generation's window with `--expect-digest` of that generation (and not with the
/// other's). Kept out of the VM runs (`cargo xtask test` passes `--skip` for it): minutes
/// of TCG time for what the native run proves.
pub fn day_like_run() -> Result<(), Failed> {
    require_root()?;
    let secs = std::env::var("EGRESSD_AUDIT_RUN_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DAY_LIKE_SECS);
    let tb = testbed()?;
    let dir = tempdir()?;
    let mut capture = Capture::new(&dir.0)?;
    let mut text = config(&dir.0);
    text.push_str(&format!(
        "\n[[sinks]]\nname = \"siem\"\ntype = \"syslog\"\ntransport = \"tcp\"\n\
         address = \"127.0.0.1:{}\"\nformat = \"cef\"\nspool = \"{}\"\nretry_max_ms = 200\n",
        capture.port,
        dir.0.join("spool").display()
    ));
    let cfg = write_config(&dir, &text)?;
    let mut d = Agent::start_at(&tb, &cfg, &[])?;
    let digest1 = d
        .records()
        .iter()
        .find(|r| r["type"] == "agent_start")
        .and_then(|r| r["policy"]["digest"].as_str())
        .ok_or("agent_start without a policy digest")?
        .to_owned();
    // Phases, as fractions of the run: outage from 1/3 to 1/2, reload at 2/3.
    let begin = std::time::Instant::now();
    let at = |frac: f64| Duration::from_secs_f64(secs as f64 * frac);
    let (mut down, mut up, mut reloaded) = (false, false, None);
    let mut rounds = 0_u64;
    while begin.elapsed() < Duration::from_secs(secs) {
        let r = probe(&tb, 1, &[tcp(egressd_testbed::EU_V4), tcp(US_V4)])?;
        expect_ok(&r[0])?;
        expect_eperm(&r[1])?;
        rounds += 1;
        if !down && begin.elapsed() >= at(1.0 / 3.0) {
            capture.stop()?;
            down = true;
        }
        if down && !up && begin.elapsed() >= at(0.5) {
            capture.start()?;
            up = true;
        }
        if reloaded.is_none() && begin.elapsed() >= at(2.0 / 3.0) {
            // Another policy (a region more, not allowed): a new digest and generation.
            let other = text.replace(
                "[regions.us]",
                "[regions.asia]\nprefixes = [\"198.18.3.0/24\"]\n\n[regions.us]",
            );
            let answer = d.reload(&other)?;
            if answer["type"] != "policy_loaded" {
                return Err(format!("the reload answered {answer}").into());
            }
            reloaded = Some(answer);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let loaded = reloaded.ok_or("no reload")?;
    let digest2 = loaded["policy"]["digest"]
        .as_str()
        .ok_or("policy_loaded without a digest")?
        .to_owned();
    if digest2 == digest1 || loaded["policy"]["generation"] != 2 {
        return Err(format!("the reload kept the policy: {loaded}").into());
    }
    let t_reload = loaded["@timestamp"]
        .as_str()
        .ok_or("policy_loaded without @timestamp")?
        .to_owned();
    let recs = d.stop()?;
    let stop = stop_record(&recs)?.clone();
    let sink = &stop["lost"]["sinks"]["siem"];
    if sink["retries"].as_u64().unwrap_or(0) == 0 || sink["dropped_at_exit"] != 0 {
        return Err(format!("the outage was not seen, or records were dropped: {sink}").into());
    }
    let heartbeats = recs.iter().filter(|r| r["type"] == "heartbeat").count() as u64;
    if heartbeats + 5 < secs {
        return Err(format!("{heartbeats} heartbeats in {secs} s").into());
    }
    let n = stop["sequence"]
        .as_u64()
        .ok_or("agent_stop without sequence")?;
    // The spool empties at exit; give the capture a moment to write it.
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(10));
    while !capture.holds("agent-stop") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    capture.stop()?;
    let captured = capture.files();
    if captured.len() < 2 {
        return Err(format!("the outage made no second connection: {captured:?}").into());
    }
    let mut exports: Vec<(String, Vec<PathBuf>)> = FORMATS
        .iter()
        .map(|f| (f.to_string(), vec![dir.0.join(format!("{f}.log"))]))
        .collect();
    exports.push(("tcp capture".into(), captured));
    let gen1_to = to_millis(&t_reload);
    for (name, files) in &exports {
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let (ok, report) = verify(&files, &[])?;
        let run = &report["hosts"][0]["runs"][0];
        if !ok || run["last_sequence"] != n || run["policies"].as_array().map(Vec::len) != Some(2) {
            return Err(format!(
                "{name}: the run (sequence 1..{n}, 2 policies) is not proven: {report}"
            )
            .into());
        }
        if name != "cef"
            && name != "tcp capture"
            && (run["flows"]["us/deny"].as_u64().unwrap_or(0) < rounds
                || run["flows"]["eu/allow"].as_u64().unwrap_or(0) < rounds)
        {
            return Err(format!("{name}: flows lack {rounds} rounds: {}", run["flows"]).into());
        }
        for (window, want, other) in [
            (["--to", gen1_to.as_str()], &digest1, &digest2),
            (["--from", t_reload.as_str()], &digest2, &digest1),
        ] {
            let mut args = window.to_vec();
            args.extend(["--expect-digest", want.as_str()]);
            let (ok, report) = verify(&files, &args)?;
            if !ok {
                return Err(format!("{name}: {window:?} with {want}: {report}").into());
            }
            let mut args = window.to_vec();
            args.extend(["--expect-digest", other.as_str()]);
            let (ok, _) = verify(&files, &args)?;
            if ok {
                return Err(format!("{name}: {window:?} proven with {other}").into());
            }
        }
    }
    Ok(())
}
