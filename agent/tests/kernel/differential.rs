//! Differential test: the kernel's verdict (the `cgroup_skb/egress` program run with
//! `BPF_PROG_TEST_RUN` on crafted packets) against the userspace reference model
//! ([`egressd::policy::Policy::verdict`]) of the same policy, over random policies and
//! destinations, with IPv4 and IPv6 looked up in the LPM tries and, in a second enforcer, in
//! the DIR-24-8 table (IPv4) and the range table (IPv6). Zero disagreements allowed.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, BorrowedFd},
    path::PathBuf,
    sync::Arc,
};

use egressd::{
    config::{
        Action, Config, Established, Ipv4Lookup, Ipv6Lookup, Mode, Region, Rule, Target,
        WELL_KNOWN_NAT64,
    },
    kernel::loader::{Capacity, Enforcer},
    kernel::testrun,
    policy::{self, Policy, table::Table4, table6::Table6},
};
use egressd_common::{Verdict, programs};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libtest_mimic::Failed;

use super::harness::require_root;

const POLICIES: usize = 100;
/// Destination ports: the usual suspects, and `None` for a random one.
const PORTS: [Option<u16>; 8] = [
    Some(0),
    Some(22),
    Some(25),
    Some(53),
    Some(443),
    Some(8080),
    Some(65535),
    None,
];
const DESTINATIONS: usize = 1000;

