//! The route mirror for the device-forced next-hop check (`ebpf/src/forced.rs`): every
//! route of egressd's network namespace, all tables, as (output device, destination prefix)
//! in [`maps::ROUTES_V4`]/[`maps::ROUTES_V6`], kept current from rtnetlink.
//!
//! A route counts for each device it leaves through (`RTA_OIF`, or each hop of
//! `RTA_MULTIPATH`) when its type sends somewhere (unicast, local, broadcast, anycast,
//! multicast); blackhole, unreachable, prohibit and throw routes send nowhere. A VRF
//! device gets `0.0.0.0/0` and `::/0`: its packets are judged again on the enslaved device
//! they leave by, where the VRF table's routes point.
//!
//! Updates: a new route is added at once (a packet sent through it right after the kernel
//! installed it can come before the notification: a short window of false denials, fail
//! closed); a removed route, a link change (IPv4 flushes the routes of a device going down
//! without a notification each), a removed address, or lost notifications (`ENOBUFS`)
//! cause a full dump compared with what the maps hold. Every change increments
//! [`RouteState::epoch`], which cached verdicts record, so the next packet of every socket
//! is checked against the new routes.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, lpm_trie::Key},
};
use egressd_common::{MAX_ROUTES, RouteState, maps};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// rtnetlink multicast groups (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV4_ROUTE`,
/// `RTNLGRP_IPV6_IFADDR`, `RTNLGRP_IPV6_ROUTE`, `include/uapi/linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Address of the probe socket ([`RouteState::probe_addr`]): a loopback address nothing
/// else binds to (`IP_FREEBIND`, so it works with `lo` down too).
const PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(127, 238, 67, 221);

/// One mirrored (device, prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKey {
    /// IPv4: output ifindex, prefix (network byte order), prefix length.
    V4(u32, [u8; 4], u8),
    /// IPv6: as above.
    V6(u32, [u8; 16], u8),
}

/// The maps, what they hold, and the probe socket (kept open while the mirror is kept).
pub struct RouteMirror {
    v4: LpmTrie<MapData, [u8; 8], u8>,
    v6: LpmTrie<MapData, [u8; 20], u8>,
    state: Array<MapData, RouteState>,
    held: BTreeSet<RouteKey>,
    epoch: u64,
    probe: UdpSocket,
    /// Routes left out because a map was full (logged once per sync).
    pub overflow: usize,
}

