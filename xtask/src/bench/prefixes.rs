//! The prefix sets every contender loads: N = 0, 1k, 10k, 100k from the real provider files
//! (the directory named by `EGRESSD_PROVIDER_DATA`, which CI and the published figures point
//! at `../shared/data/cloud-ip-ranges`), 1M synthetic; IPv4 and IPv6 in the proportion of the
//! real data. Without that variable the provider part falls back to the project's small
//! fixtures (`agent/tests/data/providers`), so every set above a few dozen prefixes is
//! synthetic, and the run says so.
//!
//! nftables interval sets refuse overlapping elements, so every set is made of disjoint
//! prefixes: from the real files the *leaves* (prefixes that contain no other listed prefix)
//! are kept, which are disjoint by construction. The real files hold fewer disjoint prefixes
//! than 100k, so the 100k set is every real leaf plus leaves split into their two halves (the
//! addresses and their spread stay real). The 1M set is random disjoint prefixes. The
//! allowlisted test host's prefixes (`198.18.1.0/24`, `2001:db8:1::/48`, region `bench-eu`)
//! are added to every set on top of N, so the measured connections are allowed by all
//! contenders.
use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::Value;

/// Region of the allowlisted test host.
pub const HOST_REGION: &str = "bench-eu";

/// One prefix set.
pub struct PrefixSet {
    /// Number of prefixes besides the test host's two.
    pub n: usize,
    /// `0`, `1k`, ... for file names and tables.
    pub label: String,
    /// How it was made.
    pub source: String,
    /// IPv4 prefixes with their region, the test host's first.
    pub v4: Vec<(Ipv4Network, String)>,
    /// IPv6 prefixes with their region, the test host's first.
    pub v6: Vec<(Ipv6Network, String)>,
}

/// The real data: disjoint leaves per family, with provider-prefixed region names.
pub struct Real {
    v4: Vec<(Ipv4Network, String)>,
    v6: Vec<(Ipv6Network, String)>,
    /// Unique prefixes read (before keeping leaves), per family.
    pub unique: (usize, usize),
    /// Files read.
    pub files: Vec<String>,
}

/// The variable naming the directory of the providers' full files (the import tests read it
/// too).
pub const DATA_ENV: &str = "EGRESSD_PROVIDER_DATA";

/// Where the provider files come from.
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// The providers' full files (`EGRESSD_PROVIDER_DATA`), rather than the fixtures.
    pub full: bool,
}

impl DataDir {
    /// The directory named by `EGRESSD_PROVIDER_DATA`, else the project's fixtures (with a
    /// message saying so on stderr).
    pub fn find() -> Self {
        if let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) {
            return Self {
                path: PathBuf::from(dir),
                full: true,
            };
        }
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/data/providers");
        eprintln!(
            "bench: {DATA_ENV} is not set: the prefix sets use the small fixtures in \
             agent/tests/data/providers, so sets above a few dozen prefixes are synthetic; set \
             it to the providers' files (e.g. ../shared/data/cloud-ip-ranges) for the \
             published figures"
        );
        Self { path, full: false }
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        if self.full {
            format!("the real provider files in `{}`", self.path.display())
        } else {
            format!(
                "the project's small fixtures in `agent/tests/data/providers` (`{DATA_ENV}` was \
                 not set; sets larger than four times their disjoint prefixes are synthetic)"
            )
        }
    }
}

