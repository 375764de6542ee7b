//! `connection_summary` records: attempts the kernel aggregated instead of reporting one by
//! one (the ring buffer was full, or the (cgroup, hook, region, verdict, rule) had written its
//! record budget `summary_after` for the interval; see `ebpf/src/summary.rs` and
//! [`egressd_common::SummaryState`]).
//!
//! [`Drainer`] ends each interval: it publishes the next [`SummaryControl::epoch`], whose
//! parity the kernel puts in every key it makes from then on, waits until every program that
//! read the old epoch has returned ([`crate::kernel::quiesce`]), then reports the keys of the
//! ended parity and removes them ([`egressd_common::SUMMARY_LAYOUT_DRAINED`]). A key is read
//! once no program can add to it, so no attempt is lost between the read and the removal
//! or counted twice; and the table holds the keys of about one interval, so many keys in one
//! interval (a user's delegated cgroups, say) do not keep the next one's floods from being
//! aggregated.
//!
//! Exact: `count` (per key and in total). Approximate: `start`/`end` (the first and last
//! aggregated attempt the kernel timed in the interval; an attempt aggregated while the
//! interval turns may be counted in one summary and timed in the next), `distinct` (a
//! linear-counting estimate, [`distinct_estimate`]) and `samples` (at most
//! [`SUMMARY_SAMPLES`], the first new destinations of the interval).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, MapData};
use egressd_common::{
    COUNTER_SLOTS, MAX_REGIONS, SUMMARY_LAYOUT_DRAINED, SUMMARY_SAMPLES, SUMMARY_SEEN_WORDS,
    SummaryControl, SummaryKey, SummarySample, SummaryState, VERDICT_COUNT, Verdict, family,
    unreported,
};
use serde::Serialize;

use super::{Cgroup, Header, Rule, hook_name};
use crate::{kernel::quiesce::Quiescer, policy::Policy};

/// Attempts of one (cgroup, hook, region, verdict, rule) the kernel aggregated in one
/// interval, as sinks receive them (`type` `"connection_summary"`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryEvent {
    /// Time (the last aggregated attempt), type, id, sequence, host and agent.
    #[serde(flatten)]
    pub header: Header,
    /// `"deny"` or `"audit"`, as in a `connection` record.
    pub verdict: &'static str,
    /// Kernel hook that judged the attempts, e.g. `"cgroup/sendmsg4"`.
    pub hook: &'static str,
    /// cgroup v2 of the callers (the id only: the process details of a flood are not read).
    pub cgroup: Cgroup,
    /// Where the attempts were going.
    pub destination: SummaryDestination,
    /// Policy in force when the summary was drained.
    pub policy: SummaryPolicy,
    /// Rule that decided.
    pub rule: Rule,
    /// Attempts aggregated: exact (each stands for one attempt the kernel counted and did
    /// not report in a `connection` record).
    pub count: u64,
    /// First aggregated attempt of the interval, RFC 3339 UTC with nanoseconds.
    pub start: String,
    /// Last aggregated attempt of the interval (also `@timestamp`).
    pub end: String,
    /// `start` as nanoseconds since the Unix epoch (not serialized).
    #[serde(skip)]
    pub start_ns: i128,
}

/// `destination.*` of a summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryDestination {
    /// Policy region of the destinations, or `"unknown"`.
    pub region: String,
    /// Distinct destination addresses: an estimate by linear counting over 1,024 bits
    /// (within a few percent up to about 1,000; at most [`DISTINCT_MAX`]), never below the
    /// number of samples nor above `count`.
    pub distinct: u64,
    /// The first new destinations of the interval, at most [`SUMMARY_SAMPLES`].
    pub samples: Vec<Sample>,
}

/// One sample destination.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Destination address (absent for a packet socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Destination port (the first one seen with this address; 0 without ports).
    pub port: u16,
    /// `"tcp"`, `"udp"`, or the protocol number as text.
    pub transport: String,
}

