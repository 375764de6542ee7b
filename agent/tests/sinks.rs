//! Real receivers: a real rsyslogd (Debian's `rsyslog` with `rsyslog-openssl`), started by
//! the test inside a network namespace it creates, listening on that namespace's loopback with
//! plain TCP (RFC 6587 octet counting), TLS (RFC 5425; `ossl` stream driver, client
//! certificates required) and UDP inputs. Certificates are made by the test (rcgen).
//!
//! - `syslog_receives_every_record_once`: the pipeline delivers 300 records to TCP (native
//!   JSON), TLS (OCSF) and UDP (CEF); rsyslog's own RFC 5424 parse of each message is checked,
//!   and each TCP/TLS record arrives exactly once, in order, and parses.
//! - `syslog_outage_loses_nothing`: rsyslog is stopped for several seconds while records keep
//!   coming; they are spooled and, after it restarts, all arrive in order, those of the
//!   outage exactly once (the last sent before the stop may come again from the spool).
//! - `daemon_end_to_end`: the real `egressd run` (inside rsyslog's namespace) judges a probe
//!   in the test bed's cgroup; every record it prints on stdout arrives once at rsyslog over
//!   TCP (OCSF) and TLS (CEF), with enrichment and the loss counters.
//! - `syslog_crash_during_outage_loses_nothing` (issue 13 item 3): rsyslog stops, five denials
//!   follow a second apart, egressd is killed with `kill -9`, both start again: every record
//!   egressd printed arrives.
//! - `syslog_crash_at_random_moments_loses_nothing`: 10,000 denials while egressd is killed
//!   at random moments and rsyslog stops and starts: every record arrives at least once
//!   (duplicates by `id` counted and printed; `EGRESSD_CRASH_SEED` repeats a run).
//!
//! Needs root, `rsyslogd` and its `lmnsd_ossl` module (`cargo xtask setup` installs them);
//! fails, never skips, without them. rsyslogd and the namespaces are removed on every exit
//! path (guards).
//!
//! Run: `cargo test -p egressd --test sinks`.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use egressd::{
    config::{SinkConfig, SinkKind, SpoolConfig, SyslogConfig, SyslogTransport},
    events::formats::{Format, cef},
    events::pipeline::Pipeline,
    events::{Record, sample},
};
use egressd_testbed::{Netns, PORT, Testbed, US_V4, US_V6};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

// The validation suite's checkers (tests/schemas.rs), applied to what a real run sends.
#[path = "schemas/cef.rs"]
mod cef_strict;
#[path = "schemas/ocsf.rs"]
mod ocsf_schema;

const PROBE_ARG: &str = "__egressd_linger_probe";
const TCP_PORT: u16 = 10514;
const TLS_PORT: u16 = 10515;
const UDP_PORT: u16 = 10516;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(PROBE_ARG) {
        // The probe, then linger so the agent finds this process in /proc.
        let code = egressd_testbed::client::main(&argv[2..]);
        std::thread::sleep(Duration::from_secs(2));
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    // SAFETY: before any test thread or child starts.
    let dirs = unsafe { egressd_testbed::DaemonDirs::for_children("egressd-sinks") };
    let tests = vec![
        Trial::test("syslog_receives_every_record_once", every_record_once),
        Trial::test("syslog_outage_loses_nothing", outage),
        Trial::test("daemon_end_to_end", daemon_end_to_end),
        Trial::test("daemon_outage_spooled_records_verify", daemon_outage_audit),
        Trial::test(
            "syslog_oversized_records_arrive_parseable_and_counted",
            oversized_records,
        ),
        Trial::test(
            "syslog_crash_during_outage_loses_nothing",
            crash_during_outage,
        ),
        Trial::test(
            "syslog_crash_at_random_moments_loses_nothing",
            crash_at_random_moments,
        ),
        Trial::test("check_refuses_the_sinks_run_refuses", check_sinks),
    ];
    let conclusion = libtest_mimic::run(&args, tests);
    dirs.remove();
    conclusion.exit();
}

fn prerequisites() -> Result<(), Failed> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "these tests create namespaces and run rsyslogd: run them as root \
                    (they are never skipped)"
                .into(),
        );
    }
    let ok = Command::new("rsyslogd")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err("rsyslogd not found: install rsyslog (cargo xtask setup)".into());
    }
    let ossl = ["/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/rsyslog"]
        .iter()
        .any(|d| Path::new(d).join("lmnsd_ossl.so").exists());
    if !ossl {
        return Err(
            "rsyslog's TLS driver lmnsd_ossl.so is missing: install rsyslog-openssl \
                    (cargo xtask setup)"
                .into(),
        );
    }
    Ok(())
}

fn err(e: impl std::fmt::Display) -> Failed {
    e.to_string().into()
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, Failed> {
        let p = std::env::temp_dir().join(egressd_testbed::unique("egressd-sinks-"));
        fs::create_dir_all(&p).map_err(err)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Test PKI: a CA, a server certificate for 127.0.0.1/localhost, a client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Result<Pki, Failed> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "egressd test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String), Failed> {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (scert, skey) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (ccert, ckey) = leaf("egressd-client", ExtendedKeyUsagePurpose::ClientAuth)?;
    let p = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    for (path, text) in [
        (&p.ca, ca_cert.pem()),
        (&p.server_cert, scert),
        (&p.server_key, skey),
        (&p.client_cert, ccert),
        (&p.client_key, ckey),
    ] {
        fs::write(path, text).map_err(err)?;
    }
    // egressd refuses a client key others can read.
    fs::set_permissions(
        &p.client_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(err)?;
    Ok(p)
}

/// Runs `f` on a thread inside network namespace `ns` (threads it spawns stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failed> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T, String> {
        let file = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| Failed::from("thread in namespace panicked"))?
    .map_err(Failed::from)
}

