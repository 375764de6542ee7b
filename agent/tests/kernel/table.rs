//! The tables' room: a reload whose IPv4 table needs more second-level chunks (or whose IPv6
//! table needs more ranges) than the maps were sized for falls back to the LPM trie for that
//! generation, and a later policy that fits goes back to the table, in both sets of the
//! double buffer, with no stale prefix of an earlier generation surviving in either
//! structure. Verdicts of the `cgroup_skb/egress`
//! program (`BPF_PROG_TEST_RUN`) are compared with the reference model after every install.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, BorrowedFd},
    path::Path,
    sync::Arc,
};

use egressd::{
    config,
    kernel::loader::{Capacity, Enforcer},
    kernel::testrun,
    policy::{self, Policy, table6::Table6},
};
use egressd_common::{Verdict, programs, table::CHUNKS_PER_PAGE8};
use ipnetwork::{Ipv4Network, Ipv6Network};
use libtest_mimic::Failed;

use super::harness::require_root;

/// /28s in distinct /24s of 10.0.0.0/8 per install: each needs one chunk. The maps get one
/// second-level page, so the table holds `CHUNKS_PER_PAGE8` (8) chunks: the larger policies
/// fall back to the trie. Sets alternate A, B, A, ...: each set goes table -> trie -> table
/// or the reverse.
const LONG: [usize; 8] = [4, 5, 20, 30, 3, 25, 40, 6];

pub fn capacity_fallback() -> Result<(), Failed> {
    require_root()?;
    let mut e = Enforcer::open_with(Capacity {
        prefixes: 4096,
        table_chunks: Some(1),
        table6_ranges: None,
    })
    .map_err(|e| format!("{e:#}"))?;
    let raw = e
        .program_fd(programs::SKB_EGRESS)
        .map_err(|e| format!("{e:#}"))?
        .as_raw_fd();
    let mut rng = fastrand::Rng::with_seed(0x7ab1e);
    // Every /28 any policy held: destinations are drawn from all of them.
    let mut seen: Vec<Ipv4Network> = Vec::new();
    let mut cases = 0usize;
    for (i, n) in LONG.into_iter().enumerate() {
        let longs: Vec<Ipv4Network> = (0..n)
            .map(|_| {
                let a = 0x0a00_0000 | (rng.u32(..0x0010_0000) << 4);
                Ipv4Network::new(Ipv4Addr::from(a), 28).expect("valid")
            })
            .collect();
        seen.extend(&longs);
        let policy = Arc::new(policy_with(&longs)?);
        e.install(policy.clone())
            .map_err(|err| format!("install {i}: {err:#}"))?;
        let want = if n <= CHUNKS_PER_PAGE8 {
            "table"
        } else {
            "trie"
        };
        if e.ipv4_lookup() != want {
            return Err(format!(
                "install {i} ({n} chunks needed, {CHUNKS_PER_PAGE8} held): lookup {}, want {want}",
                e.ipv4_lookup()
            )
            .into());
        }
        // SAFETY: the fd belongs to `e`, alive for the whole test.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        for _ in 0..400 {
            let dst = match rng.u8(..3) {
                0 => {
                    let net = seen[rng.usize(..seen.len())];
                    Ipv4Addr::from(u32::from(net.network()) | rng.u32(..16))
                }
                1 => Ipv4Addr::from(0x0a00_0000 | rng.u32(..0x0100_0000)),
                _ => Ipv4Addr::from(0xc612_0100 | rng.u32(..0x100)),
            };
            let frame = testrun::frame(IpAddr::V4(dst), 6, 443, 0);
            let out = testrun::run(fd, &frame, 1).map_err(|e| format!("test run: {e}"))?;
            let model = policy.decide(IpAddr::V4(dst), 6, 443);
            let want = u32::from(model.verdict != Verdict::Deny);
            if out.retval != want {
                return Err(format!(
                    "install {i} ({}): {dst}: kernel {} model {want} ({model:?})",
                    e.ipv4_lookup(),
                    out.retval
                )
                .into());
            }
            cases += 1;
        }
    }
    println!("table capacity fallback: {cases} cases, 0 disagreements");
    Ok(())
}

/// Allowlisted region `inner` holding `longs`, inside the denied region `outer`
/// (10.0.0.0/8), and the allowlisted test host's /24.
fn policy_with(longs: &[Ipv4Network]) -> Result<Policy, Failed> {
    let list: Vec<String> = longs.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "ipv4_lookup = \"table\"\nallowlist = [\"inner\", \"eu\"]\n\
         [regions.outer]\nprefixes = [\"10.0.0.0/8\"]\n\
         [regions.inner]\nprefixes = [{}]\n\
         [regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n",
        list.join(", ")
    );
    let cfg = config::parse(Path::new("table.toml"), &text).map_err(|e| format!("{e}"))?;
    let p = policy::compile(&cfg);
    if !p.problems.is_empty() {
        return Err(format!("policy problems: {:?}", p.problems).into());
    }
    Ok(p)
}

