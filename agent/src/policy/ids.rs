//! Stable region and rule ids: the kernel counts attempts and packets under a region id
//! (`egressd_common::counter_index`, `flow_index`) and events carry region and rule ids, so an
//! id must keep meaning the same name across reloads and restarts. Otherwise a reload that
//! reorders, adds or removes regions would move every counter to another label.
//!
//! [`IdTable`] keeps `name -> id` for every name the daemon has put in force:
//!
//! - A name keeps its id for as long as the table exists, also while it is out of the policy
//!   (removed, then added back: the same id, and its counters continue).
//! - A new region name gets the lowest id never used (`1..=MAX_REGIONS - 2`); ids are never
//!   taken over while unused ones remain, so a removed region's counters are not inherited.
//! - Only when all 1022 ids have been used is an id reclaimed: that of the region removed
//!   longest ago, never one the policy in force still uses. Its counter slots (all hooks,
//!   directions and verdicts) are zeroed by the loader before the policy that reuses it is
//!   published ([`Assignment::reset_regions`]), so the new name starts from zero. Flows that
//!   kept an older generation's verdict (`established = "keep"`) still count under the id
//!   they were judged with; such packets after a reclaim count under the new name.
//! - Rule ids (`u32`, events only; the kernel keeps no per-rule counter) are never reused:
//!   a new rule name gets the next id. Unnamed rules are named by where they are defined
//!   (`rule at FILE:LINE`), so moving one gives it a new id. Rules that share a name share
//!   the id. Precedence among rules is their order in the files, not their id.
//!
//! The table lives in memory for the daemon's lifetime and, with a state directory, in
//! `STATE_DIR/ids-<cgroup>.json` (one per enforced cgroup, written atomically after each
//! policy is put in force, see [`IdTable::save`]). With `--pin-dir`, the pinned state record
//! also names every id ([`crate::kernel::pin::PinnedState::regions`]); at start those names win over
//! the file, since they describe the counters in the pinned maps ([`IdTable::reconcile`]).
use std::{collections::BTreeMap, ffi::OsStr, io, path::Path};

use anyhow::Context as _;
use egressd_common::{MAX_REGIONS, REGION_LOCAL, RULE_DEFAULT};
use serde::{Deserialize, Serialize};

use crate::{
    base::safefs::{FILE_MODE, TrustedDir},
    config::Config,
};

/// Layout version of the saved table.
const FORMAT: u32 = 1;
/// Highest region id a name can get (`REGION_LOCAL` and above are reserved).
pub const MAX_REGION_ID: u32 = REGION_LOCAL - 1;
/// Retired rule names kept at most (oldest dropped first); their ids are not reused.
const RETIRED_RULES_KEPT: usize = 4096;

/// One name's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    /// The id.
    id: u32,
    /// In the policy in force.
    live: bool,
    /// Order of retirement (larger: removed more recently); 0 while live.
    retired: u64,
}

/// Ids of one kind (regions or rules).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Space {
    /// Every name seen, with its id.
    names: BTreeMap<String, Slot>,
    /// Next id never used.
    next: u32,
    /// Retirement counter.
    clock: u64,
}

impl Space {
    fn new() -> Self {
        Self {
            names: BTreeMap::new(),
            next: 1,
            clock: 0,
        }
    }

    fn id_of(&self, name: &str) -> Option<u32> {
        self.names.get(name).map(|s| s.id)
    }

    /// Marks every name of `live` live and every other retired.
    fn set_live(&mut self, live: &std::collections::HashSet<&str>) {
        for (name, slot) in &mut self.names {
            let now_live = live.contains(name.as_str());
            if slot.live && !now_live {
                self.clock += 1;
                slot.retired = self.clock;
            }
            if now_live {
                slot.retired = 0;
            }
            slot.live = now_live;
        }
    }

    fn retired(&self) -> BTreeMap<u32, String> {
        self.names
            .iter()
            .filter(|(_, s)| !s.live)
            .map(|(n, s)| (s.id, n.clone()))
            .collect()
    }
}

/// The saved form of an [`IdTable`].
#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    /// The cgroup the table's ids count in.
    cgroup: String,
    regions: Space,
    rules: Space,
}

/// `name -> id` for regions and rules; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTable {
    regions: Space,
    rules: Space,
}

impl Default for IdTable {
    fn default() -> Self {
        Self {
            regions: Space::new(),
            rules: Space::new(),
        }
    }
}

/// Ids for one configuration, from [`IdTable::assign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Region id of each `cfg.regions[i]`.
    pub region_ids: Vec<u32>,
    /// Rule id of each `cfg.rules[i]`.
    pub rule_ids: Vec<u32>,
    /// Names of region ids known to the table but not in this configuration (removed
    /// earlier), so their counters keep their label.
    pub retired_regions: BTreeMap<u32, String>,
    /// Names of rule ids known to the table but not in this configuration.
    pub retired_rules: BTreeMap<u32, String>,
    /// Region ids taken over from a removed region: their counters must be zeroed before
    /// the policy is published.
    pub reset_regions: Vec<u32>,
    /// The table once this assignment is in force ([`IdTable::commit`]).
    pub table: IdTable,
}

