//! `egressd run`: start the sinks, load the policy, attach, stream events until SIGINT or
//! SIGTERM, detach, report the final counters.
//!
//! Records, in order: `policy_loaded` (the policy in the kernel), `agent_start`, then
//! `connection` events as the kernel reports them, `heartbeat` every `heartbeat_secs`,
//! `policy_loaded` or `reload_failed` after each SIGHUP, and `agent_stop` with the final
//! counters. Signals: SIGHUP reloads the policy, SIGUSR1 reopens file sinks (logrotate).
//! Under systemd (`Type=notify`) it reports readiness, reloads, watchdog pings and the stop
//! ([`crate::daemon::notify`]).
//! With a pin directory ([`RunOptions::pin_dir`]) the programs stay attached at exit and a
//! `tamper_repaired` record reports repairs of pinned state; see [`run_with`].
//!
//! The daemon layer, the top of the library: this run loop, [`lastgood`] (the fallback
//! policy), [`watch`] (reload on file change), [`signals`], [`notify`] (systemd), [`metrics`]
//! (`/metrics`, `/healthz`), [`status`], [`instance`] (one daemon per cgroup) and [`check`]
//! (`egressd check`'s summary, which sizes the kernel maps). May use every layer below.
pub mod check;
pub mod instance;
pub mod lastgood;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod status;
pub mod watch;

mod reload;
use reload::{
    Candidate, EarlyLoad, Fallback, Ids, degraded, fall_back, keep_last_good, prepare,
    put_in_force, reload,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    base::clock,
    config,
    daemon::lastgood::StateDir,
    events::pipeline::Pipeline,
    events::stats,
    events::{
        self, AgentInfo, ConnectionEvent, Context, Counters, Enricher, Lifecycle, LifecycleBody,
        LossReport, PolicySummary, Record, Sequencer,
    },
    kernel::cgroup,
    kernel::loader::{Capacity, Enforcer},
    policy::Policy,
};

/// How long the sinks get at exit to deliver what is queued before it is spooled.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
/// Longest the enrichment thread gets at exit to finish its queue (the rest is sent
/// without `/proc` details).
const ENRICH_FLUSH: Duration = Duration::from_secs(2);

/// A ring-buffer read that found at least this many records means a flood: the next read
/// waits [`RING_REST`], so that the records of the next read come in one batch with one
/// wake-up (the kernel wakes the reader only for the first record after it caught up, and
/// a reader that keeps catching up gets one wake-up, and the producer one interrupt, per
/// record). A quiet stream is read at once: a single event waits for nothing.
const RING_BATCH: u64 = 64;
/// The pause after a flood's read (1 MiB of ring buffer holds about 10,000 records, 10 ms
/// at a million attempts per second).
const RING_REST: Duration = Duration::from_millis(1);

/// Reads the host name from the UTS namespace (`/proc/sys/kernel/hostname`).
pub fn host_name() -> String {
    // sethostname(2) takes any bytes: invalid UTF-8 is decoded as U+FFFD, not refused.
    std::fs::read("/proc/sys/kernel/hostname")
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Reload outcomes, reported in `agent_stop` and heartbeats as `reloads`.
#[derive(serde::Serialize, Default)]
struct Reloads {
    ok: u64,
    failed: u64,
}

/// Runs the agent: `config_path` is loaded and validated exactly like `egressd check`;
/// `cgroup_override` replaces the config's `cgroup` (default: the cgroup2 root, the whole
/// host). SIGHUP reloads the file: a valid policy is installed atomically (the next
/// generation), an invalid one is logged and reported and changes nothing. Returns when SIGINT
/// or SIGTERM arrives and the programs are detached.
///
/// # Errors
/// Invalid configuration, a sink that cannot start (unreadable TLS files, unusable spool
/// directory), and everything [`Enforcer::load`] reports.
pub async fn run(config_path: &Path, cgroup_override: Option<PathBuf>) -> anyhow::Result<()> {
    run_with(
        config_path,
        RunOptions {
            cgroup: cgroup_override,
            ..RunOptions::default()
        },
    )
    .await
}

/// Options of `egressd run` beyond the policy file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Replaces the config's `cgroup` (default: the cgroup2 root, the whole host).
    pub cgroup: Option<PathBuf>,
    /// Pin maps and links here (a directory on a bpffs) and adopt what is pinned there;
    /// enforcement then survives the process. `None`: nothing is pinned and the programs
    /// are detached at exit.
    pub pin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics (`/metrics`) and health (`/healthz`) on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Reload when the main file or a drop-in file changes on disk (debounced), as on SIGHUP.
    pub watch: bool,
    /// Keep every policy put in force here as the last good one ([`crate::daemon::lastgood`]), and
    /// fall back to it at start when the policy on disk is invalid. `None`: nothing is kept
    /// and an invalid policy at start fails the start. (`egressd run` defaults to
    /// [`crate::daemon::lastgood::DEFAULT_STATE_DIR`].)
    pub state_dir: Option<PathBuf>,
    /// Directory of the per-cgroup locks ([`crate::daemon::instance`]); `None`:
    /// [`crate::daemon::instance::DEFAULT_RUN_DIR`].
    pub run_dir: Option<PathBuf>,
}

/// How often enforcement is checked: hooks detached or a cgroup made anew (both modes), and
/// in pinned mode the pins, generation and maps.
const TAMPER_CHECK: Duration = Duration::from_millis(250);
/// How often (`--watch`) a file watch that could not be set up is tried again, and the
/// watched directories are checked for having been replaced.
const WATCH_CHECK: Duration = Duration::from_secs(2);

/// The file watch of `config_path`, or `None` after saying why there is none.
fn watch_or_say(config_path: &Path) -> Option<crate::daemon::watch::ConfigWatcher> {
    crate::daemon::watch::ConfigWatcher::new(config_path)
        .map_err(|e| {
            tracing::error!(
                error = format!("{e:#}"),
                retry_secs = WATCH_CHECK.as_secs(),
                "no file watch: reloading on SIGHUP only until it can be set up"
            );
        })
        .ok()
}

