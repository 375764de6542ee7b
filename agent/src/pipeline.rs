//! Fan-out of records to the sinks, each with its own bounded queue, worker thread, retries,
//! optional on-disk spool, and loss counters.
//!
//! ```text
//!                        +-> [memory queue] -> worker -> transport (stdout)
//! ring-buffer reader --submit-> [memory queue] -> worker -> transport (syslog/TLS)
//!   (encodes per sink)   |                         ^  \-> spool (disk) -/
//!                        +-> ...
//! ```
//!
//! [`Pipeline::submit`] never blocks on a sink: it encodes the record for each sink and pushes
//! the frame onto that sink's in-memory queue (a short mutex section). Each sink's worker
//! thread owns its transport and delivers frames strictly in order: first frames to retry,
//! then the spool, then the memory queue. While the destination is down, or when the memory
//! queue is half full, the worker moves the memory queue to the spool, so the reader is never
//! stalled and nothing is dropped until the spool is full.
//!
//! Retries: a failed connection is retried after 100 ms, doubling up to the sink's
//! `retry_max_ms`. Frames written on a TCP or TLS connection stay in flight until the peer's
//! TCP acknowledged their bytes; when the connection fails first they are sent again, in
//! order, on the next one.
//!
//! Counters per sink ([`SinkCounters`]): `delivered`; `queued` and `spooled` now;
//! `dropped_queue_full` (memory queue full and no spool, or the spool unwritable),
//! `dropped_spool_full` (spool at its size limit), `dropped_failed` (a frame the destination
//! can never take, e.g. larger than a datagram), `dropped_at_exit` (no spool and the
//! destination down at exit); `retries` (failed connection attempts and lost connections);
//! `up`.
//!
//! Shutdown ([`Pipeline::shutdown`]): workers keep delivering until their queues are empty
//! and in-flight frames acknowledged, or the deadline passes; what is left goes to the spool
//! (in order, ahead of older spooled frames' successors) for the next run, or counts as
//! `dropped_at_exit`.
pub mod spool;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    config::SinkConfig,
    events::{Record, SinkCounters},
    sinks::{
        self, Encoder, SendError, Transport,
        syslog::{OPEN_TIMEOUT, SEND_TIMEOUT},
    },
};

use spool::Spool;

/// First wait after a failed connection attempt.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// A frame written after the connection was idle this long is preceded by a liveness check.
const IDLE_CHECK: Duration = Duration::from_millis(50);
/// How often in-flight frames are checked for acknowledgement while the queue is empty.
const ACK_POLL: Duration = Duration::from_millis(10);
/// How often the spool's head is persisted.
const SPOOL_SYNC: Duration = Duration::from_secs(1);
/// A frame written this long ago and still not acknowledged by the peer's TCP means the peer
/// stopped reading: the connection counts as down.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for a worker past its deadline before leaving it behind.
const JOIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Atomics {
    delivered: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_spool_full: AtomicU64,
    dropped_failed: AtomicU64,
    dropped_at_exit: AtomicU64,
    retries: AtomicU64,
    truncated: AtomicU64,
    spooled: AtomicU64,
    spool_damaged: AtomicU64,
    spool_damaged_bytes: AtomicU64,
    /// Frames in flight or waiting to be sent again.
    held: AtomicU64,
    up: AtomicBool,
}

struct Queue {
    memory: VecDeque<Vec<u8>>,
    /// Bytes of the frames in `memory`.
    bytes: usize,
    /// Set by shutdown: deliver until this instant, then stop.
    deadline: Option<Instant>,
}

/// State shared by the submitter and a sink's worker.
struct Shared {
    name: String,
    capacity: usize,
    /// Byte bound of the memory queue.
    capacity_bytes: usize,
    /// The on-disk spool. Lock order: `spool` before `queue`, so that moving the memory
    /// queue to the spool (by the worker, or by the submitter when the queue is full) and
    /// taking the next frame never reorder frames.
    spool: Option<Mutex<Spool>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    reopen: AtomicBool,
    /// Shared with the transport: blocking I/O in progress ends at the shutdown deadline.
    stop: Arc<sinks::Stop>,
    c: Atomics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_spool(&self) -> Option<MutexGuard<'_, Spool>> {
        self.spool
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_spooled(&self, spool: &Spool) {
        self.c.spooled.store(spool.len(), Ordering::Relaxed);
        let d = spool.damaged();
        self.c.spool_damaged.store(d.regions, Ordering::Relaxed);
        self.c.spool_damaged_bytes.store(d.bytes, Ordering::Relaxed);
    }

