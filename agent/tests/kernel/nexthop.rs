//! Raw sockets that write their own IP header and send it to another next hop than the
//! header names (issue 21 item 2, issue 12 item 1). The kernel routes such a datagram by
//! its `sendto` address; `cgroup_skb/egress` judges the header. Where the BPF LSM is active,
//! `lsm/socket_sendmsg` judges the `sendto` address; elsewhere `tc/egress` checks that the
//! frame leaves to the next hop the header's destination is routed to.
//!
//! The daemon runs in the client namespace (the fallback attaches to the interfaces of
//! its own namespace), and a packet socket in the us namespace listens for the frames: an
//! IP datagram addressed elsewhere is dropped by the us host's IP layer, so only the link
//! layer shows whether it got there. Every case is asserted on both kinds of kernel: the
//! frame never reaches the denied host and an event names the hook that stopped it.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use egressd_testbed::{EU_V4, EU_V6, Netns, PORT, Testbed, US_V4, US_V6};
use libtest_mimic::Failed;
use serde_json::Value;

use super::{
    forced::ip,
    harness::{
        Agent, assert_field, connections, counter, expect_eperm, expect_ok, policy, probe,
        require_root, stop_record, temp_dir, testbed,
    },
    lsm::{coverage_status, lsm_in_force, start_lists},
    tc::start_in_client,
};

/// The payload of every `hdrincl` probe.
const MARKER: &[u8] = b"egressd-hdrincl";

/// An IPv4 `IPPROTO_RAW` datagram sent to `hop` whose header names `dst`.
fn hdrincl(hop: &str, dst: &str) -> String {
    format!("hdrincl://{hop}:{PORT}/{dst}")
}

/// The same over IPv6.
fn hdrincl6(hop: &str, dst: &str) -> String {
    format!("hdrincl6://[{hop}]:{PORT}/{dst}")
}

/// An `AF_PACKET` socket in a test namespace that counts the frames carrying [`MARKER`]:
/// what arrives at the host's link, whatever its IP layer does with it.
pub(super) struct Sniffer(OwnedFd);

impl Sniffer {
    pub(super) fn open(ns: &Netns) -> Result<Self, Failed> {
        in_ns(ns, || {
            // SAFETY: plain syscall; the descriptor is owned on success.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            if fd < 0 {
                return Err(format!(
                    "packet socket: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: a fresh descriptor.
            Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
        })
    }

    /// Frames with the marker received since the last call.
    fn take(&self) -> u64 {
        self.take_matching(|f| f.windows(MARKER.len()).any(|w| w == MARKER))
    }

    /// Frames received since the last call for which `want` holds.
    pub(super) fn take_matching(&self, want: impl Fn(&[u8]) -> bool) -> u64 {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        // Bounded: the socket is non-blocking and the probes send a handful of frames.
        for _ in 0..10_000 {
            // SAFETY: valid fd and buffer.
            let r =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r <= 0 {
                break;
            }
            if want(&buf[..r as usize]) {
                n += 1;
            }
        }
        n
    }
}

/// Runs `f` on a thread moved into `ns` (a socket it opens stays in `ns`).
pub(super) fn in_ns<T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, Failed> {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread().map_err(|e| format!("{e:#}"))?;
            f()
        })
        .join()
        .map_err(|_| "namespace thread panicked".to_owned())?
    })
    .map_err(Into::into)
}

/// Turns IPv4 and IPv6 forwarding of every interface of `ns` on or off (`bpf_fib_lookup`
/// answers only for a device with forwarding on). The test's own namespace: it has no
/// route but to the two test hosts.
pub(super) fn forwarding(ns: &Netns, on: bool) -> Result<(), Failed> {
    in_ns(ns, || {
        let v = if on { "1" } else { "0" };
        for f in [
            "/proc/sys/net/ipv4/conf/all/forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            std::fs::write(f, v).map_err(|e| format!("{f}: {e}"))?;
        }
        Ok(())
    })
}

