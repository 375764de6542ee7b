//! Unit tests of [`super`] (verify).
use super::*;
use crate::{
    events::audit::{chain::Chain, read::parse_line},
    events::formats::Format,
    events::{Lifecycle, LifecycleBody, Record, sample},
};

const S: i128 = 1_000_000_000;

/// A run of `host`/`run` as `(kind, seconds after start)`, numbered from 1, rendered in
/// `f` and chained as a sink does.
pub(crate) fn stream(
    f: Format,
    host: &str,
    run: &str,
    t0: i128,
    plan: &[(&str, i128)],
) -> Vec<String> {
    let by_kind: BTreeMap<&str, Lifecycle> = sample::lifecycle()
        .into_iter()
        .map(|l| (l.header.kind, l))
        .collect();
    let mut chain = Chain::new();
    plan.iter()
        .enumerate()
        .map(|(i, (kind, at))| {
            let seq = i as u64 + 1;
            let t = t0 + at * S;
            let mut rec = if *kind == "connection" {
                Record::Connection(Box::new(sample::deny()))
            } else if *kind == "policy_loaded2" {
                // A reload to another policy: generation 2, another digest.
                let mut l = by_kind["policy_loaded"].clone();
                if let LifecycleBody::PolicyLoaded { policy } = &mut l.body {
                    policy.digest = "00000000000000b2".into();
                    policy.generation = 2;
                }
                Record::Lifecycle(Box::new(l))
            } else {
                let mut l = by_kind[kind].clone();
                if let LifecycleBody::Heartbeat { interval_secs, .. }
                | LifecycleBody::Start { interval_secs, .. } = &mut l.body
                {
                    *interval_secs = 10;
                }
                Record::Lifecycle(Box::new(l))
            };
            let h = match &mut rec {
                Record::Connection(c) => &mut c.header,
                Record::Lifecycle(l) => &mut l.header,
                Record::Summary(s) => &mut s.header,
            };
            h.sequence = seq;
            std::sync::Arc::make_mut(&mut h.agent).ephemeral_id = run.into();
            h.id = crate::events::EventId::from(&format!("{run}-{seq}")).expect("fits");
            std::sync::Arc::make_mut(&mut h.host).name = host.into();
            h.unix_ns = t;
            h.timestamp = crate::events::rfc3339(t);
            String::from_utf8(chain.seal(f, &f.render(&rec))).expect("UTF-8")
        })
        .collect()
}

pub(crate) const CLEAN: &[(&str, i128)] = &[
    ("policy_loaded", 0),
    ("agent_start", 0),
    ("heartbeat", 10),
    ("connection", 12),
    ("heartbeat", 20),
    ("reload_failed", 25),
    ("heartbeat", 30),
    ("agent_stop", 35),
];

fn check(lines: &[String], opts: &Options) -> Report {
    let entries = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| parse_line("export", i + 1, l).expect("readable"))
        .collect();
    verify(entries, 0, Vec::new(), opts)
}

fn kinds(r: &Report) -> Vec<(&'static str, Option<String>)> {
    r.hosts
        .iter()
        .flat_map(|h| {
            h.runs
                .iter()
                .flat_map(|r| r.findings.iter())
                .chain(h.findings.iter())
        })
        .filter(|f| f.fails)
        .map(|f| (f.kind, f.at.clone()))
        .collect()
}

#[test]
fn a_clean_run_is_proven_in_every_format() {
    for f in Format::ALL {
        let r = check(&stream(f, "h1", "aaaa", 0, CLEAN), &Options::default());
        assert!(r.proven, "{f:?}\n{}", text(&r));
        let run = &r.hosts[0].runs[0];
        assert_eq!(run.enforcement.len(), 1, "{f:?}");
        assert!((run.enforcement[0].secs - 35.0).abs() < 1e-9, "{f:?}");
        assert_eq!(run.policies[0].digest.as_deref(), Some("3fb60c46ec413f16"));
        assert_eq!(run.policies[0].mode.as_deref(), Some("enforce"), "{f:?}");
        assert!(
            run.findings
                .iter()
                .any(|x| x.kind == "reload_failed" && !x.fails),
            "{f:?}"
        );
        assert!(run.findings.iter().any(|x| x.kind == "lost"), "{f:?}");
        if f != Format::Cef {
            assert_eq!(run.flows.get("us/deny"), Some(&4), "{f:?}");
        }
    }
}

