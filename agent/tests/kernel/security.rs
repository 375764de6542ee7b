//! Issue 22's reproductions against the real binary: an unprivileged user (nobody, through
//! util-linux `setpriv`) prepares what the attack needs, root's `egressd run` must not be
//! turned against the host. Each test failed against the daemon before the fix.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egressd_testbed::{EU_V4, US_V4};
use libtest_mimic::Failed;

use super::harness::{
    Agent, TempDir, expect_eperm, expect_ok, patience, policy, probe, require_root, tcp, temp_dir,
    testbed, write_config,
};

/// Runs `args` as nobody (uid/gid 65534, no groups, no capabilities).
pub fn as_nobody(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args(args)
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} as nobody failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// A temporary directory others may enter (0755), as the directories these tests attack.
fn tempdir() -> Result<TempDir, Failed> {
    let dir = temp_dir("egressd-sec-")?;
    chmod(&dir.0, 0o755)?;
    Ok(dir)
}

fn chmod(p: &Path, mode: u32) -> Result<(), Failed> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()).into())
}

/// A directory nobody owns (the user's own, or a group-writable log directory).
fn users_dir(parent: &Path, name: &str) -> Result<PathBuf, Failed> {
    let d = parent.join(name);
    std::fs::create_dir(&d).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
    Ok(d)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `egressd run` with `config`, expected to refuse to start within 15 s; returns its stderr.
fn refused_start(cgroup: &Path, config: &Path) -> Result<String, Failed> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--cgroup")
        .arg(cgroup)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(15));
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("egressd started with an untrusted path (still running after 15 s)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Err(format!("egressd started with an untrusted path: {err}").into());
    }
    Ok(err)
}

/// Item 1: a file sink and a spool under directories nobody owns, where nobody planted links
/// to a root-only file (standing in for /etc/ld.so.preload): egressd refuses to start,
/// naming the path and the owner, and the file is untouched. Before: root appended event
/// lines (with the denied command line) to it, or truncated it through a segment link.
pub fn sink_and_spool_links_of_a_user() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let victim = dir.0.join("ld.so.preload");
    std::fs::write(&victim, "root's\n").map_err(|e| e.to_string())?;
    let logs = users_dir(&dir.0, "logs")?;
    as_nobody(&["ln", "-s", &s(&victim), &s(&logs.join("events.log"))])?;
    let base = egressd_testbed::POLICY.replace("{mode}", "enforce");
    let cfg = dir.0.join("policy.toml");
    std::fs::write(
        &cfg,
        format!(
            "{base}\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            s(&logs.join("events.log"))
        ),
    )
    .map_err(|e| e.to_string())?;
    let err = refused_start(tb.cgroup.path(), &cfg)?;
    if !err.contains(&s(&logs)) || !err.contains("owned by uid 65534") {
        return Err(format!("the refusal should name {} and its owner: {err}", s(&logs)).into());
    }
    // The spool: a segment name linked to the victim (a torn-frame repair truncated it).
    let spool = users_dir(&dir.0, "spool")?;
    as_nobody(&[
        "ln",
        "-s",
        &s(&victim),
        &s(&spool.join("00000001099511627776.seg")),
    ])?;
    std::fs::write(
        &cfg,
        format!(
            "{base}\n[[sinks]]\ntype = \"syslog\"\naddress = \"127.0.0.1:9\"\nspool = \"{}\"\n",
            s(&spool)
        ),
    )
    .map_err(|e| e.to_string())?;
    let err = refused_start(tb.cgroup.path(), &cfg)?;
    if !err.contains(&s(&spool)) || !err.contains("owned by uid 65534") {
        return Err(format!("the refusal should name {}: {err}", s(&spool)).into());
    }
    let now = std::fs::read_to_string(&victim).map_err(|e| e.to_string())?;
    if now != "root's\n" {
        return Err(format!("the root-only file was changed: {now:?}").into());
    }
    Ok(())
}

