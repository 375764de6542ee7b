//! `egressd status`: what pinned enforcement is doing, read from the pins alone (so it
//! works whether or not the daemon runs): each hook's link and whether it is attached, the
//! published policy generation and its digest (from the pinned state record, see
//! [`crate::kernel::pin`]), whether that policy is the last good one the daemon fell back to because
//! the files on disk were invalid (the record's `fallback`, with the error and the kept
//! policy's digest and generation), the pinned TCX links of the `tc/egress` fallback, and the
//! kernel counters.
use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, PerCpuArray};
use egressd_common::maps;
use serde::Serialize;

use crate::{
    kernel::hooks::HOOKS,
    kernel::pin::{LinkState, PinDir, PinnedState},
};

/// One hook's pinned link.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    /// Hook name, e.g. `connect4`.
    pub hook: &'static str,
    /// The link pin exists.
    pub pinned: bool,
    /// The link is attached to a cgroup (not detached with `BPF_LINK_DETACH`).
    pub attached: bool,
    /// Kernel's view of the link (ids, cgroup id), when pinned.
    pub link: Option<LinkState>,
}

/// One pinned TCX link of the `tc/egress` fallback for packet sockets (`DIR/tc/IFINDEX`,
/// see [`crate::kernel::loader::tc`]).
#[derive(Debug, Clone, Serialize)]
pub struct TcLinkStatus {
    /// Interface index the pin is named after.
    pub ifindex: u32,
    /// The interface's name now (in the caller's network namespace); `None` once it is gone.
    pub interface: Option<String>,
    /// The link still runs on that interface (the kernel's link info names it).
    pub attached: bool,
    /// Kernel's view of the link, when it can be read.
    pub link: Option<crate::kernel::pin::TcxLinkState>,
}

/// Everything `egressd status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pin directory.
    pub pin_dir: String,
    /// Hooks.
    pub hooks: Vec<HookStatus>,
    /// Pinned TCX links of the `tc/egress` fallback (empty where the BPF LSM runs, and
    /// where the kernel has no TCX: its `cls_bpf` filters are not pinned, `tc filter show
    /// dev IFACE egress` lists them).
    pub tc_egress: Vec<TcLinkStatus>,
    /// Generation published in the generation map (what the kernel uses).
    pub generation: u64,
    /// The state record the daemon wrote at its last install (digest, cgroup, ...).
    pub state: Option<PinnedState>,
    /// Non-zero decision counters.
    pub counters: Vec<crate::events::stats::CounterRow>,
    /// Which egress paths this kernel lets egressd enforce (probed now).
    pub coverage: crate::kernel::coverage::Summary,
}

/// Reads the pins under `dir`.
///
/// # Errors
/// Nothing is pinned there, or a pinned map cannot be read (needs root / CAP_BPF).
pub fn status(dir: &std::path::Path) -> anyhow::Result<Status> {
    let pins = PinDir::new(dir);
    pins.check_access()?;
    if !pins.exists() {
        anyhow::bail!(
            "nothing is pinned under {} (is egressd running with --pin-dir?)",
            dir.display()
        );
    }
    // The global LSM hooks belong to the enforcement only where they were pinned (where
    // the BPF LSM runs them).
    let hooks = HOOKS
        .iter()
        .filter(|h| h.on_cgroup() || pins.link(h.program).exists())
        .map(|h| {
            let link = crate::kernel::pin::obj_get(&pins.link(h.program))
                .and_then(|fd| crate::kernel::pin::link_state(fd.as_fd()))
                .ok();
            HookStatus {
                hook: h.pin,
                pinned: pins.link(h.program).exists(),
                attached: link.is_some_and(|l| l.cgroup_id != 0),
                link,
            }
        })
        .collect();
    let tc_egress = tc_links(&crate::kernel::loader::tc::pins_dir(dir));
    let state = pins.read_state().ok();
    let open = |name: &str| {
        MapData::from_pin(pins.map(name)).with_context(|| format!("opening pinned map {name}"))
    };
    let generation: Array<_, u64> = Array::try_from(Map::Array(open(maps::GENERATION)?))?;
    let generation = generation.get(&0, 0)?;
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(maps::COUNTERS)?))?;
    let names = state
        .as_ref()
        .map(|s| s.regions.clone())
        .unwrap_or_default();
    // Names from the pinned state; `region#ID` for ids it does not know.
    let rows = crate::events::stats::counters_named(&counters, |region| {
        if region == egressd_common::REGION_LOCAL {
            crate::config::LOCAL_REGION_NAME.to_owned()
        } else {
            names
                .get(region as usize)
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| format!("region#{region}"))
        }
    })?;
    Ok(Status {
        pin_dir: dir.display().to_string(),
        hooks,
        tc_egress,
        generation,
        state,
        counters: rows,
        coverage: crate::kernel::coverage::probe().summary(),
    })
}