pub fn differential() -> Result<(), Failed> {
    require_root()?;
    let seed = std::env::var("EGRESSD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0e9e55d);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut enforcer = Enforcer::open(4096).map_err(|e| format!("{e:#}"))?;
    let mut tabled = Enforcer::open_with(Capacity {
        prefixes: 4096,
        table_chunks: Some(4096),
        table_pages: 256,
        table6_ranges: Some(8192),
    })
    .map_err(|e| format!("{e:#}"))?;
    let raw = enforcer
        .program_fd(programs::SKB_EGRESS)
        .map_err(|e| format!("{e:#}"))?
        .as_raw_fd();
    let raw_tabled = tabled
        .program_fd(programs::SKB_EGRESS)
        .map_err(|e| format!("{e:#}"))?
        .as_raw_fd();
    let (mut cases, mut disagreements, mut chunked) = (0u64, Vec::new(), 0);
    // Policies whose IPv4 table has pool pages (non-uniform /14s) and second-level chunks.
    let (mut paged, mut chunked4) = (0usize, 0usize);
    for p in 0..POLICIES {
        let cfg = random_config(&mut rng);
        let policy = Arc::new(policy::compile(&cfg));
        if !policy.problems.is_empty() {
            return Err(format!("random policy {p} is not loadable: {:?}", policy.problems).into());
        }
        // The same compile as the install's, with the chunk room of the loaded maps:
        // policies whose IPv6 table has chunks.
        let room = tabled
            .table6_room()
            .ok_or("the tabled enforcer has no IPv6 table room")?;
        chunked +=
            usize::from(Table6::compile(&policy.lpm_v6, room.chunks).is_ok_and(|t| t.chunks() > 0));
        let t4 = Table4::compile(&policy.lpm_v4).map_err(|e| format!("policy {p}: {e}"))?;
        paged += usize::from(t4.pages() > 0);
        chunked4 += usize::from(t4.chunks() > 0);
        enforcer
            .install(policy.clone())
            .map_err(|e| format!("policy {p}: {e:#}"))?;
        tabled
            .install(policy.clone())
            .map_err(|e| format!("policy {p} (table): {e:#}"))?;
        let used = [
            enforcer.ipv4_lookup(),
            enforcer.ipv6_lookup(),
            tabled.ipv4_lookup(),
            tabled.ipv6_lookup(),
        ];
        // The loader would fall back to the trie where a verifier refused the range search
        // (`Enforcer::table6_refused`); every kernel egressd is tested on takes it.
        if let Some(why) = tabled.table6_refused() {
            return Err(format!("this kernel refused the IPv6 range table: {why}").into());
        }
        if used != ["trie", "trie", "table", "table"] {
            return Err(format!("policy {p}: lookups used {used:?}").into());
        }
        for _ in 0..DESTINATIONS {
            let dst = random_destination(&mut rng, &policy);
            let protocol = random_protocol(&mut rng);
            let port = if matches!(protocol, 6 | 17 | 132 | 136) {
                PORTS[rng.usize(..PORTS.len())].unwrap_or_else(|| rng.u16(..))
            } else {
                0
            };
            let (shape, hops) = random_shape(&mut rng, &policy, dst);
            let frame = testrun::shaped_frame(dst, protocol, port, 0, &shape);
            let want =
                u32::from(expected(&policy, dst, protocol, port, &shape, &hops) != Verdict::Deny);
            cases += 1;
            for (lookup, raw) in [("tries", raw), ("tables", raw_tabled)] {
                // SAFETY: the fd belongs to an enforcer alive for the whole loop.
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                let out =
                    testrun::run(fd, &frame, 1).map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
                if out.retval != want && disagreements.len() < 20 {
                    disagreements.push(format!(
                        "seed {seed:#x} policy {p} ({:?}, allow {:?}, default {:?}, rules \
                         {:?}), {lookup}: {dst} proto {protocol} port {port} shape \
                         {shape:?}: kernel {} model {want} ({:?})",
                        policy.mode,
                        policy.allowed,
                        policy.default,
                        policy.rules,
                        out.retval,
                        policy.decide(dst, protocol, port)
                    ));
                }
            }
        }
    }
    println!(
        "differential: {cases} cases, {} disagreements (seed {seed:#x}); IPv4 table: \
         {paged} of {POLICIES} policies with pool pages, {chunked4} with chunks; IPv6 range \
         table: {} ({chunked} of {POLICIES} policies with chunks)",
        disagreements.len(),
        tabled
            .table6_refused()
            .map_or("used".to_owned(), |e| format!(
                "refused by this kernel ({e})"
            ))
    );
    if !disagreements.is_empty() {
        return Err(disagreements.join("\n").into());
    }
    // Deterministic for a seed (50 of 100 with the default one); a quarter is the floor.
    if chunked < POLICIES / 4 {
        return Err(format!(
            "{chunked} of {POLICIES} random policies made an IPv6 table with chunks: the \
             chunk levels went (nearly) untested"
        )
        .into());
    }
    // Paged /14s and chunks under pages must be exercised (uniform /14s always are: most of
    // the address space, where a quarter of the destinations fall).
    if paged < POLICIES / 4 || chunked4 < POLICIES / 4 {
        return Err(format!(
            "{paged} of {POLICIES} random policies made an IPv4 table with pool pages, \
             {chunked4} with chunks: the paged levels went (nearly) untested"
        )
        .into());
    }
    // Exact counting: one skb-egress decision per case.
    let readers = enforcer.take_readers().map_err(|e| format!("{e:#}"))?;
    let last = Policy::clone(&policy::compile(&random_config(&mut rng)));
    let counted: u64 = egressd::events::stats::counters(&readers.counters, &last)
        .map_err(|e| format!("{e:#}"))?
        .iter()
        .filter(|c| c.hook == "cgroup_skb/egress")
        .map(|c| c.count)
        .sum();
    if counted != cases {
        return Err(format!("counted {counted} decisions for {cases} cases").into());
    }
    Ok(())
}

/// Prefix lengths worth testing: the extremes, byte and nibble boundaries, odd ones.
const V4_LENS: [u8; 12] = [0, 1, 7, 8, 12, 16, 19, 24, 28, 30, 31, 32];
const V6_LENS: [u8; 13] = [0, 1, 16, 32, 33, 48, 56, 64, 96, 100, 120, 127, 128];

fn random_v4(rng: &mut fastrand::Rng) -> Ipv4Addr {
    // Mostly inside 198.18.0.0/15 so prefixes nest and overlap; sometimes anywhere.
    if rng.u8(..4) == 0 {
        Ipv4Addr::from(rng.u32(..))
    } else {
        Ipv4Addr::from(0xC612_0000 | rng.u32(..0x2_0000))
    }
}

fn random_v6(rng: &mut fastrand::Rng) -> Ipv6Addr {
    if rng.u8(..4) == 0 {
        Ipv6Addr::from(rng.u128(..))
    } else {
        // Dense clusters: 2001:db8::/32 with a dense low part, or 2a00::/16 with its /20 to
        // /32 nibbles drawn from few values (several buckets in one chunk, at every level).
        let low = u128::from(rng.u32(..0x100));
        if rng.bool() {
            Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(rng.u16(..8)) << 80) | low)
        } else {
            let nibbles = (0..3).fold(0u128, |a, _| (a << 4) | u128::from(rng.u8(..3)));
            Ipv6Addr::from(
                (0x2a00u128 << 112) | (nibbles << 100) | (u128::from(rng.u16(..4)) << 80) | low,
            )
        }
    }
}

