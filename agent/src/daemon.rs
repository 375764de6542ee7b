//! `egressd run`: load the policy, attach, stream events until SIGINT/SIGTERM, detach.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroup, clock, config,
    events::{self, Enricher},
    loader::Enforcer,
    policy::{self, Policy},
    sink::JsonLines,
    stats::{self, CounterRow, Loss},
};

/// Lifecycle record written to the event stream when enforcement starts.
#[derive(Serialize)]
struct AgentStart<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    host: events::Host,
    agent: Agent,
    policy: PolicySummary<'a>,
    cgroup: String,
}

/// Lifecycle record written after the programs are detached: final counters.
#[derive(Serialize)]
struct AgentStop {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    host: events::Host,
    agent: Agent,
    counters: Vec<CounterRow>,
    flows: Vec<stats::FlowRow>,
    reloads: Reloads,
    lost: AllLoss,
    /// Connection events handed to the sink (written or failed).
    connection_events: u64,
}

#[derive(Serialize)]
struct AllLoss {
    #[serde(flatten)]
    kernel: Loss,
    sink_write_failed: u64,
    undecodable: u64,
}

#[derive(Serialize, Clone)]
struct Agent {
    version: &'static str,
}

#[derive(Serialize)]
struct PolicySummary<'a> {
    file: String,
    mode: String,
    digest: &'a str,
    generation: u64,
    regions: usize,
    prefixes_v4: usize,
    prefixes_v6: usize,
    allowlist: &'a [String],
}

/// Reads the host name from the UTS namespace (`/proc/sys/kernel/hostname`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the agent: `config_path` is loaded and validated exactly like `egressd check`;
/// `cgroup_override` replaces the config's `cgroup` (default: the cgroup2 root, the whole
/// host). SIGHUP reloads the file: a valid policy is installed atomically (the next
/// generation), an invalid one is logged and reported and changes nothing. Returns when SIGINT
/// or SIGTERM arrives and the programs are detached.
pub async fn run(config_path: &Path, cgroup_override: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let policy = Arc::new(policy::compile(&cfg));
    let cgroup = match cgroup_override.or_else(|| cfg.cgroup.clone()) {
        Some(p) => p,
        None => cgroup::cgroup2_root()?,
    };
    // Install handlers before attaching, so a signal during load is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;

    let mut enforcer = Enforcer::load(policy.clone(), &cgroup)?;
    let readers = enforcer.take_readers()?;
    let host = host_name();
    let agent = Agent {
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut sink = JsonLines::stdout();
    sink.emit(&AgentStart {
        timestamp: events::rfc3339(clock::unix_now_ns()),
        kind: "agent_start",
        host: events::Host {
            name: host.clone(),
            labels: Default::default(),
        },
        agent: agent.clone(),
        policy: summary(&cfg, &policy, enforcer.generation()),
        cgroup: cgroup.display().to_string(),
    });
    sink.flush();
    tracing::info!(
        cgroup = %cgroup.display(),
        mode = %policy.mode,
        digest = %policy.digest,
        "enforcing"
    );

    // Events name regions by the generation that judged them: keep the recent policies.
    let seq = Arc::new(events::Sequencer::new(events::Context {
        host: events::Host {
            name: host.clone(),
            labels: Default::default(),
        },
        agent: events::AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            ephemeral_id: events::ephemeral_id(),
        },
    }));
    let mut enrichers = Enrichers::default();
    enrichers.insert(
        enforcer.generation(),
        Enricher::new(seq.clone(), policy.clone()),
    );
    let mut policy = policy;
    let mut reloads = Reloads::default();
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(readers.events, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with the reactor: {e}"))?;
    let mut undecodable = 0u64;
    let mut delivered = 0u64;
    loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: detaching"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching"); break; }
            _ = sighup.recv() => {
                // Events of the old generation still in the ring buffer are named by it.
                delivered += drain(ring.get_mut(), &enrichers, &mut sink, &mut undecodable);
                match reload(config_path, &mut enforcer) {
                    Ok((cfg, new)) => {
                        reloads.ok += 1;
                        let generation = enforcer.generation();
                        tracing::info!(generation, digest = %new.digest, "policy reloaded");
                        sink.emit(&PolicyLoaded {
                            timestamp: events::rfc3339(clock::unix_now_ns()),
                            kind: "policy_loaded",
                            host: events::Host { name: host.clone(), labels: Default::default() },
                            policy: summary(&cfg, &new, generation),
                        });
                        enrichers.insert(generation, Enricher::new(seq.clone(), new.clone()));
                        policy = new;
                    }
                    Err(e) => {
                        reloads.failed += 1;
                        tracing::error!(
                            error = format!("{e:#}"),
                            generation = enforcer.generation(),
                            "reload failed; the previous policy stays in force"
                        );
                        sink.emit(&ReloadFailed {
                            timestamp: events::rfc3339(clock::unix_now_ns()),
                            kind: "reload_failed",
                            host: events::Host { name: host.clone(), labels: Default::default() },
                            error: format!("{e:#}"),
                            generation_in_force: enforcer.generation(),
                        });
                    }
                }
                sink.flush();
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                delivered += drain(guard.get_inner_mut(), &enrichers, &mut sink, &mut undecodable);
                guard.clear_ready();
            }
        }
    }
    drop(enforcer);
    tracing::info!("programs detached");
    // Events submitted before the detach are still in the ring buffer.
    delivered += drain(ring.get_mut(), &enrichers, &mut sink, &mut undecodable);
    let stop = AgentStop {
        timestamp: events::rfc3339(clock::unix_now_ns()),
        kind: "agent_stop",
        host: events::Host {
            name: host,
            labels: Default::default(),
        },
        agent,
        counters: stats::counters(&readers.counters, &policy)?,
        flows: stats::flows(&readers.flows, &policy)?,
        reloads,
        lost: AllLoss {
            kernel: stats::loss(&readers.loss)?,
            sink_write_failed: sink.failed(),
            undecodable,
        },
        connection_events: delivered,
    };
    sink.emit(&stop);
    sink.flush();
    Ok(())
}