/// How often the interfaces are listed again for the `tc/egress` fallback (new interfaces,
/// removed attachments), where it runs.
const TC_RESCAN: Duration = Duration::from_secs(2);
/// How often the kernel's summaries are drained into `connection_summary` records: the
/// interval of a summary and of the `summary_after` record budget.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the agent like [`run`] with `opts`: with `opts.pin_dir`, maps and links are pinned
/// and adopted ([`Enforcer::load_pinned`]), SIGTERM leaves enforcement in place, and the
/// pinned state is checked every 250 ms and repaired if someone detached, replaced or
/// changed it (logged and reported as a `tamper_repaired` record); with `opts.metrics`, a
/// Prometheus endpoint runs; with `opts.watch`, file changes reload like SIGHUP. With
/// `NOTIFY_SOCKET` set (systemd `Type=notify`), `READY=1` follows the attach of every hook
/// with the policy in force, `RELOADING=1`/`READY=1` frame each reload, `WATCHDOG=1` goes
/// out every half `WATCHDOG_USEC` from the main loop, and `STOPPING=1` begins the stop.
///
/// # Errors
/// As [`run`]. (A metrics address that cannot be bound, or a file watch that cannot be set
/// up, is no error: both are logged and tried again while the daemon enforces.)
pub async fn run_with(config_path: &Path, opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a SIGHUP (`systemctl reload`) or SIGUSR1 (logrotate) while a large
    // policy loads must not kill the daemon (their default action); they are served once
    // the loop runs, and a SIGTERM then stops it at once. The `egressd` binary blocked the
    // two before `main` (crate::daemon::signals); what arrived since is delivered to the handlers
    // now.
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    crate::daemon::signals::unblock_early();
    // Before the policy load: with glibc's thresholds fixed, the load's largest buffers are
    // mapped apart and unmapped, and what its threads free at the top of their arenas goes
    // back to the kernel (with the dynamic thresholds a freed 20 MB buffer raised both, and
    // an arena's top stayed resident after the load).
    keep_heap_for_records();
    let stop = StopSignal::install()?;
    let notifier = crate::daemon::notify::Notifier::from_env();
    let state = opts.state_dir.as_ref().map(StateDir::new);
    // The files on disk, validated; if they are invalid, the last good policy (validated the
    // same way), and the daemon runs degraded until a reload of a valid set.
    let (parsed, mut fallback) = match config::load_sources(config_path) {
        Ok(p) => (p, None),
        Err(e) => fall_back(config_path, state.as_ref(), e)?,
    };
    let cgroup = match opts.cgroup.clone().or_else(|| parsed.0.cgroup.clone()) {
        Some(p) => p,
        None => cgroup::cgroup2_root()?,
    };
    let pin_dir = opts.pin_dir.as_ref().map(crate::kernel::pin::PinDir::new);
    // One daemon per cgroup: held until this function returns (or the process dies).
    crate::kernel::privileges::check()?;
    crate::kernel::cgroup::validate(&cgroup)?;
    let run_dir = opts
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::daemon::instance::DEFAULT_RUN_DIR));
    let claim = crate::daemon::instance::claim(&cgroup, pin_dir.as_ref(), &run_dir, config_path)?;
    tracing::debug!(lock = %claim.path.display(), "cgroup claimed");
    let host = host_name();
    // Sinks first: a sink that cannot work fails the start before the kernel is touched.
    // Their threads start after the privileges are dropped (capabilities are per thread).
    let sinks = Pipeline::prepare(&parsed.1.sinks)?;
    let chain_key = parsed
        .1
        .chain_key_file
        .as_deref()
        .map(crate::events::audit::chain::load_key)
        .transpose()?;
    // The maps and programs load on another thread while the policy compiles; the first
    // policy is installed, and the hooks attached, once both are done.
    let early = EarlyLoad::start(&parsed.0, &cgroup, pin_dir.as_ref());
    // Region and rule ids by name, as earlier runs on this cgroup gave them (crate::policy::ids).
    let mut ids = Ids::open(state.as_ref(), pin_dir.as_ref(), &cgroup);
    let candidate = match Candidate::new(parsed, &ids.table) {
        Ok(c) => c,
        Err(e) => {
            if let Some(early) = early {
                early.abandon();
            }
            return Err(e);
        }
    };
    let started = Instant::now();
    let coverage = crate::kernel::coverage::probe_for_start();
    let mut adopted = None;
    let prepare_here = |cap| prepare(cap, &cgroup, pin_dir.as_ref());
    let prepared = |p: &Policy| match early {
        Some(early) => early.take(p, prepare_here),
        None => prepare_here(Capacity::for_policy(p)),
    };
    let (mut enforcer, generation) = match &pin_dir {
        Some(dir) => {
            let ((e, adoption), generation) = put_in_force(&candidate, &mut ids, |p| {
                let (e, adoption) = prepared(&p)?.finish(p, &cgroup)?;
                let adoption = adoption.unwrap_or_default();
                let generation = e.generation();
                Ok(((e, adoption), generation))
            })?;
            tracing::info!(
                pin_dir = %dir.root.display(),
                adopted = adoption.adopted,
                previous_generation = adoption.previous_generation,
                generation = e.generation(),
                "pinned enforcement"
            );
            adopted = adoption.adopted.then_some(events::Adopted {
                previous_generation: adoption.previous_generation,
            });
            (e, generation)
        }
        None => put_in_force(&candidate, &mut ids, |p| {
            let (e, _) = prepared(&p)?.finish(p, &cgroup)?;
            let generation = e.generation();
            Ok((e, generation))
        })?,
    };
    // `egressd status` reads the pins: say there that this is the last good policy.
    if let Some(f) = &fallback
        && let Err(e) = enforcer.set_fallback(Some(f.pinned()))
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the fallback in the pinned state"
        );
    }
    let Candidate {
        cfg,
        output,
        policy,
        sources,
        ..
    } = candidate;
    // The compile's garbage; the files' text goes once it is kept (below).
    release_freed_memory();
    // What actually attached decides the LSM rows (a probe can say yes and a load still fail).
    let coverage = coverage
        .with_lsm(enforcer.lsm_coverage(), policy.packet_sockets)
        .with_tc(enforcer.tc_coverage(), Some(policy.packet_sockets));
    for p in coverage
        .paths
        .iter()
        .filter(|p| p.status != crate::kernel::coverage::Status::Enforced)
    {
        tracing::warn!(
            path = p.path,
            status = p.status.label(),
            kernel = %coverage.kernel,
            "egress path {} on this kernel: {} ({})",
            if p.status == crate::kernel::coverage::Status::Partial {
                "only partly enforced"
            } else {
                "not enforced"
            },
            p.what,
            p.note
        );
    }
    let (metrics_tx, mut metrics_rx) = tokio::sync::mpsc::channel::<
        tokio::sync::oneshot::Sender<crate::daemon::metrics::Snapshot>,
    >(16);
    if let Some(addr) = opts.metrics {
        // Enforcement does not wait for the endpoint: a port another process holds (any
        // local user can take one above 1024 first) is tried again until it is free.
        crate::daemon::metrics::start(addr, metrics_tx.clone()).await;
    }
    // Attached, listening: keep only what reloads, tamper repair and /proc enrichment use,
    // before any other thread exists and before the first hostile input is parsed.
    // (Also when not root: a service user with ambient capabilities drops them too.)
    let d = crate::kernel::privileges::drop_after_attach().context("dropping privileges")?;
    tracing::info!(
        kept = ?d.kept,
        bounding_set = d.bounding,
        no_new_privs = true,
        seccomp = d.seccomp,
        "privileges dropped"
    );
    // After the drop: the thread inherits the reduced capabilities and the seccomp filter.
    enforcer
        .watch_routes()
        .context("starting the route mirror's rtnetlink listener")?;
    let pipeline = sinks.start(&host)?;
    if let Some(key) = &chain_key {
        pipeline.key_chains(key);
    }
    // Nor on the file watch: without inotify (a workload can use up
    // `fs.inotify.max_user_instances`, which counts per uid, root's too) SIGHUP still
    // reloads, and the watch is set up again every WATCH_CHECK.
    let mut watcher = opts.watch.then(|| watch_or_say(config_path)).flatten();
    let mut watch_check = tokio::time::interval(WATCH_CHECK);
    watch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tamper = tokio::time::interval(TAMPER_CHECK);
    let mut tamper_error: Option<String> = None;
    tamper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tc_rescan = tokio::time::interval(TC_RESCAN);
    tc_rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tc_started = enforcer.tc_coverage().is_some();
    let crate::kernel::loader::Readers {
        events: ring_map,
        counters: counter_map,
        flows: flow_map,
        loss: loss_map,
        failsafe: failsafe_map,
        summaries: summary_map,
        summary_control,
        unreported: unreported_map,
    } = enforcer.take_readers()?;
    let mut summaries = events::summary::Drainer::new(summary_map, summary_control)
        .context("reading the summary table")?;
    let mut unreported = events::summary::Unreported::new(unreported_map);
    let mut summary_tick = tokio::time::interval(SUMMARY_INTERVAL);
    // The grace period after an interval's end, waited for on a blocking thread.
    let mut quiescing: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let maps = KernelMaps {
        counters: counter_map,
        flows: flow_map,
        loss: loss_map,
        failsafe: failsafe_map,
    };
    let seq = Arc::new(Sequencer::new(Context {
        host: events::Host {
            name: host.clone(),
            labels: output.host_labels.clone(),
        },
        agent: AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            ephemeral_id: events::ephemeral_id(),
        },
    }));
    let lifecycle = |body: LifecycleBody, kind: &'static str| {
        Record::Lifecycle(Box::new(Lifecycle {
            header: seq.header(kind, clock::unix_now_ns()),
            body,
        }))
    };
    if let Some(f) = &fallback {
        pipeline.submit(&lifecycle(
            LifecycleBody::PolicyFallback {
                error: f.error.clone(),
                policy: summary(&cfg, &policy, &enforcer),
                last_good: f.last_good.clone(),
            },
            "policy_fallback",
        ));
    }
    pipeline.submit(&lifecycle(
        LifecycleBody::PolicyLoaded {
            policy: summary(&cfg, &policy, &enforcer),
        },
        "policy_loaded",
    ));
    pipeline.submit(&lifecycle(
        LifecycleBody::Start {
            policy: summary(&cfg, &policy, &enforcer),
            cgroup: cgroup.display().to_string(),
            sinks: pipeline.names(),
            coverage: coverage.summary(),
            adopted,
            interval_secs: output.heartbeat_secs,
        },
        "agent_start",
    ));
    tracing::info!(
        cgroup = %cgroup.display(),
        mode = %policy.mode,
        digest = %policy.digest,
        ipv4_lookup = enforcer.ipv4_lookup(),
        ipv6_lookup = enforcer.ipv6_lookup(),
        kernel_prefixes = ?[policy.lpm_v4.len(), policy.lpm_v6.len()],
        merged_from = ?policy.lpm_unmerged,
        sinks = ?pipeline.names(),
        "enforcing"
    );
    // Every hook is attached with the policy in force, and nothing of the start can fail
    // any more: `systemctl start` may return.
    notifier.ready(&degraded(status(&enforcer, &policy), fallback.as_ref()));
    // Enforcing: the set becomes the last good policy on a thread of its own (tens of MB of
    // JSON and an fsync for a large policy). Until the rename that ends it, the previous
    // last good policy stays in place, whole. A reload waits for it first.
    let mut keeping = keep_sources(
        state.clone(),
        config_path,
        sources,
        policy.digest.clone(),
        generation,
    );
    let watchdog_period = notifier.watchdog_interval();
    let mut watchdog =
        tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Events name regions by the generation that judged them: keep the recent policies.
    // /proc enrichment runs on a thread of its own, so that no process can stall this loop.
    let cgroup_root = crate::kernel::cgroup::cgroup2_root().ok();
    let new_enricher = |policy: &Arc<Policy>| {
        Arc::new(Enricher::new(seq.clone(), policy.clone()).with_cgroup_root(cgroup_root.clone()))
    };
    let mut worker = events::worker::Worker::start().context("starting the enrichment thread")?;
    let mut enrichers = Enrichers::default();
    enrichers.insert(enforcer.generation(), new_enricher(&policy));
    let mut policy = policy;
    let mut reloads = Reloads::default();
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(ring_map, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with the reactor: {e}"))?;
    let mut undecodable = 0u64;
    let mut delivered = 0u64;
    // A disabled heartbeat still needs a timer for select!: one that never fires in practice.
    let period = match output.heartbeat_secs {
        0 => Duration::from_secs(u64::from(u32::MAX)),
        s => Duration::from_secs(s),
    };
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = |readers: &KernelMaps,
                    policy: &Policy,
                    pipeline: &Pipeline,
                    reloads: &Reloads,
                    delivered: u64,
                    undecodable: u64,
                    enrich_skipped: u64,
                    summaries: &events::summary::Drainer|
     -> anyhow::Result<Counters> {
        let sinks = pipeline.counters();
        let mut extra = serde_json::Map::new();
        extra.insert(
            "flows".into(),
            serde_json::to_value(stats::flows(&readers.flows, policy)?)?,
        );
        extra.insert("reloads".into(), serde_json::to_value(reloads)?);
        // Denials the kernel made because it could not judge (see `egressd_common::failsafe`).
        extra.insert(
            "fail_closed".into(),
            serde_json::Value::Object(
                stats::fail_closed(&readers.failsafe)?
                    .into_iter()
                    .map(|(k, v)| (k, v.into()))
                    .collect(),
            ),
        );
        // Records each sink cut to its max_message_bytes (not losses: they were delivered).
        // Events sent without /proc details because enrichment stalled (not losses).
        extra.insert("enrichment_skipped".into(), enrich_skipped.into());
        // Attempts the kernel aggregated into `connection_summary` records, and those records.
        extra.insert(
            "summaries".into(),
            serde_json::json!({ "records": summaries.records, "attempts": summaries.attempts }),
        );
        extra.insert(
            "truncated".into(),
            serde_json::to_value(pipeline.truncated())?,
        );
        Ok(Counters {
            counters: stats::counters(&readers.counters, policy)?,
            lost: LossReport {
                kernel: stats::loss(&readers.loss)?,
                sink_write_failed: sinks.values().map(events::SinkCounters::dropped).sum(),
                undecodable,
                sinks,
            },
            connection_events: delivered,
            uptime_secs: started.elapsed().as_secs(),
            extra,
        })
    };
    let beat = |c: anyhow::Result<Counters>| match c {
        Ok(c) => pipeline.submit(&lifecycle(
            LifecycleBody::Heartbeat {
                counters: c,
                interval_secs: output.heartbeat_secs,
            },
            "heartbeat",
        )),
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "reading counters for the heartbeat"
        ),
    };
    let mut tamper_repairs = 0u64;
    let start_lookup = policy.ipv4_lookup;
    // Set after a read that found a flood: the ring buffer is read again from then on.
    let mut ring_rest: Option<tokio::time::Instant> = None;
    loop {
        // Checked before anything else, so that no amount of other work (reloads, events)
        // delays a stop by more than the step in progress.
        if let Some(name) = stop.received() {
            tracing::info!("{name}: detaching");
            notifier.stopping(&format!("stopping ({name})"));
            break;
        }
        let mut reload_now = false;
        tokio::select! {
            () = stop.wait() => continue,
            _ = watchdog.tick(), if watchdog_period.is_some() => notifier.watchdog(),
            _ = sigusr1.recv() => {
                tracing::info!("SIGUSR1: reopening sinks");
                pipeline.reopen();
            }
            _ = heartbeat.tick(), if output.heartbeat_secs > 0 => beat(
                counters(&maps, &policy, &pipeline, &reloads, delivered, undecodable, worker.skipped(), &summaries),
            ),
            guard = ring.readable_mut(), if ring_rest.is_none() => {
                let mut guard = guard.context("polling the ring buffer")?;
                let (n, cut) = drain_budgeted(guard.get_inner_mut(), &enrichers, &worker, &seq, &pipeline, &mut undecodable);
                delivered += n;
                guard.clear_ready();
                // Records left behind send no wake-up: read them after the pause.
                if n >= RING_BATCH || cut {
                    ring_rest = Some(tokio::time::Instant::now() + RING_REST);
                }
            }
            () = async {
                match ring_rest {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                // Read at once: the wake-up of what came meanwhile may have been taken by
                // the read before the pause.
                let (n, cut) = drain_budgeted(ring.get_mut(), &enrichers, &worker, &seq, &pipeline, &mut undecodable);
                delivered += n;
                ring_rest = (n >= RING_BATCH || cut).then(|| tokio::time::Instant::now() + RING_REST);
            }
            Some(batch) = worker.next() => submit_connections(&seq, &pipeline, &worker, batch),
            _ = summary_tick.tick(), if quiescing.is_none() => match summaries.end(policy.summary_after) {
                // The grace period before the ended keys may be taken, off this loop.
                Ok(()) => {
                    let q = summaries.quiescer();
                    quiescing = Some(tokio::task::spawn_blocking(move || q.wait()));
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "ending the summary interval"),
            },
            Some(waited) = async {
                match quiescing.as_mut() {
                    Some(h) => Some(h.await),
                    None => std::future::pending().await,
                }
            } => {
                quiescing = None;
                match waited {
                    Ok(Ok(())) => end_interval(&mut summaries, &mut unreported, &policy, &seq, &pipeline),
                    // The keys stay in the table: taken when their parity ends again.
                    Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "waiting for running programs"),
                    Err(e) => tracing::error!(error = %e, "waiting for running programs"),
                }
            }
            _ = sighup.recv() => { reload_now = true; }
            _ = watch_check.tick(), if opts.watch => match watcher.as_mut() {
                // A watched directory replaced, or a link to it swapped: inotify still
                // watches the old one.
                Some(w) => reload_now |= w.follow_moved(),
                None => {
                    if let Ok(w) = crate::daemon::watch::ConfigWatcher::new(config_path) {
                        tracing::info!("file watch set up: reloading on file change again");
                        watcher = Some(w);
                        // A change made while nothing watched.
                        reload_now = true;
                    }
                }
            },
            Some(()) = async {
                match watcher.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("configuration changed on disk: reloading");
                reload_now = true;
            }
            Some(reply) = metrics_rx.recv() => {
                // Not the summary interval's end: a scrape in a loop would shorten it and
                // so raise the `summary_after` budget per second.
                let (n, cut) = drain_budgeted(ring.get_mut(), &enrichers, &worker, &seq, &pipeline, &mut undecodable);
                delivered += n;
                if cut && ring_rest.is_none() {
                    ring_rest = Some(tokio::time::Instant::now() + RING_REST);
                }
                let snap = counters(&maps, &policy, &pipeline, &reloads, delivered, undecodable, worker.skipped(), &summaries)
                    .map(|c| crate::daemon::metrics::Snapshot {
                        counters: c,
                        generation: enforcer.generation(),
                        prefixes_v4: policy.v4.len(),
                        prefixes_v6: policy.v6.len(),
                        reloads_ok: reloads.ok,
                        reloads_failed: reloads.failed,
                        hooks: enforcer.hook_states(),
                        tamper_repairs,
                        coverage: coverage.paths.iter().map(|p| (p.path, p.status.label())).collect(),
                        policy_fallback: fallback.as_ref().map(Fallback::reason),
                    });
                match snap {
                    Ok(s) => { let _ = reply.send(s); }
                    Err(e) => tracing::error!(error = format!("{e:#}"), "reading counters for /metrics"),
                }
            }
            _ = tc_rescan.tick(), if tc_started => {
                let changes = enforcer.tc_rescan();
                let repairs: Vec<String> = changes
                    .iter()
                    .filter(|c| c.contains("missing"))
                    .map(|c| format!("tc/egress: {c}"))
                    .collect();
                for c in &changes {
                    tracing::info!(change = %c, "tc/egress interfaces");
                }
                if !repairs.is_empty() {
                    tamper_repairs += repairs.len() as u64;
                    pipeline.submit(&lifecycle(
                        LifecycleBody::TamperRepaired {
                            repairs,
                            generation_in_force: enforcer.generation(),
                        },
                        "tamper_repaired",
                    ));
                }
            }
            _ = tamper.tick() => {
                let checked = enforcer.verify_and_repair();
                // Said once, not every 250 ms (a removed cgroup stays removed for a while).
                let error = checked.as_ref().err().map(|e| format!("{e:#}"));
                if error != tamper_error {
                    match &error {
                        Some(e) => tracing::error!(error = %e, "checking enforcement"),
                        None => tracing::info!("enforcement checks pass again"),
                    }
                    tamper_error = error;
                }
                match checked {
                    Ok(repairs) if repairs.is_empty() => {}
                    Ok(repairs) => {
                        tamper_repairs += repairs.len() as u64;
                        for r in &repairs {
                            tracing::warn!(repair = %r, "tampering detected and repaired");
                        }
                        pipeline.submit(&lifecycle(
                            LifecycleBody::TamperRepaired {
                                repairs,
                                generation_in_force: enforcer.generation(),
                            },
                            "tamper_repaired",
                        ));
                    }
                    Err(_) => {}
                }
            }
        }
        if reload_now {
            if let Some(k) = keeping.take() {
                let _ = k.join();
            }
            // Watch a drop-in directory that appeared before reading it, so no change is missed.
            if let Some(w) = watcher.as_mut() {
                w.refresh();
            }
            {
                notifier.reloading(&format!(
                    "reloading; generation {} in force",
                    enforcer.generation()
                ));
                // Events of the old generation still in the ring buffer are named by it.
                delivered += drain(
                    ring.get_mut(),
                    &enrichers,
                    &worker,
                    &seq,
                    &pipeline,
                    &mut undecodable,
                    usize::MAX,
                )
                .0;
                match reload(
                    config_path,
                    state.as_ref(),
                    &mut ids,
                    &mut enforcer,
                    &output,
                    opts.cgroup.is_none().then_some(cgroup.as_path()),
                ) {
                    Ok(Candidate {
                        cfg,
                        policy: new,
                        output: reloaded_output,
                        ..
                    }) => {
                        reloads.ok += 1;
                        if reloaded_output != output {
                            // The sinks hold open files, connections and spools, and
                            // their chains run on: replacing them live is a restart.
                            tracing::warn!(
                                "the output settings changed (sinks, heartbeat, host \
                                 labels): the policy is reloaded, the output settings take \
                                 effect at the next start (systemctl restart egressd)"
                            );
                        }
                        if let Some(f) = fallback.take() {
                            tracing::info!(
                                digest = %new.digest,
                                "a valid policy is in force again: the fallback to the last \
                                 good policy {} is over",
                                f.last_good.digest
                            );
                        }
                        let generation = enforcer.generation();
                        if new.ipv4_lookup != start_lookup {
                            tracing::warn!(
                                configured = new.ipv4_lookup.as_str(),
                                at_start = start_lookup.as_str(),
                                "ipv4_lookup changed: it sizes the kernel maps, so it takes \
                                 effect at the next start (with --pin-dir: after `egressd \
                                 detach`)"
                            );
                        }
                        tracing::info!(
                            generation,
                            digest = %new.digest,
                            ipv4_lookup = enforcer.ipv4_lookup(),
                            ipv6_lookup = enforcer.ipv6_lookup(),
                            kernel_prefixes = ?[new.lpm_v4.len(), new.lpm_v6.len()],
                            merged_from = ?new.lpm_unmerged,
                            "policy reloaded"
                        );
                        pipeline.submit(&lifecycle(
                            LifecycleBody::PolicyLoaded {
                                policy: summary(&cfg, &new, &enforcer),
                            },
                            "policy_loaded",
                        ));
                        enrichers.insert(generation, new_enricher(&new));
                        policy = new;
                        release_freed_memory();
                        notifier.ready(&status(&enforcer, &policy));
                    }
                    Err(e) => {
                        reloads.failed += 1;
                        tracing::error!(
                            error = format!("{e:#}"),
                            generation = enforcer.generation(),
                            "reload failed; the previous policy stays in force"
                        );
                        pipeline.submit(&lifecycle(
                            LifecycleBody::ReloadFailed {
                                error: format!("{e:#}"),
                                generation_in_force: enforcer.generation(),
                            },
                            "reload_failed",
                        ));
                        let error = format!("{e:#}").replace('\n', " ");
                        notifier.ready(&degraded(
                            format!(
                                "{}; the last reload failed: {error}",
                                status(&enforcer, &policy)
                            ),
                            fallback.as_ref(),
                        ));
                        // A failed reload parsed and perhaps compiled a whole policy too.
                        release_freed_memory();
                    }
                }
            }
        }
    }
    let pinned = enforcer.pin_dir().is_some();
    // Detaching can take seconds (7 s measured in a 6.1 guest while another daemon
    // started): heartbeats go on meanwhile, so the stream an auditor verifies has no silent
    // gap before `agent_stop`. Should the thread not start, the closure (and with it the
    // enforcer) is dropped here, which detaches.
    let (done, mut detached) = tokio::sync::oneshot::channel::<()>();
    match std::thread::Builder::new()
        .name("egressd-detach".into())
        .spawn(move || {
            drop(enforcer);
            drop(done);
        }) {
        Ok(detach) => {
            // Resolves when `done` is dropped: after the detach, or in a panic.
            loop {
                tokio::select! {
                    _ = &mut detached => break,
                    _ = heartbeat.tick(), if output.heartbeat_secs > 0 => beat(
                        counters(&maps, &policy, &pipeline, &reloads, delivered, undecodable, worker.skipped(), &summaries),
                    ),
                }
            }
            if detach.join().is_err() {
                tracing::error!("the thread detaching the programs panicked");
            }
        }
        Err(e) => tracing::warn!(error = %e, "no thread to detach on: detached without heartbeats"),
    }
    if pinned {
        tracing::info!(
            "exiting; the pinned programs stay attached (`egressd detach` removes them)"
        );
    } else {
        tracing::info!("programs detached");
    }
    // Events submitted before the detach are still in the ring buffer, and the enrichment
    // thread may still hold some.
    delivered += drain(
        ring.get_mut(),
        &enrichers,
        &worker,
        &seq,
        &pipeline,
        &mut undecodable,
        usize::MAX,
    )
    .0;
    let rest = worker.finish(ENRICH_FLUSH);
    submit_connections(&seq, &pipeline, &worker, rest);
    // Detached (or left to the pins): what the kernel aggregated since the last interval.
    submit_summaries(&mut summaries, &policy, &seq, &pipeline);
    // What no record carries: attempts neither the ring buffer nor the summary table took,
    // and once detached the suppressed counts no later event can carry (left to the pins,
    // the next run's events carry them).
    submit_unreported(
        &mut unreported,
        !pinned,
        &mut summaries,
        &policy,
        &seq,
        &pipeline,
    );
    let stop = counters(
        &maps,
        &policy,
        &pipeline,
        &reloads,
        delivered,
        undecodable,
        worker.skipped(),
        &summaries,
    )?;
    pipeline.submit(&lifecycle(
        LifecycleBody::Stop {
            counters: stop,
            pinned: pin_dir.is_some(),
        },
        "agent_stop",
    ));
    if let Some(k) = keeping.take() {
        let _ = k.join();
    }
    let fin = pipeline.shutdown(SHUTDOWN_FLUSH);
    drop(claim);
    for (name, c) in &fin {
        tracing::info!(
            sink = %name,
            delivered = c.delivered,
            spooled = c.spooled,
            dropped = c.dropped(),
            "sink closed"
        );
    }
    Ok(())
}