/// `policy.*` of a summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryPolicy {
    /// `"enforce"` or `"audit"`, derived from the verdict.
    pub mode: &'static str,
    /// Digest of the policy that names regions and rules.
    pub digest: String,
}

/// Bits of the kernel's distinct-destination bitmap.
const SEEN_BITS: u32 = SUMMARY_SEEN_WORDS as u32 * 64;

/// Largest distinct count [`distinct_estimate`] reports: a bitmap with every bit set
/// (`m ln m` for m = 1,024 bits), a lower bound then.
pub const DISTINCT_MAX: u64 = 7098;

/// Distinct destinations from the zero bits of the kernel's bitmap: linear counting
/// (Whang, Vander-Zanden, Taylor, "A linear-time probabilistic counting algorithm for
/// database applications", TODS 1990), `m ln(m / zero)` rounded, [`DISTINCT_MAX`] when no bit
/// is zero.
pub fn distinct_estimate(zero: u32) -> u64 {
    if zero == 0 {
        return DISTINCT_MAX;
    }
    let m = f64::from(SEEN_BITS);
    (m * (m / f64::from(zero)).ln()).round() as u64
}

/// One key's share of a drain: what the kernel aggregated since the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The key.
    pub key: SummaryKey,
    /// Attempts aggregated since the previous drain.
    pub count: u64,
    /// First and last aggregated attempt of the interval, CLOCK_BOOTTIME ns.
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
    /// Zero bits of the distinct-destination bitmap.
    pub zero_bits: u32,
    /// Valid samples.
    pub samples: Vec<SummarySample>,
}

impl Taken {
    /// What `state` holds beyond `drained` attempts already reported; `None` when nothing.
    pub fn of(key: SummaryKey, state: &SummaryState, drained: u64) -> Option<Self> {
        let count = state.count.wrapping_sub(drained);
        if count == 0 {
            return None;
        }
        let sampled = (state.sampled as usize).min(SUMMARY_SAMPLES);
        let first_ns = if state.first_ns == 0 {
            state.last_ns
        } else {
            state.first_ns.min(state.last_ns)
        };
        Some(Self {
            key,
            count,
            first_ns,
            last_ns: state.last_ns,
            zero_bits: state.seen.iter().map(|w| w.count_zeros()).sum(),
            samples: state.samples[..sampled].to_vec(),
        })
    }
}

/// Ends each interval: starts the next one, then reports and removes the ended one's keys.
pub struct Drainer {
    map: aya::maps::HashMap<MapData, SummaryKey, SummaryState>,
    control: Array<MapData, SummaryControl>,
    /// Attempts of keys found at the start that an earlier run already reported, by key:
    /// all of them under an older layout (it kept keys and reported their growth), and the
    /// keys of an ended interval whose removal that run did not finish.
    reported: HashMap<SummaryKey, u64>,
    epoch: u64,
    /// Parity of the interval [`Drainer::end`] ended and [`Drainer::collect`] has not taken.
    ended: Option<u8>,
    quiescer: std::sync::Arc<Quiescer>,
    /// `connection_summary` records made so far.
    pub records: u64,
    /// Attempts they account for.
    pub attempts: u64,
}

impl Drainer {
    /// A drainer over the kernel's maps. Keys already there (adopted pins) are unreported
    /// when they belong to the current interval of an earlier run of this layout (it drained
    /// every ended interval), else counted as reported. Errors: map reads; the kernel
    /// refuses the map-in-map the grace-period wait uses.
    pub fn new(
        map: aya::maps::HashMap<MapData, SummaryKey, SummaryState>,
        control: Array<MapData, SummaryControl>,
    ) -> anyhow::Result<Self> {
        let now = control.get(&0, 0)?;
        let live = (now.epoch & 1) as u8;
        let mut reported = HashMap::new();
        for item in map.iter() {
            let (k, v) = item?;
            if now.layout != SUMMARY_LAYOUT_DRAINED || k.parity != live {
                reported.insert(k, v.count);
            }
        }
        Ok(Self {
            map,
            control,
            reported,
            epoch: now.epoch,
            ended: None,
            quiescer: std::sync::Arc::new(Quiescer::new()?),
            records: 0,
            attempts: 0,
        })
    }

