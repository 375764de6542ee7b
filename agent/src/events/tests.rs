//! Unit tests of [`super`] (events).
use super::*;

#[test]
fn formats_time_with_nanoseconds() {
    assert_eq!(
        rfc3339(1_796_031_000_123_456_789).as_str(),
        "2026-11-30T09:30:00.123456789Z"
    );
    assert_eq!(rfc3339(0).as_str(), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(
        rfc3339(sample::T0).as_str(),
        "2026-11-29T09:42:54.018030447Z"
    );
}

#[test]
fn fast_time_formatting_is_the_general_one() {
    let mut rng = fastrand::Rng::with_seed(7);
    let ends = [
        0,
        1,
        951_782_400 * 1_000_000_000,
        i128::from(u64::MAX),
        253_402_300_799_999_999_999,
    ];
    let random = (0..100_000).map(|_| i128::from(rng.u64(..)));
    for ns in ends.into_iter().chain(random) {
        assert_eq!(rfc3339(ns).as_str(), rfc3339_general(ns), "{ns}");
    }
    assert_eq!(rfc3339(-1).as_str(), "1969-12-31T23:59:59.999999999Z");
}

#[test]
fn comm_stops_at_nul() {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(b"curl");
    assert_eq!(comm(&raw).as_str(), "curl");
    assert_eq!(comm(&[b'x'; 16]).as_str(), "x".repeat(16));
}

/// Invalid UTF-8 is replaced as `String::from_utf8_lossy` replaces it, and 16 invalid bytes
/// (48 bytes of text) fit.
#[test]
fn comm_replaces_invalid_utf8_as_lossy_does() {
    let cases: [&[u8]; 4] = [
        b"a\xffb",
        b"\xe2\x82z\xc3\xa9",
        b"\xf0\x9f\x98",
        &[0xff; 16],
    ];
    for raw in cases {
        let mut b = [0u8; 16];
        b[..raw.len()].copy_from_slice(raw);
        assert_eq!(comm(&b).as_str(), String::from_utf8_lossy(raw), "{raw:?}");
    }
}

#[test]
fn decode_rejects_short_items() {
    assert!(decode(&[0u8; 10]).is_none());
    assert!(decode(&[0u8; 96]).is_some());
}

pub(crate) fn kernel_event() -> Event {
    let mut ev: Event = decode(&[0u8; 96]).expect("zeroed event decodes");
    ev.pid = 77;
    ev.tid = 78;
    ev.uid = 1000;
    ev.gid = 100;
    ev.cgroup_id = 5;
    ev.generation = 3;
    ev.region = 2;
    ev.suppressed = 9;
    ev.rule = 4;
    ev.dst_port = 443;
    ev.family = family::INET6;
    ev.protocol = 17;
    ev.verdict = Verdict::Audit as u8;
    ev.hook = Hook::Sendmsg6 as u8;
    ev.dst_addr = "2001:db8:2::2".parse::<Ipv6Addr>().expect("valid").octets();
    ev.comm[..3].copy_from_slice(b"dig");
    ev
}

fn policy() -> Policy {
    let cfg = crate::config::parse(
        std::path::Path::new("t.toml"),
        "allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n\
             [regions.us]\nprefixes = [\"2001:db8:2::/48\"]\n",
    )
    .expect("valid");
    crate::policy::compile(&cfg)
}

#[test]
fn build_packet_socket_event() {
    let seq = Sequencer::new(sample::context());
    let mut ev = kernel_event();
    ev.family = family::PACKET;
    ev.protocol = 3;
    ev.dst_port = 0x0800;
    ev.dst_addr = [0; 16];
    ev.region = 0;
    ev.rule = 0;
    ev.verdict = Verdict::Deny as u8;
    ev.hook = Hook::LsmSocketCreate as u8;
    let c = build(
        seq.header("connection", 0),
        &policy(),
        &PolicyNames::of(&policy()),
        &ev,
        &procinfo::Details::Exited,
        None,
        None,
    );
    assert_eq!(c.hook, "lsm/socket_create");
    assert_eq!(c.network.kind, "packet");
    assert_eq!(c.network.transport, "raw");
    assert_eq!(c.network.ethertype, Some(0x0800));
    assert_eq!(c.network.iana_number, None);
    assert!(c.destination.is_absent());
    assert_eq!(c.rule.name, "packet_sockets");
    let json = serde_json::to_value(&c).expect("serializes");
    assert!(json.get("destination").is_none(), "{json}");
}

/// `/proc` details of a `dig @x` process (pid 1's child, root's) in cgroup `path`, of which
/// `trusted` is the part root alone could have named.
fn dig_in(path: &str, trusted: &str) -> procinfo::ProcInfo {
    let mut info = procinfo::ProcInfo {
        start_time: 1,
        comm: "dig".into(),
        ppid: Some(1),
        uid: Some(0),
        exe: Some("/usr/bin/dig".into()),
        command_line: Some("dig @x".into()),
        cgroup: Some(path.into()),
        cgroup_id: None,
        ..procinfo::ProcInfo::default()
    };
    info.set_trusted_cgroup(Some(trusted));
    info
}

#[test]
fn build_maps_every_kernel_field() {
    let seq = Sequencer::new(sample::context());
    let p = policy();
    let info = dig_in("/system.slice/bind.service/x", "/system.slice/bind.service");
    let ev = build(
        seq.header("connection", sample::T0),
        &p,
        &PolicyNames::of(&p),
        &kernel_event(),
        &procinfo::Details::Verified(Arc::new(info)),
        Some(&"bob".into()),
        None,
    );
    assert_eq!(ev.header.sequence, 1);
    assert_eq!(ev.header.id.as_str(), "5f3c9a0e7d21b468-1");
    assert_eq!((ev.verdict, ev.hook), ("audit", "cgroup/sendmsg6"));
    assert_eq!(ev.policy.mode, "audit");
    assert_eq!(ev.policy.generation, 3);
    assert_eq!(*ev.policy.digest, p.digest);
    assert_eq!(&*ev.destination.region, "us");
    assert_eq!(
        ev.destination.ip.map(|i| i.to_string()).as_deref(),
        Some("2001:db8:2::2")
    );
    assert_eq!(ev.network.kind, "ipv6");
    assert_eq!(ev.network.transport, "udp");
    assert_eq!(ev.rule.id, 4);
    assert_eq!(ev.rule.name, "rule-4");
    assert_eq!(ev.suppressed, 9);
    assert_eq!(ev.user.name.as_deref(), Some("bob"));
    assert_eq!(ev.group.name, None);
    assert_eq!(ev.process.parent, Some(Parent { pid: 1 }));
    assert_eq!(ev.cgroup.systemd_unit.as_deref(), Some("bind.service"));
    assert!(!ev.process.exited);
    assert_eq!(ev.process.details, "verified");
    assert_eq!(
        ev.cgroup.path.as_deref(),
        Some("/system.slice/bind.service/x")
    );
    let gone = build(
        seq.header("connection", 0),
        &p,
        &PolicyNames::of(&p),
        &kernel_event(),
        &procinfo::Details::Exited,
        None,
        None,
    );
    assert_eq!(gone.header.sequence, 2);
    assert!(gone.process.exited && gone.process.executable.is_none());
    assert_eq!(gone.process.details, "exited");
    let other = build(
        seq.header("connection", 0),
        &p,
        &PolicyNames::of(&p),
        &kernel_event(),
        &procinfo::Details::Mismatch("name"),
        None,
        None,
    );
    assert!(!other.process.exited && other.process.command_line.is_none());
    assert_eq!(other.process.details, "mismatch");
    assert_eq!(gone.process.name.as_str(), "dig");
}

#[test]
fn events_rebuilt_in_place_are_built_afresh() {
    let seq = Sequencer::new(sample::context());
    let p = policy();
    let names = PolicyNames::of(&p);
    let docker = format!("/system.slice/docker-{}.scope", "ab12".repeat(16));
    let info = dig_in(&docker, &docker);
    assert!(info.container.is_some(), "{info:?}");
    let rich = procinfo::Details::Verified(Arc::new(info));
    let bob: Arc<str> = "bob".into();
    let mut packet = kernel_event();
    packet.family = family::PACKET;
    packet.protocol = 3;
    packet.hook = Hook::LsmSocketCreate as u8;
    packet.region = 40;
    let cases: [(Event, &procinfo::Details, Option<&Arc<str>>); 2] = [
        (kernel_event(), &rich, Some(&bob)),
        (packet, &procinfo::Details::Exited, None),
    ];
    let built = |i: usize, unix_ns| {
        let (ev, details, name) = &cases[i];
        build(
            seq.unnumbered("connection", unix_ns),
            &p,
            &names,
            ev,
            details,
            *name,
            *name,
        )
    };
    // Each written over the other, and over itself: equal to the one built afresh, field by
    // field (no value of the event before survives).
    for (first, second) in [(0, 1), (1, 0), (0, 0), (1, 1)] {
        let mut out = built(first, 5);
        seq.unnumbered_into(&mut out.header, "connection", 9);
        let (ev, details, name) = &cases[second];
        build_into(&mut out, &p, &names, ev, details, *name, *name);
        assert_eq!(out, built(second, 9), "{second} over {first}");
    }
    // Over an event of the same process, the strings are the ones it holds: no reference
    // count touched.
    let mut out = built(0, 5);
    let held = out.process.executable.clone().expect("executable");
    let count = Arc::strong_count(&held);
    build_into(
        &mut out,
        &p,
        &names,
        &kernel_event(),
        &rich,
        Some(&bob),
        Some(&bob),
    );
    assert!(Arc::ptr_eq(
        out.process.executable.as_ref().expect("exe"),
        &held
    ));
    assert_eq!(Arc::strong_count(&held), count);
}

#[test]
fn ephemeral_ids_are_hex_and_differ() {
    let a = ephemeral_id();
    let b = ephemeral_id();
    assert_eq!(a.len(), 16);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn enricher_reads_this_process() {
    let seq = Arc::new(Sequencer::new(sample::context()));
    let e = Enricher::new(seq, Arc::new(policy()))
        .with_cgroup_root(crate::kernel::cgroup::cgroup2_root().ok());
    let mut ev = kernel_event();
    ev.pid = std::process::id();
    // SAFETY: getuid has no preconditions.
    ev.uid = unsafe { libc::getuid() };
    let stat = std::fs::read("/proc/self/stat").expect("stat");
    let me = procinfo::parse_stat(&stat).expect("parse");
    ev.comm = [0; 16];
    ev.comm[..me.comm.len()].copy_from_slice(me.comm.as_bytes());
    ev.cgroup_id = 0;
    ev.boot_ns = crate::base::clock::boot_now_ns();
    let out = e.enrich(&ev);
    assert!(!out.process.exited, "{out:?}");
    assert_eq!(out.process.details, "verified", "{out:?}");
    assert!(out.process.executable.is_some());
    assert!(out.process.command_line.is_some());
    assert!(out.process.parent.is_some());
    assert!(out.cgroup.path.is_some(), "{out:?}");
    if ev.uid == 0 {
        assert_eq!(out.user.name.as_deref(), Some("root"));
    }
}

/// The shared names are the policy's, for every id: configured, retired and unknown.
#[test]
fn policy_names_are_the_policys() {
    let mut p = policy();
    p.retired_regions.insert(40, "gone".into());
    let names = PolicyNames::of(&p);
    for id in (0..50).chain([u32::MAX]) {
        let mut slot: Arc<str> = "".into();
        names.share_region(&p, id, &mut slot);
        assert_eq!(&*slot, p.region_name(id), "region {id}");
    }
    assert_eq!(*names.digest, p.digest);
}
