//! Sample records for format tests and documentation: fixed times, ids and values.
use super::*;

/// The [`Context`] of the samples: host `storage-eu-1` with labels.
pub fn context() -> Context {
    Context {
        host: Host {
            name: "storage-eu-1".into(),
            labels: BTreeMap::from([
                ("environment".to_string(), "prod".to_string()),
                ("role".to_string(), "storage".to_string()),
                ("site".to_string(), "fra1".to_string()),
            ]),
        },
        agent: AgentInfo {
            version: "0.1.0".into(),
            ephemeral_id: "5f3c9a0e7d21b468".into(),
        },
    }
}

/// 2026-11-29T09:42:54.018030447Z.
pub const T0: i128 = 1_795_945_374_018_030_447;

fn header(kind: &'static str, sequence: u64, unix_ns: i128) -> Header {
    let ctx = context();
    Header {
        timestamp: rfc3339(unix_ns),
        kind,
        id: EventId::from(&format!("{}-{sequence}", ctx.agent.ephemeral_id)).expect("fits"),
        sequence,
        host: ctx.host.into(),
        agent: ctx.agent.into(),
        unix_ns,
    }
}

/// A TCP IPv4 denial by `curl` in a docker container under a systemd scope, with
/// characters that formats must escape in its command line.
pub fn deny() -> ConnectionEvent {
    ConnectionEvent {
        header: header("connection", 7, T0),
        verdict: "deny",
        hook: "cgroup/connect4",
        process: Process {
            pid: 21210,
            name: Comm::from("curl").expect("fits"),
            thread: Id { id: 21210 },
            parent: Some(Parent { pid: 21200 }),
            executable: Some("/usr/bin/curl".into()),
            command_line: Some(
                "curl -H x=1|2 -d 'a\nb' \\path\\ \"http://198.18.2.2:8080/\"".into(),
            ),
            exited: false,
            details: "verified",
            attribution: "task",
        },
        user: Named {
            id: 1000,
            name: Some("alice".into()),
        },
        group: Named {
            id: 1000,
            name: Some("alice".into()),
        },
        cgroup: Cgroup {
            id: 614,
            path: Some(format!("/system.slice/docker-{}.scope", "ab12".repeat(16)).into()),
            systemd_unit: Some(format!("docker-{}.scope", "ab12".repeat(16)).into()),
        },
        container: Some(Container {
            id: "ab12".repeat(16).into(),
            runtime: "docker",
        }),
        network: Network {
            kind: "ipv4",
            transport: "tcp".into(),
            iana_number: Some(6),
            ethertype: None,
        },
        destination: Destination {
            ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2))),
            port: 8080,
            region: "us".into(),
            mapped: false,
        },
        policy: PolicyRef {
            mode: "enforce",
            generation: 1,
            digest: "3fb60c46ec413f16".into(),
        },
        rule: Rule {
            id: 0,
            name: "allowlist".into(),
        },
        suppressed: 3,
    }
}

/// A UDP IPv6 audit event of a process that had exited before `/proc` was read.
pub fn audit_exited() -> ConnectionEvent {
    ConnectionEvent {
        header: header("connection", 8, T0 + 1_500_000),
        verdict: "audit",
        hook: "cgroup/sendmsg6",
        process: Process {
            pid: 4242,
            name: Comm::from("dig|x=y").expect("fits"),
            thread: Id { id: 4243 },
            parent: None,
            executable: None,
            command_line: None,
            exited: true,
            details: "exited",
            attribution: "socket_owner",
        },
        user: Named { id: 0, name: None },
        group: Named { id: 0, name: None },
        cgroup: Cgroup {
            id: 99,
            path: None,
            systemd_unit: None,
        },
        container: None,
        network: Network {
            kind: "ipv6",
            transport: "udp".into(),
            iana_number: Some(17),
            ethertype: None,
        },
        destination: Destination {
            ip: Some(
                "2001:db8:2::2"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ),
            port: 53,
            region: "unknown".into(),
            mapped: false,
        },
        policy: PolicyRef {
            mode: "audit",
            generation: 2,
            digest: "0123456789abcdef".into(),
        },
        rule: Rule {
            id: 0,
            name: "allowlist".into(),
        },
        suppressed: 0,
    }
}