/// The counter maps, kept readable after the programs are detached.
struct KernelMaps {
    counters: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    flows: aya::maps::PerCpuArray<aya::maps::MapData, egressd_common::FlowCounter>,
    loss: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    failsafe: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

/// Enrichers of the most recent generations, so an event is named by the policy that judged
/// it.
#[derive(Default)]
struct Enrichers(std::collections::BTreeMap<u64, Arc<Enricher>>);

impl Enrichers {
    /// Keeps the four most recent generations.
    fn insert(&mut self, generation: u64, e: Arc<Enricher>) {
        self.0.insert(generation, e);
        while self.0.len() > 4 {
            self.0.pop_first();
        }
    }

    /// The enricher of `generation`, or the newest one for an unknown generation.
    fn get(&self, generation: u64) -> Option<&Arc<Enricher>> {
        self.0
            .get(&generation)
            .or_else(|| self.0.values().next_back())
    }
}

/// `EGRESSD_BENCH_RING_ONLY=1`, for `cargo xtask bench` only: ring-buffer records are read,
/// decoded, counted (`connection_events`) and discarded, which measures the rate a reader
/// can reach at all.
fn ring_only() -> bool {
    static RING_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RING_ONLY.get_or_init(|| std::env::var_os("EGRESSD_BENCH_RING_ONLY").is_some_and(|v| v == "1"))
}

/// [`drain`] up to the [`ring_budget`]: what the main loop reads.
fn drain_budgeted(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    enrichers: &Enrichers,
    worker: &events::worker::Worker,
    seq: &Sequencer,
    pipeline: &Pipeline,
    undecodable: &mut u64,
) -> (u64, bool) {
    let budget = ring_budget(pipeline, worker);
    drain(ring, enrichers, worker, seq, pipeline, undecodable, budget)
}

/// Ring-buffer records the sinks can take now ([`Pipeline::room`]) less the events the
/// enrichment thread still holds for them; unlimited when no sink limits the rate. Events
/// held behind a stalled `/proc` read (a workload can block one) do not count: new events
/// bypass them, and they must not stop the reader for as long as the read blocks.
fn ring_budget(pipeline: &Pipeline, worker: &events::worker::Worker) -> usize {
    let held = if worker.stalled() {
        0
    } else {
        worker.pending()
    };
    pipeline
        .room()
        .map_or(usize::MAX, |room| room.saturating_sub(held))
}

/// Reads at most `limit` records from the ring buffer and queues each for enrichment (events
/// the enrichment thread cannot take now go to the sinks at once, without `/proc` details);
/// returns how many it decoded, and whether it stopped at the limit (records may be left:
/// they send no wake-up, so the caller reads again after [`RING_REST`]). Left in the ring
/// buffer, they make the kernel aggregate what it cannot queue behind them into
/// `connection_summary` counts, where a full sink queue would have dropped records. A reload
/// and the stop read everything (`usize::MAX`): they must not leave records of the
/// generation in force behind (what a full sink queue cannot take of them is dropped and
/// counted).
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    enrichers: &Enrichers,
    worker: &events::worker::Worker,
    seq: &Sequencer,
    pipeline: &Pipeline,
    undecodable: &mut u64,
    limit: usize,
) -> (u64, bool) {
    if limit == 0 {
        return (0, true);
    }
    let mut read = 0;
    let mut n = 0;
    // Handed to the enrichment thread a batch at a time (one lock, one wake-up), a batch
    // per enricher.
    let mut batch: Vec<egressd_common::Event> = Vec::new();
    let mut batch_enricher: Option<&Arc<Enricher>> = None;
    let hand_over = |enricher: Option<&Arc<Enricher>>, batch: &mut Vec<egressd_common::Event>| {
        if let Some(e) = enricher
            && !batch.is_empty()
        {
            for now in worker.push_all(e, batch.drain(..)) {
                submit_connection(seq, pipeline, now);
            }
        }
    };
    let mut cut = false;
    loop {
        if read >= limit {
            cut = true;
            break;
        }
        let Some(item) = ring.next() else {
            break;
        };
        read += 1;
        if ring_only() {
            match events::decode(&item) {
                Some(_) => n += 1,
                None => *undecodable += 1,
            }
            continue;
        }
        match events::decode(&item) {
            Some(ev) => {
                if let Some(enricher) = enrichers.get(ev.generation) {
                    if batch.len() >= PUSH_BATCH
                        || batch_enricher.is_some_and(|b| !Arc::ptr_eq(b, enricher))
                    {
                        hand_over(batch_enricher, &mut batch);
                    }
                    batch_enricher = Some(enricher);
                    batch.push(ev);
                }
                n += 1;
            }
            None => {
                *undecodable += 1;
                tracing::warn!(len = item.len(), "undecodable ring buffer record");
            }
        }
    }
    hand_over(batch_enricher, &mut batch);
    (n, cut)
}