fn random_config(rng: &mut fastrand::Rng) -> Config {
    let n = rng.usize(1..=6);
    let mut seen = std::collections::HashSet::new();
    let mut regions = Vec::new();
    for i in 0..n {
        let mut prefixes = Vec::new();
        for _ in 0..rng.usize(1..=12) {
            let net = if rng.bool() {
                let len = V4_LENS[rng.usize(..V4_LENS.len())];
                let n = Ipv4Network::new(random_v4(rng), len).expect("len <= 32");
                IpNetwork::V4(Ipv4Network::new(n.network(), len).expect("len <= 32"))
            } else {
                let len = V6_LENS[rng.usize(..V6_LENS.len())];
                let n = Ipv6Network::new(random_v6(rng), len).expect("len <= 128");
                IpNetwork::V6(Ipv6Network::new(n.network(), len).expect("len <= 128"))
            };
            // A prefix belongs to one region; mapped-form IPv6 prefixes are rejected by config.
            if let IpNetwork::V6(v6) = net
                && v6.network().to_ipv4_mapped().is_some()
            {
                continue;
            }
            if seen.insert(net) {
                prefixes.push(net);
            }
        }
        if prefixes.is_empty() {
            prefixes.push(IpNetwork::V4(
                Ipv4Network::new(Ipv4Addr::new(198, 19, 255, i as u8), 32).expect("32"),
            ));
            seen.insert(prefixes[0]);
        }
        let mode = [None, None, Some(Mode::Audit), Some(Mode::Enforce)][rng.usize(..4)];
        regions.push(Region {
            name: format!("r{i}"),
            description: None,
            mode,
            origin: String::new(),
            prefixes,
        });
    }
    let allowlist = regions
        .iter()
        .filter(|_| rng.bool())
        .map(|r| r.name.clone())
        .collect();
    let mut nat64 = vec![WELL_KNOWN_NAT64];
    if rng.bool() {
        nat64.push(
            Ipv6Network::new(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0), 96).expect("96"),
        );
    }
    let mut rules = Vec::new();
    for id in 1..=rng.u32(..5) {
        let mut targets = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            if rng.bool() {
                let r = &regions[rng.usize(..regions.len())];
                targets.push(Target::Region(r.name.clone()));
            } else if rng.bool() {
                let len = V4_LENS[rng.usize(..V4_LENS.len())];
                let n = Ipv4Network::new(random_v4(rng), len).expect("len <= 32");
                let n = Ipv4Network::new(n.network(), len).expect("ok");
                targets.push(Target::Prefix(IpNetwork::V4(n)));
            } else {
                let len = V6_LENS[rng.usize(..V6_LENS.len())];
                let n = Ipv6Network::new(random_v6(rng), len).expect("len <= 128");
                let n = Ipv6Network::new(n.network(), len).expect("ok");
                targets.push(Target::Prefix(IpNetwork::V6(n)));
            }
        }
        let protocol = [
            None,
            Some(6),
            Some(17),
            Some(1),
            Some(58),
            Some(132),
            Some(random_protocol(rng)),
        ][rng.usize(..7)];
        let ports = match protocol {
            Some(6 | 17 | 132) => [
                None,
                Some((25, 25)),
                Some((443, 443)),
                Some((1, 1024)),
                Some((8000, 8100)),
            ][rng.usize(..5)],
            _ => None,
        };
        rules.push(Rule {
            id,
            name: format!("rule{id}"),
            action: if rng.bool() {
                Action::Allow
            } else {
                Action::Deny
            },
            targets,
            protocol,
            ports,
            mode: [None, None, Some(Mode::Audit), Some(Mode::Enforce)][rng.usize(..4)],
            origin: String::new(),
        });
    }
    Config {
        path: PathBuf::from("random.toml"),
        mode: if rng.u8(..4) == 0 {
            Mode::Audit
        } else {
            Mode::Enforce
        },
        allowlist,
        cgroup: None,
        established: Established::Cut,
        packet_sockets: egressd::config::PacketSockets::Deny,
        packet_exes: Vec::new(),
        ipv4_lookup: Ipv4Lookup::Auto,
        ipv6_lookup: Ipv6Lookup::Auto,
        nat64,
        default: if rng.u8(..4) == 0 {
            Action::Allow
        } else {
            Action::Deny
        },
        suppress_window_ms: 0,
        summary_after: 0,
        regions,
        rules,
        drop_ins: Vec::new(),
    }
}

