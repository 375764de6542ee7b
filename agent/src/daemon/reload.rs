//! A policy set from disk to the kernel: read and compile it ([`Candidate`]), keep its ids
//! stable ([`Ids`]), put it in force and keep it as the last good policy ([`put_in_force`],
//! [`reload`]), or fall back to the last good one at start ([`fall_back`]).
use anyhow::Context as _;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    config,
    daemon::lastgood::StateDir,
    events::LastGoodRef,
    kernel::loader::{Capacity, Enforcer, Prepared, Tables},
    policy::ids::IdTable,
    policy::{self, Policy},
};

/// A policy set read from disk and validated, compiled but not yet in force.
pub(super) struct Candidate {
    pub(super) cfg: config::Config,
    pub(super) output: config::Output,
    pub(super) policy: Arc<Policy>,
    /// The text of every file, kept as the last good policy once it is in force.
    pub(super) sources: config::Sources,
    /// Its region and rule ids; the id table once it is in force.
    pub(super) ids: crate::policy::ids::Assignment,
}

impl Candidate {
    /// Reads and validates the main file and its drop-ins, exactly as `egressd check` does
    /// (the one validation of the start and of every reload), and compiles them with the ids
    /// `ids` gives their names.
    pub(super) fn read(config_path: &Path, ids: &IdTable) -> anyhow::Result<Self> {
        Self::new(config::load_sources(config_path)?, ids)
    }

    /// Compiles a validated set with the ids `ids` gives its names.
    pub(super) fn new(
        (cfg, output, sources): (config::Config, config::Output, config::Sources),
        ids: &IdTable,
    ) -> anyhow::Result<Self> {
        let t = std::time::Instant::now();
        let assignment = ids.assign(&cfg)?;
        let policy = Arc::new(policy::compile_with(&cfg, &assignment));
        tracing::debug!(ms = t.elapsed().as_millis(), "policy compiled");
        // The compiled policy holds the prefixes; the daemon reads the configuration's path
        // and allowlist only (a million prefixes are 18 MB here).
        let mut cfg = cfg;
        for r in &mut cfg.regions {
            r.prefixes = Vec::new();
        }
        Ok(Self {
            cfg,
            output,
            policy,
            sources,
            ids: assignment,
        })
    }
}

/// The id table of the enforced cgroup, and where it is kept.
pub(super) struct Ids {
    pub(super) table: IdTable,
    /// The state directory it is saved in after each policy is put in force.
    pub(super) state: Option<PathBuf>,
    pub(super) cgroup: PathBuf,
}

impl Ids {
    /// The table kept in `state` for `cgroup`, with the names of the pinned state record in
    /// `pins` taking precedence (they name the counters in the pinned maps). An unreadable
    /// table is logged and replaced by what the pins say, else a fresh one.
    pub(super) fn open(
        state: Option<&StateDir>,
        pins: Option<&crate::kernel::pin::PinDir>,
        cgroup: &Path,
    ) -> Self {
        let mut table = match state.map(|s| IdTable::load(&s.path, cgroup)) {
            Some(Ok(Some(t))) => t,
            Some(Ok(None)) | None => IdTable::default(),
            Some(Err(e)) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the kept region and rule ids cannot be used; ids start afresh (counters of \
                     pinned maps keep the names the pinned state gives them)"
                );
                IdTable::default()
            }
        };
        if let Some(pinned) = pins
            .filter(|p| p.state().exists())
            .and_then(|p| p.read_state().ok())
        {
            table.reconcile(&pinned.regions);
        }
        Self {
            table,
            state: state.map(|s| s.path.clone()),
            cgroup: cgroup.to_path_buf(),
        }
    }

    /// `a` is in force: it becomes the table, which is kept (failing to keep it is logged).
    pub(super) fn commit(&mut self, a: &crate::policy::ids::Assignment) {
        self.table.commit(a);
        if let Some(dir) = &self.state
            && let Err(e) = self.table.save(dir, &self.cgroup)
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot keep the region and rule ids; after a restart, new names may get other ids"
            );
        }
    }
}

/// A validated set: configuration, output settings and the text of every file.
pub(super) type Parsed = (config::Config, config::Output, config::Sources);

/// Why the daemon runs on its last good policy instead of the files on disk.
pub(super) struct Fallback {
    /// The error of the files on disk.
    pub(super) error: String,
    /// The last good policy in force.
    pub(super) last_good: LastGoodRef,
}

impl Fallback {
    /// One line for `/healthz` and the service manager.
    pub(super) fn reason(&self) -> String {
        format!(
            "the policy on disk is invalid ({}); enforcing the last good policy {} kept at {}",
            self.error.replace('\n', " "),
            self.last_good.digest,
            self.last_good.saved_at
        )
    }