/// Events handed to the enrichment thread at once, at most.
const PUSH_BATCH: usize = 256;

/// Once an ended summary interval's grace period has passed: its summaries and the
/// attempts past a full summary table since the previous one become `connection_summary`
/// records, so the SIEM has every denial within an interval whatever filled the table.
fn end_interval(
    summaries: &mut events::summary::Drainer,
    unreported: &mut events::summary::Unreported,
    policy: &Policy,
    seq: &Sequencer,
    pipeline: &Pipeline,
) {
    match summaries.collect() {
        Ok(taken) => submit_taken(&taken, policy, seq, pipeline),
        Err(e) => tracing::error!(error = format!("{e:#}"), "draining the kernel's summaries"),
    }
    submit_unreported(unreported, false, summaries, policy, seq, pipeline);
}

/// Drains the kernel's summaries ([`events::summary`]) into `connection_summary` records
/// and starts the next interval with the policy's record budget, waiting for the grace period on
/// this thread (the stop).
fn submit_summaries(
    drainer: &mut events::summary::Drainer,
    policy: &Policy,
    seq: &Sequencer,
    pipeline: &Pipeline,
) {
    match drainer.drain(policy.summary_after) {
        Ok(taken) => submit_taken(&taken, policy, seq, pipeline),
        Err(e) => tracing::error!(error = format!("{e:#}"), "draining the kernel's summaries"),
    }
}

