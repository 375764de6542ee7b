//! Private test hosts for egressd (see TESTBED.md in the project's shared notes).
//!
//! A [`Testbed`] creates three network namespaces and a cgroup v2 directory, all with unique
//! names, and removes them on drop:
//!
//! ```text
//!  netns client (no default route)          netns eu                   netns us
//!    veth-eu 198.18.1.1/24 2001:db8:1::1/64 <-> 198.18.1.2 2001:db8:1::2
//!    veth-us 198.18.2.1/24 2001:db8:2::1/64 <--------------------------> 198.18.2.2 2001:db8:2::2
//! ```
//!
//! The client namespace has no route but to the two test hosts, so a connection the product
//! fails to block still goes nowhere else (ENETUNREACH). [`client`] is the probe that runs
//! inside it; [`listener`] serves TCP and UDP in the host namespaces.
pub mod client;
pub mod forced;
pub mod frames;
pub mod listener;
pub mod netns;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

pub use listener::Listener;
pub use netns::Netns;

/// IPv4 address of the allowlisted ("eu") test host.
pub const EU_V4: &str = "198.18.1.2";
/// IPv6 address of the allowlisted ("eu") test host.
pub const EU_V6: &str = "2001:db8:1::2";
/// IPv4 address of the non-allowlisted ("us") test host.
pub const US_V4: &str = "198.18.2.2";
/// IPv6 address of the non-allowlisted ("us") test host.
pub const US_V6: &str = "2001:db8:2::2";
/// Port the listeners serve (TCP and UDP).
pub const PORT: u16 = 8080;

/// Policy matching the topology: eu allowlisted, us not. `{mode}` is substituted.
/// Event suppression is off so tests can count one event per attempt; the flood test turns
/// it on.
pub const POLICY: &str = r#"
mode = "{mode}"
suppress_window_ms = 0
allowlist = ["eu"]

[regions.eu]
prefixes = ["198.18.1.0/24", "2001:db8:1::/48"]

[regions.us]
prefixes = ["198.18.2.0/24", "2001:db8:2::/48"]
"#;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `within` stretched by `EGRESSD_TEST_PATIENCE` (a factor, default 1): the time a test
/// (or the probe client, which inherits the variable) waits for something that must happen.
/// The VM runs set it (`xtask/src/vm/init.sh`): under TCG a guest runs CPU-bound work about
/// 17 times slower, and CI's machines are slower than ours, so a native budget such as "a
/// detached link is repaired within 1 s" measures the emulator there. Only waits stretch; a
/// test never passes because of it, it fails later. Rates (so many per second) are measured
/// over real time.
pub fn patience(within: std::time::Duration) -> std::time::Duration {
    static FACTOR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let factor = *FACTOR.get_or_init(|| {
        std::env::var("EGRESSD_TEST_PATIENCE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|f| f.is_finite() && *f >= 1.0)
            .unwrap_or(1.0)
    });
    within.mul_f64(factor)
}

/// Returns a name unique to this process and call: `{prefix}{pid}x{n}` (short, so derived
/// interface names stay under IFNAMSIZ).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Directories of one test run for the daemons it starts: their last good policies
/// (`EGRESSD_STATE_DIR`) and per-cgroup locks (`EGRESSD_RUN_DIR`), instead of the host's
/// `/var/lib/egressd` and `/run/egressd` (a test that names `--state-dir` overrides it).
pub struct DaemonDirs {
    state: PathBuf,
    run: PathBuf,
}

impl DaemonDirs {
    /// Points `EGRESSD_STATE_DIR` and `EGRESSD_RUN_DIR` of this process, and so of every
    /// daemon it starts, at `{tmp}/{tag}-state-{pid}` and `{tag}-run-{pid}`.
    ///
    /// # Safety
    /// Sets environment variables: call before any other thread starts (the top of `main`).
    pub unsafe fn for_children(tag: &str) -> Self {
        let dir =
            |kind: &str| std::env::temp_dir().join(format!("{tag}-{kind}-{}", std::process::id()));
        let me = Self {
            state: dir("state"),
            run: dir("run"),
        };
        // SAFETY: the caller guarantees no other thread runs.
        unsafe {
            std::env::set_var("EGRESSD_STATE_DIR", &me.state);
            std::env::set_var("EGRESSD_RUN_DIR", &me.run);
        }
        me
    }

    /// Removes both directories (call before exiting: `exit` runs no destructors).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.state);
        let _ = fs::remove_dir_all(&self.run);
    }
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (field 5 of the line whose fstype
/// after ` - ` is `cgroup2`).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        if right.starts_with("cgroup2 ")
            && let Some(mp) = left.split(' ').nth(4)
        {
            return Ok(PathBuf::from(mp));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo")
}

/// A cgroup v2 directory removed on drop (after its processes exit).
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/<name>`.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let path = cgroup2_mount()?.join(name);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes may take a moment to leave after exiting; retry briefly, never panic.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("testbed: could not remove cgroup {}", self.path.display());
    }
}

/// The three-namespace topology plus a cgroup for the client side, with listeners running
/// in the host namespaces.
pub struct Testbed {
    /// Client namespace (the side egressd filters).
    pub client: Netns,
    /// Allowlisted host namespace.
    pub eu: Netns,
    /// Non-allowlisted host namespace.
    pub us: Netns,
    /// cgroup the client processes join and egressd attaches to.
    pub cgroup: Cgroup,
    listeners: Vec<Listener>,
}

impl Testbed {
    /// Builds the topology and starts TCP and UDP listeners on [`PORT`] in both hosts, and on
    /// loopback in the client namespace.
    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::create(&unique("egc"))?;
        let eu = Netns::create(&unique("ege"))?;
        let us = Netns::create(&unique("egu"))?;
        client.link_to(
            &eu,
            "veth-eu",
            ["198.18.1.1/24", "2001:db8:1::1/64"],
            ["198.18.1.2/24", "2001:db8:1::2/64"],
        )?;
        client.link_to(
            &us,
            "veth-us",
            ["198.18.2.1/24", "2001:db8:2::1/64"],
            ["198.18.2.2/24", "2001:db8:2::2/64"],
        )?;
        // Routes to the /48 regions beyond the /64 links would be needed for other host
        // addresses; the tests only use the .2 hosts, which are on-link.
        let cgroup = Cgroup::create(&unique("egressd-test-"))?;
        let listeners = vec![
            Listener::start(&eu, PORT)?,
            Listener::start(&us, PORT)?,
            Listener::start(&client, PORT)?,
        ];
        Ok(Self {
            client,
            eu,
            us,
            cgroup,
            listeners,
        })
    }

    /// Connections the listeners accepted (TCP) or datagrams they echoed (UDP), per host:
    /// `(eu, us, client loopback)`.
    pub fn served(&self) -> (u64, u64, u64) {
        (
            self.listeners[0].served(),
            self.listeners[1].served(),
            self.listeners[2].served(),
        )
    }
}