#[test]
fn damage_is_found_and_located() {
    for f in Format::ALL {
        let lines = stream(f, "h1", "aaaa", 0, CLEAN);
        let opts = Options::default();
        // Deleted record.
        let mut d = lines.clone();
        d.remove(3);
        let k = kinds(&check(&d, &opts));
        assert!(
            k.contains(&("sequence_gap", Some("export:4".into()))),
            "{f:?} {k:?}"
        );
        // Edited record.
        let mut d = lines.clone();
        d[3] = d[3].replacen("8080", "8081", 1);
        assert_ne!(d[3], lines[3]);
        let k = kinds(&check(&d, &opts));
        assert_eq!(k, [("chain_broken", Some("export:4".into()))], "{f:?}");
        // Reordered records.
        let mut d = lines.clone();
        d.swap(3, 4);
        let k = kinds(&check(&d, &opts));
        assert_eq!(k, [("out_of_order", Some("export:5".into()))], "{f:?}");
        let any = Options {
            any_order: true,
            ..Options::default()
        };
        assert!(check(&d, &any).proven, "{f:?}");
        // Inserted record: a copy of another with the next run's numbering is a fork.
        let mut d = lines.clone();
        let other = stream(
            f,
            "h1",
            "aaaa",
            0,
            &[("policy_loaded", 0), ("agent_start", 0), ("heartbeat", 11)],
        );
        d.insert(3, other[2].clone());
        let k = kinds(&check(&d, &opts));
        assert!(k.iter().any(|x| x.0 == "fork"), "{f:?} {k:?}");
        // A duplicate is harmless.
        let mut d = lines.clone();
        d.insert(4, lines[3].clone());
        assert!(check(&d, &opts).proven, "{f:?}");
        // Cut tail.
        let d = &lines[..lines.len() - 2];
        let k = kinds(&check(d, &opts));
        assert_eq!(k, [("no_stop", None)], "{f:?}");
        // ... unless the window ends while it is still running.
        let to = Options {
            to: Some(32 * S),
            ..Options::default()
        };
        assert!(check(d, &to).proven, "{f:?}");
        // A link removed.
        let mut d = lines.clone();
        d[2] = match f {
            Format::Cef => chain::split_cef(&d[2]).0.to_owned(),
            _ => {
                let mut v: serde_json::Value = serde_json::from_str(&d[2]).expect("JSON");
                chain::take_json_link(f, &mut v);
                v.to_string()
            }
        };
        let k = kinds(&check(&d, &opts));
        assert!(
            k.contains(&("chain_missing", Some("export:3".into()))),
            "{f:?} {k:?}"
        );
    }
}