/// Submits drained summaries as `connection_summary` records.
fn submit_taken(
    taken: &[events::summary::Taken],
    policy: &Policy,
    seq: &Sequencer,
    pipeline: &Pipeline,
) {
    for t in taken {
        let header = seq.header("connection_summary", clock::boot_to_unix_ns(t.last_ns));
        let s = events::summary::build(header, policy, t, clock::boot_to_unix_ns);
        pipeline.submit(&Record::Summary(Box::new(s)));
    }
}

/// Submits what the kernel counted and no record carries ([`events::summary::Unreported`])
/// as `connection_summary` records, counted with the drainer's.
fn submit_unreported(
    unreported: &mut events::summary::Unreported,
    pending: bool,
    drainer: &mut events::summary::Drainer,
    policy: &Policy,
    seq: &Sequencer,
    pipeline: &Pipeline,
) {
    for (t, why) in &unreported.take(pending, clock::boot_now_ns()) {
        let header = seq.header("connection_summary", clock::boot_to_unix_ns(t.last_ns));
        let mut s = events::summary::build(header, policy, t, clock::boot_to_unix_ns);
        s.rule.name = (*why).into();
        drainer.records += 1;
        drainer.attempts += t.count;
        pipeline.submit(&Record::Summary(Box::new(s)));
    }
}

