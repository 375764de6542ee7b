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

use super::harness::{bpftool, require_root};

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
        // Pages never limit here: at most 8 /14s hold a /28.
        table_pages: 64,
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

/// A small policy with `ipv4_lookup = "table"` gets maps sized to it: the kernel's own
/// account (`memlock`) of the six table maps is what [`Capacity::table_bytes`] reports and
/// under 1 MiB (the unpaged first level alone was 2 x 64 MiB), the room is the policy's
/// need plus the spare, and the `cgroup_skb/egress` program decides as the reference model
/// over the uniform /14s, the paged ones and the chunks, then after a reload that needs
/// more pages than the maps hold (the trie) and one that fits again.
pub fn small_policy_small_maps() -> Result<(), Failed> {
    require_root()?;
    let mut rng = fastrand::Rng::with_seed(0x5a11);
    // 100 prefixes: /28s and /20s spread over 10.0.0.0/8, a few /12s.
    let mut prefixes: Vec<Ipv4Network> = Vec::new();
    while prefixes.len() < 100 {
        let len = [12u8, 20, 28][rng.usize(..3)];
        let a = Ipv4Addr::from(0x0a00_0000 | rng.u32(..0x0100_0000));
        let n = Ipv4Network::new(a, len).expect("valid");
        let n = Ipv4Network::new(n.network(), len).expect("valid");
        if !prefixes.contains(&n) {
            prefixes.push(n);
        }
    }
    let policy = Arc::new(policy_with(&prefixes)?);
    let cap = Capacity::for_policy(&policy);
    let mut e = Enforcer::open_with(cap).map_err(|e| format!("{e:#}"))?;
    let kernel = e.table_memory().map_err(|e| format!("{e:#}"))?;
    let room = e.table_room().ok_or("loaded without a table")?;
    println!(
        "small table policy: {} IPv4 prefixes ({} after merging), room {room:?}, kernel \
         memory {kernel} bytes (reported {})",
        policy.lpm_unmerged[0],
        policy.lpm_v4.len(),
        cap.table_bytes()
    );
    // Kernels before 6.4 account an estimate from the sizes (no header page, 4,104 bytes
    // per element): within 1/16.
    let reported = cap.table_bytes() as u64;
    if kernel > 1 << 20 || kernel.abs_diff(reported) > reported / 16 {
        return Err(format!(
            "the table maps take {kernel} bytes (the kernel's account), reported {reported}; \
             want them about equal and under 1 MiB"
        )
        .into());
    }
    let built = policy::table::Table4::compile(&policy.lpm_v4).map_err(|e| format!("{e}"))?;
    if room.pages < built.pages() || room.pages > built.pages() + built.pages() / 4 + 64 {
        return Err(format!("room {room:?} for a table of {} pages", built.pages()).into());
    }
    let raw = e
        .program_fd(programs::SKB_EGRESS)
        .map_err(|e| format!("{e:#}"))?
        .as_raw_fd();
    // Then a policy with a /28 in more /14s than the pool holds, then the first again.
    let wide: Vec<Ipv4Network> = (0..room.pages as u32 + 1)
        .map(|i| Ipv4Network::new(Ipv4Addr::from(0x0b00_0000 + (i << 18)), 28).expect("valid"))
        .collect();
    let wide = Arc::new(policy_with(&wide)?);
    let mut cases = 0usize;
    for (i, (p, want)) in [(&policy, "table"), (&wide, "trie"), (&policy, "table")]
        .into_iter()
        .enumerate()
    {
        e.install(p.clone())
            .map_err(|err| format!("install {i}: {err:#}"))?;
        if e.ipv4_lookup() != want {
            return Err(format!("install {i}: lookup {}, want {want}", e.ipv4_lookup()).into());
        }
        // SAFETY: the fd belongs to `e`, alive for the whole test.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        for _ in 0..2000 {
            let dst = match rng.u8(..4) {
                0 => {
                    let net = prefixes[rng.usize(..prefixes.len())];
                    Ipv4Addr::from(u32::from(net.network()) | (rng.u32(..) >> net.prefix()))
                }
                1 => Ipv4Addr::from(0x0a00_0000 | rng.u32(..0x0100_0000)),
                2 => Ipv4Addr::from(0x0b00_0000 | rng.u32(..0x0100_0000)),
                _ => Ipv4Addr::from(rng.u32(..)),
            };
            let frame = testrun::frame(IpAddr::V4(dst), 6, 443, 0);
            let out = testrun::run(fd, &frame, 1).map_err(|e| format!("test run: {e}"))?;
            let model = p.decide(IpAddr::V4(dst), 6, 443);
            let verdict = u32::from(model.verdict != Verdict::Deny);
            if out.retval != verdict {
                return Err(format!(
                    "install {i} ({want}): {dst}: kernel {} model {verdict} ({model:?})",
                    out.retval
                )
                .into());
            }
            cases += 1;
        }
    }
    println!("small table policy: {cases} cases, 0 disagreements");
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
        table_pages: 0,
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