/// rsyslogd in its own network namespace; stopped (and the namespace deleted) on drop.
struct Rsyslog {
    ns: Netns,
    dir: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    fn new(dir: &Path, pki: &Pki) -> Result<Self, Failed> {
        Self::with_max_message(dir, pki, "64k")
    }

    /// With rsyslog's `maxMessageSize` set to `max` (rsyslog cuts longer messages).
    fn with_max_message(dir: &Path, pki: &Pki, max: &str) -> Result<Self, Failed> {
        let ns = Netns::create(&egressd_testbed::unique("egr")).map_err(err)?;
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="{max}")
module(load="imtcp" maxSessions="100")
module(load="imudp")
template(name="rec" type="string" string="{{\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",\"procid\":\"%procid:::json%\",\"msgid\":\"%msgid:::json%\",\"pri\":\"%pri%\",\"msg\":\"%msg:::json%\"}}\n")
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="rec") action(type="omfile" file="{d}/tcp-5424.log" template="RSYSLOG_SyslogProtocol23Format") }}
ruleset(name="tls") {{ action(type="omfile" file="{d}/tls.log" template="rec") action(type="omfile" file="{d}/tls-5424.log" template="RSYSLOG_SyslogProtocol23Format") }}
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="rec") }}
input(type="imtcp" port="{TCP_PORT}" address="127.0.0.1" ruleset="tcp")
input(type="imtcp" port="{TLS_PORT}" address="127.0.0.1" ruleset="tls" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid" streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}" streamDriver.KeyFile="{key}")
input(type="imudp" port="{UDP_PORT}" address="127.0.0.1" ruleset="udp")
"#,
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        fs::write(dir.join("rsyslog.conf"), conf).map_err(err)?;
        let mut r = Self {
            ns,
            dir: dir.to_path_buf(),
            child: None,
        };
        r.start()?;
        Ok(r)
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn start(&mut self) -> Result<(), Failed> {
        // nsenter (util-linux) changes only the network namespace (`ip netns exec` would also
        // remount /sys).
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name()))
            .args(["rsyslogd", "-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("rsyslogd.stderr")).map_err(err)?)
            .spawn()
            .map_err(|e| format!("starting rsyslogd: {e}"))?;
        self.child = Some(child);
        // Ready when both TCP listeners accept.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = in_ns(self.ns.name(), || {
                [TCP_PORT, TLS_PORT].iter().all(|p| {
                    TcpStream::connect_timeout(
                        &(Ipv4Addr::LOCALHOST, *p).into(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
            })?;
            if ready {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                let log = fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default();
                return Err(format!("rsyslogd exited ({st}): {log}").into());
            }
            if Instant::now() > deadline {
                return Err("rsyslogd did not listen within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child (nsenter execs rsyslogd: same pid).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Parsed lines of `{input}.log`.
    fn lines(&self, input: &str) -> Result<Vec<Value>, Failed> {
        let text = fs::read_to_string(self.dir.join(format!("{input}.log"))).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("rsyslog line {l}: {e}").into()))
            .collect()
    }

    /// Waits until `{input}.log` has at least `n` lines (or `done` says so).
    fn wait(
        &self,
        input: &str,
        secs: u64,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let lines = self.lines(input)?;
            if done(&lines) {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{input}: only {} lines after {secs} s: {:?}",
                    lines.len(),
                    lines.last()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn syslog_sink(
    name: &str,
    transport: SyslogTransport,
    port: u16,
    format: Format,
    pki: &Pki,
    spool: Option<&Path>,
) -> SinkConfig {
    let tls = transport == SyslogTransport::Tls;
    SinkConfig {
        name: name.into(),
        kind: SinkKind::Syslog(SyslogConfig {
            transport,
            address: format!("127.0.0.1:{port}"),
            server_name: None,
            ca: tls.then(|| pki.ca.clone()),
            client_auth: tls.then(|| (pki.client_cert.clone(), pki.client_key.clone())),
            facility: 16,
            app_name: "egressd".into(),
        }),
        format,
        queue: 10_000,
        queue_bytes: egressd::config::DEFAULT_QUEUE_BYTES,
        max_message_bytes: egressd::config::DEFAULT_SYSLOG_MESSAGE_BYTES,
        when_full: egressd::config::WhenFull::default(),
        spool: spool.map(|d| SpoolConfig {
            dir: d.join(name),
            max_bytes: 64 << 20,
            fsync: egressd::events::pipeline::spool::Fsync::Batch,
        }),
        retry_max_ms: 200,
    }
}

/// Record `seq`: the sample denial, every tenth one the non-ASCII sample (`Zürich`), which
/// goes as RFC 5424 MSG-UTF8 (with the BOM).
fn rec(seq: u64) -> Record {
    let mut ev = if seq.is_multiple_of(10) {
        sample::deny_utf8()
    } else {
        sample::deny()
    };
    ev.header.sequence = seq;
    ev.header.id =
        egressd::events::EventId::from(&format!("{}-{seq}", ev.header.agent.ephemeral_id))
            .expect("fits");
    Record::Connection(Box::new(ev))
}

/// The sequence number a received message carries, per format.
fn seq_of(line: &Value, format: Format) -> Result<u64, Failed> {
    let msg = line["msg"].as_str().ok_or("no msg")?;
    // rsyslog keeps the BOM of a MSG-UTF8 in `%msg%`: a reader skips it.
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    let bad = || Failed::from(format!("unparsable {format:?} message: {msg}"));
    match format {
        Format::Cef => {
            let (_, pairs) = cef::parse(msg).ok_or_else(bad)?;
            pairs
                .iter()
                .find(|(k, _)| k == "egressdSeq")
                .and_then(|(_, v)| v.parse().ok())
                .ok_or_else(bad)
        }
        Format::Ocsf => {
            let v: Value = serde_json::from_str(msg).map_err(|_| bad())?;
            v["metadata"]["sequence"].as_u64().ok_or_else(bad)
        }
        Format::Json | Format::Ecs => {
            let v: Value = serde_json::from_str(msg).map_err(|_| bad())?;
            v["sequence"]
                .as_u64()
                .or_else(|| v["event"]["sequence"].as_u64())
                .ok_or_else(bad)
        }
    }
}

/// Every line parsed, its RFC 5424 header as rsyslog understood it, and the sequence numbers.
fn check_lines(lines: &[Value], format: Format) -> Result<Vec<u64>, Failed> {
    let mut seqs = Vec::new();
    let pid = std::process::id().to_string();
    for l in lines {
        if l["app"] != "egressd" || l["msgid"] != "connection" || l["host"] != "egressd-test" {
            return Err(format!("RFC 5424 header not parsed as sent: {l}").into());
        }
        // local0 (16) * 8 + warning (4)
        if l["pri"] != "132" {
            return Err(format!("PRI: {l}").into());
        }
        if l["procid"].as_str() != Some(pid.as_str()) {
            return Err(format!("PROCID: {l}").into());
        }
        // Non-ASCII records arrive whole, after the BOM; ASCII ones without it.
        let msg = l["msg"].as_str().unwrap_or_default();
        let utf8 = msg.contains("Zürich");
        if utf8 != msg.starts_with('\u{feff}') {
            return Err(format!("MSG encoding (BOM iff non-ASCII, text intact): {l}").into());
        }
        seqs.push(seq_of(l, format)?);
    }
    Ok(seqs)
}

fn every_record_once() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let rs = Rsyslog::new(&dir.0, &pki)?;
    let sinks = vec![
        syslog_sink(
            "tcp",
            SyslogTransport::Tcp,
            TCP_PORT,
            Format::Json,
            &pki,
            None,
        ),
        syslog_sink(
            "tls",
            SyslogTransport::Tls,
            TLS_PORT,
            Format::Ocsf,
            &pki,
            None,
        ),
        syslog_sink(
            "udp",
            SyslogTransport::Udp,
            UDP_PORT,
            Format::Cef,
            &pki,
            None,
        ),
    ];
    let p = in_ns(rs.ns(), move || Pipeline::start(&sinks, "egressd-test"))?.map_err(err)?;
    let n = 300u64;
    for i in 1..=n {
        p.submit(&rec(i));
        if i % 50 == 0 {
            // Paced so the UDP receiver keeps up (UDP has no flow control).
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !p.flush(Duration::from_secs(20)) {
        return Err(format!("not flushed: {:?}", p.counters()).into());
    }
    let want: Vec<u64> = (1..=n).collect();
    for (input, format) in [("tcp", Format::Json), ("tls", Format::Ocsf)] {
        let lines = rs.wait(input, 20, |l| l.len() as u64 >= n)?;
        // Give a duplicate the chance to show up.
        std::thread::sleep(Duration::from_millis(200));
        let lines = rs
            .lines(input)
            .map(|l| if l.len() > lines.len() { l } else { lines })?;
        let got = check_lines(&lines, format)?;
        if got != want {
            return Err(format!("{input}: sequence numbers differ from 1..={n}: {got:?}").into());
        }
    }
    // UDP: no delivery guarantee, but what arrives parses, once, in order.
    let lines = rs.wait("udp", 10, |l| !l.is_empty())?;
    let got = check_lines(&lines, Format::Cef)?;
    if got.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("udp: out of order or duplicated: {got:?}").into());
    }
    let c = p.shutdown(Duration::from_secs(5));
    for name in ["tcp", "tls", "udp"] {
        if c[name].delivered != n || c[name].dropped() != 0 {
            return Err(format!("{name}: counters {:?}", c[name]).into());
        }
    }
    Ok(())
}

fn outage() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let mut rs = Rsyslog::new(&dir.0, &pki)?;
    let spool = dir.0.join("spool");
    let sinks = vec![
        syslog_sink(
            "tcp",
            SyslogTransport::Tcp,
            TCP_PORT,
            Format::Json,
            &pki,
            Some(&spool),
        ),
        syslog_sink(
            "tls",
            SyslogTransport::Tls,
            TLS_PORT,
            Format::Cef,
            &pki,
            Some(&spool),
        ),
    ];
    let p = in_ns(rs.ns(), move || Pipeline::start(&sinks, "egressd-test"))?.map_err(err)?;
    for i in 1..=100 {
        p.submit(&rec(i));
    }
    for input in ["tcp", "tls"] {
        rs.wait(input, 20, |l| l.len() >= 100)?;
    }
    rs.stop();
    let down_at = Instant::now();
    // Records keep coming while the receiver is down.
    for batch in 0..10u64 {
        for i in 0..20 {
            p.submit(&rec(101 + batch * 20 + i));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = p.counters();
    if c.values().any(|s| s.up || s.spooled == 0) {
        return Err(format!("sinks should be down and spooling: {c:?}").into());
    }
    // An outage of several seconds.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed()));
    rs.start()?;
    for i in 301..=320 {
        p.submit(&rec(i));
    }
    if !p.flush(Duration::from_secs(30)) {
        return Err(format!("not flushed after the restart: {:?}", p.counters()).into());
    }
    let want: Vec<u64> = (1..=320).collect();
    for (input, format) in [("tcp", Format::Json), ("tls", Format::Cef)] {
        rs.wait(input, 20, |l| l.len() >= 320)?;
        std::thread::sleep(Duration::from_millis(200));
        let all = check_lines(&rs.lines(input)?, format)?;
        // At-least-once: the records sent just before the stop may be committed only after
        // it (one second after their TCP acknowledgement, or a FIN), so they may come again
        // from the spool; every other record exactly once, and all in order of first arrival.
        let mut seen_once = BTreeSet::new();
        let mut got = Vec::new();
        let mut again = Vec::new();
        for s in all {
            if seen_once.insert(s) {
                got.push(s);
            } else {
                again.push(s);
            }
        }
        if again.iter().any(|s| *s > 100) {
            return Err(
                format!("{input}: records sent during the outage came twice: {again:?}").into(),
            );
        }
        if !again.is_empty() {
            eprintln!(
                "{input}: {} records sent before the stop came again from the spool",
                again.len()
            );
        }
        if got != want {
            let seen: BTreeSet<u64> = got.iter().copied().collect();
            let missing: Vec<u64> = want.iter().filter(|s| !seen.contains(s)).copied().collect();
            return Err(format!(
                "{input}: {} lines, missing {missing:?}, order/duplicates: {got:?}",
                got.len()
            )
            .into());
        }
    }
    let c = p.shutdown(Duration::from_secs(5));
    for (name, s) in &c {
        if s.delivered != 320 || s.dropped() != 0 || s.retries == 0 || s.spooled != 0 {
            return Err(format!("{name}: counters {s:?}").into());
        }
    }
    Ok(())
}

fn daemon_end_to_end() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let rs = Rsyslog::new(&dir.0, &pki)?;
    let tb = Testbed::new().map_err(|e| format!("testbed: {e:#}"))?;
    let (mut child, guard, rx) = start_two_sinks(&dir, &pki, &rs, &tb, HOST_LABELS)?;
    let mut records: Vec<Value> = Vec::new();
    let recv_until = |records: &mut Vec<Value>, kind: &str, secs: u64| -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                let v: Value = serde_json::from_str(&l).map_err(|e| format!("{l}: {e}"))?;
                let hit = v["type"] == kind;
                records.push(v);
                if hit {
                    return Ok(());
                }
            }
        }
        Err(format!("no {kind} record within {secs} s").into())
    };
    recv_until(&mut records, "agent_start", 30)?;
    // Denied attempts by a process that stays alive long enough to be read from /proc.
    let exe = std::env::current_exe().map_err(err)?;
    let out = Command::new(&exe)
        .arg(PROBE_ARG)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name(), "--repeat", "3"])
        .arg(format!("tcp://{US_V4}:{PORT}"))
        .arg(format!("udp-sendto://[{US_V6}]:{PORT}"))
        .output()
        .map_err(|e| format!("probe: {e}"))?;
    if !out.status.success() {
        return Err(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    recv_until(&mut records, "heartbeat", 10)?;
    // SAFETY: signalling our own child (nsenter execs egressd: same pid).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    recv_until(&mut records, "agent_stop", 30)?;
    let status = child.wait().map_err(err)?;
    // Reaped: its pid may be reused, so the guard must not signal it any more.
    std::mem::forget(guard);
    if !status.success() {
        return Err(format!("egressd exited with {status}").into());
    }

    // stdout: what the agent emitted.
    let conns: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "connection")
        .collect();
    if conns.is_empty() {
        return Err("no connection events".into());
    }
    let mut live = 0;
    for e in &conns {
        if e["verdict"] != "deny" || e["host"]["labels"]["site"] != "test" {
            return Err(format!("event fields: {e}").into());
        }
        if e["user"]["name"] != "root"
            || e["cgroup"]["path"].is_null() && e["process"]["exited"] == false
        {
            return Err(format!("enrichment: {e}").into());
        }
        if e["process"]["exited"] == false {
            live += 1;
            let cmd = e["process"]["command_line"].as_str().unwrap_or("");
            if !cmd.contains(PROBE_ARG) || e["process"]["executable"].is_null() {
                return Err(format!("process details: {e}").into());
            }
        }
    }
    if live == 0 {
        return Err(format!("no event was enriched from /proc: {conns:?}").into());
    }
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    let seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| r["sequence"].as_u64())
        .collect();
    if seqs != (1..=records.len() as u64).collect::<Vec<_>>() {
        return Err(format!("stdout sequence has gaps: {seqs:?}").into());
    }
    let stop = records.last().ok_or("no records")?;
    let sinks = &stop["lost"]["sinks"];
    for name in ["stdout", "siem-tcp", "siem-tls"] {
        let s = &sinks[name];
        if s.is_null()
            || [
                "dropped_queue_full",
                "dropped_spool_full",
                "dropped_failed",
                "dropped_at_exit",
            ]
            .iter()
            .any(|k| s[k] != 0)
        {
            return Err(format!("sink {name} counters in agent_stop: {stop}").into());
        }
    }
    if stop["lost"]["sink_write_failed"] != 0 || stop["connection_events"] != conns.len() {
        return Err(format!("agent_stop counters: {stop}").into());
    }

    // rsyslog: every record exactly once on both inputs.
    let n = records.len();
    let tcp = rs.wait("tcp", 20, |l| l.len() >= n)?;
    let tls = rs.wait("tls", 20, |l| l.len() >= n)?;
    std::thread::sleep(Duration::from_millis(300));
    let (tcp, tls) = (
        rs.lines("tcp").unwrap_or(tcp),
        rs.lines("tls").unwrap_or(tls),
    );
    let mut tcp_ids = Vec::new();
    // With the official schema at hand (EGRESSD_SCHEMAS), every record of the real run must
    // be valid OCSF 1.3.0; every CEF line passes the strict dictionary check regardless.
    let schema = match std::env::var_os("EGRESSD_SCHEMAS").filter(|d| !d.is_empty()) {
        Some(d) => Some(ocsf_schema::Schema::load(std::path::Path::new(&d))?),
        None => None,
    };
    for l in &tcp {
        let v: Value = serde_json::from_str(l["msg"].as_str().unwrap_or(""))
            .map_err(|e| format!("OCSF message {l}: {e}"))?;
        if let Some(errs) = schema.as_ref().map(|s| s.check(&v))
            && !errs.is_empty()
        {
            return Err(format!("not valid OCSF 1.3.0: {errs:?}\n  {v}").into());
        }
        if v["metadata"]["uid"].is_null() || l["app"] != "egressd" {
            return Err(format!("OCSF record: {l}").into());
        }
        if l["msgid"] == "connection"
            && (v["class_uid"] != 4001 || v["activity_id"] != 5 || v["action_id"] != 2)
        {
            return Err(format!("OCSF connection mapping: {v}").into());
        }
        tcp_ids.push(v["metadata"]["uid"].as_str().unwrap_or("").to_owned());
    }
    let mut tls_ids = Vec::new();
    for l in &tls {
        let msg = l["msg"].as_str().unwrap_or("");
        let (h, pairs) = cef::parse(msg).ok_or_else(|| format!("CEF: {msg}"))?;
        let errs = match cef_strict::parse(msg) {
            Ok((_, strict)) => cef_strict::check(&strict),
            Err(e) => vec![e],
        };
        if !errs.is_empty() {
            return Err(format!("CEF dictionary check: {errs:?}\n  {msg}").into());
        }
        if h[0] != "CEF:0" || h[1] != "egressd" {
            return Err(format!("CEF header: {msg}").into());
        }
        let id = pairs
            .iter()
            .find(|(k, _)| k == "externalId")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("CEF without externalId: {msg}"))?;
        tls_ids.push(id);
    }
    for (name, got) in [("tcp", &tcp_ids), ("tls", &tls_ids)] {
        if *got != ids {
            return Err(format!(
                "{name}: received ids differ from stdout's\n  stdout: {ids:?}\n  {name}: {got:?}"
            )
            .into());
        }
    }
    Ok(())
}