    /// [`Drainer::end`], one RCU grace period ([`Drainer::quiescer`]), then
    /// [`Drainer::collect`]: for the stop, where waiting on the daemon loop is fine.
    /// Errors: as those.
    pub fn drain(&mut self, records_per_key: u32) -> anyhow::Result<Vec<Taken>> {
        let mut out = Vec::new();
        // An interval ended on the loop whose keys were not taken yet comes first.
        if self.ended.is_some() {
            self.quiescer.wait()?;
            out = self.collect()?;
        }
        self.end(records_per_key)?;
        self.quiescer.wait()?;
        out.extend(self.collect()?);
        Ok(out)
    }

    /// Ends the current interval: starts the next with a budget of `records_per_key`
    /// records per key (0: none). Its keys may be taken ([`Drainer::collect`]) once every
    /// program that read the ended epoch has returned: after [`Quiescer::wait`] of
    /// [`Drainer::quiescer`] (one RCU grace period, off the daemon loop: under TCG it took
    /// most of a second). Errors: the control map write.
    pub fn end(&mut self, records_per_key: u32) -> anyhow::Result<()> {
        let next = SummaryControl {
            epoch: self.epoch + 1,
            records_per_key,
            layout: SUMMARY_LAYOUT_DRAINED,
        };
        self.control.set(0, next, 0)?;
        self.ended = Some((self.epoch & 1) as u8);
        self.epoch += 1;
        Ok(())
    }

    /// What waits out the programs of an ended interval (shared with a blocking task).
    pub fn quiescer(&self) -> std::sync::Arc<Quiescer> {
        self.quiescer.clone()
    }

    /// Takes the keys of the interval [`Drainer::end`] ended, once the grace period after it
    /// has passed (the caller's word), and removes them; nothing when no interval ended.
    /// Errors: map reads; a key whose removal fails is remembered as reported, so it is
    /// never counted twice.
    pub fn collect(&mut self) -> anyhow::Result<Vec<Taken>> {
        let Some(ended) = self.ended.take() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut done = Vec::new();
        for item in self.map.iter() {
            let (k, v) = item?;
            if k.parity != ended {
                continue;
            }
            let reported = self.reported.remove(&k).unwrap_or(0);
            if let Some(t) = Taken::of(k, &v, reported) {
                self.records += 1;
                self.attempts += t.count;
                out.push(t);
            }
            done.push((k, v.count));
        }
        let mut failed = None;
        for (k, count) in done {
            if let Err(e) = self.map.remove(&k) {
                self.reported.insert(k, count);
                failed.get_or_insert(e);
            }
        }
        out.sort_by_key(|t| (t.first_ns, t.key));
        if let Some(e) = failed {
            // The records are made; the key is remembered as reported.
            tracing::warn!(error = %e, "removing a drained summary key");
        }
        Ok(out)
    }
}

/// Attempts the kernel counted that no record carries yet
/// ([`egressd_common::unreported`]): suppressed counts still pending (a later event of the
/// same process, destination and verdict would carry them; not once the programs are
/// detached, nor after the LRU evicted the entry) and attempts that neither the ring buffer
/// nor the summary table could take. Read at each interval's end (the overflow) and at the
/// stop (the pending counts too), when they become `connection_summary` records (cgroup id
/// 0: the kernel keeps them by hook, region and verdict only; rule name [`WHY_SUPPRESSED`]
/// or [`WHY_OVERFLOW`]).
pub struct Unreported {
    map: crate::kernel::mmap::U64Array,
    /// Overflow counts reported so far (by this run and, adopting pins, by earlier runs:
    /// [`unreported::REPORTED`]), by counter index.
    overflow_base: Vec<u64>,
}