/// Label of N: `0`, `1k`, `10k`, `100k`, `1M`.
pub fn label(n: usize) -> String {
    match n {
        0 => "0".into(),
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn region_name(provider: &str, region: &str) -> String {
    let r = if region.trim().is_empty() {
        "global".to_owned()
    } else {
        region
            .trim()
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut name = format!("{provider}-{r}");
    name.truncate(60);
    name
}

/// Addresses the benchmark keeps for itself or that egressd treats specially.
fn reserved(net: &IpNetwork) -> bool {
    let test4: Ipv4Network = Ipv4Network::new(Ipv4Addr::new(198, 18, 0, 0), 15).expect("valid");
    let test6 =
        Ipv6Network::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32).expect("valid");
    let mapped = Ipv6Network::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("valid");
    let nat64 = Ipv6Network::new(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96).expect("valid");
    match net {
        IpNetwork::V4(n) => {
            n.overlaps(test4)
                || n.network().is_loopback()
                || n.network().is_unspecified()
                || n.prefix() == 0
        }
        IpNetwork::V6(n) => {
            n.overlaps(test6)
                || n.overlaps(mapped)
                || n.overlaps(nat64)
                || n.network().is_loopback()
                || n.prefix() < 8
        }
    }
}

impl Real {
    /// Reads the AWS, Google Cloud, Azure and Oracle JSON files.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut add = |cidr: &str, region: String| {
            let Ok(net) = cidr.trim().parse::<IpNetwork>() else {
                return;
            };
            let Ok(net) = IpNetwork::new(net.network(), net.prefix()) else {
                return;
            };
            // Host bits cleared.
            let net = match net {
                IpNetwork::V4(n) => IpNetwork::V4(
                    Ipv4Network::new(
                        Ipv4Addr::from(u32::from(n.ip()) & u32::from(n.mask())),
                        n.prefix(),
                    )
                    .expect("valid"),
                ),
                IpNetwork::V6(n) => IpNetwork::V6(
                    Ipv6Network::new(
                        Ipv6Addr::from(u128::from(n.ip()) & u128::from(n.mask())),
                        n.prefix(),
                    )
                    .expect("valid"),
                ),
            };
            if reserved(&net) || !seen.insert(net) {
                return;
            }
            match net {
                IpNetwork::V4(n) => v4.push((n, region)),
                IpNetwork::V6(n) => v6.push((n, region)),
            }
        };
        let read = |name: &str| -> anyhow::Result<Value> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        };
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let aws = read("aws-ip-ranges.json")?;
        for p in aws["prefixes"].as_array().into_iter().flatten() {
            add(&s(&p["ip_prefix"]), region_name("aws", &s(&p["region"])));
        }
        for p in aws["ipv6_prefixes"].as_array().into_iter().flatten() {
            add(&s(&p["ipv6_prefix"]), region_name("aws", &s(&p["region"])));
        }
        let gcp = read("google-cloud-ip-ranges.json")?;
        for p in gcp["prefixes"].as_array().into_iter().flatten() {
            let cidr = p["ipv4Prefix"].as_str().or(p["ipv6Prefix"].as_str());
            add(cidr.unwrap_or(""), region_name("gcp", &s(&p["scope"])));
        }
        let azure = read("microsoft-azure-ip-ranges.json")?;
        for v in azure["values"].as_array().into_iter().flatten() {
            let region = region_name("az", &s(&v["properties"]["region"]));
            for p in v["properties"]["addressPrefixes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                add(&s(p), region.clone());
            }
        }
        let oci = read("oracle-cloud-ip-ranges.json")?;
        for r in oci["regions"].as_array().into_iter().flatten() {
            let region = region_name("oci", &s(&r["region"]));
            for c in r["cidrs"].as_array().into_iter().flatten() {
                add(&s(&c["cidr"]), region.clone());
            }
        }
        let unique = (v4.len(), v6.len());
        let v4 = leaves(v4, |n| {
            (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            )
        });
        let v6 = leaves(v6, |n| (u128::from(n.network()), u128::from(n.broadcast())));
        if v4.is_empty() || v6.is_empty() {
            bail!("no prefixes found in {}", dir.display());
        }
        Ok(Self {
            v4,
            v6,
            unique,
            files: [
                "aws-ip-ranges.json",
                "google-cloud-ip-ranges.json",
                "microsoft-azure-ip-ranges.json",
                "oracle-cloud-ip-ranges.json",
            ]
            .map(String::from)
            .to_vec(),
        })
    }

    /// Disjoint real prefixes per family.
    pub fn leaves(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    /// The set of `n` prefixes (see the module doc for how it is made).
    pub fn set(&self, n: usize) -> PrefixSet {
        let total = self.v4.len() + self.v6.len();
        let n4 = (n as f64 * self.v4.len() as f64 / total as f64).round() as usize;
        let n6 = n - n4;
        let mut rng = fastrand::Rng::with_seed(0x5eed_0000 + n as u64);
        let (source, v4, v6) = if n == 0 {
            ("the test host's prefixes only".to_owned(), vec![], vec![])
        } else if n4 <= self.v4.len() && n6 <= self.v6.len() {
            (
                format!("random sample of the {total} disjoint real prefixes"),
                sample(&self.v4, n4, &mut rng),
                sample(&self.v6, n6, &mut rng),
            )
        } else if n <= 4 * total {
            (
                format!(
                    "all {total} disjoint real prefixes, {} of them split into halves",
                    n - total
                ),
                split(&self.v4, n4, &mut rng, halves_v4),
                split(&self.v6, n6, &mut rng, halves_v6),
            )
        } else {
            (
                "synthetic: random disjoint prefixes (IPv4 60 % /24, 30 % /16-/23, 10 % /25-/32; \
                 IPv6 /32-/64 in 2000::/3)"
                    .to_owned(),
                synthetic_v4(n4, &mut rng),
                synthetic_v6(n6, &mut rng),
            )
        };
        let host4 = Ipv4Network::new(Ipv4Addr::new(198, 18, 1, 0), 24).expect("valid");
        let host6 =
            Ipv6Network::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 48).expect("valid");
        let mut all4 = vec![(host4, HOST_REGION.to_owned())];
        all4.extend(v4);
        let mut all6 = vec![(host6, HOST_REGION.to_owned())];
        all6.extend(v6);
        PrefixSet {
            n,
            label: label(n),
            source,
            v4: all4,
            v6: all6,
        }
    }
}