/// `[host]` labels for [`start_two_sinks`].
const HOST_LABELS: &str = "[host]\nlabels = { site = \"test\", role = \"e2e\" }\n";

/// Writes a config (heartbeat every second, the test bed's policy in enforce mode, `extra`,
/// then a stdout sink, OCSF over TCP and CEF over TLS to `rs`, each with its spool under
/// `dir`) and starts the daemon in `rs`'s network namespace on `tb`'s cgroup. Returns the
/// child, its kill guard and its stdout lines.
fn start_two_sinks(
    dir: &TempDir,
    pki: &Pki,
    rs: &Rsyslog,
    tb: &Testbed,
    extra: &str,
) -> Result<(std::process::Child, KillOnDrop, mpsc::Receiver<String>), Failed> {
    let cfg = dir.0.join("egressd.toml");
    let policy = egressd_testbed::POLICY.replace("{mode}", "enforce");
    fs::write(
        &cfg,
        format!(
            r#"heartbeat_secs = 1
{policy}
{extra}
[[sinks]]
type = "stdout"

[[sinks]]
name = "siem-tcp"
type = "syslog"
transport = "tcp"
address = "127.0.0.1:{TCP_PORT}"
format = "ocsf"
spool = "{spool}/tcp"
retry_max_ms = 200

[[sinks]]
name = "siem-tls"
type = "syslog"
transport = "tls"
address = "127.0.0.1:{TLS_PORT}"
format = "cef"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
spool = "{spool}/tls"
retry_max_ms = 200
"#,
            spool = dir.0.join("spool").display(),
            ca = pki.ca.display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        ),
    )
    .map_err(err)?;
    // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the test cgroup.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", rs.ns()))
        .arg(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning egressd: {e}"))?;
    let guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, guard, rx))
}

