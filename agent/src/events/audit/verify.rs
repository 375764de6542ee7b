//! `egressd audit verify`: from exported records to a verdict on continuous enforcement.
//!
//! Records ([`super::read::Entry`]) are grouped by host and agent run. For each run:
//! - **Order and completeness**: sequence numbers must run from 1 without a hole; a number
//!   seen twice with different content is a fork (a record inserted or replaced); the same
//!   record twice is a duplicate (reported, harmless); a record that comes after a higher
//!   sequence number of its run in the same file is out of order (unless `any_order`).
//!   A run's records in different formats are checked apart (each format has its chain).
//! - **Chain**: each record's link must equal `link(previous link, canonical bytes)`
//!   ([`super::chain`]); the first mismatch locates an edited, inserted or replaced record.
//! - **Enforcement**: from `agent_start` to `agent_stop`, lifecycle records (heartbeats
//!   and the others) no further apart than the gap bound: `max_gap`, or else
//!   max(2 x `interval_secs`, `interval_secs` + 5 s) of the run's heartbeats (of the
//!   host's other runs for a run without one). A run with no
//!   `agent_stop` is fine only while the window ends within the bound of its last record
//!   (it is still running at `to`); without `to` every run must have stopped.
//! - **Policy**: the digest, generation and mode in force over time; an interval in audit
//!   mode, or with another digest than `expect_digest`, is not enforcement.
//! - **Events**: tamper repairs (enforcement was broken until repaired) fail; reload
//!   failures, fallbacks and losses by stage are reported.
//!
//! The window (`from`..`to`, else from the first run's start to the last run's end) must
//! be covered without a gap by the runs' enforcement intervals, host by host; runs wholly
//! outside it are left out. A run already running at `from` may be exported from the
//! middle, as long as the input holds at least one of its records from before `from`: the
//! chain is anchored there, so a record deleted inside the window still leaves a hole.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    chain,
    read::{Entry, Facts},
};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Window start, nanoseconds since the Unix epoch (default: the first run's start).
    pub from: Option<i128>,
    /// Window end (default: the last run's end, and every run must have stopped).
    pub to: Option<i128>,
    /// The policy digest that must be in force throughout.
    pub expect_digest: Option<String>,
    /// Longest allowed silence between two lifecycle records of a run, nanoseconds
    /// (default from the heartbeat interval, see the module docs).
    pub max_gap: Option<i128>,
    /// Accept records of a run in any order (an export sorted by time, say).
    pub any_order: bool,
    /// Key of an HMAC chain (`hmac-sha256:` links).
    pub key: Option<Vec<u8>>,
    /// Only these hosts (all when empty).
    pub hosts: Vec<String>,
    /// Count the time between a run that ended without `agent_stop` and the next run's
    /// start as enforced when that run adopted the pinned enforcement with the generation
    /// the first run had in force (the kernel kept enforcing; no record covers that time).
    pub trust_adoption: bool,
}

/// One thing found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// What: `sequence_gap`, `fork`, `duplicate`, `out_of_order`, `chain_broken`,
    /// `chain_missing`, `chain_unverified`, `chain_unkeyed`, `key_mismatch`, `no_records`,
    /// `no_start`, `no_stop`, `heartbeat_gap`,
    /// `window_gap`, `no_heartbeat`, `tamper_repaired`, `reload_failed`, `policy_fallback`,
    /// `digest_mismatch`, `audit_mode`, `lost`, `adoption`, `before_window`, `unreadable`,
    /// `cut_frame`.
    pub kind: &'static str,
    /// Whether it makes continuous enforcement unprovable.
    pub fails: bool,
    /// Where in the input (`file:line`), when one record is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Sequence number concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// In words.
    pub message: String,
}

/// A stretch of time, RFC 3339 ends.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interval {
    /// Start.
    pub from: String,
    /// End.
    pub to: String,
    /// Length in seconds.
    pub secs: f64,
}