/// Element `index` of the map; an index past its end is an error of the caller's layout,
/// read as 0 (the map is sized from the same constants).
fn slot_value(all: &[AtomicU64], index: u32) -> u64 {
    all.get(index as usize)
        .map_or(0, |v| v.load(Ordering::Relaxed))
}

/// Rule name of a summary of suppressed counts flushed at the stop.
pub const WHY_SUPPRESSED: &str = "suppressed";
/// Rule name of a summary of attempts neither the ring buffer nor the summary table took.
pub const WHY_OVERFLOW: &str = "summary_table_full";

impl Unreported {
    /// Reads what earlier runs reported of the overflow ([`unreported::REPORTED`]: zeros in
    /// a fresh map), so that the overflow of the time no daemon ran is reported now.
    pub fn new(map: crate::kernel::mmap::U64Array) -> Self {
        let all = map.slots();
        let overflow_base = (0..COUNTER_SLOTS)
            .map(|slot| {
                // Never above the count itself (a map of another origin): nothing then.
                let over = slot_value(all, unreported::OVERFLOW + slot);
                slot_value(all, unreported::REPORTED + slot).min(over)
            })
            .collect();
        Self { map, overflow_base }
    }

    /// What no record carries, as summaries to report at `now_boot_ns` with the reason (a
    /// rule name): overflow not yet reported, and with `pending` (the programs are
    /// detached, so no later event can carry them) the pending suppressed counts. The
    /// overflow taken is written to [`unreported::REPORTED`] at once. Reads the mapped map in
    /// place (its 36,864 slots of overflow every second: no `bpf(2)` call).
    pub fn take(&mut self, pending: bool, now_boot_ns: u64) -> Vec<(Taken, &'static str)> {
        let all = self.map.slots();
        let mut out = Vec::new();
        for slot in 0..COUNTER_SLOTS {
            let over = slot_value(all, unreported::OVERFLOW + slot)
                .wrapping_sub(self.overflow_base[slot as usize]);
            let held = if pending {
                slot_value(all, unreported::PENDING + slot)
            } else {
                0
            };
            for (n, why) in [(held, WHY_SUPPRESSED), (over, WHY_OVERFLOW)] {
                // A wrapped (negative) pending count would be a kernel bug: never report it.
                if n == 0 || n > u64::MAX / 2 {
                    continue;
                }
                let key = SummaryKey {
                    cgroup_id: 0,
                    region: (slot / VERDICT_COUNT) % MAX_REGIONS,
                    rule: 0,
                    hook: u8::try_from(slot / (MAX_REGIONS * VERDICT_COUNT)).unwrap_or(u8::MAX),
                    verdict: u8::try_from(slot % VERDICT_COUNT).unwrap_or(u8::MAX),
                    ..SummaryKey::default()
                };
                out.push((
                    Taken {
                        key,
                        count: n,
                        first_ns: now_boot_ns,
                        last_ns: now_boot_ns,
                        zero_bits: 64 * SUMMARY_SEEN_WORDS as u32,
                        samples: Vec::new(),
                    },
                    why,
                ));
            }
            if over != 0 {
                let base = self.overflow_base[slot as usize].wrapping_add(over);
                self.overflow_base[slot as usize] = base;
                if let Some(r) = all.get((unreported::REPORTED + slot) as usize) {
                    r.store(base, Ordering::Relaxed);
                }
            }
        }
        out
    }
}