/// A destination inside a policy prefix, mapped, NAT64-embedded, local, or random.
fn random_destination(rng: &mut fastrand::Rng, p: &Policy) -> IpAddr {
    let inside_v4 = |rng: &mut fastrand::Rng| -> Ipv4Addr {
        match p.v4.get(rng.usize(..p.v4.len().max(1))) {
            Some((n, _)) => {
                let mask = u32::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                // The first and the last address of a prefix are range edges of the tables.
                let host = [0, mask, rng.u32(..) & mask][rng.usize(..3)];
                Ipv4Addr::from(u32::from(n.network()) | host)
            }
            None => random_v4(rng),
        }
    };
    match rng.u8(..10) {
        0..=2 => IpAddr::V4(inside_v4(rng)),
        3..=4 => match p.v6.get(rng.usize(..p.v6.len().max(1))) {
            Some((n, _)) => {
                let mask = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                let host = [0, mask, rng.u128(..) & mask][rng.usize(..3)];
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
            None => IpAddr::V6(random_v6(rng)),
        },
        5 => IpAddr::V6(inside_v4(rng).to_ipv6_mapped()),
        6 => {
            let nat = p.nat64[rng.usize(..p.nat64.len())];
            IpAddr::V6(Ipv6Addr::from(
                u128::from(nat.network()) | u128::from(u32::from(inside_v4(rng))),
            ))
        }
        7 => [
            IpAddr::V4(Ipv4Addr::new(127, rng.u8(..), rng.u8(..), rng.u8(..))),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
        ][rng.usize(..5)],
        8 => IpAddr::V4(random_v4(rng)),
        _ => IpAddr::V6(random_v6(rng)),
    }
}

/// An upper-layer protocol number: the common ones, SCTP, and any other number that is not
/// an IPv6 extension header or AH (a packet's fixed header never names those as its
/// upper layer: the walk goes past them).
fn random_protocol(rng: &mut fastrand::Rng) -> u8 {
    match rng.u8(..8) {
        0..=5 => [6u8, 17, 1, 58, 132, 136][rng.usize(..6)],
        _ => loop {
            let p = rng.u8(..);
            if !matches!(p, 0 | 43 | 44 | 51 | 60) {
                break p;
            }
        },
    }
}

/// A header shape for a packet to `dst`: IPv4 options (some with a loose source route) or
/// a later fragment, or a chain of IPv6 extension headers (up to and past
/// [`egressd_common::MAX_EXT_HEADERS`], in any order, some with a type-2 routing header);
/// with the route's hops.
fn random_shape(rng: &mut fastrand::Rng, p: &Policy, dst: IpAddr) -> (testrun::Shape, Vec<IpAddr>) {
    let mut shape = testrun::Shape::default();
    let mut hops = Vec::new();
    if rng.u8(..3) == 0 {
        return (shape, hops);
    }
    let hop_ok = |a: IpAddr| {
        !a.is_loopback()
            && !a.is_unspecified()
            && !matches!(a, IpAddr::V6(v) if v.to_ipv4_mapped().is_some() || p.nat64.iter().any(|n| n.contains(v)))
    };
    match dst {
        IpAddr::V4(_) => match rng.u8(..5) {
            0 => shape.v4_options = vec![1, 1, 1, 1],
            1 => shape.v4_options = vec![148, 4, 0, 0],
            2 => shape.v4_options = vec![7, 7, 4, 0, 0, 0, 0, 1],
            3 => shape.v4_fragment_offset = rng.u16(1..0x1fff),
            _ => {
                let n = rng.usize(1..=2);
                let mut o = vec![1, 131, u8::try_from(3 + 4 * n).unwrap_or(0), 4];
                for _ in 0..n {
                    let h = loop {
                        let h = random_v4(rng);
                        if hop_ok(IpAddr::V4(h)) {
                            break h;
                        }
                    };
                    o.extend_from_slice(&h.octets());
                    hops.push(IpAddr::V4(h));
                }
                shape.v4_options = o;
            }
        },
        IpAddr::V6(_) => {
            let n = rng.usize(1..=egressd_common::MAX_EXT_HEADERS + 2);
            let mut routed = false;
            for _ in 0..n {
                let kind = [0u8, 60, 44, 51, 43][rng.usize(..5)];
                let body = match kind {
                    44 => {
                        let offset = if rng.bool() {
                            0
                        } else {
                            rng.u16(1..0x1fff) << 3
                        };
                        let mut b = offset.to_be_bytes().to_vec();
                        b.extend_from_slice(&[0; 4]);
                        b
                    }
                    43 if !routed => {
                        routed = true;
                        let h = loop {
                            let h = random_v6(rng);
                            if hop_ok(IpAddr::V6(h)) {
                                break h;
                            }
                        };
                        hops.push(IpAddr::V6(h));
                        // Type 2 (RFC 6275), segments left 1, reserved, one address.
                        let mut b = vec![2, 1, 0, 0, 0, 0];
                        b.extend_from_slice(&h.octets());
                        b
                    }
                    43 => continue,
                    _ => vec![0; 6 + 8 * rng.usize(..2)],
                };
                shape.v6_ext.push((kind, body));
            }
        }
    }
    (shape, hops)
}

/// The reference model of the packet hook for a shaped packet: a chain longer than the
/// walk's bound is denied; a later fragment is judged without its port; every hop of a
/// route must be allowed, each judged by its prefix's decision for all traffic (a hop
/// covered by a rule with a protocol or ports is denied: fail closed).
fn expected(
    p: &Policy,
    dst: IpAddr,
    protocol: u8,
    port: u16,
    shape: &testrun::Shape,
    hops: &[IpAddr],
) -> Verdict {
    if shape.v6_ext.len() > egressd_common::MAX_EXT_HEADERS && matches!(dst, IpAddr::V6(_)) {
        return Verdict::Deny;
    }
    let later_fragment = shape.v4_fragment_offset != 0
        || shape
            .v6_ext
            .iter()
            .any(|(k, b)| *k == 44 && u16::from_be_bytes([b[0], b[1]]) & 0xfff8 != 0);
    let port = if later_fragment { 0 } else { port };
    let mut v = p.decide(dst, protocol, port).verdict;
    for &h in hops {
        if v == Verdict::Deny {
            break;
        }
        // A rule with a protocol or ports that can decide for the hop makes its decision
        // depend on the traffic: the kernel then denies the hop.
        let covered = p.rules.iter().any(|r| {
            r.is_specific()
                && p.decide(h, r.protocol.unwrap_or(6), r.ports.map_or(0, |(lo, _)| lo))
                    .rule
                    == r.id
        });
        let hv = if covered {
            Verdict::Deny
        } else {
            p.decide(h, 0, 0).verdict
        };
        if hv == Verdict::Deny || (hv == Verdict::Audit && v == Verdict::Allow) {
            v = hv;
        }
    }
    v
}