/// Sends `p` from the cgroup, waits for the link, and returns how many marked frames the
/// sniffer saw (everything it held before is discarded first).
fn send_and_sniff(tb: &Testbed, sniffer: &Sniffer, p: &str, lsm: bool) -> Result<u64, Failed> {
    sniffer.take();
    let r = probe(tb, 1, &[p.to_owned()])?;
    if lsm {
        expect_eperm(&r[0])?;
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(sniffer.take())
}

/// Each header destination of `ips` has a `cgroup_skb/egress` deny among `skb`, by the
/// loopback fail-closed rule.
fn loopback_denied(skb: &[&Value], ips: &[&str]) -> Result<(), Failed> {
    for ip in ips {
        let e = skb
            .iter()
            .find(|e| e["destination"]["ip"] == *ip)
            .ok_or_else(|| format!("no cgroup_skb/egress event for header {ip}: {skb:#?}"))?;
        assert_field(e, "/verdict", "deny")?;
        let rule = e["rule"]["name"].as_str().unwrap_or("");
        if !rule.starts_with("fail-closed: loopback") {
            return Err(format!("header {ip}: rule {rule}").into());
        }
    }
    Ok(())
}

/// The events of `hook` in `recs`.
pub(super) fn at<'a>(recs: &'a [Value], hook: &str) -> Vec<&'a Value> {
    connections(recs)
        .into_iter()
        .filter(|e| e["hook"] == hook)
        .collect()
}

