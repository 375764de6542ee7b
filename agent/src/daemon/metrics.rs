//! Prometheus endpoint (`/metrics`, text exposition format 0.0.4 via prometheus-client) and
//! health endpoint (`/healthz`), served on the address given to `egressd run --metrics`.
//!
//! A scrape asks the daemon loop for a [`Snapshot`] read from the kernel counter maps at
//! that moment, so the numbers equal what `egressd status`, heartbeats and `agent_stop`
//! report; requests within [`SNAPSHOT_REUSE`] of it get the same one. Metrics (all prefixed
//! `egressd_`):
//!
//! | metric | labels | source |
//! | --- | --- | --- |
//! | `connections_total` | hook, region, verdict | kernel decision counters |
//! | `flow_packets_total`, `flow_bytes_total` | direction, region, verdict | kernel packet counters (bytes from the IP header) |
//! | `events_total` | stage, sink, outcome | `ringbuf`/`emitted`, `kernel`/`summarized` (deny+audit attempts the kernel aggregated into `connection_summary` records), `kernel`/`suppressed` (deny+audit attempts the kernel did not report as separate events nor summarize: held back by `suppress_window_ms`), `kernel`/`lost` (ring buffer and summary table full), `decode`/`lost`, `sink`/`delivered`, `sink`/`dropped_*`, `sink`/`truncated` (cut to `max_message_bytes`) per sink |
//! | `summaries_total` | | `connection_summary` records made |
//! | `sink_queued`, `sink_up` | sink | pipeline |
//! | `policy_generation` | | generation in force |
//! | `policy_prefixes` | family (`ipv4`, `ipv6`) | prefixes loaded |
//! | `reloads_total` | outcome (`ok`, `failed`) | SIGHUP and file-change reloads |
//! | `hook_attached` | hook | 1 attached and running egressd's program, else 0 |
//! | `tamper_repairs_total` | | repairs of pinned enforcement |
//! | `fail_closed_total` | reason | denials the kernel made because it could not judge a packet or its maps safely (`unparseable`, `chain_too_long`, `bad_entry`, `no_page`, `local_misrouted`, `route_too_long`, `route_hop_rules`, `next_hop_mismatch`, `next_hop_unverified`, `scratch_race`, `next_hop_forced`) |
//! | `coverage` | path, status (`enforced`, `partial`, `not_covered`, `unknown`) | 1 for each egress path's status on this kernel (see `egressd coverage`) |
//! | `build_info` | version | |
//!
//! | `policy_fallback` | | 1 while the last good policy is in force because the policy on disk was invalid at start ([`crate::daemon::lastgood`]), else 0 |
//!
//! `/healthz` answers `200 ok` when the daemon loop answers and every hook is attached,
//! else `503` with the reason. While the last good policy is in force instead of an invalid
//! policy on disk, it answers `200` with a body starting `degraded: policy fallback:` and
//! the reason: egressd enforces, so a liveness probe must not restart it (the restart would
//! fall back again), but a check reading the body sees it.
//!
//! Connections: at most [`MAX_CONNECTIONS`] at once (at the cap a new one replaces the
//! oldest that has not sent its request, or is closed), 5 s to send the request head (8 KiB
//! at most) and 5 s to take the answer.
use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use crate::events::Counters;