/// Pure assembly of a [`SummaryEvent`] under `header` (whose time should be `t.last_ns`'s);
/// `boot_to_unix` converts kernel times.
pub fn build(
    header: Header,
    policy: &Policy,
    t: &Taken,
    boot_to_unix: impl Fn(u64) -> i128,
) -> SummaryEvent {
    let verdict = Verdict::from_u8(t.key.verdict);
    let packet_hook = matches!(
        egressd_common::Hook::from_u8(t.key.hook),
        Some(egressd_common::Hook::LsmSocketCreate | egressd_common::Hook::LsmSocketSendmsg)
    );
    let samples: Vec<Sample> = t
        .samples
        .iter()
        .map(|s| {
            let packet = s.family == family::PACKET || s.family == family::XDP;
            Sample {
                ip: match s.family {
                    family::INET => Some(IpAddr::V4(Ipv4Addr::new(
                        s.dst_addr[0],
                        s.dst_addr[1],
                        s.dst_addr[2],
                        s.dst_addr[3],
                    ))),
                    _ if packet => None,
                    _ => Some(IpAddr::V6(Ipv6Addr::from(s.dst_addr))),
                },
                port: s.dst_port,
                transport: if packet {
                    super::socket_type(s.protocol).into_owned()
                } else {
                    crate::base::protocol::name(s.protocol)
                },
            }
        })
        .collect();
    let distinct = distinct_estimate(t.zero_bits)
        .max(samples.len() as u64)
        .min(t.count);
    let start_ns = boot_to_unix(t.first_ns);
    SummaryEvent {
        verdict: match verdict {
            Some(Verdict::Deny) => "deny",
            Some(Verdict::Audit) => "audit",
            Some(Verdict::Allow) => "allow",
            None => "invalid",
        },
        hook: hook_name(t.key.hook),
        cgroup: Cgroup {
            id: t.key.cgroup_id,
            path: None,
            systemd_unit: None,
        },
        destination: SummaryDestination {
            region: policy.region_name(t.key.region).to_owned(),
            distinct,
            samples,
        },
        policy: SummaryPolicy {
            mode: if verdict == Some(Verdict::Audit) {
                "audit"
            } else {
                "enforce"
            },
            digest: policy.digest.clone(),
        },
        rule: Rule {
            id: t.key.rule,
            name: super::rule_label(policy, t.key.rule, packet_hook),
        },
        count: t.count,
        start: super::rfc3339(start_ns).to_string(),
        end: header.timestamp.to_string(),
        start_ns,
        header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_counting() {
        assert_eq!(distinct_estimate(SEEN_BITS), 0);
        assert_eq!(distinct_estimate(SEEN_BITS - 1), 1);
        assert_eq!(distinct_estimate(0), DISTINCT_MAX);
        // 254 addresses of one /24 through the kernel's bit function: within 5 %.
        let mut seen = [0u64; SUMMARY_SEEN_WORDS];
        for last in 1..=254u8 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[198, 18, 2, last]);
            let b = egressd_common::seen_bit(&a);
            seen[(b / 64) as usize] |= 1 << (b % 64);
        }
        let zero: u32 = seen.iter().map(|w| w.count_zeros()).sum();
        let n = distinct_estimate(zero);
        assert!((241..=267).contains(&n), "{n}");
    }

    #[test]
    fn taken_is_the_difference() {
        let mut s = SummaryState {
            count: 10,
            records: 0,
            epoch: 1,
            first_ns: 0,
            last_ns: 50,
            sampled: 9,
            _pad: 0,
            seen: [0; SUMMARY_SEEN_WORDS],
            samples: [SummarySample::default(); SUMMARY_SAMPLES],
            pending: SummarySample::default(),
        };
        let k = SummaryKey::default();
        assert_eq!(Taken::of(k, &s, 10), None);
        let t = Taken::of(k, &s, 4).expect("six new");
        assert_eq!((t.count, t.first_ns, t.last_ns), (6, 50, 50));
        assert_eq!(t.samples.len(), SUMMARY_SAMPLES);
        assert_eq!(t.zero_bits, SEEN_BITS);
        s.first_ns = 20;
        assert_eq!(Taken::of(k, &s, 0).map(|t| t.first_ns), Some(20));
    }
}