/// Issue 15: the real daemon sends OCSF over TCP and CEF over TLS to rsyslog, which is
/// stopped for a few seconds mid-run: the records spooled meanwhile keep their hash chain
/// links, and `egressd audit verify` proves the run from rsyslog's RFC 5424 files
/// (`RSYSLOG_SyslogProtocol23Format`), as a SIEM stores them.
fn daemon_outage_audit() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let mut rs = Rsyslog::new(&dir.0, &pki)?;
    let tb = Testbed::new().map_err(|e| format!("testbed: {e:#}"))?;
    let (mut child, guard, rx) = start_two_sinks(&dir, &pki, &rs, &tb, "")?;
    let mut last = Value::Null;
    let mut recv_until = |kind: &str, secs: u64| -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                let v: Value = serde_json::from_str(&l).map_err(|e| format!("{l}: {e}"))?;
                let hit = v["type"] == kind;
                last = v;
                if hit {
                    return Ok(());
                }
            }
        }
        Err(format!("no {kind} record within {secs} s").into())
    };
    recv_until("agent_start", 30)?;
    recv_until("heartbeat", 10)?;
    // Stopped only once rsyslog wrote what it has acknowledged: a record it acknowledged
    // and never wrote is a real loss (see the README on TCP delivery), which verify reports
    // as a sequence gap, and not what this test is about.
    for input in ["tcp", "tls"] {
        rs.wait(input, 10, |l| l.iter().any(|r| r["msgid"] == "heartbeat"))?;
    }
    rs.stop();
    // Heartbeats while rsyslog is down go to the spools.
    for _ in 0..3 {
        recv_until("heartbeat", 10)?;
    }
    rs.start()?;
    recv_until("heartbeat", 10)?;
    recv_until("heartbeat", 10)?;
    // SAFETY: signalling our own child (nsenter execs egressd: same pid).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    recv_until("agent_stop", 30)?;
    let status = child.wait().map_err(err)?;
    std::mem::forget(guard);
    if !status.success() {
        return Err(format!("egressd exited with {status}").into());
    }
    let stop = last;
    for name in ["siem-tcp", "siem-tls"] {
        let s = &stop["lost"]["sinks"][name];
        if s["retries"].as_u64().unwrap_or(0) == 0 || s["dropped_at_exit"] != 0 {
            return Err(format!("{name}: the outage was not seen or lost records: {s}").into());
        }
    }
    let n = stop["sequence"].as_u64().unwrap_or(0);
    for input in ["tcp", "tls"] {
        rs.wait(input, 20, |l| {
            l.iter().any(|r| {
                r["msgid"] == "agent_stop"
                    || r["msg"].as_str().is_some_and(|m| m.contains("agent-stop"))
            })
        })?;
        let path = rs.dir.join(format!("{input}-5424.log"));
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["audit", "verify", "--json"])
            .arg(&path)
            .output()
            .map_err(err)?;
        let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "verify output: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let run = &report["hosts"][0]["runs"][0];
        if !out.status.success() || run["last_sequence"] != n {
            return Err(format!(
                "{input}: the run with an outage does not verify (want sequence 1..{n}): {report}\n{}",
                fs::read_to_string(&path).unwrap_or_default()
            )
            .into());
        }
    }
    Ok(())
}