/// A TCP IPv6 denial by a process whose name and command line are not ASCII (`Zürich`,
/// CJK, an emoji) and carry a terminal escape: what RFC 5424's UTF-8 MSG (with its byte
/// order mark) and every format's escaping must carry intact.
pub fn deny_utf8() -> ConnectionEvent {
    let mut ev = deny();
    ev.header = header("connection", 13, T0 + 5_000_000_000);
    ev.hook = "cgroup/connect6";
    ev.process.name = Comm::from("Zürich").expect("fits");
    ev.process.executable = Some("/opt/städte/Zürich".into());
    ev.process.command_line = Some("Zürich --ort 東京 --tag 🚀 \u{1b}[31m=red".into());
    ev.user.name = Some("jürgen".into());
    ev.network.kind = "ipv6";
    ev.destination.ip = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x2)));
    ev.destination.port = 443;
    ev.container = None;
    ev.cgroup = Cgroup {
        id: 700,
        path: Some("/system.slice/zürich.service".into()),
        systemd_unit: Some("zürich.service".into()),
    };
    ev.suppressed = 0;
    ev.rule = Rule {
        id: 2,
        name: "no-üs".into(),
    };
    ev
}

/// A packet socket refused at `lsm/socket_create` (no IP destination).
pub fn packet_deny() -> ConnectionEvent {
    ConnectionEvent {
        header: header("connection", 9, T0 + 2_000_000),
        verdict: "deny",
        hook: "lsm/socket_create",
        process: Process {
            pid: 5150,
            name: Comm::from("scapy").expect("fits"),
            thread: Id { id: 5150 },
            parent: Some(Parent { pid: 5100 }),
            executable: Some("/usr/bin/python3.11".into()),
            command_line: Some("python3 send.py".into()),
            exited: false,
            details: "verified",
            attribution: "task",
        },
        user: Named {
            id: 0,
            name: Some("root".into()),
        },
        group: Named {
            id: 0,
            name: Some("root".into()),
        },
        cgroup: Cgroup {
            id: 614,
            path: Some("/system.slice/app.service".into()),
            systemd_unit: Some("app.service".into()),
        },
        container: None,
        network: Network {
            kind: "packet",
            transport: "dgram".into(),
            iana_number: None,
            ethertype: Some(0x0800),
        },
        destination: Destination {
            ip: None,
            port: 0,
            region: "unknown".into(),
            mapped: false,
        },
        policy: PolicyRef {
            mode: "enforce",
            generation: 1,
            digest: "3fb60c46ec413f16".into(),
        },
        rule: Rule {
            id: 0,
            name: "packet_sockets".into(),
        },
        suppressed: 0,
    }
}

fn summary() -> PolicySummary {
    PolicySummary {
        file: "/etc/egressd/policy.toml".into(),
        mode: "enforce".into(),
        digest: "3fb60c46ec413f16".into(),
        generation: 1,
        ipv4_lookup: "trie".into(),
        regions: 2,
        prefixes_v4: 2,
        prefixes_v6: 2,
        allowlist: vec!["eu".into()],
    }
}

fn counters() -> Counters {
    Counters {
        counters: vec![
            CounterRow {
                hook: "cgroup/connect4",
                region: "eu".into(),
                verdict: "allow",
                count: 25,
            },
            CounterRow {
                hook: "cgroup/connect4",
                region: "us".into(),
                verdict: "deny",
                count: 4,
            },
        ],
        lost: LossReport {
            kernel: Loss {
                ringbuf_full: 0,
                suppressed: 0,
            },
            sink_write_failed: 2,
            undecodable: 0,
            sinks: BTreeMap::from([(
                "siem".to_string(),
                SinkCounters {
                    delivered: 27,
                    queued: 0,
                    spooled: 1,
                    dropped_queue_full: 0,
                    dropped_spool_full: 2,
                    dropped_failed: 0,
                    retries: 3,
                    up: false,
                    dropped_at_exit: 0,
                    spool_damaged: 0,
                    spool_damaged_bytes: 0,
                },
            )]),
        },
        connection_events: 4,
        uptime_secs: 60,
        extra: serde_json::Map::from_iter([(
            "reloads".to_string(),
            serde_json::json!({ "ok": 1, "failed": 1 }),
        )]),
    }
}