/// Every map lookup of the socket and packet programs names one map, so the verifier inlines
/// it (arrays) or calls the map's own lookup directly (tries, hashes): the translated
/// programs (`bpftool prog dump xlated`) hold no call of the generic `bpf_map_lookup_elem`
/// helper, which a lookup whose map is chosen at run time keeps (an indirect call per
/// lookup; the IPv6 range table's search made up to 31). Loaded with both tables, so the
/// verifier keeps all the lookup code. The rewrite needs the JIT: a program the kernel runs
/// interpreted is reported and skipped. The dumps must name the calls: each program that
/// decides calls a trie's own lookup directly (`trie_lookup_elem`), so a dump whose helper
/// names were withheld (`kernel.kptr_restrict`, no `/proc/kallsyms`) fails instead of
/// passing unread. The LSM program that judges next hops is checked where it loaded.
pub fn map_lookups_resolved() -> Result<(), Failed> {
    require_root()?;
    let e = Enforcer::open_with(Capacity {
        prefixes: 4096,
        table_chunks: Some(64),
        table_pages: 8,
        table6_ranges: Some(RANGES6),
    })
    .map_err(|e| format!("{e:#}"))?;
    if let Some(why) = e.table6_refused() {
        return Err(format!("this kernel refused the IPv6 range table: {why}").into());
    }
    let mut checked = 0;
    for name in [
        programs::CONNECT4,
        programs::CONNECT6,
        programs::SENDMSG4,
        programs::SENDMSG6,
        programs::SKB_EGRESS,
        programs::SKB_INGRESS,
        programs::LSM_SOCKET_SENDMSG,
    ] {
        let fd = match e.program_fd(name) {
            Ok(fd) => fd,
            Err(err) if name == programs::LSM_SOCKET_SENDMSG => {
                println!("map lookups: {name} not loaded on this kernel ({err:#}): skipped");
                continue;
            }
            Err(err) => return Err(format!("{err:#}").into()),
        };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .map_err(|e| format!("fdinfo of {name}: {e}"))?;
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| format!("{name}: no {key} in fdinfo:\n{info}"))
        };
        if field("prog_jited:")? != "1" {
            println!("map lookups: {name} is not JIT-compiled on this kernel: skipped");
            continue;
        }
        let xlated = bpftool(&["prog", "dump", "xlated", "id", &field("prog_id:")?])?;
        if !xlated.contains("call trie_lookup_elem") {
            return Err(format!(
                "{name}: the dump names no direct trie lookup: helper names withheld or \
                 the lookups not resolved; first call: {:?}",
                xlated.lines().find(|l| l.contains("call "))
            )
            .into());
        }
        let generic: Vec<&str> = xlated
            .lines()
            .filter(|l| l.contains("call bpf_map_lookup_elem"))
            .collect();
        if !generic.is_empty() {
            return Err(format!(
                "{name}: {} map lookup(s) through the generic helper (a call instruction \
                 that sees more than one map), e.g. {:?}",
                generic.len(),
                generic[0]
            )
            .into());
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no program was JIT-compiled: nothing checked".into());
    }
    println!("map lookups: {checked} programs, no generic lookup");
    Ok(())
}
