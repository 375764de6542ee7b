//! Kernel counters: attempts by (hook, region, verdict) and events lost in the kernel.
use aya::maps::{MapData, PerCpuArray};
use egressd_common::{COUNTER_SLOTS, HOOK_SLOTS, MAX_REGIONS, VERDICT_COUNT, counter_index, loss};
use egressd_common::{FLOW_SLOTS, FlowCounter, flow_index};
use serde::Serialize;

use crate::{events::hook_name, policy::Policy};

/// One non-zero counter, summed over CPUs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    /// Kernel hook, e.g. `"cgroup/connect4"`.
    pub hook: &'static str,
    /// Region name, `"unknown"` (in no region) or `"local"` (loopback/unspecified).
    pub region: String,
    /// `"allow"`, `"deny"` or `"audit"`.
    pub verdict: &'static str,
    /// Attempts since the programs were loaded.
    pub count: u64,
}

/// Kernel-side event accounting.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Loss {
    /// Events lost: the ring buffer was full when the kernel tried to write one.
    pub ringbuf_full: u64,
    /// Events held back by flood suppression (not lost: each later event of the same
    /// process, destination and verdict carries the count in `suppressed`).
    pub suppressed: u64,
}

/// Reads all non-zero counters, summing the per-CPU values; regions are named by `policy`.
/// The whole array in one batch read ([`crate::kernel::batch`]).
pub fn counters(
    map: &PerCpuArray<MapData, u64>,
    policy: &Policy,
) -> anyhow::Result<Vec<CounterRow>> {
    counters_named(map, |region| region_label(policy, region))
}

/// As [`counters`], with regions named by `label` (region id to name).
pub fn counters_named(
    map: &PerCpuArray<MapData, u64>,
    label: impl Fn(u32) -> String,
) -> anyhow::Result<Vec<CounterRow>> {
    let all = crate::kernel::batch::read_per_cpu(map)?;
    let mut rows = Vec::new();
    for hook in 0..HOOK_SLOTS {
        for region in 0..MAX_REGIONS {
            for verdict in 0..VERDICT_COUNT {
                let idx = counter_index(hook, region, verdict);
                debug_assert!(idx < COUNTER_SLOTS);
                let count: u64 = all.slot(idx).iter().sum();
                if count == 0 {
                    continue;
                }
                rows.push(CounterRow {
                    hook: hook_name(u8::try_from(hook)?),
                    region: label(region),
                    verdict: ["allow", "deny", "audit"][verdict as usize],
                    count,
                });
            }
        }
    }
    Ok(rows)
}

/// Packets and bytes for one (direction, region, verdict), summed over CPUs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlowRow {
    /// `"egress"` or `"ingress"`.
    pub direction: &'static str,
    /// Region of the remote address, as in [`CounterRow::region`].
    pub region: String,
    /// Verdict for the remote address (on ingress: what egress to it would get).
    pub verdict: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes from the IP header on (link layer excluded).
    pub bytes: u64,
}

/// Reads all non-zero packet/byte counters.
pub fn flows(
    map: &PerCpuArray<MapData, FlowCounter>,
    policy: &Policy,
) -> anyhow::Result<Vec<FlowRow>> {
    let all = crate::kernel::batch::read_per_cpu(map)?;
    let mut rows = Vec::new();
    for (dir, name) in [(0u32, "egress"), (1, "ingress")] {
        for region in 0..MAX_REGIONS {
            for verdict in 0..VERDICT_COUNT {
                let idx = flow_index(dir, region, verdict);
                debug_assert!(idx < FLOW_SLOTS);
                let (packets, bytes) = all
                    .slot(idx)
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if packets == 0 {
                    continue;
                }
                rows.push(FlowRow {
                    direction: name,
                    region: region_label(policy, region),
                    verdict: ["allow", "deny", "audit"][verdict as usize],
                    packets,
                    bytes,
                });
            }
        }
    }
    Ok(rows)
}

/// Reads the kernel loss counters.
pub fn loss(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Loss> {
    Ok(Loss {
        ringbuf_full: map.get(&loss::RINGBUF_FULL, 0)?.iter().sum(),
        suppressed: map.get(&loss::SUPPRESSED, 0)?.iter().sum(),
    })
}

/// Fail-closed denials by reason (non-zero only), as (reason name, count); names are
/// [`egressd_common::failsafe`] codes in snake case.
pub fn fail_closed(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Vec<(String, u64)>> {
    use egressd_common::failsafe as f;
    let names = [
        (f::UNPARSEABLE, "unparseable"),
        (f::CHAIN_TOO_LONG, "chain_too_long"),
        (f::BAD_ENTRY, "bad_entry"),
        (f::NO_PAGE, "no_page"),
        (f::LOCAL_MISROUTED, "local_misrouted"),
        (f::ROUTE_TOO_LONG, "route_too_long"),
        (f::ROUTE_HOP_RULES, "route_hop_rules"),
        (f::NEXT_HOP_MISMATCH, "next_hop_mismatch"),
        (f::NEXT_HOP_UNVERIFIED, "next_hop_unverified"),
        (f::SCRATCH_RACE, "scratch_race"),
        (f::NEXT_HOP_FORCED, "next_hop_forced"),
    ];
    let mut out = Vec::new();
    for (code, name) in names {
        let n: u64 = map.get(&code, 0)?.iter().sum();
        if n > 0 {
            out.push((name.to_owned(), n));
        }
    }
    Ok(out)
}

/// Region name for a counter slot, including the reserved ids.
pub fn region_label(policy: &Policy, region: u32) -> String {
    if region == egressd_common::REGION_LOCAL {
        crate::config::LOCAL_REGION_NAME.into()
    } else {
        policy.region_name(region).to_owned()
    }
}