    /// What the pinned state records of it, for `egressd status`.
    pub(super) fn pinned(&self) -> crate::kernel::pin::PinnedFallback {
        let mut error = self.error.replace('\n', " ");
        if error.len() > crate::kernel::pin::FALLBACK_ERROR_BYTES {
            let mut end = crate::kernel::pin::FALLBACK_ERROR_BYTES - 3;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push_str("...");
        }
        crate::kernel::pin::PinnedFallback {
            error,
            last_good_digest: self.last_good.digest.clone(),
            last_good_generation: self.last_good.generation,
            last_good_saved_at: self.last_good.saved_at.clone(),
            last_good_file: self.last_good.file.clone(),
        }
    }
}

/// `status` with the fallback's reason, while there is one.
pub(super) fn degraded(status: String, fallback: Option<&Fallback>) -> String {
    match fallback {
        Some(f) => format!("DEGRADED: {}; {status}", f.reason()),
        None => status,
    }
}

/// The files on disk are invalid at start (`error`): the last good policy kept in `state`
/// for `config_path`, validated like a normal load, or `error` when there is none.
pub(super) fn fall_back(
    config_path: &Path,
    state: Option<&StateDir>,
    error: config::ConfigError,
) -> anyhow::Result<(Parsed, Option<Fallback>)> {
    let Some(state) = state else {
        return Err(error.into());
    };
    let restored = match state.restore(config_path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::error!(
                state = %state.file(config_path).display(),
                "the policy on disk is invalid and no last good policy was kept for it"
            );
            return Err(error.into());
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "{error}; the last good policy cannot be used either: {e:#}"
            ));
        }
    };
    let message = error.to_string();
    tracing::error!(
        error = %message,
        file = %error.file.display(),
        line = error.line,
        field = %error.field,
        last_good_digest = %restored.record.digest,
        last_good_generation = restored.record.generation,
        last_good_saved_at = %restored.record.saved_at,
        state = %restored.file.display(),
        "THE POLICY ON DISK IS INVALID: enforcing the last good policy instead, until a \
         reload (SIGHUP, --watch) of a valid set"
    );
    let fallback = Fallback {
        error: message,
        last_good: LastGoodRef {
            digest: restored.record.digest.clone(),
            generation: restored.record.generation,
            saved_at: restored.record.saved_at.clone(),
            file: restored.file.display().to_string(),
        },
    };
    Ok((
        (restored.cfg, restored.output, restored.record.sources),
        Some(fallback),
    ))
}

/// Puts a validated policy in force, at start and on every reload: `install` writes it into
/// the kernel (a new [`Enforcer`] at start, the idle policy set on reload) and returns the
/// generation it is in force as; then its ids become the id table. Returns what `install`
/// returned and the generation; [`keep_last_good`] keeps the set as the last good policy
/// (at start after `agent_start`: the previous last good policy stays valid until it is
/// replaced, atomically).
///
/// # Errors
/// Whatever `install` reports; nothing is kept then.
pub(super) fn put_in_force<T>(
    cand: &Candidate,
    ids: &mut Ids,
    install: impl FnOnce(Arc<Policy>) -> anyhow::Result<(T, u64)>,
) -> anyhow::Result<(T, u64)> {
    let (installed, generation) = install(cand.policy.clone())?;
    ids.commit(&cand.ids);
    Ok((installed, generation))
}

/// Keeps `sources` (compiled to `digest`, in force as `generation`) in `state` as the last
/// good policy (owned sources are freed once written, [`StateDir::save_owned`]). Failing is
/// logged, never fatal: enforcement matters more.
pub(super) fn keep_last_good(
    state: Option<&StateDir>,
    config_path: &Path,
    sources: std::borrow::Cow<'_, config::Sources>,
    digest: &str,
    generation: u64,
) {
    let Some(state) = state else {
        return;
    };
    let saved = match sources {
        std::borrow::Cow::Borrowed(s) => state.save(config_path, s, digest, generation),
        std::borrow::Cow::Owned(s) => state.save_owned(config_path, s, digest, generation),
    };
    match saved {
        Ok(()) => tracing::debug!(
            state = %state.file(config_path).display(),
            generation,
            "kept as the last good policy"
        ),
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "cannot keep the policy in force as the last good one; a start on an \
             invalid file will not be able to fall back to it"
        ),
    }
}

/// The first half of a start ([`Enforcer::prepare`], or [`Enforcer::prepare_pinned`] under
/// `pins`) with maps of `cap`.
///
/// # Errors
/// Theirs.
pub(super) fn prepare(
    cap: Capacity,
    cgroup: &Path,
    pins: Option<&crate::kernel::pin::PinDir>,
) -> anyhow::Result<Prepared> {
    match pins {
        Some(dir) => Enforcer::prepare_pinned(cap, cgroup, dir),
        None => Enforcer::prepare(cap, cgroup),
    }
}