/// Item 3: `--watch` on a policy whose drop-in directory a user can write: the user's
/// drop-in allowlisting `us` is refused (`reload_failed` naming the directory and why) and
/// us stays denied. Before: the user's allow rule was loaded.
pub fn watch_refuses_a_writable_drop_in_dir() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let dropins = dir.0.join("policy.d");
    std::fs::create_dir(&dropins).map_err(|e| e.to_string())?;
    let mut d = Agent::start_at(&tb, &cfg, &["--watch"])?;
    chmod(&dropins, 0o777)?;
    as_nobody(&[
        "sh",
        "-c",
        &format!(
            "echo 'allowlist = [\"us\"]' > {}/allow-us.toml",
            s(&dropins)
        ),
    ])?;
    let rec = d.wait_for("reload_failed", Duration::from_secs(10))?;
    let error = rec["error"].as_str().unwrap_or_default();
    if !error.contains(&s(&dropins)) || !error.contains("writable by others") {
        return Err(format!("reload_failed should name {}: {rec}", s(&dropins)).into());
    }
    let r = probe(&tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
    expect_eperm(&r[0])?;
    expect_ok(&r[1])?;
    d.stop()?;
    Ok(())
}

/// A private bpffs instance mounted by the test (default mode 1777, as the kernel makes
/// it and as egressd used to mount /sys/fs/bpf), unmounted on drop.
struct Bpffs(TempDir, PathBuf);

impl Bpffs {
    fn new() -> Result<Self, Failed> {
        let dir = tempdir()?;
        let mnt = dir.0.join("bpffs");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mnt)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("mount -t bpf {}: {st}", mnt.display()).into());
        }
        Ok(Self(dir, mnt))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.1).status();
    }
}