#[test]
fn silence_tamper_policy_and_windows() {
    let f = Format::Json;
    let opts = Options::default();
    // 10 s heartbeats: the bound is 20 s, a 25 s silence is a gap.
    let r = check(
        &stream(
            f,
            "h",
            "r",
            0,
            &[
                ("policy_loaded", 0),
                ("agent_start", 0),
                ("heartbeat", 10),
                ("heartbeat", 35),
                ("agent_stop", 36),
            ],
        ),
        &opts,
    );
    let k = kinds(&r);
    assert_eq!(
        k,
        [
            ("heartbeat_gap", Some("export:4".into())),
            ("window_gap", None)
        ],
        "{}",
        text(&r)
    );
    assert_eq!(r.hosts[0].runs[0].enforcement.len(), 2);
    // Tamper repaired.
    let r = check(
        &stream(
            f,
            "h",
            "r",
            0,
            &[
                ("policy_loaded", 0),
                ("agent_start", 0),
                ("heartbeat", 1),
                ("tamper_repaired", 5),
                ("agent_stop", 6),
            ],
        ),
        &opts,
    );
    assert_eq!(kinds(&r), [("tamper_repaired", Some("export:4".into()))]);
    // Expected digest.
    let lines = stream(f, "h", "r", 0, CLEAN);
    let want = |d: &str| Options {
        expect_digest: Some(d.into()),
        ..Options::default()
    };
    assert!(check(&lines, &want("3fb60c46ec413f16")).proven);
    assert_eq!(
        kinds(&check(&lines, &want("0000000000000000")))[0].0,
        "digest_mismatch"
    );
    // Two runs with a restart between them: the gap is the window's.
    let mut two = stream(f, "h", "r1", 0, CLEAN);
    two.extend(stream(f, "h", "r2", 40 * S, CLEAN));
    let r = check(&two, &opts);
    assert_eq!(kinds(&r), [("window_gap", None)], "{}", text(&r));
    assert!(
        r.hosts[0].findings[0].message.contains("5.000 s"),
        "{}",
        text(&r)
    );
    // Hosts are judged apart; a window start before any record is a gap.
    let mut hosts = stream(f, "a", "r1", 0, CLEAN);
    hosts.extend(stream(Format::Cef, "b", "r2", 0, CLEAN));
    let r = check(&hosts, &opts);
    assert!(r.proven && r.hosts.len() == 2, "{}", text(&r));
    let early = Options {
        from: Some(-S),
        ..Options::default()
    };
    assert!(!check(&hosts, &early).proven);
    let only = Options {
        hosts: vec!["b".into()],
        ..Options::default()
    };
    assert_eq!(check(&hosts, &only).hosts.len(), 1);
}

/// A reload to another policy mid-run: each generation's window verifies with its own
/// expected digest, the whole window with neither.
#[test]
fn each_generation_proven_in_its_window() {
    for f in Format::ALL {
        let lines = stream(
            f,
            "h",
            "r",
            0,
            &[
                ("policy_loaded", 0),
                ("agent_start", 0),
                ("heartbeat", 10),
                ("policy_loaded2", 15),
                ("heartbeat", 20),
                ("agent_stop", 25),
            ],
        );
        let window = |from: i128, to: i128, digest: &str| Options {
            from: Some(from * S),
            to: Some(to * S),
            expect_digest: Some(digest.into()),
            ..Options::default()
        };
        let first = "3fb60c46ec413f16";
        let second = "00000000000000b2";
        let r = check(&lines, &window(0, 15, first));
        assert!(r.proven, "{f:?}\n{}", text(&r));
        let r = check(&lines, &window(15, 25, second));
        assert!(r.proven, "{f:?}\n{}", text(&r));
        assert_eq!(r.hosts[0].runs[0].policies.len(), 2, "{f:?}");
        for (from, to, d) in [
            (0, 15, second),
            (15, 25, first),
            (0, 25, first),
            (14, 16, first),
        ] {
            let r = check(&lines, &window(from, to, d));
            assert_eq!(
                kinds(&r).iter().map(|x| x.0).collect::<Vec<_>>(),
                ["digest_mismatch"],
                "{f:?} {from}..{to} {d}\n{}",
                text(&r)
            );
        }
    }
}