/// The TCX links pinned in `dir` (`DIR/tc`), by interface index; none when it is absent.
fn tc_links(dir: &std::path::Path) -> Vec<TcLinkStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let names = crate::kernel::loader::tc::interfaces().unwrap_or_default();
    let mut out: Vec<TcLinkStatus> = entries
        .flatten()
        .filter_map(|e| {
            let ifindex: u32 = e.file_name().to_str()?.parse().ok()?;
            let link = crate::kernel::pin::obj_get(&e.path())
                .and_then(|fd| crate::kernel::pin::tcx_link_state(fd.as_fd()))
                .ok();
            Some(TcLinkStatus {
                ifindex,
                interface: names
                    .iter()
                    .find(|(i, _)| *i == ifindex)
                    .map(|(_, name)| name.clone()),
                attached: link.is_some_and(|l| l.ifindex == ifindex),
                link,
            })
        })
        .collect();
    out.sort_by_key(|t| t.ifindex);
    out
}

impl Status {
    /// Human-readable rendering, one fact per line.
    pub fn to_text(&self) -> String {
        let mut s = format!("pin directory: {}\n", self.pin_dir);
        if let Some(st) = &self.state {
            s.push_str(&format!(
                "cgroup: {}\npolicy: generation {} digest {} mode {} ({} IPv4, {} IPv6 \
                 prefixes), written by egressd {}\n",
                st.cgroup,
                st.generation,
                st.digest,
                st.mode,
                st.prefixes_v4,
                st.prefixes_v6,
                st.version
            ));
            if let Some(f) = &st.fallback {
                s.push_str(&format!(
                    "POLICY FALLBACK: the policy on disk was invalid when egressd started: {}\n\
                     \x20 enforcing the last good policy instead: digest {}, kept as generation {} \
                     at {} ({}); a reload of a valid set ends this\n",
                    f.error,
                    f.last_good_digest,
                    f.last_good_generation,
                    f.last_good_saved_at,
                    f.last_good_file
                ));
            }
        }
        let c = &self.coverage;
        s.push_str(&format!(
            "kernel {}: enforced: {}; not covered: {}{}{}\n",
            c.kernel,
            c.enforced.join(", "),
            if c.not_covered.is_empty() {
                "none".to_owned()
            } else {
                c.not_covered.join(", ")
            },
            if c.unknown.is_empty() {
                String::new()
            } else {
                format!("; unknown: {}", c.unknown.join(", "))
            },
            if c.partial.is_empty() {
                String::new()
            } else {
                format!("; partial: {}", c.partial.join(", "))
            },
        ));
        s.push_str(&format!(
            "generation in force: {}\nhooks:\n",
            self.generation
        ));
        for h in &self.hooks {
            let what = match (h.pinned, h.attached) {
                (false, _) => "not pinned".to_owned(),
                (true, false) => "pinned but DETACHED".to_owned(),
                (true, true) => h.link.map_or_else(String::new, |l| {
                    format!(
                        "attached (link {}, program {}, cgroup id {})",
                        l.link_id, l.program_id, l.cgroup_id
                    )
                }),
            };
            s.push_str(&format!("  {:<12} {what}\n", h.hook));
        }
        if !self.tc_egress.is_empty() {
            s.push_str("tc/egress (packet sockets, TCX links):\n");
        }
        for t in &self.tc_egress {
            let name = t.interface.as_deref().unwrap_or("(gone)");
            let what = match (t.attached, t.link) {
                (true, Some(l)) => {
                    format!("attached (link {}, program {})", l.link_id, l.program_id)
                }
                (false, Some(_)) => "pinned but DETACHED".to_owned(),
                (_, None) => "pinned, link unreadable".to_owned(),
            };
            s.push_str(&format!("  {name} (ifindex {}) {what}\n", t.ifindex));
        }
        s.push_str("counters:\n");
        for c in &self.counters {
            s.push_str(&format!(
                "  {:<18} {:<12} {:<6} {}\n",
                c.hook, c.region, c.verdict, c.count
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::pin::PinnedFallback;

    fn status(fallback: Option<PinnedFallback>) -> Status {
        Status {
            pin_dir: "/sys/fs/bpf/egressd".into(),
            hooks: Vec::new(),
            tc_egress: Vec::new(),
            generation: 3,
            state: Some(PinnedState {
                cgroup: "/sys/fs/cgroup".into(),
                generation: 3,
                digest: "27503b605b2868cd".into(),
                mode: "enforce".into(),
                fallback,
                ..PinnedState::default()
            }),
            counters: Vec::new(),
            coverage: crate::kernel::coverage::Summary {
                kernel: "6.18.0".into(),
                enforced: vec!["tcp"],
                partial: Vec::new(),
                not_covered: Vec::new(),
                unknown: Vec::new(),
            },
        }
    }

    /// The fallback is said, with the error and the kept policy; without one, nothing.
    #[test]
    fn status_text_names_the_fallback() {
        let text = status(Some(PinnedFallback {
            error: "policy.d/team.toml:1:10: regions.eu: duplicate region `eu`".into(),
            last_good_digest: "27503b605b2868cd".into(),
            last_good_generation: 2,
            last_good_saved_at: "2026-11-30T22:00:00Z".into(),
            last_good_file: "/var/lib/egressd/last-good/policy-0123456789abcdef.json".into(),
        }))
        .to_text();
        assert!(
            text.contains(
                "POLICY FALLBACK: the policy on disk was invalid when egressd started: \
                 policy.d/team.toml:1:10: regions.eu: duplicate region `eu`\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  enforcing the last good policy instead: digest 27503b605b2868cd, kept as \
                 generation 2 at 2026-11-30T22:00:00Z (/var/lib/egressd/last-good/policy-0123456789abcdef.json)"
            ),
            "{text}"
        );
        assert!(!status(None).to_text().contains("FALLBACK"));
    }

    /// Each pinned TCX link is a line: attached with its ids, detached, or gone.
    #[test]
    fn status_text_lists_the_tc_links() {
        use crate::kernel::pin::TcxLinkState;
        let mut st = status(None);
        assert!(!st.to_text().contains("tc/egress"));
        let link = |ifindex| {
            Some(TcxLinkState {
                link_id: 7,
                program_id: 9,
                ifindex,
            })
        };
        st.tc_egress = vec![
            TcLinkStatus {
                ifindex: 2,
                interface: Some("eth0".into()),
                attached: true,
                link: link(2),
            },
            TcLinkStatus {
                ifindex: 5,
                interface: None,
                attached: false,
                link: link(0),
            },
        ];
        let text = st.to_text();
        assert!(
            text.contains(
                "tc/egress (packet sockets, TCX links):\n  eth0 (ifindex 2) attached (link 7, \
                 program 9)\n  (gone) (ifindex 5) pinned but DETACHED\n"
            ),
            "{text}"
        );
    }

    /// The record round-trips through the pinned state's JSON; a record written before the
    /// field existed reads as no fallback.
    #[test]
    fn pinned_state_fallback_round_trips() {
        let st = status(Some(PinnedFallback::default()))
            .state
            .expect("state");
        let json = serde_json::to_string(&st).expect("serializes");
        let back: PinnedState = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, st);
        let old = serde_json::to_string(&PinnedState::default()).expect("serializes");
        assert!(!old.contains("fallback"), "{old}");
        let back: PinnedState = serde_json::from_str(&old).expect("parses");
        assert!(back.fallback.is_none());
    }
}