fn egressd(args: &[&str]) -> Result<(bool, String), Failed> {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Item 2: a user who creates the pin directory first (bpffs writable by all) would own
/// the pins and could unlink the link pins, ending enforcement for good after a restart:
/// egressd refuses the directory, naming it and its owner.
pub fn pin_dir_made_by_a_user_is_refused() -> Result<(), Failed> {
    let tb = testbed()?;
    let fs = Bpffs::new()?;
    let pins = fs.1.join("egressd");
    as_nobody(&["mkdir", &s(&pins)])?;
    let cfg = fs.0.0.join("policy.toml");
    std::fs::write(&cfg, egressd_testbed::POLICY.replace("{mode}", "enforce"))
        .map_err(|e| e.to_string())?;
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--cgroup")
        .arg(tb.cgroup.path())
        .arg("--pin-dir")
        .arg(&pins)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut child = out;
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(15));
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            // It attached: a pin it made there is the user's to remove.
            let _ = child.kill();
            let _ = child.wait();
            let _ = egressd(&["detach", "--pin-dir", &s(&pins)]);
            return Err(
                format!("egressd pinned into {}, a directory nobody owns", s(&pins)).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains(&s(&pins)) || !err.contains("owned by uid 65534") {
        return Err(format!("expected a refusal naming {}: {err}", s(&pins)).into());
    }
    Ok(())
}

/// Item 2: `egressd detach` on a pin directory whose `maps` is a symbolic link to another
/// directory (made by root, or by a user in a pin directory the user made) deletes nothing
/// there. Before: every file of the directory it pointed to was deleted.
pub fn detach_follows_no_maps_link() -> Result<(), Failed> {
    require_root()?;
    let fs = Bpffs::new()?;
    let victim = fs.0.0.join("victim");
    std::fs::create_dir(&victim).map_err(|e| e.to_string())?;
    for f in ["passwd", "shadow"] {
        std::fs::write(victim.join(f), "keep\n").map_err(|e| e.to_string())?;
    }
    // A pin directory root made, with a `maps` link in it.
    let own = fs.1.join("own");
    std::fs::create_dir(&own).map_err(|e| e.to_string())?;
    chmod(&own, 0o700)?;
    std::os::unix::fs::symlink(&victim, own.join("maps")).map_err(|e| e.to_string())?;
    let (_, err_own) = egressd(&["detach", "--pin-dir", &s(&own)])?;
    // A pin directory a user made.
    let users = fs.1.join("users");
    as_nobody(&["mkdir", &s(&users)])?;
    as_nobody(&["ln", "-s", &s(&victim), &s(&users.join("maps"))])?;
    let (ok, err_users) = egressd(&["detach", "--pin-dir", &s(&users)])?;
    for f in ["passwd", "shadow"] {
        if !victim.join(f).exists() {
            return Err(format!(
                "detach deleted {} through a `maps` link: {err_own} / {err_users}",
                s(&victim.join(f))
            )
            .into());
        }
    }
    if ok || !err_users.contains("owned by uid 65534") {
        return Err(format!("detach of a user's directory should be refused: {err_users}").into());
    }
    if !err_own.contains("maps") {
        return Err(format!("the `maps` link should be reported: {err_own}").into());
    }
    Ok(())
}

/// Item 2: when egressd mounts bpffs itself (here in a mount namespace of its own where
/// /sys/fs/bpf is not mounted), it mounts it with mode 0700, and its pin directory is 0700.
/// Before: the kernel's default 1777 (the kernel adds the sticky bit to any mode).
pub fn bpffs_mounted_0700() -> Result<(), Failed> {
    use std::io::BufRead as _;
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = write_config(&dir, &policy("enforce"))?;
    let script = format!(
        "umount -l /sys/fs/bpf 2>/dev/null; exec {} run --config {} --cgroup {} \
         --pin-dir /sys/fs/bpf/egressd-sec",
        env!("CARGO_BIN_EXE_egressd"),
        s(&cfg),
        s(tb.cgroup.path())
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let pid = child.id();
    let res = (|| -> Result<(), Failed> {
        loop {
            let l = rx
                .recv_timeout(patience(Duration::from_secs(30)))
                .map_err(|_| "no agent_start within 30 s")?;
            if l.contains("\"agent_start\"") {
                break;
            }
        }
        let mode = |p: &str| -> Result<u32, Failed> {
            std::fs::metadata(format!("/proc/{pid}/root{p}"))
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|e| format!("{p}: {e}").into())
        };
        let (top, pins) = (mode("/sys/fs/bpf")?, mode("/sys/fs/bpf/egressd-sec")?);
        // bpffs always sets the sticky bit on its root (bpf_fill_super).
        if (top & 0o777, pins) != (0o700, 0o700) {
            return Err(format!(
                "bpffs mounted with mode {top:04o} and pin directory {pins:04o}; want 0700"
            )
            .into());
        }
        Ok(())
    })();
    // SAFETY: signalling our own child; its bpffs (and pins) go with its mount namespace.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    res
}

/// argv[1] that turns the test binary into a client holding connections open.
pub const HOLD_ARG: &str = "__egressd_hold";

/// `HOLD_ARG ADDR COUNT SECS`: opens up to COUNT TCP connections to ADDR within 3 s
/// (raising its own descriptor limit to the hard limit), sends nothing, keeps them SECS
/// seconds after that.
pub fn hold_main(args: &[String]) -> i32 {
    let (Some(addr), Some(count), Some(secs)) = (
        args.first(),
        args.get(1).and_then(|c| c.parse::<usize>().ok()),
        args.get(2).and_then(|c| c.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: {HOLD_ARG} ADDR COUNT SECS");
        return 2;
    };
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return 2;
    };
    // SAFETY: getrlimit/setrlimit read and write the struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l);
        }
    }
    let mut held = Vec::new();
    let t0 = std::time::Instant::now();
    while held.len() < count && t0.elapsed() < Duration::from_secs(3) {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => held.push(c),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    println!("{}", held.len());
    std::thread::sleep(Duration::from_secs(secs));
    0
}