/// The policy in force over an interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicySpan {
    /// When.
    #[serde(flatten)]
    pub interval: Interval,
    /// Policy digest.
    pub digest: Option<String>,
    /// Generation.
    pub generation: Option<u64>,
    /// `enforce` or `audit`.
    pub mode: Option<String>,
    /// The interval in nanoseconds since the Unix epoch, to judge it against the window.
    #[serde(skip)]
    pub ns: (i128, i128),
}

/// One agent run of a host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunReport {
    /// `agent.ephemeral_id`.
    pub run: String,
    /// The format of its records (a run's records in several formats are reported once per
    /// format: each has its own chain).
    pub formats: Vec<&'static str>,
    /// Records read (duplicates included).
    pub records: usize,
    /// Records read more than once (identical copies), checked once.
    pub duplicates: usize,
    /// Highest sequence number.
    pub last_sequence: u64,
    /// The generation in force at its `agent_start` that it adopted from an earlier run's
    /// pins, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_generation: Option<u64>,
    /// Whether its links are keyed (HMAC).
    pub keyed: bool,
    /// Enforcement proven by its records: from `agent_start` to `agent_stop` (or the last
    /// record), cut where records were further apart than the gap bound.
    pub enforcement: Vec<Interval>,
    /// The gap bound used, seconds.
    pub max_gap_secs: f64,
    /// Policies in force.
    pub policies: Vec<PolicySpan>,
    /// The kernel's coverage report from `agent_start` (`enforced`, `not_covered`, ...).
    pub coverage: BTreeMap<String, String>,
    /// Losses by stage at its last heartbeat or `agent_stop`.
    pub lost: BTreeMap<String, u64>,
    /// Kernel counters summed over hooks at its last heartbeat or `agent_stop`, as
    /// `region/verdict`.
    pub flows: BTreeMap<String, u64>,
    /// What was found.
    pub findings: Vec<Finding>,
}

/// One host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostReport {
    /// `host.name`.
    pub host: String,
    /// The window checked.
    pub window: Interval,
    /// Its runs, by start time.
    pub runs: Vec<RunReport>,
    /// Parts of the window no run's enforcement covers, and other host-wide findings.
    pub findings: Vec<Finding>,
    /// Continuous enforcement over the window is proven.
    pub proven: bool,
}

/// The whole verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Hosts, by name.
    pub hosts: Vec<HostReport>,
    /// Lines that hold no egressd record.
    pub other_lines: usize,
    /// Lines that look like records and cannot be read.
    pub findings: Vec<Finding>,
    /// Every host proven (and at least one record read).
    pub proven: bool,
}

fn interval(from: i128, to: i128) -> Interval {
    Interval {
        from: crate::events::rfc3339(from).to_string(),
        to: crate::events::rfc3339(to).to_string(),
        secs: secs(to - from),
    }
}

fn secs(ns: i128) -> f64 {
    // Display only: f64 holds the nanoseconds of any realistic span exactly enough.
    #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
    let s = ns as f64 / 1e9;
    s
}

/// Where a record was read: `FILE:LINE`, or `FILE:LINE:COLUMN` for one of several frames
/// on a line.
fn loc(e: &Entry) -> String {
    if e.column > 0 {
        format!("{}:{}:{}", e.file, e.line, e.column)
    } else {
        format!("{}:{}", e.file, e.line)
    }
}

fn at(e: &Entry) -> Option<String> {
    Some(loc(e))
}

fn finding(kind: &'static str, fails: bool, e: Option<&Entry>, message: String) -> Finding {
    Finding {
        kind,
        fails,
        at: e.and_then(at),
        sequence: e.map(|e| e.sequence),
        message,
    }
}