#[test]
fn adoption_after_a_kill_is_reported_and_can_be_trusted() {
    let f = Format::Ocsf;
    // The sample agent_start adopted generation 1, the generation of the samples.
    let mut lines = stream(
        f,
        "h",
        "r1",
        0,
        &[("policy_loaded", 0), ("agent_start", 0), ("heartbeat", 10)],
    );
    lines.extend(stream(f, "h", "r2", 14 * S, CLEAN));
    let r = check(&lines, &Options::default());
    assert_eq!(
        kinds(&r),
        [("no_stop", None), ("window_gap", None)],
        "{}",
        text(&r)
    );
    let note = &r.hosts[0].runs[1].findings;
    assert!(
        note.iter()
            .any(|x| x.kind == "adoption" && x.message.contains("r1") && !x.fails),
        "{note:?}"
    );
    let trust = Options {
        trust_adoption: true,
        ..Options::default()
    };
    let r = check(&lines, &trust);
    assert!(r.proven, "{}", text(&r));
    // A clean stop with the programs left attached (`--pin-dir`) and a start that adopted
    // them (the samples' agent_start did): the same bridge, on the same trust (before, a
    // routine `systemctl restart` of a pinned daemon could never be proven).
    let mut stopped = stream(f, "h", "r1", 0, CLEAN);
    stopped.extend(stream(f, "h", "r2", 40 * S, CLEAN));
    assert!(!check(&stopped, &Options::default()).proven);
    let r = check(&stopped, &trust);
    assert!(r.proven, "{}", text(&r));
}

#[test]
fn a_window_may_start_inside_a_run() {
    let f = Format::Cef;
    let lines = stream(f, "h", "r", 0, CLEAN);
    let from = |s: i128| Options {
        from: Some(s * S),
        ..Options::default()
    };
    // Exported from the heartbeat at 10 s on, for a window from 15 s.
    let r = check(&lines[2..], &from(15));
    assert!(r.proven, "{}", text(&r));
    assert!(
        r.hosts[0].runs[0]
            .findings
            .iter()
            .any(|x| x.kind == "before_window")
    );
    // A record deleted inside the window is still a hole.
    let mut d = lines[2..].to_vec();
    d.remove(2);
    assert_eq!(kinds(&check(&d, &from(15)))[0].0, "sequence_gap");
    // An export that starts inside the window proves nothing before its first record.
    let r = check(&lines[4..], &from(15));
    let k: Vec<&str> = kinds(&r).iter().map(|x| x.0).collect();
    assert!(
        k.contains(&"sequence_gap") && k.contains(&"no_start"),
        "{k:?}"
    );
    // Runs wholly outside the window are left out.
    let mut two = stream(f, "h", "old", -100 * S, CLEAN);
    two.extend(lines.clone());
    let r = check(&two, &from(0));
    assert_eq!(r.hosts[0].runs.len(), 1);
    assert!(r.proven, "{}", text(&r));
}

#[test]
fn copies_in_several_files_and_formats() {
    let json = stream(Format::Json, "h", "r", 0, CLEAN);
    let cef = stream(Format::Cef, "h", "r", 0, CLEAN);
    let read = |name: &str, lines: &[String]| -> Vec<Entry> {
        lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| parse_line(name, i + 1, l).expect("readable"))
            .collect()
    };
    // Two sinks' files of one run, in two formats and twice the same: all proven.
    let mut entries = read("a.json", &json);
    entries.extend(read("b.cef", &cef));
    entries.extend(read("c.json", &json));
    let r = verify(entries, 0, Vec::new(), &Options::default());
    assert!(r.proven, "{}", text(&r));
    assert_eq!(r.hosts[0].runs.len(), 2);
    // Reordered inside one file: found there.
    let mut swapped = json.clone();
    swapped.swap(1, 2);
    let mut entries = read("a.json", &json);
    entries.extend(read("c.json", &swapped));
    let r = verify(entries, 0, Vec::new(), &Options::default());
    assert_eq!(kinds(&r), [("out_of_order", Some("c.json:3".into()))]);
}