/// Items 7 and 4's consequence: nobody holds 2,000 connections to `/metrics` open against
/// a daemon with the usual 1,024 descriptors. The daemon keeps far fewer descriptors than
/// that, `/healthz` answers, and a reload (which opens the policy files) works. Before: the
/// connections took every descriptor; `/healthz` went silent and the reload failed.
pub fn metrics_connection_flood() -> Result<(), Failed> {
    use std::io::{Read as _, Write as _};
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = dir.0.join("policy.toml");
    let text = egressd_testbed::POLICY.replace("{mode}", "enforce");
    std::fs::write(&cfg, &text).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Agent::spawn_under(
        &tb,
        &cfg,
        &["--metrics", &addr],
        &["prlimit", "--nofile=1024:1024"],
    )?;
    d.wait_for("agent_start", super::harness::START_WITHIN)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let holder = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(exe)
        .args([HOLD_ARG, &addr, "2000", "8"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(4));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map_err(|e| e.to_string())?
        .count();
    let health = (|| -> std::io::Result<String> {
        let mut c = std::net::TcpStream::connect_timeout(
            &addr.parse().map_err(std::io::Error::other)?,
            Duration::from_secs(2),
        )?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })();
    let reload = d.reload(&text)?;
    let out = holder.wait_with_output().map_err(|e| e.to_string())?;
    let held = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    d.stop()?;
    if fds > 300 {
        return Err(format!("the daemon holds {fds} descriptors ({held} connections held)").into());
    }
    match &health {
        Ok(h) if h.starts_with("HTTP/1.1 200") => {}
        other => return Err(format!("/healthz during the flood: {other:?}").into()),
    }
    if reload["type"] != "policy_loaded" {
        return Err(format!("reload during the flood: {reload}").into());
    }
    Ok(())
}

/// A local user who takes the metrics port before egressd binds it cannot keep egressd
/// from enforcing: the daemon starts, denies, says why there is no endpoint, and serves it
/// once the port is free (tried every 2 s). Before: it exited after attaching, and without
/// pins that ended enforcement.
pub fn metrics_port_taken() -> Result<(), Failed> {
    let tb = testbed()?;
    let dir = tempdir()?;
    let cfg = dir.0.join("policy.toml");
    std::fs::write(&cfg, egressd_testbed::POLICY.replace("{mode}", "enforce"))
        .map_err(|e| e.to_string())?;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = squatter.local_addr().map_err(|e| e.to_string())?.port();
    let addr = format!("127.0.0.1:{port}");
    let d = Agent::start_at(&tb, &cfg, &["--metrics", &addr])?;
    let r = probe(&tb, 1, &[tcp(US_V4), tcp(EU_V4)])?;
    expect_eperm(&r[0])?;
    expect_ok(&r[1])?;
    drop(squatter);
    let t0 = std::time::Instant::now();
    let served = loop {
        match super::harness::http_get(port, "/healthz") {
            Ok((200, _)) => break true,
            _ if t0.elapsed() > patience(Duration::from_secs(6)) => break false,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    d.stop()?;
    if !served {
        return Err("/healthz not served within 6 s of the port being freed".into());
    }
    Ok(())
}

/// The capability sets, `no_new_privs` and seccomp mode of every thread of `pid`.
fn thread_privileges(pid: u32) -> Result<Vec<String>, Failed> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let t = t.map_err(|e| e.to_string())?;
        let status = std::fs::read_to_string(t.path().join("status")).map_err(|e| e.to_string())?;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        out.push(format!(
            "CapEff={} CapPrm={} CapInh={} CapBnd={} CapAmb={} NoNewPrivs={} Seccomp={}",
            field("CapEff:"),
            field("CapPrm:"),
            field("CapInh:"),
            field("CapBnd:"),
            field("CapAmb:"),
            field("NoNewPrivs:"),
            field("Seccomp:")
        ));
    }
    Ok(out)
}

/// Item 9: after attaching, every thread of the daemon keeps only CAP_BPF, CAP_NET_ADMIN
/// and CAP_SYS_PTRACE (in the bounding set too), has no_new_privs and a seccomp filter;
/// and what the daemon still does works with that: enriching an event of nobody's process
/// (`/proc/PID/exe`), a SIGHUP reload, repairing a link `bpftool` detached, reopening a
/// file sink on SIGUSR1. Before: every capability, no no_new_privs, no seccomp.
pub fn privileges_dropped_after_attach() -> Result<(), Failed> {
    let tb = testbed()?;
    let fs = Bpffs::new()?;
    let pins = fs.1.join("egressd");
    let logs = fs.0.0.join("logs");
    std::fs::create_dir(&logs).map_err(|e| e.to_string())?;
    let log = logs.join("events.log");
    let base = egressd_testbed::POLICY.replace("{mode}", "enforce");
    let text = format!(
        "{base}\n[[sinks]]\ntype = \"stdout\"\n[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n",
        s(&log)
    );
    let cfg = fs.0.0.join("policy.toml");
    std::fs::write(&cfg, &text).map_err(|e| e.to_string())?;
    let mut d = Agent::start_at(&tb, &cfg, &["--pin-dir", &s(&pins)])?;
    let res = (|| -> Result<(), Failed> {
        // Enrichment of another user's process that lingers after its denial.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = Command::new(exe)
            .arg(super::harness::PROBE_ARG)
            .arg("--cgroup")
            .arg(tb.cgroup.path())
            .args(["--netns", tb.client.name(), "--uid", "65534"])
            .args([tcp(US_V4), "pause://2000".to_owned()])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("probe: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let ev = d.wait_for("connection", Duration::from_secs(10))?;
        if ev["user"]["id"] != 65534 || ev["process"]["executable"].as_str().is_none() {
            return Err(format!("nobody's process was not enriched (/proc/PID/exe): {ev}").into());
        }
        // A reload.
        let rec = d.reload(&text.replace("allowlist = [\"eu\"]", "allowlist = [\"eu\"]\n"))?;
        if rec["type"] != "policy_loaded" {
            return Err(format!("reload: {rec}").into());
        }
        // Tamper repair.
        let link = s(&pins.join("links/connect4"));
        let st = Command::new("bpftool")
            .args(["link", "detach", "pinned", &link])
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("bpftool link detach: {st}").into());
        }
        let rec = d.wait_for("tamper_repaired", Duration::from_secs(5))?;
        let r = probe(&tb, 1, &[tcp(US_V4)])?;
        expect_eperm(&r[0]).map_err(|e| format!("after repair {rec}: {e:?}"))?;
        // logrotate: move the file, SIGUSR1, a record lands in a new file.
        std::fs::rename(&log, logs.join("events.log.1")).map_err(|e| e.to_string())?;
        d.signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(300));
        let _ = probe(&tb, 1, &[tcp(US_V4)])?;
        d.wait_for("connection", Duration::from_secs(5))?;
        let deadline = std::time::Instant::now() + patience(Duration::from_secs(5));
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"connection\"")) {
            if std::time::Instant::now() > deadline {
                return Err("the file sink did not reopen after SIGUSR1".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let threads = thread_privileges(d.pid())?;
        // CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_BPF (CAP_SYS_ADMIN on kernels without
        // CAP_BPF), bounded by what the test itself may have.
        let own = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        let keep = format!("{:016x}", egressd::kernel::privileges::keep_mask() & own);
        let want = format!(
            "CapEff={keep} CapPrm={keep} CapInh=0000000000000000 CapBnd={keep} \
             CapAmb=0000000000000000 NoNewPrivs=1 Seccomp=2"
        );
        if threads.iter().any(|t| *t != want) {
            return Err(format!("want every thread {want}, got {threads:#?}").into());
        }
        Ok(())
    })();
    let stopped = d.stop();
    let detached = egressd(&["detach", "--pin-dir", &s(&pins)])?;
    res?;
    stopped?;
    if !detached.0 {
        return Err(format!("detach: {}", detached.1).into());
    }
    Ok(())
}