/// No region id can be given without taking over one the policy in force still counts.
#[derive(Debug, thiserror::Error)]
#[error(
    "no free region id for `{name}`: all {MAX_REGION_ID} ids are used by the policy in force \
     or this one; remove the regions that go in one reload and add the new ones in the next"
)]
pub struct Exhausted {
    /// The region that got no id.
    pub name: String,
}

impl IdTable {
    /// Ids in file order (region `i` has id `i + 1`, rule `i` id `i + 1`), as a fresh table
    /// assigns them: what `check` and `explain` use, and what a daemon's first policy gets.
    pub fn positional(cfg: &Config) -> Assignment {
        Self::default()
            .assign(cfg)
            .unwrap_or_else(|_| unreachable!("a fresh table has an id for each region"))
    }

    /// Ids for `cfg`: known names keep theirs, new ones get fresh ids (see the module
    /// documentation). `self` is unchanged; [`IdTable::commit`] the result once the policy
    /// is in force.
    ///
    /// # Errors
    /// [`Exhausted`]: every region id is used by the policy in force or by `cfg`.
    pub fn assign(&self, cfg: &Config) -> Result<Assignment, Exhausted> {
        let mut table = self.clone();
        let mut region_ids = Vec::with_capacity(cfg.regions.len());
        let mut reset_regions = Vec::new();
        let wanted: std::collections::HashSet<&str> =
            cfg.regions.iter().map(|r| r.name.as_str()).collect();
        for r in &cfg.regions {
            if let Some(id) = table.regions.id_of(&r.name) {
                region_ids.push(id);
                continue;
            }
            let id = if table.regions.next <= MAX_REGION_ID {
                table.regions.next += 1;
                table.regions.next - 1
            } else {
                // Reclaim the id retired longest ago that neither the policy in force (live
                // in `self`) nor this configuration uses.
                let victim = table
                    .regions
                    .names
                    .iter()
                    .filter(|(n, s)| !s.live && !wanted.contains(n.as_str()))
                    .min_by_key(|(_, s)| s.retired)
                    .map(|(n, s)| (n.clone(), s.id));
                let Some((old, id)) = victim else {
                    return Err(Exhausted {
                        name: r.name.clone(),
                    });
                };
                table.regions.names.remove(&old);
                reset_regions.push(id);
                id
            };
            table.regions.names.insert(
                r.name.clone(),
                Slot {
                    id,
                    live: false,
                    retired: 0,
                },
            );
            region_ids.push(id);
        }
        table.regions.set_live(&wanted);

        let mut rule_ids = Vec::with_capacity(cfg.rules.len());
        for r in &cfg.rules {
            let id = match table.rules.id_of(&r.name) {
                Some(id) => id,
                None => {
                    let mut id = table.rules.next.max(1);
                    if id == RULE_DEFAULT {
                        // 4 billion rule names later: start again above the reserved 0.
                        id = 1;
                    }
                    table.rules.next = id + 1;
                    table.rules.names.insert(
                        r.name.clone(),
                        Slot {
                            id,
                            live: false,
                            retired: 0,
                        },
                    );
                    id
                }
            };
            rule_ids.push(id);
        }
        let live_rules = cfg.rules.iter().map(|r| r.name.as_str()).collect();
        table.rules.set_live(&live_rules);
        let retired = table.rules.names.values().filter(|s| !s.live).count();
        if retired > RETIRED_RULES_KEPT {
            let mut old: Vec<(u64, String)> = table
                .rules
                .names
                .iter()
                .filter(|(_, s)| !s.live)
                .map(|(n, s)| (s.retired, n.clone()))
                .collect();
            old.sort_unstable();
            for (_, n) in old.into_iter().take(retired - RETIRED_RULES_KEPT) {
                table.rules.names.remove(&n);
            }
        }
        Ok(Assignment {
            region_ids,
            rule_ids,
            retired_regions: table.regions.retired(),
            retired_rules: table.rules.retired(),
            reset_regions,
            table,
        })
    }

    /// Makes `assignment` the table (its policy is in force).
    pub fn commit(&mut self, assignment: &Assignment) {
        self.clone_from(&assignment.table);
    }

    /// Region names by id (index = id, `""` for ids without a name), as pinned for
    /// `egressd status`.
    pub fn region_names(&self) -> Vec<String> {
        let len = self
            .regions
            .names
            .values()
            .map(|s| s.id + 1)
            .max()
            .unwrap_or(1);
        let mut out = vec![String::new(); len as usize];
        for (n, s) in &self.regions.names {
            out[s.id as usize] = n.clone();
        }
        out
    }