/// SIGKILLs a process on drop unless it has exited.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; harmless if it is gone.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Issue 22 item 6: records longer than what the receiver takes (rsyslog's
/// `maxMessageSize`, here 2k, with the sinks' `max_message_bytes` = 2048) arrive whole:
/// truncated by egressd so they still parse, marked (`truncated_from_bytes`,
/// `egressdTruncatedFromBytes`) and counted; CEF carries no raw control character. Before:
/// rsyslog cut them mid-record (unparseable JSON) and egressd counted them delivered.
fn oversized_records() -> Result<(), Failed> {
    use egressd::events::{LifecycleBody, Record as R};
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let rs = Rsyslog::with_max_message(&dir.0, &pki, "2k")?;
    let mut sinks = vec![
        syslog_sink(
            "tcp",
            SyslogTransport::Tcp,
            TCP_PORT,
            Format::Json,
            &pki,
            None,
        ),
        syslog_sink(
            "tls",
            SyslogTransport::Tls,
            TLS_PORT,
            Format::Cef,
            &pki,
            None,
        ),
    ];
    for s in &mut sinks {
        s.max_message_bytes = 2048;
    }
    let p = in_ns(rs.ns(), move || Pipeline::start(&sinks, "egressd-test"))?.map_err(err)?;
    // A connection event with a long command line full of escape sequences.
    let mut ev = sample::deny();
    ev.header.sequence = 1;
    ev.process.command_line = Some("curl \u{1b}[2J\u{85}\u{2028}".repeat(300).into());
    p.submit(&R::Connection(Box::new(ev)));
    // An agent_stop with many counter rows.
    let mut stop = sample::lifecycle()
        .into_iter()
        .find(|l| l.header.kind == "agent_stop")
        .ok_or("no agent_stop sample")?;
    if let LifecycleBody::Stop { counters, .. } = &mut stop.body {
        let rows = counters.counters.clone();
        for _ in 0..100 {
            counters.counters.extend(rows.iter().cloned());
        }
    }
    p.submit(&R::Lifecycle(Box::new(stop)));
    if !p.flush(Duration::from_secs(20)) {
        return Err(format!("not flushed: {:?}", p.counters()).into());
    }
    let truncated = p.truncated();
    let tcp = rs.wait("tcp", 20, |l| l.len() >= 2)?;
    for l in &tcp {
        let msg = l["msg"].as_str().unwrap_or_default();
        // U+0085 and U+2028 are not ASCII: the MSG is MSG-UTF8, and rsyslog keeps its BOM
        // (within rsyslog's 2k, which counts it).
        let body = msg.strip_prefix('\u{feff}').unwrap_or(msg);
        if body.is_ascii() == (body.len() < msg.len()) {
            return Err(format!("MSG encoding (BOM iff non-ASCII): {msg:?}").into());
        }
        let msg = body;
        let v: Value = serde_json::from_str(msg)
            .map_err(|e| format!("JSON cut by the receiver ({e}): {msg}"))?;
        if v["truncated_from_bytes"].as_u64().is_none_or(|n| n <= 2048) {
            return Err(format!("not marked as truncated: {msg}").into());
        }
    }
    let tls = rs.wait("tls", 20, |l| !l.is_empty())?;
    let msg = tls[0]["msg"].as_str().unwrap_or_default();
    if !msg.contains(" egressdTruncatedFromBytes=") || msg.chars().any(|c| c.is_control()) {
        return Err(format!("CEF not truncated cleanly: {msg:?}").into());
    }
    if truncated.get("tcp") != Some(&2) || truncated.get("tls") != Some(&1) {
        return Err(format!("truncations counted: {truncated:?}").into());
    }
    drop(p);
    Ok(())
}