/// A descriptor of map `name` of `ebpf` of its own, for a mirror that outlives the borrow.
fn own_map(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let data = match ebpf.map(name) {
        Some(Map::LpmTrie(d) | Map::Array(d)) => d,
        _ => bail!("map {name} missing from the eBPF object"),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicating the descriptor of {name}"))?;
    Ok(Map::from_map_data(MapData::from_fd(fd)?)?)
}

impl RouteMirror {
    /// Opens the mirror's maps in `ebpf` and binds the probe socket; empties the tries (a
    /// pinned mirror of an earlier run may be stale) only at the first [`RouteMirror::sync`].
    ///
    /// # Errors
    /// A map is missing, or the probe socket cannot be bound.
    pub fn open(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let v4 = LpmTrie::try_from(own_map(ebpf, maps::ROUTES_V4)?)?;
        let v6 = LpmTrie::try_from(own_map(ebpf, maps::ROUTES_V6)?)?;
        let state: Array<MapData, RouteState> = Array::try_from(own_map(ebpf, maps::ROUTE_STATE)?)?;
        let epoch = state.get(&0, 0).map(|s| s.epoch).unwrap_or(0);
        let probe = probe_socket().context("binding the route mirror's probe socket")?;
        let mut held = BTreeSet::new();
        // What an earlier run left: compared with the kernel's routes at the first sync.
        for k in v4.keys().flatten() {
            let k: Key<[u8; 8]> = k;
            let d = k.data();
            let ifindex = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            let len = u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(0);
            held.insert(RouteKey::V4(ifindex, [d[4], d[5], d[6], d[7]], len));
        }
        for k in v6.keys().flatten() {
            let k: Key<[u8; 20]> = k;
            let d = k.data();
            let ifindex = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            let mut a = [0u8; 16];
            a.copy_from_slice(&d[4..]);
            let len = u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(0);
            held.insert(RouteKey::V6(ifindex, a, len));
        }
        Ok(Self {
            v4,
            v6,
            state,
            held,
            epoch,
            probe,
            overflow: 0,
        })
    }

    /// Number of (device, prefix) pairs mirrored.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is mirrored.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Dumps links and routes, makes the maps hold exactly them, and publishes a new epoch
    /// (and the probe socket's address). Returns the number of (device, prefix) pairs.
    ///
    /// # Errors
    /// The dump or a map update fails.
    pub fn sync(&mut self) -> anyhow::Result<usize> {
        let want = dump().context("dumping the routes (rtnetlink)")?;
        for k in self.held.difference(&want).copied().collect::<Vec<_>>() {
            self.remove(k)?;
        }
        self.overflow = 0;
        for k in want
            .difference(&self.held.clone())
            .copied()
            .collect::<Vec<_>>()
        {
            self.insert(k)?;
        }
        if self.overflow > 0 {
            tracing::error!(
                left_out = self.overflow,
                max = MAX_ROUTES,
                "the route mirror is full: packets through the routes left out are denied (next_hop_forced)"
            );
        }
        self.publish()?;
        Ok(self.held.len())
    }

    fn insert(&mut self, k: RouteKey) -> anyhow::Result<()> {
        if self.held.contains(&k) {
            return Ok(());
        }
        let r = match k {
            RouteKey::V4(i, a, len) => {
                let d = i.to_be_bytes();
                let data = [d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3]];
                self.v4.insert(&Key::new(32 + u32::from(len), data), 1, 0)
            }
            RouteKey::V6(i, a, len) => {
                let mut data = [0u8; 20];
                data[..4].copy_from_slice(&i.to_be_bytes());
                data[4..].copy_from_slice(&a);
                self.v6.insert(&Key::new(32 + u32::from(len), data), 1, 0)
            }
        };
        match r {
            Ok(()) => {
                self.held.insert(k);
                Ok(())
            }
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOSPC) =>
            {
                self.overflow += 1;
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("adding route {k:?} to the mirror")),
        }
    }

    fn remove(&mut self, k: RouteKey) -> anyhow::Result<()> {
        let r = match k {
            RouteKey::V4(i, a, len) => {
                let d = i.to_be_bytes();
                let data = [d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3]];
                self.v4.remove(&Key::new(32 + u32::from(len), data))
            }
            RouteKey::V6(i, a, len) => {
                let mut data = [0u8; 20];
                data[..4].copy_from_slice(&i.to_be_bytes());
                data[4..].copy_from_slice(&a);
                self.v6.remove(&Key::new(32 + u32::from(len), data))
            }
        };
        self.held.remove(&k);
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing route {k:?} from the mirror")),
        }
    }

    /// Writes a new epoch (and the probe's address): cached verdicts are checked again.
    fn publish(&mut self) -> anyhow::Result<()> {
        let local = self.probe.local_addr()?;
        let std::net::SocketAddr::V4(a) = local else {
            bail!("the probe socket is not IPv4");
        };
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let st = RouteState {
            epoch: self.epoch,
            probe_addr: a.ip().octets(),
            probe_port: a.port().to_be(),
            _pad: 0,
        };
        self.state
            .set(0, st, 0)
            .context("writing the route mirror's state")?;
        Ok(())
    }

    /// Keeps the mirror current until the process exits, on a thread of its own: listens to
    /// link and route notifications, adds new routes at once, and dumps everything again
    /// after a removal or lost notifications (at most every 50 ms).
    ///
    /// # Errors
    /// The netlink socket cannot be opened or subscribed.
    pub fn watch(mut self) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        sock.bind_auto()?;
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
        ] {
            sock.add_membership(g)
                .with_context(|| format!("joining rtnetlink group {g}"))?;
        }
        // Notifications that came between the first sync and the subscription.
        self.sync()?;
        std::thread::Builder::new()
            .name("egressd-routes".into())
            .spawn(move || self.run(&sock))
            .context("starting the route mirror thread")
    }

    fn run(mut self, sock: &Socket) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("rtnetlink notifications lost: dumping the routes again");
                    self.resync();
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "rtnetlink: the route mirror stops updating");
                    return;
                }
            };
            let (adds, full) = parse_notifications(&buf[..n]);
            if full {
                // Several removals usually come together (a link going down): one dump.
                std::thread::sleep(Duration::from_millis(50));
                self.drain(sock, &mut buf);
                self.resync();
                continue;
            }
            if adds.is_empty() {
                continue;
            }
            let mut failed = false;
            for k in adds {
                if let Err(e) = self.insert(k) {
                    tracing::error!(error = %format!("{e:#}"), "route mirror");
                    failed = true;
                }
            }
            if failed || self.publish().is_err() {
                self.resync();
            }
        }
    }

    /// Reads and discards what is queued on `sock` (a full dump follows).
    fn drain(&self, sock: &Socket, buf: &mut [u8]) {
        for _ in 0..1024 {
            match sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    fn resync(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!(error = %format!("{e:#}"), "route mirror: dump failed");
        }
    }
}

/// The probe socket: UDP, bound with `IP_FREEBIND` to [`PROBE_ADDR`] and a port the
/// kernel picks.
fn probe_socket() -> anyhow::Result<UdpSocket> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid descriptor and option buffer.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_FREEBIND,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("IP_FREEBIND");
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(PROBE_ADDR.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid descriptor and address of the size passed.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("binding {PROBE_ADDR}"));
    }
    Ok(sock)
}