fn leaves<N: Copy + Ord, F: Fn(&N) -> (u128, u128)>(
    mut v: Vec<(N, String)>,
    range: F,
) -> Vec<(N, String)> {
    v.sort_by_key(|(n, _)| {
        let (s, e) = range(n);
        (s, u128::MAX - e)
    });
    let mut out = Vec::with_capacity(v.len());
    for i in 0..v.len() {
        let (_, end) = range(&v[i].0);
        if v.get(i + 1).is_some_and(|(next, _)| range(next).0 <= end) {
            continue;
        }
        out.push(v[i].clone());
    }
    out
}

fn sample<T: Clone>(v: &[T], n: usize, rng: &mut fastrand::Rng) -> Vec<T> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    rng.shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    idx.into_iter().map(|i| v[i].clone()).collect()
}

/// All of `v`, with prefixes split into halves (in random order, repeatedly if needed) until
/// there are `n`. `halves` gives the two halves of a prefix, `None` for a host prefix.
fn split<N: Copy>(
    v: &[(N, String)],
    n: usize,
    rng: &mut fastrand::Rng,
    halves: impl Fn(N) -> Option<(N, N)>,
) -> Vec<(N, String)> {
    let mut cur = v.to_vec();
    while cur.len() < n {
        let mut idx: Vec<usize> = (0..cur.len()).collect();
        rng.shuffle(&mut idx);
        let mut split = vec![false; cur.len()];
        let mut need = n - cur.len();
        for i in idx {
            if need == 0 {
                break;
            }
            if halves(cur[i].0).is_some() {
                split[i] = true;
                need -= 1;
            }
        }
        let mut next = Vec::with_capacity(n);
        for (i, (net, r)) in cur.into_iter().enumerate() {
            match halves(net).filter(|_| split[i]) {
                Some((lo, hi)) => {
                    next.push((lo, r.clone()));
                    next.push((hi, r));
                }
                None => next.push((net, r)),
            }
        }
        cur = next;
    }
    cur
}

/// The two halves of an IPv4 prefix shorter than /32.
fn halves_v4(net: Ipv4Network) -> Option<(Ipv4Network, Ipv4Network)> {
    let len = net.prefix().checked_add(1).filter(|l| *l <= 32)?;
    let lo = u32::from(net.network());
    let hi = lo | (1u32 << (32 - u32::from(len)));
    Some((
        Ipv4Network::new(Ipv4Addr::from(lo), len).ok()?,
        Ipv4Network::new(Ipv4Addr::from(hi), len).ok()?,
    ))
}

/// The two halves of an IPv6 prefix shorter than /128.
fn halves_v6(net: Ipv6Network) -> Option<(Ipv6Network, Ipv6Network)> {
    let len = net.prefix().checked_add(1).filter(|l| *l <= 128)?;
    let lo = u128::from(net.network());
    let hi = lo | (1u128 << (128 - u32::from(len)));
    Some((
        Ipv6Network::new(Ipv6Addr::from(lo), len).ok()?,
        Ipv6Network::new(Ipv6Addr::from(hi), len).ok()?,
    ))
}