/// Runs the probe client (as root) in cgroup `cgroup` of the test bed with `extra`
/// arguments and `probes`; returns its result lines.
fn probe_in(
    tb: &egressd_testbed::Testbed,
    cgroup: &Path,
    extra: &[&str],
    probes: &[String],
) -> Result<Vec<egressd_testbed::client::ProbeResult>, Failed> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    probe_via(&exe, tb, cgroup, extra, probes)
}

/// [`probe_in`], the probe client started as `exe` (this test binary, or a link to it).
fn probe_via(
    exe: &Path,
    tb: &egressd_testbed::Testbed,
    cgroup: &Path,
    extra: &[&str],
    probes: &[String],
) -> Result<Vec<egressd_testbed::client::ProbeResult>, Failed> {
    let out = Command::new(exe)
        .arg(super::harness::PROBE_ARG)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--netns", tb.client.name()])
        .args(extra)
        .args(probes)
        .output()
        .map_err(|e| format!("spawning probe: {e}"))?;
    if !out.status.success() {
        return Err(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    super::harness::parse_probe_output(&out.stdout)
}

/// A process that `execve`s another program after a denied attempt: each event shows the
/// program that made it, never the other one's command line (the process cache once
/// survived `execve`, and `/proc` read late described the new program).
pub fn attribution_follows_exec() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let dir = TempDir(std::env::temp_dir().join(egressd_testbed::unique("egressd-exec-")));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let link = dir.0.join("execd-probe");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&exe, &link).map_err(|e| e.to_string())?;
    let link_arg = link.to_string_lossy().into_owned();
    let r = probe_in(
        &tb,
        tb.cgroup.path(),
        &["--then-exec", &link_arg, "--linger-ms", "1500"],
        &[tcp(US_V4)],
    )?;
    if r.len() != 2 {
        return Err(format!("want one result per program, got {r:?}").into());
    }
    expect_eperm(&r[0])?;
    expect_eperm(&r[1])?;
    let recs = agent.stop()?;
    let events: Vec<&serde_json::Value> = super::harness::connections(&recs);
    if events.len() != 2 || events[0]["process"]["pid"] != events[1]["process"]["pid"] {
        return Err(format!("want two events of one pid: {events:?}").into());
    }
    let first_name = events[0]["process"]["name"].as_str().unwrap_or("");
    let second_name = events[1]["process"]["name"].as_str().unwrap_or("");
    if second_name != "execd-probe" || first_name == second_name {
        return Err(format!("names {first_name:?}, {second_name:?}").into());
    }
    for e in &events {
        let name = e["process"]["name"].as_str().unwrap_or("");
        let cmd = e["process"]["command_line"].as_str().unwrap_or("");
        let details = e["process"]["details"].as_str().unwrap_or("");
        // argv[0] names the program (the first one's arguments name the second).
        let names_link = cmd
            .split(' ')
            .next()
            .is_some_and(|a| a.ends_with("execd-probe"));
        if (name == "execd-probe") != names_link && !cmd.is_empty() {
            return Err(format!("{name} reported with another program's command line: {e}").into());
        }
        if !["verified", "mismatch", "exited"].contains(&details) {
            return Err(format!("details {details:?}: {e}").into());
        }
    }
    // The second program lingers: it is read, and verified.
    if events[1]["process"]["details"] != "verified" {
        return Err(format!("the living program was not verified: {}", events[1]).into());
    }
    Ok(())
}