/// Datagrams the eu host served, waited for up to a second to reach `want`.
fn served_eu(tb: &Testbed, want: u64) -> u64 {
    for _ in 0..20 {
        if tb.served().0 >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tb.served().0
}

/// Which cover judges next hops here, checked against the coverage report: `true` for the
/// LSM hooks (`raw_next_hop` enforced), `false` for the `tc/egress` fallback (partial).
fn cover(agent: &Agent) -> Result<bool, Failed> {
    if lsm_in_force(agent)? {
        if !start_lists(agent, "enforced", "raw_next_hop") {
            return Err("LSM hooks in force but raw_next_hop is not enforced".into());
        }
        return Ok(true);
    }
    if !start_lists(agent, "partial", "raw_next_hop") {
        return Err(format!(
            "without the LSM hooks raw_next_hop should be partial (tc/egress): {:?}",
            agent
                .records()
                .iter()
                .find(|r| r["type"] == "agent_start")
                .map(|r| &r["coverage"])
        )
        .into());
    }
    let st = coverage_status("raw_next_hop")?;
    if st != "partial" {
        return Err(format!("egressd coverage says raw_next_hop is {st}, want partial").into());
    }
    Ok(false)
}

/// Enforce mode. A raw socket in the cgroup sends to the denied us host with header
/// destinations 127.0.0.1, 0.0.0.0 and the allowed eu host (IPv4), and eu over IPv6: none
/// reaches us. With the LSM hooks: `sendto` fails with EPERM at `lsm/socket_sendmsg`. With
/// the fallback: the local headers are denied by `cgroup_skb/egress` (`local_misrouted`),
/// the eu headers too (`next_hop_forced`: the us interface has no route to eu, see
/// forced.rs), each counted. A header naming us is
/// denied (by the LSM, else by `cgroup_skb`); an allowed raw send (eu, header eu) arrives;
/// with forwarding off the fallback cannot compute next hops and denies that one too
/// (`next_hop_unverified`), while the LSM hooks let it through.
pub fn raw_next_hop_denied() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-nexthop-")?;
    forwarding(&tb.client, true)?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    let lsm = cover(&agent)?;
    let sniffer = Sniffer::open(&tb.us)?;
    for p in [
        hdrincl(US_V4, "127.0.0.1"),
        hdrincl(US_V4, "0.0.0.0"),
        hdrincl(US_V4, EU_V4),
        hdrincl6(US_V6, EU_V6),
        hdrincl(US_V4, US_V4),
    ] {
        let got = send_and_sniff(&tb, &sniffer, &p, lsm)?;
        if got != 0 {
            return Err(format!("{p}: {got} frame(s) reached the denied us host").into());
        }
    }
    // Allowed: the header's destination is the next hop.
    for (i, p) in [hdrincl(EU_V4, EU_V4), hdrincl6(EU_V6, EU_V6)]
        .iter()
        .enumerate()
    {
        let before = tb.served().0;
        expect_ok(&probe(&tb, 1, std::slice::from_ref(p))?[0])?;
        if served_eu(&tb, before + 1) < before + 1 {
            return Err(format!("allowed raw send #{i} {p} did not reach eu").into());
        }
    }
    // Forwarding off: bpf_fib_lookup refuses, the fallback fails closed.
    forwarding(&tb.client, false)?;
    let before = tb.served().0;
    let _ = probe(&tb, 1, &[hdrincl(EU_V4, EU_V4)])?;
    let arrived = served_eu(&tb, before + 1) > before;
    if arrived != lsm {
        return Err(format!(
            "forwarding off: the allowed raw send {} (LSM hooks in force: {lsm})",
            if arrived { "arrived" } else { "was dropped" }
        )
        .into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    if lsm {
        let ev = at(&recs, "lsm/socket_sendmsg");
        if ev.len() != 5 {
            return Err(format!("expected 5 lsm/socket_sendmsg events, got {ev:#?}").into());
        }
        for e in &ev {
            assert_field(e, "/verdict", "deny")?;
            assert_field(e, "/destination/region", "us")?;
        }
        let n = counter(stop, "lsm/socket_sendmsg", "us", "deny");
        if n != 5 {
            return Err(format!("lsm/socket_sendmsg deny counter for us {n}, want 5").into());
        }
        return Ok(());
    }
    let skb = at(&recs, "cgroup_skb/egress");
    loopback_denied(&skb, &["127.0.0.1", "0.0.0.0"])?;
    let us = skb
        .iter()
        .find(|e| e["destination"]["ip"] == US_V4)
        .ok_or_else(|| format!("no cgroup_skb/egress event for header us: {skb:#?}"))?;
    assert_field(us, "/verdict", "deny")?;
    assert_field(us, "/destination/region", "us")?;
    // An eu header sent to us leaves through the us interface, which has no route to eu:
    // `cgroup_skb` denies it first (the device-forced next-hop check, see forced.rs), so
    // it never reaches `tc/egress`.
    let rule = |e: &Value| e["rule"]["name"].as_str().unwrap_or("").to_owned();
    for ip in [EU_V4, EU_V6] {
        let e = skb
            .iter()
            .find(|e| e["destination"]["ip"] == ip && rule(e).contains("next hop forced"))
            .ok_or_else(|| format!("no next_hop_forced event for header {ip}: {skb:#?}"))?;
        assert_field(e, "/verdict", "deny")?;
        assert_field(e, "/process/attribution", "socket_owner")?;
    }
    let tc = at(&recs, "tc/egress");
    if tc.len() != 1 {
        return Err(format!("expected 1 tc/egress event, got {tc:#?}").into());
    }
    let e = tc
        .iter()
        .find(|e| rule(e).contains("could not compute"))
        .ok_or_else(|| format!("no next_hop_unverified event: {tc:#?}"))?;
    assert_field(e, "/destination/ip", EU_V4)?;
    let n = counter(stop, "tc/egress", "unknown", "deny");
    if n != 1 {
        return Err(format!("tc/egress deny counter {n}, want 1").into());
    }
    let fc = &stop["fail_closed"];
    if fc["next_hop_forced"] != 2 || fc["next_hop_unverified"] != 1 || fc["local_misrouted"] != 2 {
        return Err(format!("fail_closed counters: {fc}").into());
    }
    Ok(())
}

/// Enforce mode. One raw socket sends a header naming the loopback address (127.0.0.1,
/// then ::1 from another socket) first through `lo`, where `cgroup_skb/egress` allows and
/// caches it, then with `sendto` naming the eu host, while the client namespace has a
/// default route through the eu interface, so the device-forced next-hop check (forced.rs)
/// passes. The cached allow must not be reused off loopback: the second send is denied by
/// `cgroup_skb/egress` as `local_misrouted` (EPERM), reported, and nothing reaches the eu
/// link. Reusing it would leave the frame to the `tc/egress` FIB check alone. The LSM hooks,
/// where active, judge only the `sendto` addresses (loopback, eu): both allowed.
pub fn raw_local_header_cached_then_sent_out() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-nexthop-")?;
    forwarding(&tb.client, true)?;
    let ns = tb.client.name();
    ip(&["-n", ns, "route", "add", "default", "via", EU_V4])?;
    ip(&["-n", ns, "-6", "route", "add", "default", "via", EU_V6])?;
    let agent = start_in_client(&tb, &dir, &policy("enforce"), &[])?;
    let sniffer = Sniffer::open(&tb.eu)?;
    sniffer.take();
    let pairs = [
        format!("hdrincl-pair://{EU_V4}:{PORT}/127.0.0.1"),
        format!("hdrincl-pair://[{EU_V6}]:{PORT}/::1"),
    ];
    let r = probe(&tb, 1, &pairs)?;
    if r.len() != 4 {
        return Err(format!("expected 4 results, got {r:#?}").into());
    }
    for pair in r.chunks(2) {
        expect_ok(&pair[0])?;
        expect_eperm(&pair[1])?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = sniffer.take();
    if got != 0 {
        return Err(format!("{got} loopback-header frame(s) reached the eu link").into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let skb = at(&recs, "cgroup_skb/egress");
    loopback_denied(&skb, &["127.0.0.1", "::1"])?;
    let tc = at(&recs, "tc/egress");
    if !tc.is_empty() {
        return Err(format!("tc/egress should see nothing: {tc:#?}").into());
    }
    if stop["fail_closed"]["local_misrouted"] != 2 {
        return Err(format!("fail_closed counters: {}", stop["fail_closed"]).into());
    }
    Ok(())
}

/// Audit mode: the raw datagram to us with an eu header arrives and is reported, by the
/// LSM hook or by `tc/egress`, as audit; counted, and no fail-closed denial is counted.
pub fn raw_next_hop_audit() -> Result<(), Failed> {
    require_root()?;
    let tb = testbed()?;
    let dir = temp_dir("egressd-nexthop-")?;
    forwarding(&tb.client, true)?;
    let agent = start_in_client(&tb, &dir, &policy("audit"), &[])?;
    let lsm = cover(&agent)?;
    let sniffer = Sniffer::open(&tb.us)?;
    let got = send_and_sniff(&tb, &sniffer, &hdrincl(US_V4, EU_V4), false)?;
    if got != 1 {
        return Err(format!("audit: the frame should reach us once, sniffed {got}").into());
    }
    let recs = agent.stop()?;
    let stop = stop_record(&recs)?;
    let (hook, region) = if lsm {
        ("lsm/socket_sendmsg", "us")
    } else {
        ("tc/egress", "unknown")
    };
    let ev = at(&recs, hook);
    if ev.len() != 1 {
        return Err(format!("expected 1 {hook} event, got {ev:#?}").into());
    }
    assert_field(ev[0], "/verdict", "audit")?;
    if counter(stop, hook, region, "audit") != 1 {
        return Err(format!("{hook} audit counter: {}", stop["counters"]).into());
    }
    if stop["fail_closed"].get("next_hop_mismatch").is_some() {
        return Err(format!("audit counted a denial: {}", stop["fail_closed"]).into());
    }
    Ok(())
}