/// Checks `entries` (in input order) and `unreadable` lines against `opts`.
pub fn verify(
    entries: Vec<Entry>,
    other_lines: usize,
    unreadable: Vec<Finding>,
    opts: &Options,
) -> Report {
    // host -> (run, format) -> entries in input order; each format has its own chain.
    let mut hosts: BTreeMap<String, BTreeMap<(String, &'static str), Vec<Entry>>> = BTreeMap::new();
    let mut seen_hosts = std::collections::BTreeSet::new();
    for e in entries {
        if !opts.hosts.is_empty() && !opts.hosts.contains(&e.host) {
            seen_hosts.insert(e.host.clone());
            continue;
        }
        hosts
            .entry(e.host.clone())
            .or_default()
            .entry((e.run.clone(), e.format.as_str()))
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for (host, runs) in hosts {
        out.push(check_host(host, runs, opts));
    }
    let mut findings = unreadable;
    // Nothing to judge proves nothing: say why, not only the verdict.
    if out.is_empty() {
        findings.push(finding(
            "no_records",
            true,
            None,
            if opts.hosts.is_empty() {
                "no egressd record in the input".into()
            } else {
                let known: Vec<&str> = seen_hosts.iter().map(String::as_str).collect();
                format!(
                    "no record of host {} in the input (hosts found: {})",
                    opts.hosts.join(", "),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            },
        ));
    }
    let proven =
        !out.is_empty() && out.iter().all(|h| h.proven) && findings.iter().all(|f| !f.fails);
    Report {
        hosts: out,
        other_lines,
        findings,
        proven,
    }
}

/// A run's checked facts before the window is applied.
struct Run {
    report: RunReport,
    /// Covered spans, ns.
    spans: Vec<(i128, i128)>,
    start: i128,
    end: i128,
    stopped: bool,
    /// The generation in force at its last policy record.
    last_generation: Option<u64>,
    /// The next run adopted its pinned enforcement, and `trust_adoption` bridges the gap.
    bridged: bool,
}

fn check_host(
    host: String,
    runs: BTreeMap<(String, &'static str), Vec<Entry>>,
    opts: &Options,
) -> HostReport {
    // A run too short to have a heartbeat in the export (a kill -9 right after the start)
    // takes the host's interval from its other runs.
    let host_interval = runs
        .values()
        .flatten()
        .find_map(|e| e.facts.interval_secs.filter(|s| *s > 0));
    let mut checked: Vec<Run> = runs
        .into_iter()
        .map(|((run, _), entries)| check_run(run, entries, host_interval, opts))
        .collect();
    checked.sort_by_key(|r| r.start);
    let mut findings = Vec::new();
    let from = opts
        .from
        .unwrap_or_else(|| checked.first().map_or(0, |r| r.start));
    let to = opts
        .to
        .unwrap_or_else(|| checked.iter().map(|r| r.end).max().unwrap_or(from));
    // Runs wholly outside the window are not the auditor's question.
    checked.retain(|r| r.end >= from && r.start <= to);
    // A run that adopted the pins of the run before it: killed, crashed, or stopped with
    // its programs left attached (`--pin-dir`: a SIGTERM leaves them judging too).
    for i in 1..checked.len() {
        // The run before it in the same format.
        let Some(j) = (0..i)
            .rev()
            .find(|j| checked[*j].report.formats == checked[i].report.formats)
        else {
            continue;
        };
        let (before, after) = checked.split_at_mut(i);
        let (prev, next) = (&mut before[j], &mut after[0]);
        let Some(g) = next.report.adopted_generation else {
            continue;
        };
        let same = prev.last_generation == Some(g);
        let bridged = same && opts.trust_adoption;
        next.report.findings.push(finding(
            "adoption",
            false,
            None,
            format!(
                "adopted the pinned enforcement left by run {} (generation {g}{}): the kernel \
                 kept enforcing from that run's last record at {} to this start at {} \
                 ({:.3} s), which no record covers{}",
                prev.report.run,
                if same {
                    String::new()
                } else {
                    format!(
                        ", but that run had generation {} in force: the pins changed between",
                        prev.last_generation
                            .map_or_else(|| "?".into(), |x| x.to_string())
                    )
                },
                crate::events::rfc3339(prev.end),
                crate::events::rfc3339(next.start),
                secs(next.start - prev.end),
                if bridged {
                    "; counted as enforced (--trust-adoption)"
                } else {
                    ""
                }
            ),
        ));
        if bridged {
            prev.bridged = true;
            let to = next.start;
            if let Some(last) = prev.spans.last_mut() {
                last.1 = last.1.max(to);
            }
        }
    }
    // Runs that must have stopped: all without a window end; else those that fell silent
    // longer than their bound before it.
    for r in &mut checked {
        if r.stopped {
            continue;
        }
        if r.bridged {
            r.report.findings.push(finding(
                "no_stop",
                false,
                None,
                format!(
                    "no agent_stop after sequence {} at {}: killed or crashed; the next run \
                     adopted its enforcement",
                    r.report.last_sequence,
                    crate::events::rfc3339(r.end)
                ),
            ));
            continue;
        }
        let bound = (r.report.max_gap_secs * 1e9) as i128;
        let silent = opts.to.is_none_or(|t| t - r.end > bound);
        if silent {
            r.report.findings.push(finding(
                "no_stop",
                true,
                None,
                format!(
                    "no agent_stop: the run's last record (sequence {}) is from {}; it was \
                     killed or crashed, or the tail of its stream is missing",
                    r.report.last_sequence,
                    crate::events::rfc3339(r.end)
                ),
            ));
        } else if let Some(t) = opts.to {
            // Still running at the window's end: covered up to it.
            if let Some(last) = r.spans.last_mut() {
                last.1 = last.1.max(t);
            }
        }
    }
    // Window coverage.
    let mut spans: Vec<(i128, i128)> = checked.iter().flat_map(|r| r.spans.clone()).collect();
    spans.sort_unstable();
    let mut cursor = from;
    for (a, b) in spans {
        if b <= cursor {
            continue;
        }
        if a > cursor && cursor < to {
            let end = a.min(to);
            findings.push(finding(
                "window_gap",
                true,
                None,
                format!(
                    "no enforcement proven from {} to {} ({:.3} s)",
                    crate::events::rfc3339(cursor),
                    crate::events::rfc3339(end),
                    secs(end - cursor)
                ),
            ));
        }
        cursor = cursor.max(b);
    }
    if cursor < to {
        findings.push(finding(
            "window_gap",
            true,
            None,
            format!(
                "no enforcement proven from {} to the window's end {} ({:.3} s)",
                crate::events::rfc3339(cursor),
                crate::events::rfc3339(to),
                secs(to - cursor)
            ),
        ));
    }
    let runs: Vec<RunReport> = checked.into_iter().map(|r| r.report).collect();
    let proven = !runs.is_empty()
        && findings.iter().all(|f| !f.fails)
        && runs.iter().all(|r| r.findings.iter().all(|f| !f.fails));
    HostReport {
        host,
        window: interval(from, to),
        runs,
        findings,
        proven,
    }
}

fn check_run(run: String, entries: Vec<Entry>, host_interval: Option<u64>, opts: &Options) -> Run {
    let mut findings = Vec::new();
    // Input order, file by file (files may be copies from several sinks).
    let mut highest: BTreeMap<&str, &Entry> = BTreeMap::new();
    // A record seen before in the same file (the file given twice, overlapping exports
    // joined) is a duplicate, counted below; its place says nothing about order.
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        if !seen.insert((
            e.file.as_str(),
            e.sequence,
            e.link.as_deref(),
            e.canonical.as_slice(),
        )) {
            continue;
        }
        match highest.get(e.file.as_str()).copied() {
            Some(h) if e.sequence < h.sequence && !opts.any_order => findings.push(finding(
                "out_of_order",
                true,
                Some(e),
                format!(
                    "sequence {} comes after sequence {} ({}): records were reordered",
                    e.sequence,
                    h.sequence,
                    loc(h)
                ),
            )),
            Some(h) if e.sequence <= h.sequence => {}
            _ => {
                highest.insert(e.file.as_str(), e);
            }
        }
    }
    let records = entries.len();
    let mut formats: Vec<&'static str> = entries.iter().map(|e| e.format.as_str()).collect();
    formats.sort_unstable();
    formats.dedup();
    // By sequence; the same sequence twice is a duplicate or a fork.
    let mut by_seq: BTreeMap<u64, Entry> = BTreeMap::new();
    // Identical records (same host, run, sequence, link and content): counted, with the
    // first one as an example.
    let mut duplicates = 0;
    let mut first_duplicate: Option<(Entry, String)> = None;
    for e in entries {
        match by_seq.get(&e.sequence) {
            None => {
                by_seq.insert(e.sequence, e);
            }
            Some(first) if first.canonical == e.canonical && first.link == e.link => {
                duplicates += 1;
                if first_duplicate.is_none() {
                    let also = loc(first);
                    first_duplicate = Some((e, also));
                }
            }
            Some(first) => {
                findings.push(finding(
                    "fork",
                    true,
                    Some(&e),
                    format!(
                        "sequence {} twice with different content (also at {}): a record was \
                         inserted or replaced",
                        e.sequence,
                        loc(first)
                    ),
                ));
            }
        }
    }
    if let Some((e, also)) = &first_duplicate {
        findings.push(finding(
            "duplicate",
            false,
            Some(e),
            format!(
                "{duplicates} record(s) delivered more than once (copies from several sinks, \
                 the same file given twice or overlapping exports; the first: sequence {} here \
                 and at {also}); each is checked once",
                e.sequence
            ),
        ));
    }
    // A run already running at the window's start: the input may begin after its first
    // records, provided it holds one from before the window (the chain is anchored there,
    // and a record deleted inside the window still leaves a hole).
    let first = by_seq.values().next();
    let joined = opts
        .from
        .zip(first)
        .filter(|(from, e)| e.sequence > 1 && e.time_ns < *from)
        .map(|(_, e)| e.sequence);
    if let Some(seq) = joined {
        findings.push(finding(
            "before_window",
            false,
            first,
            format!(
                "the run was already running: its records before sequence {seq} (before the \
                 window) are not in the input; the chain is checked from there"
            ),
        ));
    }
    // Holes, and the chain.
    let mut expected = joined.unwrap_or(1);
    let mut prev: Option<[u8; chain::LINK_BYTES]> =
        joined.map_or(Some([0; chain::LINK_BYTES]), |_| None);
    let mut keyed = false;
    // Keyed links checked with the key given: how many followed, and the breaks found.
    let (mut keyed_ok, mut keyed_broken) = (0_usize, Vec::new());
    // Unkeyed links where a key was given: (how many, the first).
    let mut unkeyed: (usize, Option<&Entry>) = (0, None);
    for (seq, e) in &by_seq {
        if *seq != expected {
            findings.push(finding(
                "sequence_gap",
                true,
                Some(e),
                if expected + 1 == *seq {
                    format!("sequence {expected} is missing (before {})", loc(e))
                } else {
                    format!(
                        "sequences {expected} to {} are missing (before {})",
                        seq - 1,
                        loc(e)
                    )
                },
            ));
            prev = None;
        }
        expected = seq + 1;
        let Some((is_keyed, got)) = e.link.as_deref().and_then(chain::parse_link) else {
            findings.push(finding(
                "chain_missing",
                true,
                Some(e),
                format!("sequence {seq} has no valid chain link"),
            ));
            prev = None;
            continue;
        };
        keyed |= is_keyed;
        if is_keyed && opts.key.is_none() {
            prev = Some(got);
            continue;
        }
        // Anyone can compute a plain SHA-256 link: with a key, such a link proves nothing
        // (a stream re-sealed, or a forged tail chained from the last keyed link).
        if !is_keyed && opts.key.is_some() {
            unkeyed.0 += 1;
            unkeyed.1.get_or_insert(e);
            prev = Some(got);
            continue;
        }
        if let Some(p) = prev {
            let key = if is_keyed { opts.key.as_deref() } else { None };
            let follows = chain::link(&p, &e.canonical, key) == got;
            if is_keyed && follows {
                keyed_ok += 1;
            } else if is_keyed {
                keyed_broken.push(findings.len());
            }
            if !follows {
                findings.push(finding(
                    "chain_broken",
                    true,
                    Some(e),
                    format!(
                        "the link of sequence {seq} does not follow from sequence {}: this record \
                         (or the link of the one before) was edited, or a record was inserted or \
                         replaced",
                        seq - 1
                    ),
                ));
            }
        }
        prev = Some(got);
    }
    // Not one keyed link follows: the key is not the one the host used (an edit breaks
    // one link, the links after it still follow). One finding instead of one per record.
    if keyed_ok == 0 && !keyed_broken.is_empty() {
        let n = keyed_broken.len();
        for i in keyed_broken.into_iter().rev() {
            findings.remove(i);
        }
        findings.push(finding(
            "key_mismatch",
            true,
            None,
            format!(
                "none of the {n} keyed (HMAC-SHA-256) links checked follows with the key given: \
                 it is not the chain key this host used for the run (records cannot be \
                 checked for edits without the right one)"
            ),
        ));
    }
    if let (n, Some(first)) = unkeyed {
        findings.push(finding(
            "chain_unkeyed",
            true,
            Some(first),
            format!(
                "a chain key was given but {n} record(s) carry an unkeyed SHA-256 link, from \
                 sequence {}: anyone can compute those, so they prove nothing (a stream \
                 re-sealed without the key, or records forged after the keyed ones)",
                first.sequence
            ),
        ));
    }
    if keyed && opts.key.is_none() {
        findings.push(finding(
            "chain_unverified",
            true,
            None,
            "the links are keyed (HMAC-SHA-256) and no key was given: records cannot be \
             checked for edits"
                .into(),
        ));
    }
    // Lifecycle, in sequence order.
    let lifecycle: Vec<&Entry> = by_seq
        .values()
        .filter(|e| !e.kind.starts_with("connection"))
        .collect();
    let start_rec = lifecycle.iter().find(|e| e.kind == "agent_start");
    let stop_rec = lifecycle.iter().find(|e| e.kind == "agent_stop");
    let first_t = by_seq.values().map(|e| e.time_ns).min().unwrap_or(0);
    let start = start_rec.map_or(first_t, |e| e.time_ns);
    if start_rec.is_none() && joined.is_none() {
        findings.push(finding(
            "no_start",
            true,
            None,
            "no agent_start record: when enforcement began is unknown".into(),
        ));
    }
    // A stated period above the configurable maximum cannot stretch the bound: a record
    // claiming a year would let a killed run pass as enforced for a year.
    let interval_secs = lifecycle
        .iter()
        .find_map(|e| e.facts.interval_secs)
        .filter(|s| *s > 0)
        .or(host_interval)
        .map(|s| s.min(crate::config::MAX_HEARTBEAT_SECS));
    let max_gap = opts.max_gap.or_else(|| {
        interval_secs.map(|s| {
            let s = i128::from(s) * 1_000_000_000;
            (2 * s).max(s + 5_000_000_000)
        })
    });
    if max_gap.is_none() {
        findings.push(finding(
            "no_heartbeat",
            true,
            None,
            "no heartbeat with an interval and no max gap given: silence cannot be told from \
             absence"
                .into(),
        ));
    }
    let bound = max_gap.unwrap_or(0);
    // Evidence of a running agent: lifecycle records from the start on.
    let evidence: Vec<&Entry> = lifecycle
        .iter()
        .copied()
        .filter(|e| e.time_ns >= start)
        .collect();
    let mut spans = Vec::new();
    let mut span_start = start;
    let mut last = start;
    for e in &evidence {
        if e.time_ns - last > bound {
            findings.push(finding(
                "heartbeat_gap",
                true,
                Some(e),
                format!(
                    "no record for {:.3} s before this one (from {}; bound {:.3} s)",
                    secs(e.time_ns - last),
                    crate::events::rfc3339(last),
                    secs(bound)
                ),
            ));
            spans.push((span_start, last));
            span_start = e.time_ns;
        }
        last = last.max(e.time_ns);
    }
    let end = stop_rec.map_or(last, |e| e.time_ns.max(last));
    spans.push((span_start, end));
    // Policies in force, and events.
    let mut policies: Vec<PolicySpan> = Vec::new();
    let mut current: Option<(i128, Facts)> = None;
    let mut lost = BTreeMap::new();
    let mut flows = BTreeMap::new();
    let mut coverage = BTreeMap::new();
    let mut adopted_generation = None;
    let close = |policies: &mut Vec<PolicySpan>, cur: &Option<(i128, Facts)>, t: i128| {
        if let Some((from, f)) = cur {
            policies.push(PolicySpan {
                interval: interval(*from, t),
                digest: f.digest.clone(),
                generation: f.generation,
                mode: f.mode.clone(),
                ns: (*from, t),
            });
        }
    };
    for e in &lifecycle {
        match e.kind.as_str() {
            "agent_start" | "policy_loaded" | "policy_fallback" => {
                let same = current.as_ref().is_some_and(|(_, f)| {
                    f.digest == e.facts.digest
                        && (e.facts.generation.is_none() || f.generation == e.facts.generation)
                });
                if !same {
                    close(&mut policies, &current, e.time_ns);
                    let mut f = e.facts.clone();
                    if f.mode.is_none() {
                        f.mode = current.as_ref().and_then(|(_, c)| c.mode.clone());
                    }
                    current = Some((e.time_ns.max(start), f));
                } else if let Some((_, f)) = current.as_mut()
                    && f.mode.is_none()
                {
                    f.mode = e.facts.mode.clone();
                }
                if e.kind == "agent_start" {
                    coverage = e.facts.coverage.clone();
                    adopted_generation = e.facts.adopted;
                }
                if e.kind == "policy_fallback" {
                    findings.push(finding(
                        "policy_fallback",
                        false,
                        Some(e),
                        format!(
                            "the policy on disk was invalid; the last good policy is in force: {}",
                            e.facts.detail.as_deref().unwrap_or("(reason not carried)")
                        ),
                    ));
                }
            }
            "reload_failed" => findings.push(finding(
                "reload_failed",
                false,
                Some(e),
                format!(
                    "a reload was refused at {} (generation {} stays in force): {}",
                    crate::events::rfc3339(e.time_ns),
                    e.facts
                        .generation
                        .map_or_else(|| "?".to_owned(), |g| g.to_string()),
                    e.facts.detail.as_deref().unwrap_or("(reason not carried)")
                ),
            )),
            "tamper_repaired" => findings.push(finding(
                "tamper_repaired",
                true,
                Some(e),
                format!(
                    "enforcement was tampered with and restored at {}: {}",
                    crate::events::rfc3339(e.time_ns),
                    e.facts.detail.as_deref().unwrap_or("(details not carried)")
                ),
            )),
            "heartbeat" | "agent_stop" => {
                if !e.facts.lost.is_empty() {
                    lost = e.facts.lost.clone();
                }
                if !e.facts.counters.is_empty() {
                    flows = e
                        .facts
                        .counters
                        .iter()
                        .map(|((r, v), n)| (format!("{r}/{v}"), *n))
                        .collect();
                }
            }
            _ => {}
        }
    }
    let last_generation = current.as_ref().and_then(|(_, f)| f.generation);
    close(&mut policies, &current, end);
    // Only a policy in force inside the window is judged: a window per generation proves
    // each with its own `expect_digest`.
    let inside = |p: &&PolicySpan| {
        opts.from.is_none_or(|f| p.ns.1 > f) && opts.to.is_none_or(|t| p.ns.0 < t)
    };
    for p in policies.iter().filter(inside) {
        if p.mode.as_deref() == Some("audit") {
            findings.push(finding(
                "audit_mode",
                true,
                None,
                format!(
                    "policy {} was in audit mode from {} to {}: reported, not enforced",
                    p.digest.as_deref().unwrap_or("?"),
                    p.interval.from,
                    p.interval.to
                ),
            ));
        }
        if let Some(want) = &opts.expect_digest
            && p.digest.as_ref() != Some(want)
        {
            findings.push(finding(
                "digest_mismatch",
                true,
                None,
                format!(
                    "policy {} was in force from {} to {}, not the expected {want}",
                    p.digest.as_deref().unwrap_or("(unknown)"),
                    p.interval.from,
                    p.interval.to
                ),
            ));
        }
    }
    let total: u64 = lost.values().sum();
    if total > 0 {
        findings.push(finding(
            "lost",
            false,
            None,
            format!(
                "{total} records lost by the agent: {}",
                lost.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let enforcement = spans.iter().map(|(a, b)| interval(*a, *b)).collect();
    Run {
        report: RunReport {
            run,
            formats,
            records,
            duplicates,
            last_sequence: by_seq.keys().next_back().copied().unwrap_or(0),
            adopted_generation,
            keyed,
            enforcement,
            max_gap_secs: secs(bound),
            policies,
            coverage,
            lost,
            flows,
            findings,
        },
        spans,
        start,
        end,
        stopped: stop_rec.is_some(),
        last_generation,
        bridged: false,
    }
}

/// The report for people. Every text taken from the records (host names, ids, policy
/// names, messages quoting a record) goes through [`shown`]: a record cannot write control
/// sequences to the auditor's terminal.
pub fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for h in &r.hosts {
        let _ = writeln!(
            s,
            "host {}: {} (window {} to {})",
            shown(&h.host),
            if h.proven {
                "continuous enforcement PROVEN"
            } else {
                "continuous enforcement NOT PROVEN"
            },
            shown(&h.window.from),
            shown(&h.window.to)
        );
        for run in &h.runs {
            let formats: Vec<String> = run.formats.iter().map(|f| shown(f)).collect();
            let _ = writeln!(
                s,
                "  run {} ({} records, sequence 1..{}, {}{})",
                shown(&run.run),
                run.records,
                run.last_sequence,
                formats.join("+"),
                if run.keyed { ", keyed chain" } else { "" }
            );
            for i in &run.enforcement {
                let _ = writeln!(
                    s,
                    "    enforced {} to {} ({:.3} s)",
                    shown(&i.from),
                    shown(&i.to),
                    i.secs
                );
            }
            for p in &run.policies {
                let _ = writeln!(
                    s,
                    "    policy {} generation {} mode {} from {} to {}",
                    shown(p.digest.as_deref().unwrap_or("?")),
                    p.generation.map_or_else(|| "?".into(), |g| g.to_string()),
                    shown(p.mode.as_deref().unwrap_or("?")),
                    shown(&p.interval.from),
                    shown(&p.interval.to)
                );
            }
            let pairs = |m: &std::collections::BTreeMap<String, u64>| -> Vec<String> {
                m.iter().map(|(k, v)| format!("{} {v}", shown(k))).collect()
            };
            if !run.coverage.is_empty() {
                let c: Vec<String> = run
                    .coverage
                    .iter()
                    .map(|(k, v)| format!("{}={}", shown(k), shown(v)))
                    .collect();
                let _ = writeln!(s, "    kernel coverage: {}", c.join(" "));
            }
            if !run.flows.is_empty() {
                let _ = writeln!(s, "    flows: {}", pairs(&run.flows).join(", "));
            }
            let l = pairs(&run.lost);
            let _ = writeln!(
                s,
                "    lost: {}",
                if l.is_empty() {
                    "(not reported)".into()
                } else {
                    l.join(", ")
                }
            );
            for f in &run.findings {
                line(&mut s, "    ", f);
            }
        }
        for f in &h.findings {
            line(&mut s, "  ", f);
        }
    }
    for f in &r.findings {
        line(&mut s, "", f);
    }
    if r.other_lines > 0 {
        let _ = writeln!(
            s,
            "{} lines without an egressd record skipped",
            r.other_lines
        );
    }
    let _ = writeln!(
        s,
        "verdict: {}",
        if r.proven {
            "continuous enforcement proven"
        } else {
            "continuous enforcement NOT proven"
        }
    );
    s
}

/// `text` with control characters (C0, DEL, C1, line ends included) and the Unicode
/// direction controls escaped as Rust writes them (`\u{1b}`), the rest as it is.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            let direction = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || direction {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn line(s: &mut String, indent: &str, f: &Finding) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "{indent}{} {}{}: {}",
        if f.fails { "FAIL" } else { "note" },
        f.kind,
        f.at.as_deref()
            .map_or_else(String::new, |a| format!(" at {}", shown(a))),
        shown(&f.message)
    );
}

#[cfg(test)]
pub(crate) mod tests;