/// Keeps `sources` as the last good policy on a thread of its own
/// ([`reload::keep_last_good`]), then frees their text and hands the heap pages back; `None`
/// when no thread could be started (logged; the last good policy kept before stays).
fn keep_sources(
    state: Option<StateDir>,
    config_path: &Path,
    sources: config::Sources,
    digest: String,
    generation: u64,
) -> Option<std::thread::JoinHandle<()>> {
    let config_path = config_path.to_path_buf();
    let kept = std::thread::Builder::new()
        .name("egressd-keep".into())
        .spawn(move || {
            keep_last_good(
                state.as_ref(),
                &config_path,
                std::borrow::Cow::Owned(sources),
                &digest,
                generation,
            );
            release_freed_memory();
        });
    match kept {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot start a thread to keep the policy in force as the last good one; a \
                 start on an invalid file will fall back to the one kept before"
            );
            None
        }
    }
}

/// Hands the heap pages freed by parsing and compiling a policy back to the kernel: glibc
/// keeps freed memory below the top of its heap mapped, so without this the resident size
/// after a large policy stays near its peak.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments beyond the padding to keep; only free memory is released.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Most free memory at the top of the heap kept for reuse instead of handed back.
pub const HEAP_KEEP: usize = 8 << 20;

/// Allocations from this size up get a mapping of their own, unmapped when freed.
pub const HEAP_MAP: usize = 1 << 20;