/// /64s in 2001:db8::/48 per install, each two ranges; the IPv6 table holds [`RANGES6`].
const LONG6: [usize; 8] = [4, 20, 40, 6, 50, 3, 30, 10];
/// Ranges of each set's IPv6 table in [`capacity_fallback6`].
const RANGES6: usize = 48;

pub fn capacity_fallback6() -> Result<(), Failed> {
    require_root()?;
    let mut e = Enforcer::open_with(Capacity {
        prefixes: 4096,
        table_chunks: None,
        table6_ranges: Some(RANGES6),
    })
    .map_err(|e| format!("{e:#}"))?;
    if let Some(why) = e.table6_refused() {
        return Err(format!("this kernel refused the IPv6 range table: {why}").into());
    }
    let raw = e
        .program_fd(programs::SKB_EGRESS)
        .map_err(|e| format!("{e:#}"))?
        .as_raw_fd();
    let mut rng = fastrand::Rng::with_seed(0x7ab1e6);
    let mut seen: Vec<Ipv6Network> = Vec::new();
    let (mut cases, mut used) = (0usize, std::collections::BTreeSet::new());
    for (i, n) in LONG6.into_iter().enumerate() {
        let mut longs: Vec<Ipv6Network> = Vec::new();
        while longs.len() < n {
            let a = (0x2001_0db8_u128 << 96) | (u128::from(rng.u16(..)) << 64);
            let net = Ipv6Network::new(Ipv6Addr::from(a), 64).expect("valid");
            if !longs.contains(&net) {
                longs.push(net);
            }
        }
        seen.extend(&longs);
        let policy = Arc::new(policy6_with(&longs)?);
        e.install(policy.clone())
            .map_err(|err| format!("install {i}: {err:#}"))?;
        let ranges = Table6::compile(&policy.lpm_v6, 0)
            .map_err(|err| format!("{err}"))?
            .len();
        let want = if ranges <= RANGES6 { "table" } else { "trie" };
        if e.ipv6_lookup() != want {
            return Err(format!(
                "install {i} ({ranges} ranges, {RANGES6} held): lookup {}, want {want}",
                e.ipv6_lookup()
            )
            .into());
        }
        used.insert(want);
        // SAFETY: the fd belongs to `e`, alive for the whole test.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        for _ in 0..400 {
            let dst = match rng.u8(..4) {
                0 | 1 => {
                    let net = seen[rng.usize(..seen.len())];
                    Ipv6Addr::from(u128::from(net.network()) | u128::from(rng.u64(..)))
                }
                2 => Ipv6Addr::from((0x2001_0db8_u128 << 96) | (rng.u128(..) >> 32)),
                _ => Ipv6Addr::from((0x2001_0db8_0001_u128 << 80) | u128::from(rng.u64(..))),
            };
            let frame = testrun::frame(IpAddr::V6(dst), 6, 443, 0);
            let out = testrun::run(fd, &frame, 1).map_err(|e| format!("test run: {e}"))?;
            let model = policy.decide(IpAddr::V6(dst), 6, 443);
            let want = u32::from(model.verdict != Verdict::Deny);
            if out.retval != want {
                return Err(format!(
                    "install {i} ({}): {dst}: kernel {} model {want} ({model:?})",
                    e.ipv6_lookup(),
                    out.retval
                )
                .into());
            }
            cases += 1;
        }
    }
    if used.len() != 2 {
        return Err(format!("only {used:?} was used: the test proves nothing").into());
    }
    println!("table6 capacity fallback: {cases} cases, 0 disagreements");
    Ok(())
}

/// Allowlisted region `inner` holding `longs`, inside the denied region `outer`
/// (2001:db8::/32), and the allowlisted test host's /48.
fn policy6_with(longs: &[Ipv6Network]) -> Result<Policy, Failed> {
    let list: Vec<String> = longs.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "ipv6_lookup = \"table\"\nallowlist = [\"inner\", \"eu\"]\n\
         [regions.outer]\nprefixes = [\"2001:db8::/32\"]\n\
         [regions.inner]\nprefixes = [{}]\n\
         [regions.eu]\nprefixes = [\"2001:db8:1::/48\"]\n",
        list.join(", ")
    );
    let cfg = config::parse(Path::new("table6.toml"), &text).map_err(|e| format!("{e}"))?;
    let p = policy::compile(&cfg);
    if !p.problems.is_empty() {
        return Err(format!("policy problems: {:?}", p.problems).into());
    }
    Ok(p)
}