    /// Moves the whole memory queue (then `extra`) to the spool, in order, counting what
    /// does not fit. `spool` is this sink's spool, locked.
    fn spill_into(&self, spool: &mut Spool, extra: Option<Vec<u8>>) {
        let frames: Vec<Vec<u8>> = {
            let mut q = self.lock();
            q.bytes = 0;
            q.memory.drain(..).collect()
        };
        for f in frames.iter().chain(extra.as_ref()) {
            match spool.append(f) {
                Ok(true) => {}
                Ok(false) => {
                    let n = self.c.dropped_spool_full.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(sink = %self.name, dropped = n + 1, "spool full: dropping records");
                    }
                }
                Err(e) => {
                    self.c.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %self.name, error = %e, "spool write failed: record dropped");
                }
            }
        }
        self.set_spooled(spool);
    }

    fn counters(&self) -> SinkCounters {
        let queued = self.lock().memory.len() as u64;
        let c = &self.c;
        SinkCounters {
            delivered: c.delivered.load(Ordering::Relaxed),
            queued,
            spooled: c.spooled.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_spool_full: c.dropped_spool_full.load(Ordering::Relaxed),
            dropped_failed: c.dropped_failed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            up: c.up.load(Ordering::Relaxed),
            dropped_at_exit: c.dropped_at_exit.load(Ordering::Relaxed),
            spool_damaged: c.spool_damaged.load(Ordering::Relaxed),
            spool_damaged_bytes: c.spool_damaged_bytes.load(Ordering::Relaxed),
        }
    }
}

struct Sink {
    encoder: Encoder,
    /// This sink's hash chain ([`crate::audit::chain`]): records are linked in the order
    /// they are submitted, which is their sequence order.
    chain: Mutex<crate::audit::chain::Chain>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

/// The running sinks.
pub struct Pipeline {
    sinks: Vec<Sink>,
}

/// Sinks checked and opened by [`Pipeline::prepare`], their threads not started yet.
pub struct Prepared(Vec<(SinkConfig, Box<dyn Transport>, Option<Spool>)>);

impl Prepared {
    /// Starts one worker thread per sink. `host` is the syslog HOSTNAME.
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub fn start(self, host: &str) -> anyhow::Result<Pipeline> {
        Pipeline::with_transports(self.0, host)
    }
}

impl Pipeline {
    /// Starts one worker per sink config. `host` is the syslog HOSTNAME.
    ///
    /// # Errors
    /// A sink that cannot work at all: unreadable TLS files, a spool directory that cannot be
    /// created or read. A destination that is merely down is not an error (it is retried).
    pub fn start(configs: &[SinkConfig], host: &str) -> anyhow::Result<Self> {
        Self::prepare(configs)?.start(host)
    }

