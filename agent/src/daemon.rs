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
/// host). Returns when SIGINT or SIGTERM arrives and the programs are detached.
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
        host: events::Host { name: host.clone() },
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

    let enricher = Enricher::new(host.clone(), policy.clone());
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
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                delivered += drain(guard.get_inner_mut(), &enricher, &mut sink, &mut undecodable);
                guard.clear_ready();
            }
        }
    }
    drop(enforcer);
    tracing::info!("programs detached");
    // Events submitted before the detach are still in the ring buffer.
    delivered += drain(ring.get_mut(), &enricher, &mut sink, &mut undecodable);
    let stop = AgentStop {
        timestamp: events::rfc3339(clock::unix_now_ns()),
        kind: "agent_stop",
        host: events::Host { name: host },
        agent,
        counters: stats::counters(&readers.counters, &policy)?,
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

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    enricher: &Enricher,
    sink: &mut JsonLines<std::io::BufWriter<std::io::Stdout>>,
    undecodable: &mut u64,
) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match events::decode(&item) {
            Some(ev) => {
                sink.emit(&enricher.enrich(&ev));
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