/// A running `egressd run` inside rsyslog's namespace, and the records it printed on stdout
/// (`type`, `id`), collected by a thread.
struct Daemon {
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Daemon {
    /// Starts egressd with `cfg` on the test bed's cgroup; waits for its `agent_start`.
    fn start(ns: &str, cfg: &Path, cgroup: &Path) -> Result<Self, Failed> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(env!("CARGO_BIN_EXE_egressd"))
            .args(["run", "--config"])
            .arg(cfg)
            .arg("--cgroup")
            .arg(cgroup)
            .stdout(Stdio::piped())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(cfg.with_file_name("egressd.stderr"))
                    .map_err(err)?,
            )
            .spawn()
            .map_err(|e| format!("spawning egressd: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let t = v["type"].as_str().unwrap_or("").to_owned();
                let id = v["id"].as_str().unwrap_or("").to_owned();
                s.lock().unwrap_or_else(|e| e.into_inner()).push((t, id));
            }
        });
        let d = Self { child, seen };
        d.wait_for("agent_start", 1, 30)?;
        Ok(d)
    }

    fn count(&self, kind: &str) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(t, _)| t == kind)
            .count()
    }

    fn ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn wait_for(&self, kind: &str, n: usize, secs: u64) -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.count(kind) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "egressd printed {} {kind} records in {secs} s, not {n}",
                    self.count(kind)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `kill -9`, and reaps it.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for the exit.
    fn stop(mut self) -> Result<(), Failed> {
        // SAFETY: signalling our own child (nsenter execs egressd: same pid).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().map_err(err)?;
        if !st.success() {
            return Err(format!("egressd exited with {st}").into());
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config of the crash tests: a syslog TCP sink (native JSON) with its spool, then
/// stdout (the test's list of what egressd took from the kernel: a record on stdout was
/// appended to the spool first).
fn crash_config(dir: &Path) -> Result<PathBuf, Failed> {
    let cfg = dir.join("egressd.toml");
    let policy = egressd_testbed::POLICY.replace("{mode}", "enforce");
    fs::write(
        &cfg,
        format!(
            r#"heartbeat_secs = 0
{policy}
[[sinks]]
name = "siem-tcp"
type = "syslog"
transport = "tcp"
address = "127.0.0.1:{TCP_PORT}"
format = "json"
spool = "{spool}"
retry_max_ms = 200

[[sinks]]
type = "stdout"
"#,
            spool = dir.join("spool").display(),
        ),
    )
    .map_err(err)?;
    Ok(cfg)
}

/// Ids rsyslog received on its TCP input (JSON messages), with their counts.
fn received_ids(rs: &Rsyslog) -> Result<std::collections::BTreeMap<String, usize>, Failed> {
    let mut ids = std::collections::BTreeMap::new();
    for l in rs.lines("tcp")? {
        let msg = l["msg"].as_str().unwrap_or("");
        let v: Value = serde_json::from_str(msg).map_err(|e| format!("{msg}: {e}"))?;
        let id = v["id"].as_str().ok_or_else(|| format!("no id: {msg}"))?;
        *ids.entry(id.to_owned()).or_insert(0) += 1;
    }
    Ok(ids)
}

/// Ids not received, and ids received more than once with their counts.
type Delivery = (Vec<String>, Vec<(String, usize)>);

/// Waits until rsyslog has every id of `want`; returns (missing, duplicates received).
fn wait_received(rs: &Rsyslog, want: &BTreeSet<String>, secs: u64) -> Result<Delivery, Failed> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = received_ids(rs)?;
        let missing: Vec<String> = want
            .iter()
            .filter(|id| !got.contains_key(*id))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            let dups = got.into_iter().filter(|(_, n)| *n > 1).collect();
            return Ok((missing, dups));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 13 item 3: a syslog TCP sink with its spool; the receiver stops; five denials
/// follow one second apart; egressd is killed with `kill -9`; receiver and egressd start
/// again: every record arrives. Before: four did; the first, written into the broken
/// connection and kept in memory to be sent again, was gone.
fn crash_during_outage() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let mut rs = Rsyslog::new(&dir.0, &pki)?;
    let tb = Testbed::new().map_err(|e| format!("testbed: {e:#}"))?;
    let cfg = crash_config(&dir.0)?;
    let d = Daemon::start(rs.ns(), &cfg, tb.cgroup.path())?;
    rs.wait("tcp", 10, |l| !l.is_empty())?;
    rs.stop();
    let exe = std::env::current_exe().map_err(err)?;
    let out = Command::new(&exe)
        .arg(PROBE_ARG)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name(), "--repeat", "5"])
        .arg(format!("tcp://{US_V4}:{PORT}"))
        .arg("pause://1000")
        .output()
        .map_err(|e| format!("probe: {e}"))?;
    let denied = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"errno\":1"))
        .count();
    if denied != 5 {
        return Err(format!(
            "5 denials expected: {}",
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    d.wait_for("connection", 5, 10)?;
    std::thread::sleep(Duration::from_millis(200));
    let want: BTreeSet<String> = d.ids().into_iter().collect();
    d.kill9();
    rs.start()?;
    let d = Daemon::start(rs.ns(), &cfg, tb.cgroup.path())?;
    let (missing, dups) = wait_received(&rs, &want, 20)?;
    d.stop()?;
    eprintln!(
        "crash during outage: {} records before kill -9, {} missing, duplicates {dups:?}",
        want.len(),
        missing.len()
    );
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} records never arrived after kill -9 and restart: {missing:?}",
            missing.len(),
            want.len()
        )
        .into());
    }
    Ok(())
}