    /// Takes the region ids a pinned state record names (index = id; empty and reserved
    /// slots ignored): they describe the counters in the pinned maps, so a name there keeps
    /// that id, and a name or id of this table that conflicts is dropped. The names are
    /// counted as live (the pinned policy may still be in force, so none of their ids is
    /// reclaimed before the next reload).
    pub fn reconcile(&mut self, pinned: &[String]) {
        for (id, name) in pinned.iter().enumerate() {
            let Ok(id) = u32::try_from(id) else { break };
            if id == 0 || id > MAX_REGION_ID || name.is_empty() {
                continue;
            }
            if self.regions.id_of(name) == Some(id) {
                if let Some(s) = self.regions.names.get_mut(name) {
                    s.live = true;
                    s.retired = 0;
                }
                continue;
            }
            self.regions.names.retain(|n, s| n != name && s.id != id);
            self.regions.names.insert(
                name.clone(),
                Slot {
                    id,
                    live: true,
                    retired: 0,
                },
            );
            self.regions.next = self.regions.next.max(id + 1);
        }
    }

    /// The file of the table for `cgroup` in `state_dir`.
    pub fn file_name(cgroup: &Path) -> String {
        let h = crate::policy::fnv1a64(cgroup.display().to_string().as_bytes());
        format!("ids-{h:016x}.json")
    }

    /// Reads the table kept for `cgroup` in `state_dir`; `Ok(None)` when there is none (or
    /// it was kept for another cgroup).
    ///
    /// # Errors
    /// The directory or file fails the [`crate::base::safefs`] checks, cannot be read or parsed,
    /// or has another layout version.
    pub fn load(state_dir: &Path, cgroup: &Path) -> anyhow::Result<Option<Self>> {
        let name = Self::file_name(cgroup);
        let path = state_dir.join(&name);
        let dir = match TrustedDir::open(state_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("state directory {}", state_dir.display()));
            }
        };
        let file = match dir.read(OsStr::new(&name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let saved: Saved = serde_json::from_reader(io::BufReader::new(file))
            .with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            saved.format == FORMAT,
            "{}: layout version {} (this egressd reads {FORMAT})",
            path.display(),
            saved.format
        );
        if saved.cgroup != cgroup.display().to_string() {
            return Ok(None);
        }
        let ok = |s: &Space, max: u32| {
            let mut seen = std::collections::HashSet::new();
            s.names
                .values()
                .all(|v| v.id >= 1 && v.id <= max && v.id < s.next.max(1))
                && (max == u32::MAX || s.names.values().all(|v| seen.insert(v.id)))
        };
        anyhow::ensure!(
            ok(&saved.regions, MAX_REGION_ID) && ok(&saved.rules, u32::MAX),
            "{}: an id out of range or given twice",
            path.display()
        );
        Ok(Some(Self {
            regions: saved.regions,
            rules: saved.rules,
        }))
    }

    /// Keeps the table for `cgroup` in `state_dir` (created 0700 if missing), atomically.
    ///
    /// # Errors
    /// The directory fails the [`crate::base::safefs`] checks or cannot be created; a disk error.
    pub fn save(&self, state_dir: &Path, cgroup: &Path) -> anyhow::Result<()> {
        let name = Self::file_name(cgroup);
        let saved = Saved {
            format: FORMAT,
            cgroup: cgroup.display().to_string(),
            regions: self.regions.clone(),
            rules: self.rules.clone(),
        };
        let json = serde_json::to_vec_pretty(&saved).context("serializing the id table")?;
        let dir = TrustedDir::create(state_dir)
            .with_context(|| format!("state directory {}", state_dir.display()))?;
        dir.replace(OsStr::new(&name), &json, FILE_MODE)
            .and_then(|()| dir.sync())
            .with_context(|| format!("writing {}", state_dir.join(&name).display()))
    }
}