/// Validates and installs the policy file again; on any error nothing changes.
fn reload(
    config_path: &Path,
    enforcer: &mut Enforcer,
) -> anyhow::Result<(config::Config, Arc<Policy>)> {
    let cfg = config::load(config_path)?;
    let new = Arc::new(policy::compile(&cfg));
    enforcer.install(new.clone())?;
    Ok((cfg, new))
}

/// Enrichers of the most recent generations, so an event is named by the policy that judged
/// it.
#[derive(Default)]
struct Enrichers(std::collections::BTreeMap<u64, Enricher>);

impl Enrichers {
    /// Keeps the four most recent generations.
    fn insert(&mut self, generation: u64, e: Enricher) {
        self.0.insert(generation, e);
        while self.0.len() > 4 {
            self.0.pop_first();
        }
    }

    /// The enricher of `generation`, or the newest one for an unknown generation.
    fn get(&self, generation: u64) -> Option<&Enricher> {
        self.0
            .get(&generation)
            .or_else(|| self.0.values().next_back())
    }
}

/// Reload outcomes, reported in `agent_stop`.
#[derive(Serialize, Default)]
struct Reloads {
    ok: u64,
    failed: u64,
}

/// Lifecycle record: a reload installed a new policy.
#[derive(Serialize)]
struct PolicyLoaded<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    host: events::Host,
    policy: PolicySummary<'a>,
}

/// Lifecycle record: a reload was refused; the generation in force is unchanged.
#[derive(Serialize)]
struct ReloadFailed {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    host: events::Host,
    error: String,
    generation_in_force: u64,
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    enrichers: &Enrichers,
    sink: &mut JsonLines<std::io::BufWriter<std::io::Stdout>>,
    undecodable: &mut u64,
) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match events::decode(&item) {
            Some(ev) => {
                if let Some(enricher) = enrichers.get(ev.generation) {
                    sink.emit(&enricher.enrich(&ev));
                }
                n += 1;
            }
            None => {
                *undecodable += 1;
                tracing::warn!(len = item.len(), "undecodable ring buffer record");
            }
        }
    }
    sink.flush();
    n
}

fn summary<'a>(cfg: &'a config::Config, policy: &'a Policy, generation: u64) -> PolicySummary<'a> {
    PolicySummary {
        file: cfg.path.display().to_string(),
        mode: policy.mode.to_string(),
        digest: &policy.digest,
        generation,
        regions: policy.regions.len() - 1,
        prefixes_v4: policy.v4.len(),
        prefixes_v6: policy.v6.len(),
        allowlist: &cfg.allowlist,
    }
}