/// Lets the heap keep up to [`HEAP_KEEP`] bytes of free memory at its top: a flood's frames
/// are allocated by the ring-buffer reader and freed by the sinks' threads, and with glibc's
/// default (128 KiB) the top went back to the kernel and was faulted in again over and over
/// (about a tenth of the CPU per record, `bench_pipeline`). Allocations from [`HEAP_MAP`] up
/// (a policy file's text, the last good policy's JSON) are mapped apart and go back to the
/// kernel when freed. Both fixed, glibc no longer adjusts them as it goes (its dynamic
/// thresholds, raised by the first large buffer freed, kept an arena's freed top resident
/// after a large policy load). [`release_freed_memory`] still hands back everything after a
/// policy load.
pub fn keep_heap_for_records() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets two malloc parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MAP as libc::c_int);
    }
}

/// Numbers a connection event (in the order the sinks receive records) and submits it.
fn submit_connection(seq: &Sequencer, pipeline: &Pipeline, mut ev: ConnectionEvent) {
    seq.number(&mut ev.header);
    pipeline.submit(&Record::Connection(Box::new(ev)));
}

/// [`submit_connection`] of a batch of events, in order, as one batch for the sinks; the
/// events then go back to `worker` ([`events::worker::Worker::recycle_records`]).
fn submit_connections(
    seq: &Sequencer,
    pipeline: &Pipeline,
    worker: &events::worker::Worker,
    batch: events::worker::Finished,
) {
    let records: Vec<Record> = batch
        .into_iter()
        .map(|mut ev| {
            seq.number(&mut ev.header);
            Record::Connection(ev)
        })
        .collect();
    pipeline.submit_all(&records);
    worker.recycle_records(records);
}