/// One record of each lifecycle type: start, policy loaded, heartbeat, stop, reload
/// failed, policy fallback, tamper repaired.
pub fn lifecycle() -> Vec<Lifecycle> {
    vec![
        Lifecycle {
            header: header("agent_start", 1, T0 - 60_000_000_000),
            body: LifecycleBody::Start {
                policy: summary(),
                cgroup: "/sys/fs/cgroup".into(),
                sinks: vec!["stdout".into(), "siem".into()],
                coverage: crate::kernel::coverage::Summary {
                    kernel: "6.1.0-41-cloud-amd64".into(),
                    enforced: vec!["tcp", "udp", "raw_ip", "established"],
                    partial: vec![],
                    not_covered: vec!["packet_socket"],
                    unknown: vec![],
                },
                adopted: Some(Adopted {
                    previous_generation: 1,
                }),
                interval_secs: 60,
            },
        },
        Lifecycle {
            header: header("policy_loaded", 2, T0 - 60_000_000_000),
            body: LifecycleBody::PolicyLoaded { policy: summary() },
        },
        Lifecycle {
            header: header("heartbeat", 9, T0 + 1_000_000_000),
            body: LifecycleBody::Heartbeat {
                counters: counters(),
                interval_secs: 60,
            },
        },
        Lifecycle {
            header: header("agent_stop", 10, T0 + 2_000_000_000),
            body: LifecycleBody::Stop {
                counters: counters(),
                pinned: false,
            },
        },
        Lifecycle {
            header: header("reload_failed", 11, T0 + 3_000_000_000),
            body: LifecycleBody::ReloadFailed {
                error: "/etc/egressd/policy.toml:3:17: allowlist[1]: unknown region `mars` \
                            (defined: eu, us)"
                    .into(),
                generation_in_force: 1,
            },
        },
        Lifecycle {
            header: header("policy_fallback", 12, T0 + 4_000_000_000),
            body: LifecycleBody::PolicyFallback {
                error: "/etc/egressd/policy.d/team-b.toml:2:1: regions.eu: region `eu` is \
                            already defined at /etc/egressd/policy.toml:9"
                    .into(),
                policy: summary(),
                last_good: LastGoodRef {
                    digest: summary().digest,
                    generation: 4,
                    saved_at: "2026-11-28T17:03:11.402114790Z".into(),
                    file: "/var/lib/egressd/last-good/policy-0123456789abcdef.json".into(),
                },
            },
        },
        Lifecycle {
            header: header("tamper_repaired", 14, T0 + 6_000_000_000),
            body: LifecycleBody::TamperRepaired {
                repairs: vec![
                    "cgroup/connect4 detached from /sys/fs/cgroup: attached again".into(),
                    "policy map replaced: generation 1 loaded again".into(),
                ],
                generation_in_force: 1,
            },
        },
    ]
}

/// A flood of unconnected UDP to 254 addresses of region `us`, aggregated by the kernel.
pub fn flood_summary() -> summary::SummaryEvent {
    summary::SummaryEvent {
        header: header("connection_summary", 15, T0 + 1_000_000_000),
        verdict: "deny",
        hook: "cgroup/sendmsg4",
        cgroup: Cgroup {
            id: 614,
            path: None,
            systemd_unit: None,
        },
        destination: summary::SummaryDestination {
            region: "us".into(),
            distinct: 254,
            samples: (1..=4u8)
                .map(|last| summary::Sample {
                    ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 2, last))),
                    port: 40_000 + u16::from(last),
                    transport: "udp".into(),
                })
                .collect(),
        },
        policy: summary::SummaryPolicy {
            mode: "enforce",
            digest: "3fb60c46ec413f16".into(),
        },
        rule: Rule {
            id: 0,
            name: "allowlist".into(),
        },
        count: 883_412,
        start: rfc3339(T0 + 12_500_000).to_string(),
        end: rfc3339(T0 + 1_000_000_000).to_string(),
        start_ns: T0 + 12_500_000,
    }
}

/// Every sample record, connection events first.
pub fn records() -> Vec<(&'static str, Record)> {
    let mut v = vec![
        ("deny", Record::Connection(Box::new(deny()))),
        ("audit_exited", Record::Connection(Box::new(audit_exited()))),
        ("deny_utf8", Record::Connection(Box::new(deny_utf8()))),
        ("packet_deny", Record::Connection(Box::new(packet_deny()))),
        (
            "connection_summary",
            Record::Summary(Box::new(flood_summary())),
        ),
    ];
    for l in lifecycle() {
        v.push((l.header.kind, Record::Lifecycle(Box::new(l))));
    }
    v
}