/// Sends one dump request of `msg` and collects the replies.
fn dump_of(msg: RouteNetlinkMessage) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    hdr.sequence_number = 1;
    let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out[..]);
    sock.send(&out[..], 0)?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    // Bounded: a dump ends with NLMSG_DONE; a million messages is far past any table.
    for _ in 0..1_000_000 {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                .context("parsing an rtnetlink reply")?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(got),
                NetlinkPayload::Error(e) => bail!("rtnetlink dump: {e:?}"),
                NetlinkPayload::InnerMessage(inner) => got.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
    bail!("rtnetlink dump did not end")
}

/// Every (device, prefix) the kernel routes through, all tables, both families, and VRF
/// devices' wildcards.
fn dump() -> anyhow::Result<BTreeSet<RouteKey>> {
    let mut want = BTreeSet::new();
    for m in dump_of(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            want.extend(vrf_keys(&l));
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        for m in dump_of(RouteNetlinkMessage::GetRoute(req))? {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                want.extend(route_keys(&r));
            }
        }
    }
    Ok(want)
}

/// The wildcard keys of a VRF device (none for other links).
fn vrf_keys(l: &LinkMessage) -> Vec<RouteKey> {
    let vrf = l.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vrf))))
    });
    if !vrf {
        return Vec::new();
    }
    let i = l.header.index;
    vec![RouteKey::V4(i, [0; 4], 0), RouteKey::V6(i, [0; 16], 0)]
}

/// The keys of one route: one per device it leaves through; none for a route type that
/// sends nowhere.
pub fn route_keys(r: &RouteMessage) -> Vec<RouteKey> {
    if !matches!(
        r.header.kind,
        RouteType::Unicast
            | RouteType::Local
            | RouteType::Broadcast
            | RouteType::Anycast
            | RouteType::Multicast
    ) {
        return Vec::new();
    }
    let len = r.header.destination_prefix_length;
    let mut dst = None;
    let mut devs = Vec::new();
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = Some(d.clone()),
            RouteAttribute::Oif(i) => devs.push(*i),
            RouteAttribute::MultiPath(hops) => devs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for i in devs.into_iter().filter(|i| *i != 0) {
        match (r.header.address_family, &dst) {
            (AddressFamily::Inet, Some(RouteAddress::Inet(a))) => {
                out.push(RouteKey::V4(i, masked4(a.octets(), len), len.min(32)));
            }
            (AddressFamily::Inet, None) => out.push(RouteKey::V4(i, [0; 4], 0)),
            (AddressFamily::Inet6, Some(RouteAddress::Inet6(a))) => {
                out.push(RouteKey::V6(i, masked6(a.octets(), len), len.min(128)));
            }
            (AddressFamily::Inet6, None) => out.push(RouteKey::V6(i, [0; 16], 0)),
            _ => {}
        }
    }
    out
}

/// `a` with the bits past `len` cleared (the kernel's LPM trie wants them clear).
fn masked4(a: [u8; 4], len: u8) -> [u8; 4] {
    let bits = u32::from_be_bytes(a)
        & u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0);
    bits.to_be_bytes()
}

/// As [`masked4`] for IPv6.
fn masked6(a: [u8; 16], len: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(a)
        & u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0);
    bits.to_be_bytes()
}

/// What a batch of notifications asks for: routes to add, and whether a full dump is due
/// (a route or link went away, or a message could not be read).
fn parse_notifications(buf: &[u8]) -> (Vec<RouteKey>, bool) {
    let mut adds = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else {
            return (adds, true);
        };
        let len = m.header.length as usize;
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                adds.extend(route_keys(&r));
            }
            // IPv4 drops the routes of a device going down, or of an address removed, without
            // a notification per route: a link change or a removed address means a dump.
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::DelRoute(_)
                | RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::DelAddress(_),
            ) => return (adds, true),
            _ => {}
        }
        if len == 0 {
            break;
        }
        off += len;
    }
    (adds, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_clear_host_bits() {
        assert_eq!(masked4([198, 18, 2, 77], 24), [198, 18, 2, 0]);
        assert_eq!(masked4([198, 18, 2, 77], 0), [0, 0, 0, 0]);
        assert_eq!(masked4([198, 18, 2, 77], 32), [198, 18, 2, 77]);
        let a = "2001:db8:1::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST);
        let m = masked6(a.octets(), 48);
        assert_eq!(
            std::net::Ipv6Addr::from(m),
            "2001:db8:1::"
                .parse::<std::net::Ipv6Addr>()
                .unwrap_or(std::net::Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn routes_that_send_nowhere_are_not_mirrored() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 24;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(198, 18, 2, 9),
            )));
        r.attributes.push(RouteAttribute::Oif(3));
        r.header.kind = RouteType::BlackHole;
        assert!(route_keys(&r).is_empty());
        r.header.kind = RouteType::Unicast;
        assert_eq!(route_keys(&r), vec![RouteKey::V4(3, [198, 18, 2, 0], 24)]);
    }
}
