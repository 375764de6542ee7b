//! Tamper checks: hooks no longer attached to the enforced cgroup (detached behind egressd's
//! back, or the cgroup removed and made again, as systemd does at every service restart)
//! are attached again in both modes; in pinned mode, removed pins, a rewritten generation or
//! a changed set are found and repaired too ([`Enforcer::verify_and_repair`]).
use super::*;

impl Enforcer {
    /// Checks that every cgroup hook runs egressd's program on the enforced cgroup as it is
    /// now: a hook found detached, or a cgroup found made anew under the same path (a new
    /// cgroup id: systemd removes and re-creates a service's cgroup when it restarts it),
    /// gets its programs attached again, and the packet-socket hooks (BPF LSM or the
    /// `tc/egress` fallback, which test the cgroup by [`maps::LSM_CGROUP`]) follow the new
    /// cgroup. In pinned mode also every pinned link: the pin exists, is attached to our
    /// cgroup and runs our program. A link found missing, detached or replaced is restored
    /// (the program re-attached and pinned again, or swapped back with `BPF_LINK_UPDATE`);
    /// the published generation is rewritten if it changed, and the active set is refilled
    /// if its tries, entries or settings differ from the policy (for policies of more than
    /// 100,000 prefixes this comparison runs every 40th call only).
    /// Returns one line per repair (empty: nothing was wrong).
    ///
    /// # Errors
    /// The cgroup does not exist (nothing is enforced in its place until it does: it is
    /// attached then); a repair failed.
    pub fn verify_and_repair(&mut self) -> anyhow::Result<Vec<String>> {
        let Some(cgroup) = self
            .pins
            .as_ref()
            .map(|p| p.cgroup.clone())
            .or_else(|| self.cgroup.clone())
        else {
            return Ok(Vec::new());
        };
        let gone = |e: std::io::Error| {
            anyhow!(
                "cgroup {} is gone ({e}): processes of a cgroup made anew there are not \
                 enforced until egressd attaches to it (within 250 ms of its creation)",
                cgroup.display()
            )
        };
        let cg = File::open(&cgroup).map_err(gone)?;
        let cgroup_id = cg.metadata().map_err(gone)?.ino();
        let mut repairs = Vec::new();
        if cgroup_id != self.cgroup_id {
            if self.lsm.attached || self.tc.coverage().is_some_and(|c| c.is_ok()) {
                set_enforced_cgroup(&mut self.ebpf, &cg)
                    .context("pointing the packet-socket hooks at the new cgroup")?;
            }
            repairs.push(format!(
                "cgroup {} was made anew (id {} -> {cgroup_id}); its hooks are attached to it",
                cgroup.display(),
                self.cgroup_id
            ));
            self.cgroup_id = cgroup_id;
        }
        let Some(pins) = &self.pins else {
            self.reattach_unpinned(&cg, &mut repairs)?;
            return Ok(repairs);
        };
        let dir = pins.dir.clone();
        // `egressd detach` (or `rm -r`) while this daemon runs: the links below are gone
        // with their directory. Make it again so they can be pinned anew.
        if !dir.links_dir().is_dir() {
            dir.prepare()
                .context("re-creating the removed pin directory")?;
            repairs.push(format!(
                "pin directory {} was removed; re-created",
                dir.links_dir().display()
            ));
        }
        for spec in &HOOKS {
            let (name, hook) = (spec.program, spec.name);
            if !spec.on_cgroup() && !self.lsm.attached {
                continue;
            }
            let want = self.program_id(name)?;
            let path = dir.link(name);
            let state = crate::kernel::pin::obj_get(&path)
                .and_then(|fd| Ok((crate::kernel::pin::link_state(fd.as_fd())?, fd)));
            if !spec.on_cgroup() {
                // A global LSM link cannot be updated in place: attach anew, then re-pin.
                if !state.is_ok_and(|(st, _)| st.program_id == want) {
                    self.replace_global(spec, &cg, &path)?;
                    repairs.push(format!("{hook}: link missing or replaced; re-attached"));
                }
                continue;
            }
            match state {
                Ok((st, fd)) if st.cgroup_id == cgroup_id && st.program_id == want => {
                    drop(fd);
                }
                Ok((st, fd)) if st.cgroup_id == cgroup_id => {
                    let prog = self.program_fd(name)?;
                    crate::kernel::pin::link_update(fd.as_fd(), prog)?;
                    repairs.push(format!(
                        "{hook}: link ran program {} instead of {want}; restored",
                        st.program_id
                    ));
                }
                other => {
                    let why = match &other {
                        Ok(_) => "link detached from the cgroup".to_owned(),
                        Err(_) => "link pin missing".to_owned(),
                    };
                    if path.exists() {
                        std::fs::remove_file(&path)
                            .with_context(|| format!("removing {}", path.display()))?;
                    }
                    self.attach_one(spec, &cg, &path)?;
                    repairs.push(format!("{hook}: {why}; re-attached"));
                }
            }
        }
        let mut generation: Array<_, u64> =
            Array::try_from(map(&mut self.ebpf, maps::GENERATION)?)?;
        let published = generation.get(&0, 0)?;
        if published != self.generation {
            generation.set(0, self.generation, 0)?;
            repairs.push(format!(
                "policy generation was changed to {published}; restored {}",
                self.generation
            ));
        }
        let exes: aya::maps::HashMap<_, egressd_common::ExeKey, u8> =
            aya::maps::HashMap::try_from(map(&mut self.ebpf, maps::PACKET_EXES)?)?;
        let held: std::collections::HashMap<_, _> = exes.iter().filter_map(Result::ok).collect();
        if held != self.exes {
            write_exes(&mut self.ebpf, &self.exes)?;
            repairs.push("executables allowed to use packet sockets were changed; restored".into());
        }
        let set = set_of(self.generation);
        let checks = self.pins.as_mut().map_or(0, |p| {
            p.checks += 1;
            p.checks
        });
        // Comparing a table means compiling it again and reading all of it: as rare as a
        // large trie.
        let large = |p: &Policy| {
            p.lpm_v4.len() + p.lpm_v6.len() > LARGE_POLICY
                || !self.v4_in_trie[set]
                || !self.v6_in_trie[set]
        };
        if let Some(policy) = self.sets[set].clone()
            && (!large(&policy) || checks.is_multiple_of(LARGE_CHECK_EVERY))
            && !self.set_matches(set, &policy)?
        {
            let table = plan_table(&policy, self.table_room, None);
            let table6 = compile_table6(&policy, self.table6_room, None);
            let (used_table, used_table6) = fill_set(
                &mut self.ebpf,
                set,
                Stale::default(),
                &policy,
                self.generation,
                table,
                table6.as_ref(),
            )?;
            clear_stale(&mut self.ebpf, set, &policy, used_table, used_table6)?;
            self.v4_in_trie[set] = !used_table;
            self.v6_in_trie[set] = !used_table6;
            repairs.push(format!(
                "policy maps of generation {} were changed; restored",
                self.generation
            ));
        }
        Ok(repairs)
    }