/// What one scrape reports, read by the daemon loop.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Kernel counters, loss and sink counters, as in heartbeats.
    pub counters: Counters,
    /// Policy generation in force.
    pub generation: u64,
    /// IPv4 prefixes of the policy in force.
    pub prefixes_v4: usize,
    /// IPv6 prefixes of the policy in force.
    pub prefixes_v6: usize,
    /// Reloads that installed a policy.
    pub reloads_ok: u64,
    /// Reloads refused (the previous policy stayed).
    pub reloads_failed: u64,
    /// (hook, attached) per hook.
    pub hooks: Vec<(&'static str, bool)>,
    /// Repairs of tampered pinned enforcement so far.
    pub tamper_repairs: u64,
    /// (path, status label) per egress path, from the start's coverage probe.
    pub coverage: Vec<(&'static str, &'static str)>,
    /// While egressd enforces its last good policy because the policy on disk was invalid at
    /// start ([`crate::daemon::lastgood`]): why, in one line. `None` once a valid set was loaded.
    pub policy_fallback: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    hook: String,
    region: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    direction: String,
    region: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    stage: String,
    sink: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct One {
    name: String,
}

/// Renders `s` in the Prometheus text format.
///
/// # Errors
/// Only a formatting error of the encoder.
pub fn render(s: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("egressd");
    let conns = Family::<ConnLabels, Counter>::default();
    reg.register(
        "connections",
        "Connection attempts judged by the kernel, by hook, region and verdict",
        conns.clone(),
    );
    for r in &s.counters.counters {
        conns
            .get_or_create(&ConnLabels {
                hook: r.hook.into(),
                region: r.region.clone(),
                verdict: r.verdict.into(),
            })
            .inc_by(r.count);
    }
    let packets = Family::<FlowLabels, Counter>::default();
    let bytes = Family::<FlowLabels, Counter>::default();
    reg.register(
        "flow_packets",
        "Packets by direction, remote region and verdict (cgroup_skb hooks)",
        packets.clone(),
    );
    reg.register(
        "flow_bytes",
        "Bytes from the IP header on, by direction, remote region and verdict",
        bytes.clone(),
    );
    if let Some(rows) = s.counters.extra.get("flows").and_then(|v| v.as_array()) {
        for r in rows {
            let l = FlowLabels {
                direction: r["direction"].as_str().unwrap_or_default().into(),
                region: r["region"].as_str().unwrap_or_default().into(),
                verdict: r["verdict"].as_str().unwrap_or_default().into(),
            };
            packets
                .get_or_create(&l)
                .inc_by(r["packets"].as_u64().unwrap_or(0));
            bytes
                .get_or_create(&l)
                .inc_by(r["bytes"].as_u64().unwrap_or(0));
        }
    }
    let events = Family::<EventLabels, Counter>::default();
    reg.register(
        "events",
        "Connection events by pipeline stage, sink and outcome",
        events.clone(),
    );
    let ev = |stage: &str, sink: &str, outcome: &str, n: u64| {
        events
            .get_or_create(&EventLabels {
                stage: stage.into(),
                sink: sink.into(),
                outcome: outcome.into(),
            })
            .inc_by(n);
    };
    let lost = &s.counters.lost;
    let reportable: u64 = s
        .counters
        .counters
        .iter()
        .filter(|r| r.verdict != "allow")
        .map(|r| r.count)
        .sum();
    let summaries = s.counters.extra.get("summaries");
    let summary_field = |k: &str| {
        summaries
            .and_then(|v| v.get(k))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let summarized = summary_field("attempts");
    ev("ringbuf", "", "emitted", s.counters.connection_events);
    ev("kernel", "", "lost", lost.kernel.ringbuf_full);
    ev("kernel", "", "summarized", summarized);
    ev(
        "kernel",
        "",
        "suppressed",
        reportable
            .saturating_sub(s.counters.connection_events + lost.kernel.ringbuf_full + summarized),
    );
    let summary_records = Counter::<u64>::default();
    summary_records.inc_by(summary_field("records"));
    reg.register(
        "summaries",
        "connection_summary records made (attempts the kernel aggregated: events_total{stage=\"kernel\",outcome=\"summarized\"})",
        summary_records,
    );
    ev("decode", "", "lost", lost.undecodable);
    let queued = Family::<One, Gauge>::default();
    let up = Family::<One, Gauge>::default();
    reg.register(
        "sink_queued",
        "Records waiting in a sink's queue",
        queued.clone(),
    );
    reg.register(
        "sink_up",
        "1 when the sink's destination is reachable",
        up.clone(),
    );
    for (name, c) in &lost.sinks {
        ev("sink", name, "delivered", c.delivered);
        ev("sink", name, "spooled", c.spooled);
        ev("sink", name, "dropped_queue_full", c.dropped_queue_full);
        ev("sink", name, "dropped_spool_full", c.dropped_spool_full);
        ev("sink", name, "dropped_failed", c.dropped_failed);
        ev("sink", name, "dropped_at_exit", c.dropped_at_exit);
        // Damaged places of the spool set aside (their records are lost; count unknown).
        ev("sink", name, "spool_damaged", c.spool_damaged);
        let truncated = s
            .counters
            .extra
            .get("truncated")
            .and_then(|t| t.get(name))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        ev("sink", name, "truncated", truncated);
        let one = One { name: name.clone() };
        queued
            .get_or_create(&one)
            .set(i64::try_from(c.queued).unwrap_or(i64::MAX));
        up.get_or_create(&one).set(i64::from(c.up));
    }
    let generation = Gauge::<i64>::default();
    generation.set(i64::try_from(s.generation).unwrap_or(i64::MAX));
    reg.register(
        "policy_generation",
        "Policy generation in force",
        generation,
    );
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Family_ {
        family: String,
    }
    let prefixes = Family::<Family_, Gauge>::default();
    reg.register(
        "policy_prefixes",
        "Prefixes of the policy in force, by address family",
        prefixes.clone(),
    );
    for (f, n) in [("ipv4", s.prefixes_v4), ("ipv6", s.prefixes_v6)] {
        prefixes
            .get_or_create(&Family_ { family: f.into() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Outcome {
        outcome: String,
    }
    let reloads = Family::<Outcome, Counter>::default();
    reg.register("reloads", "Policy reloads by outcome", reloads.clone());
    for (o, n) in [("ok", s.reloads_ok), ("failed", s.reloads_failed)] {
        reloads
            .get_or_create(&Outcome { outcome: o.into() })
            .inc_by(n);
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct HookL {
        hook: String,
    }
    let attached = Family::<HookL, Gauge>::default();
    reg.register(
        "hook_attached",
        "1 when the hook is attached and runs egressd's program",
        attached.clone(),
    );
    for (h, a) in &s.hooks {
        attached
            .get_or_create(&HookL { hook: (*h).into() })
            .set(i64::from(*a));
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ReasonL {
        reason: String,
    }
    let fail_closed = Family::<ReasonL, Counter>::default();
    reg.register(
        "fail_closed",
        "Denials the kernel made because it could not judge safely, by reason",
        fail_closed.clone(),
    );
    if let Some(rows) = s
        .counters
        .extra
        .get("fail_closed")
        .and_then(|v| v.as_object())
    {
        for (reason, n) in rows {
            fail_closed
                .get_or_create(&ReasonL {
                    reason: reason.clone(),
                })
                .inc_by(n.as_u64().unwrap_or(0));
        }
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CoverageL {
        path: String,
        status: String,
    }
    let coverage = Family::<CoverageL, Gauge>::default();
    reg.register(
        "coverage",
        "1 for the status of each egress path on this kernel",
        coverage.clone(),
    );
    for (path, status) in &s.coverage {
        coverage
            .get_or_create(&CoverageL {
                path: (*path).into(),
                status: (*status).into(),
            })
            .set(1);
    }
    let fallback = Gauge::<i64>::default();
    fallback.set(i64::from(s.policy_fallback.is_some()));
    reg.register(
        "policy_fallback",
        "1 while the last good policy is in force because the policy on disk is invalid",
        fallback,
    );
    let repairs = Counter::<u64>::default();
    repairs.inc_by(s.tamper_repairs);
    reg.register(
        "tamper_repairs",
        "Repairs of pinned enforcement changed behind egressd's back",
        repairs,
    );
    reg.register(
        "build",
        "egressd build",
        Info::new(vec![(
            "version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}

/// Connections served at once. Descriptors stay bounded whatever clients do: at the cap, a
/// new connection replaces the oldest one that has not sent its request yet (a client
/// holding a connection open cannot crowd out a scrape or `/healthz`), or is closed at once
/// when every connection is being answered.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client gets to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one snapshot answers every request (`/metrics` and `/healthz`). The daemon loop
/// reads the counter maps for a snapshot (milliseconds of CPU) on the thread that also
/// drains summaries and checks for tampering, so a local user requesting in a loop costs it
/// at most this many snapshots (and `/metrics` renders) a second, not one per request.
pub const SNAPSHOT_REUSE: Duration = Duration::from_millis(250);

/// The last snapshot, when it was read, and its `/metrics` text once rendered.
#[derive(Default)]
struct Latest {
    at: Option<tokio::time::Instant>,
    snap: Option<Arc<Snapshot>>,
    text: Option<Arc<String>>,
}

/// Shared by the connection tasks; held while a snapshot is asked for, so requests arriving
/// meanwhile take that one.
type Cache = Arc<tokio::sync::Mutex<Latest>>;

/// A snapshot at most [`SNAPSHOT_REUSE`] old, asked of the daemon loop when there is none;
/// `None` when the loop did not answer.
async fn current(
    cache: &Cache,
    ask: &mpsc::Sender<oneshot::Sender<Snapshot>>,
) -> Option<Arc<Snapshot>> {
    let mut c = cache.lock().await;
    if let (Some(at), Some(s)) = (c.at, &c.snap)
        && at.elapsed() < SNAPSHOT_REUSE
    {
        return Some(s.clone());
    }
    let s = Arc::new(snapshot(ask).await?);
    *c = Latest {
        at: Some(tokio::time::Instant::now()),
        snap: Some(s.clone()),
        text: None,
    };
    Some(s)
}

/// The `/metrics` text of [`current`]'s snapshot, rendered once per snapshot; `None` when
/// the loop did not answer. Errors: as [`render`].
async fn metrics_text(
    cache: &Cache,
    ask: &mpsc::Sender<oneshot::Sender<Snapshot>>,
) -> Option<Result<Arc<String>, std::fmt::Error>> {
    let s = current(cache, ask).await?;
    let mut c = cache.lock().await;
    let same = c.snap.as_ref().is_some_and(|l| Arc::ptr_eq(l, &s));
    if same && let Some(t) = &c.text {
        return Some(Ok(t.clone()));
    }
    let text = match render(&s) {
        Ok(t) => Arc::new(t),
        Err(e) => return Some(Err(e)),
    };
    if same {
        c.text = Some(text.clone());
    }
    Some(Ok(text))
}

/// Connections open now, and those still waiting for their request (oldest first).
#[derive(Default)]
struct Conns {
    open: usize,
    waiting: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// Counts a connection while it lives (also when its task is aborted).
struct Slot {
    id: u64,
    conns: std::sync::Arc<std::sync::Mutex<Conns>>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The request arrived: no longer a candidate for replacement.
    fn answering(&self) {
        self.lock().waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.lock();
        c.open = c.open.saturating_sub(1);
        c.waiting.retain(|(id, _)| *id != self.id);
    }
}

/// How often an address that could not be bound is tried again.
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds `addr` now and [`serve`]s it on a task of its own. An address that cannot be
/// bound (in use: any local user can take a port at or above
/// `net.ipv4.ip_unprivileged_port_start` before egressd does, and then answer `/healthz`
/// itself) is logged once, as an error, and tried again every [`BIND_RETRY`] on that task
/// until it binds or the daemon loop goes away; the daemon enforces meanwhile. (A port
/// below 1024 fails for good once the daemon has dropped `CAP_NET_BIND_SERVICE`: it stays
/// logged.)
pub async fn start(addr: std::net::SocketAddr, ask: mpsc::Sender<oneshot::Sender<Snapshot>>) {
    let first = match TcpListener::bind(addr).await {
        Ok(listener) => {
            served(&listener, addr);
            tokio::spawn(serve(listener, ask));
            return;
        }
        Err(e) => e,
    };
    tracing::error!(
        address = %addr,
        error = %first,
        retry_secs = BIND_RETRY.as_secs(),
        "cannot bind the metrics address: enforcing without /metrics and /healthz until it \
         can (another process may hold it: pick a port below 1024, which no unprivileged \
         user can take)"
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(BIND_RETRY).await;
            if ask.is_closed() {
                return;
            }
            if let Ok(listener) = TcpListener::bind(addr).await {
                served(&listener, addr);
                return serve(listener, ask).await;
            }
        }
    });
}

fn served(listener: &TcpListener, addr: std::net::SocketAddr) {
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %bound, "serving /metrics and /healthz");
}

/// Serves `/metrics` and `/healthz` on `listener` until the daemon loop goes away. Each
/// request asks the loop for a [`Snapshot`] through `ask` (5 s timeout). At most
/// [`MAX_CONNECTIONS`] connections are served at once (see there); each has
/// [`READ_TIMEOUT`] for its request and [`WRITE_TIMEOUT`] for the response.
pub async fn serve(listener: TcpListener, ask: mpsc::Sender<oneshot::Sender<Snapshot>>) {
    let conns = std::sync::Arc::new(std::sync::Mutex::new(Conns::default()));
    let cache = Cache::default();
    let mut next_id = 0u64;
    let mut refused = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut c = conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // An aborted task frees its slot when the runtime drops it, a moment later:
            // never go past twice the cap meanwhile.
            let evicted = if c.open >= MAX_CONNECTIONS && c.open < 2 * MAX_CONNECTIONS {
                c.waiting.pop_front().map(|(_, h)| h.abort()).is_some()
            } else {
                false
            };
            if c.open >= MAX_CONNECTIONS && !evicted {
                drop(c);
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        refused,
                        max = MAX_CONNECTIONS,
                        "metrics: too many connections at once; closing new ones"
                    );
                }
                drop(stream);
                continue;
            }
            c.open += 1;
        }
        next_id += 1;
        let slot = Slot {
            id: next_id,
            conns: conns.clone(),
        };
        let ask = ask.clone();
        let cache = cache.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = handle(stream, &ask, &cache, &slot).await {
                tracing::debug!(error = %e, "metrics request");
            }
            drop(slot);
        });
        // The daemon's runtime runs one thread: the task cannot have started yet (on another
        // runtime a task already answering would at worst be replaced, never leaked: its
        // slot's drop removes the entry).
        if !task.is_finished() {
            conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .waiting
                .push_back((next_id, task.abort_handle()));
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    ask: &mpsc::Sender<oneshot::Sender<Snapshot>>,
    cache: &Cache,
    slot: &Slot,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    slot.answering();
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body): (_, _, Arc<String>) = match path {
        "/metrics" => match metrics_text(cache, ask).await {
            Some(Ok(text)) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            Some(Err(_)) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding\n".to_owned().into(),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the daemon did not answer\n".to_owned().into(),
            ),
        },
        "/healthz" => match current(cache, ask).await {
            Some(s) => {
                let down: Vec<&str> = s
                    .hooks
                    .iter()
                    .filter(|(_, a)| !a)
                    .map(|(h, _)| *h)
                    .collect();
                if down.is_empty() && s.generation > 0 {
                    match &s.policy_fallback {
                        // Enforcing, so healthy for a liveness probe (a restart would come
                        // back the same way), but the body says what is wrong.
                        Some(why) => (
                            "200 OK",
                            "text/plain",
                            format!("degraded: policy fallback: {why}\n").into(),
                        ),
                        None => ("200 OK", "text/plain", "ok\n".to_owned().into()),
                    }
                } else {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not attached: {}\n", down.join(", ")).into(),
                    )
                }
            }
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the daemon did not answer\n".to_owned().into(),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_owned().into(),
        ),
    };
    let response_head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tokio::time::timeout(WRITE_TIMEOUT, async {
        // Head and the shared body in two writes: no Nagle wait for the second.
        stream.set_nodelay(true)?;
        stream.write_all(response_head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn snapshot(ask: &mpsc::Sender<oneshot::Sender<Snapshot>>) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    ask.send(tx).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .ok()?
        .ok()
}