/// The programs of a start, loaded and verified on a thread of their own while the policy
/// compiles, with map sizes taken from the configuration ([`Capacity::for_config`]).
pub(super) struct EarlyLoad {
    thread: std::thread::JoinHandle<anyhow::Result<Prepared>>,
    /// The sizes it loads with.
    cap: Capacity,
}

impl EarlyLoad {
    /// Starts loading for `cfg` (pinned under `pins` when given); `None` when the map sizes
    /// cannot be known before the compile (they are then taken from the compiled policy,
    /// after it).
    pub(super) fn start(
        cfg: &config::Config,
        cgroup: &Path,
        pins: Option<&crate::kernel::pin::PinDir>,
    ) -> Option<Self> {
        let cap = Capacity::for_config(cfg)?;
        let cgroup = cgroup.to_path_buf();
        let pins = pins.cloned();
        let thread = std::thread::Builder::new()
            .name("egressd-load".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let prepared = prepare(cap, &cgroup, pins.as_ref());
                tracing::debug!(
                    ms = t.elapsed().as_millis(),
                    "programs loaded while the policy compiled"
                );
                prepared
            });
        match thread {
            Ok(thread) => Some(Self { thread, cap }),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot start the loading thread; loading after the compile"
                );
                None
            }
        }
    }

    /// Works out `policy`'s tables ([`Tables::compile`]) while the load runs, then waits
    /// for it; its maps are used when they take `policy` (the same tables, each at least as
    /// large, [`Capacity::covers`]), else they are dropped (nothing was installed or
    /// attached) and `again` loads with the sizes `policy` asks for.
    ///
    /// # Errors
    /// The load's error; `again`'s.
    pub(super) fn take(
        self,
        policy: &Policy,
        again: impl FnOnce(Capacity) -> anyhow::Result<Prepared>,
    ) -> anyhow::Result<Prepared> {
        let t = std::time::Instant::now();
        let tables = Tables::compile(policy, self.cap);
        tracing::debug!(ms = t.elapsed().as_millis(), "tables worked out");
        let prepared = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread loading the programs panicked"))??;
        let need = Capacity::for_policy(policy);
        if prepared.capacity().covers(&need) {
            return Ok(prepared.with_tables(tables));
        }
        tracing::warn!(
            loaded = ?prepared.capacity(),
            need = ?need,
            "the maps loaded before the compile do not fit the compiled policy: loading again"
        );
        drop(prepared);
        again(need)
    }

    /// Waits for the load and drops what it loaded (the start failed before the install).
    pub(super) fn abandon(self) {
        let _ = self.thread.join();
    }
}

/// Validates and installs the policy files again, and keeps them as the last good policy;
/// on any error nothing changes. Output settings that differ from `running` (they take
/// effect at the next start) are checked as that start will check them (sinks' files,
/// certificates and spools, the chain key): a set that would not start is refused whole,
/// neither put in force nor kept as the last good one, since the next start would fail on
/// it and no fallback covers the output settings.
pub(super) fn reload(
    config_path: &Path,
    state: Option<&StateDir>,
    ids: &mut Ids,
    enforcer: &mut Enforcer,
    running: &config::Output,
    file_cgroup: Option<&Path>,
) -> anyhow::Result<Candidate> {
    let cand = Candidate::read(config_path, &ids.table)?;
    // `cgroup` too takes effect at the next start (where the file, not `--cgroup`, names
    // it: `file_cgroup` is then the one in force), and is checked as that start will.
    if let Some(in_force) = file_cgroup {
        let wanted = match &cand.cfg.cgroup {
            Some(p) => p.clone(),
            None => crate::kernel::cgroup::cgroup2_root()?,
        };
        if wanted != in_force {
            crate::kernel::cgroup::validate(&wanted).with_context(|| {
                format!(
                    "`cgroup` changed to {}, which the next start could not attach to: \
                     nothing is reloaded",
                    wanted.display()
                )
            })?;
            tracing::warn!(
                in_force = %in_force.display(),
                configured = %wanted.display(),
                "`cgroup` changed: the policy is reloaded for {}; the new cgroup takes effect \
                 at the next start (systemctl restart egressd)",
                in_force.display()
            );
        }
    }
    if cand.output != *running {
        let would_start = crate::events::sinks::preflight(&cand.output.sinks).and_then(|()| {
            match &cand.output.chain_key_file {
                Some(k) => crate::events::audit::chain::load_key(k).map(drop),
                None => Ok(()),
            }
        });
        would_start.context(
            "the changed output settings would not start (egressd reads them at its next \
             start, which would fail): nothing is reloaded",
        )?;
    }
    let ((), generation) = put_in_force(&cand, ids, |p| {
        enforcer.install(p)?;
        Ok(((), enforcer.generation()))
    })?;
    keep_last_good(
        state,
        config_path,
        std::borrow::Cow::Borrowed(&cand.sources),
        &cand.policy.digest,
        generation,
    );
    Ok(cand)
}