/// The service manager's `STATUS=` for the policy in force.
fn status(enforcer: &Enforcer, policy: &Policy) -> String {
    crate::daemon::notify::policy_status(
        enforcer.generation(),
        &policy.digest,
        &policy.mode.to_string(),
        policy.v4.len(),
        policy.v6.len(),
    )
}

fn summary(cfg: &config::Config, policy: &Policy, enforcer: &Enforcer) -> PolicySummary {
    PolicySummary {
        file: cfg.path.display().to_string(),
        mode: policy.mode.to_string(),
        digest: policy.digest.clone(),
        generation: enforcer.generation(),
        ipv4_lookup: enforcer.ipv4_lookup().to_owned(),
        regions: policy.region_count(),
        prefixes_v4: policy.v4.len(),
        prefixes_v6: policy.v6.len(),
        allowlist: cfg.allowlist.clone(),
    }
}

/// SIGINT and SIGTERM, seen by a task of their own so that the main loop can check for them
/// before any other work.
struct StopSignal {
    /// 0: none yet; 1: SIGINT; 2: SIGTERM.
    received: Arc<std::sync::atomic::AtomicU8>,
    notify: Arc<tokio::sync::Notify>,
}

impl StopSignal {
    fn install() -> anyhow::Result<Self> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let received = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (r, n) = (received.clone(), notify.clone());
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = sigint.recv() => 1,
                _ = sigterm.recv() => 2,
            };
            r.store(which, std::sync::atomic::Ordering::SeqCst);
            n.notify_one();
        });
        Ok(Self { received, notify })
    }

    /// The signal's name once one arrived.
    fn received(&self) -> Option<&'static str> {
        match self.received.load(std::sync::atomic::Ordering::SeqCst) {
            1 => Some("SIGINT"),
            2 => Some("SIGTERM"),
            _ => None,
        }
    }

    /// Resolves when a stop signal arrives (at once if one already did).
    async fn wait(&self) {
        self.notify.notified().await;
    }
}