    /// Unpinned mode: attaches anew each cgroup hook whose program the kernel no longer
    /// runs on `cg` (its link detached, or on a cgroup since removed); the old link is
    /// dropped.
    fn reattach_unpinned(&mut self, cg: &File, repairs: &mut Vec<String>) -> anyhow::Result<()> {
        for (i, hook) in HOOKS.iter().enumerate() {
            if !hook.on_cgroup() {
                continue;
            }
            let want = self.program_id(hook.program)?;
            if crate::kernel::pin::attached_programs(cg.as_fd(), hook.attach_type)?.contains(&want)
            {
                continue;
            }
            let link = self.attach_link(hook, cg)?;
            self.links.retain(|(j, _)| *j != i);
            self.links.push((i, link));
            repairs.push(format!(
                "{}: not attached to the cgroup; re-attached",
                hook.name
            ));
        }
        Ok(())
    }

    /// Whether set `set` holds exactly `policy` (tries, entries in use, settings).
    pub(super) fn set_matches(&mut self, set: usize, policy: &Policy) -> anyhow::Result<bool> {
        let settings: Array<_, GlobalPolicy> =
            Array::try_from(map(&mut self.ebpf, maps::SETTINGS)?)?;
        let uses_table = settings.get(&u32::try_from(set)?, 0)?.v4_table != 0;
        let want_v4: &[(Ipv4Network, u32)] = if uses_table {
            let Some(t) = compile_table(policy, self.table_room) else {
                return Ok(false);
            };
            if !table::holds(&self.ebpf, maps::TABLE14[set], t.dir_bytes())?
                || !table::holds(&self.ebpf, maps::TABLE24[set], t.pool_bytes())?
                || !table::holds(&self.ebpf, maps::TABLE8[set], t.t8_bytes())?
            {
                return Ok(false);
            }
            &[]
        } else {
            &policy.lpm_v4
        };
        let trie4: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(map(&mut self.ebpf, maps::PREFIXES_V4[set])?)?;
        let mut n = 0usize;
        let want4: std::collections::HashMap<(u32, [u8; 4]), u32> = want_v4
            .iter()
            .map(|(net, e)| ((u32::from(net.prefix()), net.network().octets()), *e))
            .collect();
        for item in trie4.iter() {
            let (k, v) = item?;
            n += 1;
            if want4.get(&(k.prefix_len(), k.data())) != Some(&v) {
                return Ok(false);
            }
        }
        if n != want4.len() {
            return Ok(false);
        }
        let uses_table6 = table::holds(&self.ebpf, maps::TABLE6_INDEX[set], &1u64.to_ne_bytes())?;
        let want_v6: &[(Ipv6Network, u32)] = if uses_table6 {
            let Some(t) = compile_table6(policy, self.table6_room, None) else {
                return Ok(false);
            };
            if !table::holds(&self.ebpf, maps::TABLE6_INDEX[set], t.index_bytes())?
                || !table::holds(&self.ebpf, maps::TABLE6_RANGES[set], t.ranges_bytes())?
            {
                return Ok(false);
            }
            &[]
        } else {
            &policy.lpm_v6
        };
        let trie6: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(map(&mut self.ebpf, maps::PREFIXES_V6[set])?)?;
        let want6: std::collections::HashMap<(u32, [u8; 16]), u32> = want_v6
            .iter()
            .map(|(net, e)| ((u32::from(net.prefix()), net.network().octets()), *e))
            .collect();
        let mut n = 0usize;
        for item in trie6.iter() {
            let (k, v) = item?;
            n += 1;
            if want6.get(&(k.prefix_len(), k.data())) != Some(&v) {
                return Ok(false);
            }
        }
        if n != want6.len() {
            return Ok(false);
        }
        let entries: Array<_, Entry> = Array::try_from(map(&mut self.ebpf, maps::ENTRIES[set])?)?;
        for (id, e) in policy.entries.iter().enumerate() {
            if entries.get(&u32::try_from(id)?, 0)? != *e {
                return Ok(false);
            }
        }
        let nat64: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(map(&mut self.ebpf, maps::NAT64[set])?)?;
        let want_nat64: HashSet<(u32, [u8; 16])> = policy
            .nat64
            .iter()
            .map(|n| (u32::from(n.prefix()), n.network().octets()))
            .collect();
        let mut n = 0usize;
        for item in nat64.iter() {
            let (k, _) = item?;
            n += 1;
            if !want_nat64.contains(&(k.prefix_len(), k.data())) {
                return Ok(false);
            }
        }
        if n != want_nat64.len() {
            return Ok(false);
        }
        // Every setting, not only the generation: mode, cut_established, v4_table and the
        // suppression window change what the kernel does too.
        let settings: Array<_, GlobalPolicy> =
            Array::try_from(map(&mut self.ebpf, maps::SETTINGS)?)?;
        Ok(settings.get(&u32::try_from(set)?, 0)?
            == settings_of(policy, self.generation, uses_table))
    }
}