#[test]
fn keyed_chains_need_the_key() {
    let key: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"k3y"[..]);
    let by_kind: BTreeMap<&str, Lifecycle> = sample::lifecycle()
        .into_iter()
        .map(|l| (l.header.kind, l))
        .collect();
    // Re-seal a clean stream with a keyed chain.
    let plain = stream(Format::Cef, "h", "r", 0, CLEAN);
    let mut c = Chain::keyed(key);
    let lines: Vec<String> = plain
        .iter()
        .map(|l| {
            let body = chain::split_cef(l).0;
            String::from_utf8(c.seal(Format::Cef, body.as_bytes())).expect("UTF-8")
        })
        .collect();
    assert!(!by_kind.is_empty());
    let k = kinds(&check(&lines, &Options::default()));
    assert_eq!(k, [("chain_unverified", None)]);
    let with = |k: &[u8]| Options {
        key: Some(k.to_vec()),
        ..Options::default()
    };
    assert!(check(&lines, &with(b"k3y")).proven);
    // The wrong key: one finding that says so, not every record "edited".
    let r = check(&lines, &with(b"wrong"));
    assert_eq!(kinds(&r), [("key_mismatch", None)], "{}", text(&r));
    assert!(text(&r).contains("not the chain key"), "{}", text(&r));
    // With the right key, an edited record is still an edit, located.
    let mut d = lines.clone();
    d[3] = d[3].replacen("8080", "8081", 1);
    assert_ne!(d[3], lines[3]);
    assert_eq!(
        kinds(&check(&d, &with(b"k3y"))),
        [("chain_broken", Some("export:4".into()))]
    );
    // So is the first record of the run edited.
    let mut d = lines.clone();
    d[0] = d[0].replacen("3fb60c46ec413f16", "3fb60c46ec413f17", 1);
    assert_ne!(d[0], lines[0]);
    assert_eq!(
        kinds(&check(&d, &with(b"k3y"))),
        [("chain_broken", Some("export:1".into()))]
    );
}

/// An empty input or a mistyped `--host` fails with a reason, not only the verdict
/// (found by QA).
#[test]
fn nothing_to_judge_says_why() {
    let r = check(&[], &Options::default());
    assert!(!r.proven);
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].kind, "no_records");
    let lines = stream(Format::Json, "h", "r", 0, CLEAN);
    let r = check(
        &lines,
        &Options {
            hosts: vec!["nosuch".into()],
            ..Options::default()
        },
    );
    assert!(!r.proven);
    assert_eq!(r.findings[0].kind, "no_records");
    assert!(text(&r).contains("hosts found: h"), "{}", text(&r));
}

/// With a key, an unkeyed SHA-256 link proves nothing: a keyed stream re-sealed without
/// the key, or a keyed run with an unkeyed forged tail, fails (found by QA: both passed).
#[test]
fn a_key_rejects_unkeyed_links() {
    let key: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"k3y"[..]);
    let plain = stream(Format::Cef, "h", "r", 0, CLEAN);
    let with = Options {
        key: Some(b"k3y".to_vec()),
        ..Options::default()
    };
    // The whole stream unkeyed, checked with a key.
    let r = check(&plain, &with);
    assert!(!r.proven, "{}", text(&r));
    assert_eq!(
        kinds(&r),
        [("chain_unkeyed", Some("export:1".into()))],
        "{}",
        text(&r)
    );
    // Keyed records, then an unkeyed tail chained from the last keyed link.
    let mut keyed = Chain::keyed(key);
    let mut tail = Chain::new();
    let n = plain.len();
    let mut lines = Vec::new();
    for (i, l) in plain.iter().enumerate() {
        let body = chain::split_cef(l).0;
        let sealed = if i + 2 < n {
            let out = keyed.seal(Format::Cef, body.as_bytes());
            // The forger continues from the last keyed link (known from the stream).
            let link = chain::split_cef(std::str::from_utf8(&out).expect("UTF-8"))
                .1
                .and_then(chain::parse_link)
                .expect("link");
            tail = Chain::unkeyed_after(link.1);
            out
        } else {
            tail.seal(Format::Cef, body.as_bytes())
        };
        lines.push(String::from_utf8(sealed).expect("UTF-8"));
    }
    let r = check(&lines, &with);
    assert!(!r.proven, "{}", text(&r));
    assert!(
        kinds(&r).contains(&("chain_unkeyed", Some(format!("export:{}", n - 1)))),
        "{}",
        text(&r)
    );
    // The same keyed stream, keyed throughout, still proves.
    let mut c = Chain::keyed(std::sync::Arc::from(&b"k3y"[..]));
    let all: Vec<String> = plain
        .iter()
        .map(|l| {
            let body = chain::split_cef(l).0;
            String::from_utf8(c.seal(Format::Cef, body.as_bytes())).expect("UTF-8")
        })
        .collect();
    assert!(check(&all, &with).proven);
}