    /// Checks and opens what every sink needs (TLS files, spool directories, file sink
    /// paths) without starting any thread: the daemon does this before attaching, and
    /// starts the threads after dropping its privileges ([`Prepared::start`]).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn prepare(configs: &[SinkConfig]) -> anyhow::Result<Prepared> {
        let mut prepared = Vec::new();
        for cfg in configs {
            let transport =
                sinks::transport(cfg).map_err(|e| e.context(format!("sink `{}`", cfg.name)))?;
            let spool = match &cfg.spool {
                Some(s) => Some(Spool::open(&s.dir, s.max_bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "sink `{}`: spool directory {}: {e}",
                        cfg.name,
                        s.dir.display()
                    )
                })?),
                None => None,
            };
            prepared.push((cfg.clone(), transport, spool));
        }
        Ok(Prepared(prepared))
    }

    /// Starts one sink with a given transport (tests use this to inject transports).
    ///
    /// # Errors
    /// The worker thread cannot be spawned.
    pub fn with_transports(
        sinks: Vec<(SinkConfig, Box<dyn Transport>, Option<Spool>)>,
        host: &str,
    ) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for (cfg, transport, spool) in sinks {
            out.push(Self::spawn(&cfg, host, transport, spool)?);
        }
        Ok(Self { sinks: out })
    }

    fn spawn(
        cfg: &SinkConfig,
        host: &str,
        transport: Box<dyn Transport>,
        spool: Option<Spool>,
    ) -> anyhow::Result<Sink> {
        if let Some(s) = &spool
            && !s.is_empty()
        {
            tracing::info!(sink = %cfg.name, frames = s.len(), "delivering frames spooled by a previous run first");
        }
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            capacity: cfg.queue.max(1),
            capacity_bytes: cfg.queue_bytes.max(1),
            spool: spool.map(Mutex::new),
            queue: Mutex::new(Queue {
                memory: VecDeque::new(),
                bytes: 0,
                deadline: None,
            }),
            wake: Condvar::new(),
            reopen: AtomicBool::new(false),
            stop: Arc::default(),
            c: Atomics::default(),
        });
        let mut transport = transport;
        transport.set_stop(shared.stop.clone());
        if let Some(s) = &shared.spool {
            shared.set_spooled(&s.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let worker = Worker {
            shared: shared.clone(),
            transport,
            retry_max: Duration::from_millis(cfg.retry_max_ms.max(1)),
            retry: VecDeque::new(),
            inflight: VecDeque::new(),
            written: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("sink-{}", cfg.name))
            .spawn(move || worker.run())
            .map_err(|e| anyhow::anyhow!("sink `{}`: spawning its thread: {e}", cfg.name))?;
        Ok(Sink {
            encoder: Encoder::for_sink(cfg, host),
            chain: Mutex::new(crate::audit::chain::Chain::new()),
            shared,
            worker: Some(handle),
        })
    }

    /// Keys every sink's hash chain with `key` (HMAC-SHA-256, [`crate::audit::chain`]);
    /// call before the first [`Self::submit`].
    pub fn key_chains(&self, key: &Arc<[u8]>) {
        for s in &self.sinks {
            *s.chain.lock().unwrap_or_else(PoisonError::into_inner) =
                crate::audit::chain::Chain::keyed(key.clone());
        }
    }

    /// Names of the sinks, in config order.
    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.shared.name.clone()).collect()
    }

    /// Hands `record` to every sink without waiting for any destination. A sink whose
    /// memory queue is full moves it to its spool right here (its worker may be stuck in a
    /// write to a slow receiver until the write's deadline), so records are dropped only
    /// when the spool is full too; a sink without a spool drops it (counted).
    pub fn submit(&self, record: &Record) {
        for s in &self.sinks {
            let encoded = s.encoder.encode_sealed(
                record,
                &mut s.chain.lock().unwrap_or_else(PoisonError::into_inner),
            );
            if encoded.truncated {
                let n = s.shared.c.truncated.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(sink = %s.shared.name, truncated = n + 1, max = s.encoder.max_bytes, "records longer than the sink's max_message_bytes: truncated");
                }
            }
            let frame = encoded.frame;
            let mut q = s.shared.lock();
            if q.memory.len() >= s.shared.capacity
                || (q.bytes + frame.len() > s.shared.capacity_bytes && !q.memory.is_empty())
            {
                drop(q);
                if let Some(mut spool) = s.shared.lock_spool() {
                    s.shared.spill_into(&mut spool, Some(frame));
                    continue;
                }
                let n = s
                    .shared
                    .c
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(sink = %s.shared.name, dropped = n + 1, "sink queue full: dropping records");
                }
                continue;
            }
            q.bytes += frame.len();
            q.memory.push_back(frame);
            drop(q);
            s.shared.wake.notify_one();
        }
    }

    /// Asks file (and stdout) sinks to flush, close and reopen their file (SIGUSR1, after
    /// logrotate moved it). Network sinks keep their connections.
    pub fn reopen(&self) {
        for s in &self.sinks {
            s.shared.reopen.store(true, Ordering::Relaxed);
            s.shared.wake.notify_one();
        }
    }

    /// Records each sink truncated to its `max_message_bytes`, by name (reported with the
    /// counters as `truncated`, and on /metrics).
    pub fn truncated(&self) -> BTreeMap<String, u64> {
        self.sinks
            .iter()
            .map(|s| {
                (
                    s.shared.name.clone(),
                    s.shared.c.truncated.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Counters of every sink, by name.
    pub fn counters(&self) -> BTreeMap<String, SinkCounters> {
        self.sinks
            .iter()
            .map(|s| (s.shared.name.clone(), s.shared.counters()))
            .collect()
    }

    /// Waits up to `timeout` until every sink has delivered everything submitted so far
    /// (memory queue, spool and in-flight frames); returns whether they all did.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.sinks.iter().all(|s| {
                let c = s.shared.counters();
                c.queued == 0
                    && c.spooled == 0
                    && c.up
                    && s.shared.c.held.load(Ordering::Relaxed) == 0
            });
            if done || Instant::now() >= deadline {
                return done;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the workers: each delivers what it can until `timeout`, then spools the rest (or
    /// counts it as `dropped_at_exit`). Returns the final counters.
    pub fn shutdown(mut self, timeout: Duration) -> BTreeMap<String, SinkCounters> {
        let deadline = Instant::now() + timeout;
        for s in &self.sinks {
            s.shared.lock().deadline = Some(deadline);
            s.shared.stop.set(deadline);
            s.shared.wake.notify_one();
        }
        self.join(deadline + JOIN_GRACE);
        self.counters()
    }

    /// Joins the workers, leaving behind (logged) any still busy at `until`, so an exit is
    /// never held up by a destination, whatever it does.
    fn join(&mut self, until: Instant) {
        for s in &mut self.sinks {
            let Some(h) = s.worker.take() else {
                continue;
            };
            while !h.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !h.is_finished() {
                tracing::error!(sink = %s.shared.name, "sink worker still busy at the exit deadline: leaving it");
                continue;
            }
            if h.join().is_err() {
                tracing::error!(sink = %s.shared.name, "sink worker panicked");
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Without shutdown(): stop the workers at once, spooling what they hold.
        let now = Instant::now();
        for s in &self.sinks {
            s.shared.lock().deadline = Some(now);
            s.shared.stop.set(now);
            s.shared.wake.notify_one();
        }
        self.join(now + JOIN_GRACE);
    }
}

/// `by`, or the shutdown deadline when that comes first (an operation started at shutdown
/// still gets a moment).
fn op_deadline(by: Instant, shutdown: Option<Instant>) -> Instant {
    match shutdown {
        Some(d) => by.min(d.max(Instant::now() + Duration::from_millis(100))),
        None => by,
    }
}

/// Where the frame being sent came from.
enum Source {
    Retry,
    Spool,
    Memory,
}

struct Worker {
    shared: Arc<Shared>,
    transport: Box<dyn Transport>,
    retry_max: Duration,
    /// Frames to send again before anything else (oldest first).
    retry: VecDeque<Vec<u8>>,
    /// Frames written but not yet acknowledged: (end offset in the stream, when written,
    /// frame).
    inflight: VecDeque<(u64, Instant, Vec<u8>)>,
    /// Bytes written on the current connection.
    written: u64,
}

impl Worker {
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Moves the whole memory queue to the spool (in order).
    fn spill(&mut self) {
        if let Some(mut spool) = self.shared.lock_spool() {
            self.shared.spill_into(&mut spool, None);
        }
    }

    /// Counts acknowledged in-flight frames as delivered. A frame unacknowledged for
    /// [`ACK_TIMEOUT`] means the peer stopped reading: the connection fails (its frames are
    /// sent again later).
    fn settle(&mut self) {
        self.publish_held();
        if self.inflight.is_empty() {
            return;
        }
        let acked = self.written.saturating_sub(self.transport.unacked());
        while self
            .inflight
            .front()
            .is_some_and(|(end, _, _)| *end <= acked)
        {
            self.inflight.pop_front();
            self.shared.c.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if self
            .inflight
            .front()
            .is_some_and(|(_, at, _)| at.elapsed() >= ACK_TIMEOUT)
        {
            self.fail(
                None,
                &std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the receiver acknowledged nothing for {} s",
                        ACK_TIMEOUT.as_secs()
                    ),
                ),
            );
        }
        self.publish_held();
    }

    fn publish_held(&self) {
        let held = (self.inflight.len() + self.retry.len()) as u64;
        self.shared.c.held.store(held, Ordering::Relaxed);
    }

    /// The connection failed: close it and queue the unacknowledged frames (and `frame`, if
    /// one was being sent) for sending again first.
    fn fail(&mut self, frame: Option<Vec<u8>>, err: &std::io::Error) {
        tracing::warn!(sink = %self.name(), error = %err, "sink connection lost; retrying");
        self.transport.close();
        self.shared.c.up.store(false, Ordering::Relaxed);
        self.shared.c.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = frame {
            self.retry.push_front(f);
        }
        while let Some((_, _, f)) = self.inflight.pop_back() {
            self.retry.push_front(f);
        }
        self.written = 0;
    }

    fn next_frame(&mut self) -> Option<(Source, Vec<u8>)> {
        if let Some(f) = self.retry.pop_front() {
            return Some((Source::Retry, f));
        }
        // The spool's lock is held while the memory queue is read, so a spill by the
        // submitter cannot slip older frames behind a newer one taken here.
        let mut spool = self.shared.lock_spool();
        if let Some(spool) = spool.as_mut()
            && !spool.is_empty()
        {
            let popped = spool.pop();
            // Also after damage was set aside and nothing was left to return.
            self.shared.set_spooled(spool);
            match popped {
                Ok(Some(f)) => return Some((Source::Spool, f)),
                Ok(None) => {}
                Err(e) => {
                    // The spool's directory itself fails: new records still flow.
                    tracing::error!(sink = %self.shared.name, error = %e, "reading the spool failed: delivering from memory");
                }
            }
        }
        let f = {
            let mut q = self.shared.lock();
            let f = q.memory.pop_front();
            q.bytes -= f.as_ref().map_or(0, Vec::len);
            f
        };
        drop(spool);
        f.map(|f| (Source::Memory, f))
    }

    fn run(mut self) {
        let mut backoff = RETRY_MIN;
        let mut next_attempt = Instant::now();
        let mut last_write = Instant::now();
        let mut last_sync = Instant::now();
        let mut logged_down = false;
        let deadline = loop {
            // Reopen (SIGUSR1) applies to files and stdout; network sinks keep their
            // connection (closing it would resend unacknowledged frames: duplicates).
            if self.shared.reopen.swap(false, Ordering::Relaxed)
                && self.transport.is_open()
                && !self.transport.acknowledges()
            {
                if let Err(e) = self.transport.flush() {
                    tracing::warn!(sink = %self.name(), error = %e, "flush before reopening failed");
                }
                self.transport.close();
                self.shared.c.up.store(false, Ordering::Relaxed);
                tracing::info!(sink = %self.name(), "reopening");
                next_attempt = Instant::now();
                continue;
            }
            self.settle();
            let (queued, bytes, deadline) = {
                let q = self.shared.lock();
                (q.memory.len(), q.bytes, q.deadline)
            };
            let up = self.transport.is_open();
            if self.shared.spool.is_some()
                && queued > 0
                && (!up
                    || queued >= self.shared.capacity / 2
                    || bytes >= self.shared.capacity_bytes / 2)
            {
                self.spill();
            }
            if last_sync.elapsed() >= SPOOL_SYNC {
                if let Some(mut s) = self.shared.lock_spool()
                    && let Err(e) = s.sync()
                {
                    tracing::error!(sink = %self.shared.name, error = %e, "spool sync failed");
                }
                last_sync = Instant::now();
            }
            if let Some(d) = deadline {
                let empty = self.retry.is_empty()
                    && self.inflight.is_empty()
                    && self.shared.lock_spool().is_none_or(|s| s.is_empty())
                    && self.shared.lock().memory.is_empty();
                if empty || Instant::now() >= d {
                    break d;
                }
            }
            if !up {
                let now = Instant::now();
                if now >= next_attempt {
                    match self
                        .transport
                        .open(op_deadline(now + OPEN_TIMEOUT, deadline))
                    {
                        Ok(()) => {
                            self.shared.c.up.store(true, Ordering::Relaxed);
                            self.written = 0;
                            backoff = RETRY_MIN;
                            last_write = Instant::now();
                            if logged_down {
                                tracing::info!(sink = %self.name(), "sink reconnected");
                            }
                            logged_down = false;
                            continue;
                        }
                        Err(e) => {
                            self.shared.c.retries.fetch_add(1, Ordering::Relaxed);
                            if !logged_down {
                                tracing::warn!(sink = %self.name(), error = %e, "sink unavailable; spooling and retrying");
                                logged_down = true;
                            } else {
                                tracing::debug!(sink = %self.name(), error = %e, "sink still unavailable");
                            }
                            next_attempt = now + backoff;
                            backoff = (backoff * 2).min(self.retry_max);
                        }
                    }
                }
                let wait = next_attempt
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                let q = self.shared.lock();
                let _ = self.shared.wake.wait_timeout(q, wait);
                continue;
            }
            let Some((source, frame)) = self.next_frame() else {
                if let Err(e) = self.transport.flush() {
                    self.fail(None, &e);
                    continue;
                }
                let wait = if self.inflight.is_empty() {
                    Duration::from_millis(500)
                } else {
                    ACK_POLL
                };
                let q = self.shared.lock();
                if q.memory.is_empty() {
                    let wait = if q.deadline.is_some() { ACK_POLL } else { wait };
                    let _ = self.shared.wake.wait_timeout(q, wait);
                }
                continue;
            };
            if last_write.elapsed() >= IDLE_CHECK
                && let Err(e) = self.transport.check()
            {
                self.fail(Some(frame), &e);
                next_attempt = Instant::now();
                continue;
            }
            let send_by = op_deadline(Instant::now() + SEND_TIMEOUT, deadline);
            match self.transport.send(&frame, send_by) {
                Ok(n) => {
                    last_write = Instant::now();
                    self.written += n;
                    if self.transport.acknowledges() {
                        self.inflight.push_back((self.written, last_write, frame));
                    } else {
                        self.shared.c.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(SendError::Retry(e)) => {
                    self.fail(Some(frame), &e);
                    next_attempt = Instant::now() + backoff;
                }
                Err(SendError::Reject(e)) => {
                    let _ = source;
                    self.shared.c.dropped_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %self.name(), error = %e, bytes = frame.len(), "record rejected by the destination: dropped");
                }
            }
        };
        self.finish(deadline);
    }

    /// After the deadline or when empty: wait for acknowledgements until the deadline, then
    /// keep what is left for the next run.
    fn finish(mut self, deadline: Instant) {
        let _ = self.transport.flush();
        while !self.inflight.is_empty() && Instant::now() < deadline {
            std::thread::sleep(ACK_POLL);
            self.settle();
        }
        self.settle();
        let mut left: Vec<Vec<u8>> = self.inflight.drain(..).map(|(_, _, f)| f).collect();
        left.extend(self.retry.drain(..));
        self.transport.close();
        self.shared.c.up.store(false, Ordering::Relaxed);
        let shared = self.shared.clone();
        let mut spool = shared.lock_spool();
        let memory: Vec<Vec<u8>> = {
            let mut q = self.shared.lock();
            q.bytes = 0;
            q.memory.drain(..).collect()
        };
        match spool.as_mut() {
            Some(spool) => {
                let mut ok = spool.prepend(&left);
                for f in &memory {
                    if ok.is_ok() {
                        match spool.append(f) {
                            Ok(true) => {}
                            Ok(false) => {
                                self.shared
                                    .c
                                    .dropped_spool_full
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => ok = Err(e),
                        }
                    }
                }
                if let Err(e) = ok.and_then(|()| spool.sync()) {
                    tracing::error!(sink = %self.shared.name, error = %e, "saving undelivered records to the spool failed");
                }
                if !spool.is_empty() {
                    tracing::warn!(sink = %self.shared.name, frames = spool.len(), "undelivered records kept in the spool for the next run");
                }
                self.shared.set_spooled(spool);
            }
            None => {
                let n = (left.len() + memory.len()) as u64;
                if n > 0 {
                    self.shared
                        .c
                        .dropped_at_exit
                        .fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(sink = %self.shared.name, records = n, "sink down at exit: records dropped (configure a spool to keep them)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::SpoolConfig, events::sample, sinks::file::File};
    use std::{io, path::PathBuf};

    /// A destination that can be taken down and brought back.
    #[derive(Default)]
    struct Fake {
        up: bool,
        received: Vec<Vec<u8>>,
        delay: Duration,
    }

    struct FakeTransport(Arc<Mutex<Fake>>, bool);

    impl Transport for FakeTransport {
        fn open(&mut self, _deadline: Instant) -> io::Result<()> {
            if self.0.lock().expect("lock").up {
                self.1 = true;
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
            }
        }
        fn is_open(&self) -> bool {
            self.1
        }
        fn send(&mut self, frame: &[u8], _deadline: Instant) -> Result<u64, SendError> {
            let delay = self.0.lock().expect("lock").delay;
            std::thread::sleep(delay);
            let mut f = self.0.lock().expect("lock");
            if !f.up {
                self.1 = false;
                return Err(SendError::Retry(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            if frame.windows(8).any(|w| w == b"REJECTME") {
                return Err(SendError::Reject(io::Error::other("too large")));
            }
            f.received.push(frame.to_vec());
            Ok(frame.len() as u64)
        }
        fn close(&mut self) {
            self.1 = false;
        }
    }

    fn fake(up: bool) -> (Arc<Mutex<Fake>>, Box<dyn Transport>) {
        let f = Arc::new(Mutex::new(Fake {
            up,
            ..Fake::default()
        }));
        (f.clone(), Box::new(FakeTransport(f, false)))
    }

    fn cfg(name: &str, queue: usize) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            queue,
            retry_max_ms: 20,
            ..SinkConfig::stdout()
        }
    }

    fn rec(seq: u64) -> Record {
        let mut ev = sample::deny();
        ev.header.sequence = seq;
        Record::Connection(Box::new(ev))
    }

    fn seqs(frames: &[Vec<u8>]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(f).expect("JSON line");
                v["sequence"].as_u64().expect("sequence")
            })
            .collect()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egressd-pipe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn outage_spools_and_delivers_in_order() {
        let dir = tmp("outage");
        let (f, t) = fake(true);
        let spool = Spool::open(&dir, 1 << 20).expect("spool");
        let p =
            Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
        for i in 1..=50 {
            p.submit(&rec(i));
        }
        wait_for("first batch", || {
            f.lock().expect("lock").received.len() == 50
        });
        f.lock().expect("lock").up = false;
        for i in 51..=150 {
            p.submit(&rec(i));
        }
        wait_for("spooling", || p.counters()["s"].spooled > 0);
        assert!(!p.counters()["s"].up);
        f.lock().expect("lock").up = true;
        for i in 151..=160 {
            p.submit(&rec(i));
        }
        assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
        let got = seqs(&f.lock().expect("lock").received);
        assert_eq!(got, (1..=160).collect::<Vec<_>>());
        let c = p.shutdown(Duration::from_secs(1));
        assert_eq!(c["s"].delivered, 160);
        assert_eq!(c["s"].dropped(), 0);
        assert!(c["s"].retries > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_queue_without_spool_drops_and_counts() {
        let (f, t) = fake(false);
        let p = Pipeline::with_transports(vec![(cfg("s", 10), t, None)], "h").expect("start");
        for i in 1..=25 {
            p.submit(&rec(i));
        }
        let c = p.counters();
        assert_eq!((c["s"].queued, c["s"].dropped_queue_full), (10, 15));
        let c = p.shutdown(Duration::from_millis(100));
        assert_eq!(c["s"].dropped_at_exit, 10);
        assert!(f.lock().expect("lock").received.is_empty());
    }

    #[test]
    fn spool_full_drops_and_counts() {
        let dir = tmp("full");
        let (_f, t) = fake(false);
        // As submitted: with the hash chain link (of fixed length).
        let frame_len = Encoder::for_sink(&cfg("s", 1), "h")
            .encode_sealed(&rec(1), &mut crate::audit::chain::Chain::new())
            .frame
            .len() as u64;
        // Room for exactly 5 frames (with their 4-byte length and 4-byte checksum).
        let spool = Spool::open(&dir, 5 * (frame_len + 8)).expect("spool");
        let p =
            Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
        for i in 1..=8 {
            p.submit(&rec(i));
        }
        wait_for("spill", || {
            let c = p.counters();
            c["s"].spooled + c["s"].dropped_spool_full == 8
        });
        let c = p.shutdown(Duration::from_millis(50));
        assert_eq!((c["s"].spooled, c["s"].dropped_spool_full), (5, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn spool_survives_restart_and_goes_first() {
        let dir = tmp("restart");
        let (_f, t) = fake(false);
        let p = Pipeline::with_transports(
            vec![(
                cfg("s", 1000),
                t,
                Some(Spool::open(&dir, 1 << 20).expect("spool")),
            )],
            "h",
        )
        .expect("start");
        for i in 1..=20 {
            p.submit(&rec(i));
        }
        let c = p.shutdown(Duration::from_millis(50));
        assert_eq!(c["s"].spooled, 20);
        let (f, t) = fake(true);
        let p = Pipeline::with_transports(
            vec![(
                cfg("s", 1000),
                t,
                Some(Spool::open(&dir, 1 << 20).expect("spool")),
            )],
            "h",
        )
        .expect("restart");
        p.submit(&rec(21));
        assert!(p.flush(Duration::from_secs(10)));
        assert_eq!(
            seqs(&f.lock().expect("lock").received),
            (1..=21).collect::<Vec<_>>()
        );
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 13 item 4: a spool damaged while the agent was down (a frame's bytes changed)
    /// delivers every intact frame and the new records, and counts what it set aside.
    #[test]
    fn damaged_spool_does_not_stop_delivery() {
        let dir = tmp("damaged");
        let (_f, t) = fake(false);
        let spool = Spool::open(&dir, 1 << 20).expect("spool");
        let p =
            Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
        for i in 1..=20 {
            p.submit(&rec(i));
        }
        assert_eq!(p.shutdown(Duration::from_millis(50))["s"].spooled, 20);
        // Flip the last byte of the first segment: record 20's checksum no longer matches.
        let seg = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("segment");
        let mut bytes = std::fs::read(&seg).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&seg, &bytes).expect("write");
        let (f, t) = fake(true);
        let spool = Spool::open(&dir, 1 << 20).expect("spool");
        let p = Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h")
            .expect("restart");
        p.submit(&rec(21));
        assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
        let mut want: Vec<u64> = (1..=19).collect();
        want.push(21);
        assert_eq!(seqs(&f.lock().expect("lock").received), want);
        let c = p.counters();
        assert_eq!(c["s"].spool_damaged, 1);
        assert!(c["s"].spool_damaged_bytes > 0);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn slow_sink_stalls_neither_submit_nor_other_sinks() {
        let (slow, t1) = fake(true);
        slow.lock().expect("lock").delay = Duration::from_millis(20);
        let (fast, t2) = fake(true);
        let p = Pipeline::with_transports(
            vec![(cfg("slow", 1000), t1, None), (cfg("fast", 1000), t2, None)],
            "h",
        )
        .expect("start");
        let t0 = Instant::now();
        for i in 1..=200 {
            p.submit(&rec(i));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "submit blocked");
        wait_for("fast sink", || {
            fast.lock().expect("lock").received.len() == 200
        });
        assert!(slow.lock().expect("lock").received.len() < 200);
        drop(p);
    }

    #[test]
    fn flood_keeps_memory_bounded_and_counts_every_drop() {
        let (down, t1) = fake(false);
        let (up, t2) = fake(true);
        let p = Pipeline::with_transports(
            vec![
                (cfg("down", 1000), t1, None),
                (cfg("up", 100_000), t2, None),
            ],
            "h",
        )
        .expect("start");
        let n = 20_000;
        for i in 1..=n {
            p.submit(&rec(i));
        }
        let c = p.counters();
        assert_eq!(
            c["down"].queued, 1000,
            "the queue never grows past its bound"
        );
        assert_eq!(c["down"].dropped_queue_full, n - 1000);
        wait_for("the healthy sink", || {
            up.lock().expect("lock").received.len() == n as usize
        });
        let c = p.shutdown(Duration::from_millis(50));
        assert_eq!(
            c["down"].dropped(),
            n,
            "every record of the dead sink is counted"
        );
        assert_eq!((c["up"].delivered, c["up"].dropped()), (n, 0));
        assert!(down.lock().expect("lock").received.is_empty());
    }

    #[test]
    fn rejected_frames_are_counted() {
        let (f, t) = fake(true);
        let p = Pipeline::with_transports(vec![(cfg("s", 100), t, None)], "h").expect("start");
        let mut big = sample::deny();
        big.process.command_line = Some("REJECTME".into());
        p.submit(&rec(1));
        p.submit(&Record::Connection(Box::new(big)));
        p.submit(&rec(3));
        wait_for("delivery", || f.lock().expect("lock").received.len() == 2);
        let c = p.shutdown(Duration::from_secs(1));
        assert_eq!((c["s"].delivered, c["s"].dropped_failed), (2, 1));
    }

    #[test]
    fn file_sink_reopens_after_rotation() {
        let dir = tmp("file");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("events.log");
        let mut c = cfg("file", 100);
        c.kind = crate::config::SinkKind::File {
            path: path.clone(),
            mode: crate::safefs::FILE_MODE,
        };
        let p = Pipeline::with_transports(vec![(c, Box::new(File::new(path.clone())), None)], "h")
            .expect("start");
        p.submit(&rec(1));
        p.submit(&rec(2));
        assert!(p.flush(Duration::from_secs(5)));
        wait_for("first file", || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 2)
        });
        let rotated = dir.join("events.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        p.reopen();
        p.submit(&rec(3));
        let c = p.shutdown(Duration::from_secs(5));
        assert_eq!(c["file"].delivered, 3);
        let old = std::fs::read_to_string(&rotated).expect("rotated");
        let new = std::fs::read_to_string(&path).expect("new file");
        assert_eq!(old.lines().count(), 2, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("\"sequence\":3"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn spool_config_is_used_by_start() {
        let dir = tmp("start");
        let mut c = cfg("s", 10);
        c.spool = Some(SpoolConfig {
            dir: dir.join("s"),
            max_bytes: 1 << 20,
        });
        let p = Pipeline::start(&[c], "h").expect("start");
        assert!(dir.join("s").is_dir());
        assert_eq!(p.names(), ["s"]);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A receiver that accepts and then reads one byte every 4 s, never closing.
    fn trickler() -> (String, Arc<AtomicBool>) {
        use std::os::fd::AsRawFd as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let small: libc::c_int = 4096;
        // SAFETY: setsockopt reads one int.
        unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const small).cast(),
                4,
            )
        };
        let addr = l.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while !st.load(Ordering::Relaxed) {
                        if io::Read::read(&mut c, &mut b).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(4));
                    }
                });
            }
        });
        (addr, stop)
    }

    /// Issue 22 item 8: a syslog receiver that trickles one byte every 4 s counts as down
    /// once a frame misses its write deadline; records go to the spool while it has room
    /// (none dropped), and shutdown returns within its deadline plus a few seconds whatever
    /// the receiver does. Before: the worker sat in one write for minutes, the memory queue
    /// filled and records were dropped, and shutdown waited for the write.
    #[test]
    fn trickling_receiver_spools_and_shutdown_is_bounded() {
        let (addr, stop) = trickler();
        let dir = tmp("trickle");
        let spool = Spool::open(&dir, 1 << 30).expect("spool");
        let transport = Box::new(crate::sinks::syslog::Tcp::new(addr));
        let p = Pipeline::with_transports(vec![(cfg("s", 1000), transport, Some(spool))], "h")
            .expect("start");
        let mut big = sample::deny();
        big.process.command_line = Some("x".repeat(1500));
        let n = 20_000u64;
        for i in 1..=n {
            big.header.sequence = i;
            p.submit(&Record::Connection(Box::new(big.clone())));
        }
        let c = p.counters();
        assert_eq!(
            c["s"].dropped(),
            0,
            "dropped while the spool had room: {c:?}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(p.shutdown(Duration::from_secs(1)));
        });
        let c = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("shutdown did not return within 15 s");
        let took = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        assert_eq!(c["s"].dropped(), 0, "{c:?}");
        assert_eq!(c["s"].delivered + c["s"].spooled, n, "{c:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 22 item 6: records of a workload that fills its command line with control
    /// characters (six bytes each once escaped) queue for a dead sink: the memory queue is
    /// bounded in bytes as well as records, and each frame stays small (fields capped after
    /// escaping). Before: 47 KB command lines made 282 KB frames and a 10,000-record queue
    /// held gigabytes.
    #[test]
    fn queue_is_bounded_in_bytes() {
        let (_f, t) = fake(false);
        let mut c = cfg("s", 10_000);
        c.queue_bytes = 1 << 20;
        let p = Pipeline::with_transports(vec![(c, t, None)], "h").expect("start");
        let mut ev = sample::deny();
        ev.process.command_line = Some("\u{1b}".repeat(47_000));
        let n = 2_000u64;
        for i in 1..=n {
            ev.header.sequence = i;
            p.submit(&Record::Connection(Box::new(ev.clone())));
        }
        let (bytes, frames, largest) = {
            let q = p.sinks[0].shared.lock();
            let largest = q.memory.iter().map(Vec::len).max().unwrap_or(0);
            (q.bytes, q.memory.len() as u64, largest)
        };
        assert!(bytes <= 1 << 20, "{bytes} bytes queued");
        assert!(largest < 8 << 10, "a frame of {largest} bytes");
        let c = p.counters();
        assert_eq!(frames + c["s"].dropped_queue_full, n, "{c:?}");
        drop(p);
    }
}