/// Inserts `[start, end]` into `taken` unless it overlaps an interval already there.
fn claim(taken: &mut BTreeMap<u128, u128>, start: u128, end: u128) -> bool {
    if let Some((_, e)) = taken.range(..=start).next_back()
        && *e >= start
    {
        return false;
    }
    if let Some((s, _)) = taken.range(start..).next()
        && *s <= end
    {
        return false;
    }
    taken.insert(start, end);
    true
}

fn synthetic_v4(n: usize, rng: &mut fastrand::Rng) -> Vec<(Ipv4Network, String)> {
    let mut taken = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let roll = rng.u8(..100);
        let len: u8 = if roll < 60 {
            24
        } else if roll < 90 {
            rng.u8(16..=23)
        } else {
            rng.u8(25..=32)
        };
        // Unicast space 1.0.0.0 - 223.255.255.255.
        let addr = rng.u32(0x0100_0000..0xe000_0000) & (u32::MAX << (32 - u32::from(len)));
        let Ok(net) = Ipv4Network::new(Ipv4Addr::from(addr), len) else {
            continue;
        };
        if reserved(&IpNetwork::V4(net)) {
            continue;
        }
        let (s, e) = (u128::from(addr), u128::from(u32::from(net.broadcast())));
        if claim(&mut taken, s, e) {
            out.push((net, format!("syn-{:02}", out.len() % 100)));
        }
    }
    out.sort_by_key(|(n, _)| u32::from(n.network()));
    out
}

fn synthetic_v6(n: usize, rng: &mut fastrand::Rng) -> Vec<(Ipv6Network, String)> {
    let mut taken = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = rng.u8(32..=64);
        let addr =
            (0x2000u128 << 112 | (rng.u128(..) >> 3)) & (u128::MAX << (128 - u32::from(len)));
        let Ok(net) = Ipv6Network::new(Ipv6Addr::from(addr), len) else {
            continue;
        };
        if reserved(&IpNetwork::V6(net)) {
            continue;
        }
        if claim(&mut taken, addr, u128::from(net.broadcast())) {
            out.push((net, format!("syn-{:02}", out.len() % 100)));
        }
    }
    out.sort_by_key(|(n, _)| u128::from(n.network()));
    out
}

impl PrefixSet {
    /// Total prefixes including the test host's.
    pub fn total(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    /// Writes `REGION CIDR` lines for `bench_kernel`.
    pub fn write_set_file(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = String::with_capacity((self.v4.len() + self.v6.len()) * 32);
        for (n, r) in &self.v4 {
            let _ = writeln!(s, "{r} {n}");
        }
        for (n, r) in &self.v6 {
            let _ = writeln!(s, "{r} {n}");
        }
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }

    /// An egressd policy file allowlisting every region of the set.
    pub fn toml(&self) -> String {
        let mut regions: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (n, r) in &self.v4 {
            regions.entry(r).or_default().push(n.to_string());
        }
        for (n, r) in &self.v6 {
            regions.entry(r).or_default().push(n.to_string());
        }
        let names: Vec<String> = regions.keys().map(|k| format!("{k:?}")).collect();
        let mut s = format!("mode = \"enforce\"\nallowlist = [{}]\n", names.join(", "));
        for (name, prefixes) in regions {
            let _ = writeln!(s, "\n[regions.{name}]\nprefixes = [");
            for p in prefixes {
                let _ = writeln!(s, "  \"{p}\",");
            }
            s.push_str("]\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the providers' files the bench runs on the fixtures: they load, and every
    /// size of the plan gets a set of exactly N prefixes (plus the test host's two).
    #[test]
    fn fixtures_give_every_set() -> anyhow::Result<()> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/data/providers");
        let real = Real::load(&dir)?;
        let (l4, l6) = real.leaves();
        assert!(l4 > 10 && l6 > 3, "{l4} + {l6}");
        for n in [0, 10, 100, 1000, 10_000] {
            let set = real.set(n);
            assert_eq!(
                set.v4.len() + set.v6.len(),
                n + 2,
                "N = {n}: {}",
                set.source
            );
        }
        assert!(real.set(10_000).source.starts_with("synthetic"));
        Ok(())
    }
}