/// Issue 13 item 3: a run of 10,000 denials during which egressd is killed with `kill -9`
/// at random moments and the receiver stops and starts at random; after the last restart
/// every record egressd printed arrives at least once (duplicates, by `id`, are counted and
/// printed).
fn crash_at_random_moments() -> Result<(), Failed> {
    const RECORDS: usize = 10_000;
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let mut rs = Rsyslog::new(&dir.0, &pki)?;
    let tb = Testbed::new().map_err(|e| format!("testbed: {e:#}"))?;
    let cfg = crash_config(&dir.0)?;
    let seed = std::env::var("EGRESSD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash_at_random_moments: seed {seed} (EGRESSD_CRASH_SEED to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // The workload: bursts of denied connects, about 2,000 a second while egressd runs.
    let exe = std::env::current_exe().map_err(err)?;
    let mut probe = Command::new(&exe)
        .arg(PROBE_ARG)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .args(["--netns", tb.client.name(), "--for-ms", "90000"])
        // A port nobody listens on: while no egressd runs, the connect is refused at once
        // (a full listen backlog would hold the probe in SYN retries for seconds).
        .arg(format!("tcp://{US_V4}:9*40"))
        .arg("pause://20")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("probe: {e}"))?;
    let probe_guard = KillOnDrop(probe.id());

    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut d = Some(Daemon::start(rs.ns(), &cfg, tb.cgroup.path())?);
    let (mut kills, mut outages) = (0, 0);
    let started = Instant::now();
    let mut printed = 0;
    while printed < RECORDS {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("only {printed} records in 60 s").into());
        }
        // Runs of a second or two: egressd commits a frame about a second after the
        // receiver's TCP acknowledged it, so shorter runs mostly send duplicates.
        std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
        let live = d.as_ref().map_or(0, |d| d.count("connection"));
        if printed + live >= RECORDS {
            break;
        }
        // The receiver stops, then egressd is killed during that outage; then at random.
        let action = match kills + outages {
            0 => 1,
            1 => 0,
            _ => rng.u8(0..3),
        };
        match action {
            0 => {
                if let Some(old) = d.take() {
                    printed += old.count("connection");
                    want.extend(old.ids());
                    old.kill9();
                    kills += 1;
                }
                d = Some(Daemon::start(rs.ns(), &cfg, tb.cgroup.path())?);
            }
            1 if rs.child.is_some() => {
                rs.stop();
                outages += 1;
            }
            _ => {
                if rs.child.is_none() {
                    rs.start()?;
                }
            }
        }
    }
    drop(probe_guard);
    let _ = probe.wait();
    if rs.child.is_none() {
        rs.start()?;
    }
    let last = d.take().ok_or("no daemon")?;
    // Everything the last run printed, once the probe stopped.
    std::thread::sleep(Duration::from_millis(300));
    want.extend(last.ids());
    let (missing, dups) = wait_received(&rs, &want, 60)?;
    last.stop()?;
    let extra: usize = dups.iter().map(|(_, n)| n - 1).sum();
    let log = fs::read_to_string(dir.0.join("egressd.stderr")).unwrap_or_default();
    for l in log.lines().filter(|l| l.contains("ERROR")) {
        eprintln!("egressd: {l}");
    }
    eprintln!(
        "crash_at_random_moments: {} records printed over {} runs ({kills} kill -9, {outages} \
         receiver outages); {} missing; {} ids received more than once ({extra} duplicates): {:?}",
        want.len(),
        kills + 1,
        missing.len(),
        dups.len(),
        dups.iter().take(20).collect::<Vec<_>>()
    );
    if kills == 0 || outages == 0 {
        return Err(format!("the run saw {kills} kills and {outages} outages: not a test").into());
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} records never arrived: {:?}",
            missing.len(),
            want.len(),
            missing.iter().take(20).collect::<Vec<_>>()
        )
        .into());
    }
    Ok(())
}