const _: () = assert!(MAX_REGION_ID == MAX_REGIONS - 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::safefs::tests::Tmp;

    fn cfg(regions: &[&str], rules: &[&str]) -> Config {
        let mut text = String::from("allowlist = []\n");
        for (i, r) in regions.iter().enumerate() {
            text.push_str(&format!(
                "[regions.{r}]\nprefixes = [\"10.{}.{}.0/24\"]\n",
                i / 256,
                i % 256
            ));
        }
        for r in rules {
            text.push_str(&format!(
                "[[rules]]\nname = \"{r}\"\naction = \"allow\"\nto = [\"192.0.2.0/24\"]\n"
            ));
        }
        crate::config::parse(Path::new("t.toml"), &text).expect("valid")
    }

    fn ids(t: &mut IdTable, regions: &[&str], rules: &[&str]) -> Assignment {
        let a = t.assign(&cfg(regions, rules)).expect("ids");
        t.commit(&a);
        a
    }

    #[test]
    fn ids_follow_names_across_reorder_add_remove() {
        let mut t = IdTable::default();
        let a = ids(&mut t, &["eu", "us"], &["ntp", "dns"]);
        assert_eq!((a.region_ids, a.rule_ids), (vec![1, 2], vec![1, 2]));
        // Reordered, one added: the old names keep their ids, the new one gets a fresh id.
        let a = ids(&mut t, &["asia", "us", "eu"], &["dns", "smtp", "ntp"]);
        assert_eq!(a.region_ids, vec![3, 2, 1]);
        assert_eq!(a.rule_ids, vec![2, 3, 1]);
        assert!(a.reset_regions.is_empty() && a.retired_regions.is_empty());
        // Removed: its id is not given to a new name, and it keeps its label.
        let a = ids(&mut t, &["eu", "apac"], &["ntp"]);
        assert_eq!(a.region_ids, vec![1, 4]);
        assert_eq!(
            a.retired_regions,
            BTreeMap::from([(2, "us".into()), (3, "asia".into())])
        );
        assert_eq!(
            a.retired_rules,
            BTreeMap::from([(2, "dns".into()), (3, "smtp".into())])
        );
        // Back again: the same id.
        let a = ids(&mut t, &["us", "eu"], &["smtp"]);
        assert_eq!((a.region_ids, a.rule_ids), (vec![2, 1], vec![3]));
        assert_eq!(t.region_names(), ["", "eu", "us", "asia", "apac"]);
        // The positional ids of a fresh table are file order.
        let p = IdTable::positional(&cfg(&["b", "a"], &["y", "x"]));
        assert_eq!((p.region_ids, p.rule_ids), (vec![1, 2], vec![1, 2]));
    }

    #[test]
    fn ids_reclaimed_only_when_exhausted_and_never_in_force() {
        let names: Vec<String> = (0..MAX_REGION_ID).map(|i| format!("r{i}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut t = IdTable::default();
        ids(&mut t, &all, &[]);
        // Every id is used by the policy in force: a new name in place of r0 must wait.
        let mut swapped = all.clone();
        swapped[0] = "new";
        let e = t.assign(&cfg(&swapped, &[])).expect_err("exhausted");
        assert_eq!(e.name, "new");
        assert!(e.to_string().contains("in the next"), "{e}");
        // Removing r0 and r1 first (r1 later), then adding `new`: r0's id (removed longest
        // ago) is reclaimed and reset; r1's is kept.
        ids(&mut t, &all[1..], &[]);
        ids(&mut t, &all[2..], &[]);
        let mut with_new = all[2..].to_vec();
        with_new.push("new");
        let a = ids(&mut t, &with_new, &[]);
        assert_eq!(a.region_ids.last(), Some(&1));
        assert_eq!(a.reset_regions, vec![1]);
        assert_eq!(a.retired_regions, BTreeMap::from([(2, "r1".into())]));
        // r0 is a new name now: it takes r1's id, reset too.
        let mut back = with_new.clone();
        back.push("r0");
        let a = ids(&mut t, &back, &[]);
        assert_eq!((a.region_ids.last(), a.reset_regions), (Some(&2), vec![2]));
    }

    #[test]
    fn ids_saved_per_cgroup_and_reconciled_with_pins() {
        let tmp = Tmp::new("ids");
        let dir = tmp.0.join("state");
        let cg = Path::new("/sys/fs/cgroup/a");
        assert!(IdTable::load(&dir, cg).expect("none").is_none());
        let mut t = IdTable::default();
        ids(&mut t, &["eu", "us"], &["ntp"]);
        ids(&mut t, &["us"], &["ntp"]);
        t.save(&dir, cg).expect("saved");
        let back = IdTable::load(&dir, cg).expect("reads").expect("kept");
        assert_eq!(back, t);
        assert!(
            IdTable::load(&dir, Path::new("/sys/fs/cgroup/b"))
                .expect("reads")
                .is_none()
        );
        // Pins say `us` is 1 and `asia` 3: they win; `eu` (which had 1) is dropped.
        let mut r = back.clone();
        r.reconcile(&["unknown".into(), "us".into(), String::new(), "asia".into()]);
        let a = r.assign(&cfg(&["asia", "eu", "us"], &[])).expect("ids");
        assert_eq!(a.region_ids, vec![3, 4, 1]);
        // A corrupt file is an error naming it.
        std::fs::write(dir.join(IdTable::file_name(cg)), "{").expect("write");
        let e = IdTable::load(&dir, cg).expect_err("corrupt");
        assert!(format!("{e:#}").contains("ids-"), "{e:#}");
    }
}