/// A run that ends before its first heartbeat is proven by the period its
/// `agent_start` states.
#[test]
fn a_run_shorter_than_its_heartbeat_period_is_proven() {
    for f in Format::ALL {
        let lines = stream(
            f,
            "h",
            "r",
            0,
            &[
                ("policy_loaded", 0),
                ("agent_start", 0),
                ("connection", 2),
                ("agent_stop", 3),
            ],
        );
        let r = check(&lines, &Options::default());
        assert!(r.proven, "{f:?}\n{}", text(&r));
        assert!(
            (r.hosts[0].runs[0].max_gap_secs - 20.0).abs() < 1e-9,
            "{f:?}"
        );
        // The period still bounds the silence: 25 s without a record is a gap.
        let lines = stream(
            f,
            "h",
            "r",
            0,
            &[("policy_loaded", 0), ("agent_start", 0), ("agent_stop", 25)],
        );
        let k = kinds(&check(&lines, &Options::default()));
        assert!(k.iter().any(|x| x.0 == "heartbeat_gap"), "{f:?} {k:?}");
    }
}

/// The same export given twice, or overlapping exports in one file: the copies are
/// duplicates (counted), not reordering; a different record under a seen number is not.
#[test]
fn the_same_export_twice_is_duplicates() {
    for f in Format::ALL {
        let lines = stream(f, "h", "r", 0, CLEAN);
        let read = |name: &str, lines: &[String]| -> Vec<Entry> {
            lines
                .iter()
                .enumerate()
                .filter_map(|(i, l)| parse_line(name, i + 1, l).expect("readable"))
                .collect()
        };
        let mut twice = read("a.json", &lines);
        twice.extend(read("a.json", &lines));
        let r = verify(twice, 0, Vec::new(), &Options::default());
        assert!(r.proven, "{f:?}\n{}", text(&r));
        let run = &r.hosts[0].runs[0];
        assert_eq!(run.duplicates, lines.len(), "{f:?}");
        assert_eq!(
            run.findings
                .iter()
                .filter(|x| x.kind == "duplicate")
                .count(),
            1,
            "{f:?}"
        );
        // Overlapping exports concatenated into one file.
        let mut overlap = lines[..6].to_vec();
        overlap.extend_from_slice(&lines[3..]);
        let r = check(&overlap, &Options::default());
        assert!(r.proven, "{f:?}\n{}", text(&r));
        assert_eq!(r.hosts[0].runs[0].duplicates, 3, "{f:?}");
        // A copy with one record replaced (same sequence, other link) is a fork.
        let other = stream(
            f,
            "h",
            "r",
            0,
            &[
                ("policy_loaded", 0),
                ("agent_start", 0),
                ("heartbeat", 10),
                ("heartbeat", 11),
            ],
        );
        let mut forked = lines.clone();
        forked.extend(lines[..3].iter().cloned());
        forked.push(other[3].clone());
        let k = kinds(&check(&forked, &Options::default()));
        assert!(
            k.contains(&("fork", Some("export:12".into()))),
            "{f:?} {k:?}"
        );
    }
}

/// Text from the records reaches the auditor's terminal without its control sequences.
#[test]
fn report_text_escapes_control_characters() {
    assert_eq!(super::shown("storage-eu-1 ü"), "storage-eu-1 ü");
    assert_eq!(
        super::shown("h\u{1b}[31mRED\n\u{7f}\u{9b}\u{202e}x"),
        "h\\u{1b}[31mRED\\u{a}\\u{7f}\\u{9b}\\u{202e}x"
    );
}