/// `egressd check` (as root) refuses, naming the sink, the sink files `egressd run` would
/// refuse to start with, and changes nothing: a file sink in a directory another user owns,
/// a TLS sink whose key is missing; the same set with them fixed passes, and the file
/// sink's file is not created by the check (fresh-user trial: check passed both).
fn check_sinks() -> Result<(), Failed> {
    prerequisites()?;
    let dir = TempDir::new()?;
    let pki = pki(&dir.0)?;
    let (mine, theirs) = (dir.0.join("mine"), dir.0.join("theirs"));
    fs::create_dir_all(&mine).map_err(err)?;
    fs::create_dir_all(&theirs).map_err(err)?;
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).map_err(err)?;
    let policy = egressd_testbed::POLICY.replace("{mode}", "enforce");
    let check = |file_dir: &Path, key: &Path| -> Result<(bool, String), Failed> {
        let cfg = dir.0.join("egressd.toml");
        fs::write(
            &cfg,
            format!(
                r#"{policy}
[[sinks]]
name = "archive"
type = "file"
path = "{file}"

[[sinks]]
name = "siem"
type = "syslog"
transport = "tls"
address = "127.0.0.1:6514"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
                file = file_dir.join("events.json").display(),
                ca = pki.ca.display(),
                cert = pki.client_cert.display(),
                key = key.display(),
            ),
        )
        .map_err(err)?;
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .map_err(err)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, stderr) = check(&mine, &pki.client_key)?;
    if !ok {
        return Err(format!("a valid set was refused: {stderr}").into());
    }
    if mine.join("events.json").exists() {
        return Err("check created the file sink's file".into());
    }
    let (ok, stderr) = check(&theirs, &pki.client_key)?;
    if ok || !stderr.contains("sink 'archive'") || !stderr.contains("owned by uid 65534") {
        return Err(format!("a file sink in a directory of uid 65534: {stderr}").into());
    }
    let (ok, stderr) = check(&mine, &dir.0.join("missing.key"))?;
    if ok || !stderr.contains("sink 'siem'") || !stderr.contains("missing.key") {
        return Err(format!("a TLS sink without its key: {stderr}").into());
    }
    Ok(())
}