/// A process cannot hide behind names that are not UTF-8: a program started through a
/// link named with invalid UTF-8 bytes (its `comm`), in a cgroup so named, is still read
/// from `/proc` and verified, its names decoded with U+FFFD for each invalid byte (the
/// files were once read as text, failed, and the process was reported as exited, without
/// executable or command line).
pub fn attribution_survives_names_that_are_not_utf8() -> Result<(), Failed> {
    use std::os::unix::ffi::OsStrExt as _;
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let dir = TempDir(std::env::temp_dir().join(egressd_testbed::unique("egressd-odd-")));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let link = dir
        .0
        .join(std::ffi::OsStr::from_bytes(b"odd-\xfe\xffprobe"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&exe, &link).map_err(|e| e.to_string())?;
    let cg = tb
        .cgroup
        .path()
        .join(std::ffi::OsStr::from_bytes(b"odd-\xff"));
    std::fs::create_dir_all(&cg).map_err(|e| format!("{}: {e}", cg.display()))?;
    // The probe takes its arguments as text: it joins the cgroup through a link.
    let cg_link = dir.0.join("cgroup");
    std::os::unix::fs::symlink(&cg, &cg_link).map_err(|e| e.to_string())?;
    let r = probe_via(
        &link,
        &tb,
        &cg_link,
        &["--linger-ms", "1500"],
        &[tcp(US_V4)],
    );
    let recs = agent.stop();
    let _ = std::fs::remove_dir(&cg);
    expect_eperm(&r?[0])?;
    let recs = recs?;
    let events = super::harness::connections(&recs);
    let [e] = events.as_slice() else {
        return Err(format!("want one event, got {events:?}").into());
    };
    let p = &e["process"];
    let want_name = "odd-\u{fffd}\u{fffd}probe";
    if p["details"] != "verified" || p["name"] != want_name {
        return Err(format!("want a verified {want_name:?}: {e}").into());
    }
    let cmd = p["command_line"].as_str().unwrap_or("");
    if !cmd.starts_with(link.to_string_lossy().as_ref())
        || p["executable"].as_str().is_none_or(str::is_empty)
    {
        return Err(format!("executable or command line missing: {e}").into());
    }
    if !e["cgroup"]["path"]
        .as_str()
        .is_some_and(|c| c.ends_with("/odd-\u{fffd}"))
    {
        return Err(format!("cgroup path: {e}").into());
    }
    Ok(())
}

/// A container id comes only from cgroup names root chose: a workload given a delegated
/// cgroup (owned by it) that names a child `docker-ID.scope` is not reported as that
/// container; the same name made by root is.
pub fn container_id_not_from_a_delegated_cgroup() -> Result<(), Failed> {
    let tb = testbed()?;
    let agent = Agent::start(&tb, "enforce")?;
    let id = "0123456789abcdef".repeat(4);
    let forged = "fedcba9876543210".repeat(4);
    let trusted = tb.cgroup.path().join(format!("docker-{id}.scope"));
    let deleg = tb.cgroup.path().join("delegated");
    let inside = deleg.join(format!("docker-{forged}.scope"));
    for d in [&trusted, &inside] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::os::unix::fs::chown(&deleg, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
    let cleanup = || {
        let _ = std::fs::remove_dir(&inside);
        let _ = std::fs::remove_dir(&deleg);
        let _ = std::fs::remove_dir(&trusted);
    };
    let run = || -> Result<Vec<serde_json::Value>, Failed> {
        for cg in [&trusted, &inside] {
            let r = probe_in(&tb, cg, &["--linger-ms", "1000"], &[tcp(US_V4)])?;
            expect_eperm(&r[0])?;
        }
        let recs = agent.stop()?;
        Ok(super::harness::connections(&recs)
            .into_iter()
            .cloned()
            .collect())
    };
    let events = run();
    cleanup();
    let events = events?;
    if events.len() != 2 {
        return Err(format!("want 2 events, got {events:?}").into());
    }
    if events[0]["container"]["id"] != id.as_str() {
        return Err(format!("root's docker scope not reported: {}", events[0]).into());
    }
    if !events[1]["container"].is_null() {
        return Err(format!("a forged container id was reported: {}", events[1]).into());
    }
    Ok(())
}
