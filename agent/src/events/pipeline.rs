//! Fan-out of records to the sinks, each with its own worker thread, retries, loss counters,
//! and either a bounded memory queue or an on-disk spool that is its write-ahead log.
//!
//! ```text
//!                        +-> [memory queue] -> worker -> transport (stdout, file)
//! ring-buffer reader --submit-> [spool (disk)] -> worker -> transport (syslog/TCP/TLS/UDP)
//!   (encodes per sink)   |        ^ commit when acknowledged --/
//!                        +-> ...
//! ```
//!
//! [`Pipeline::submit`] never waits for a destination. It encodes the record for each sink;
//! a sink with a spool gets the frame appended to it right there (one `write(2)`, before any
//! other sink sees the record), a sink without one gets it on its memory queue (a short mutex
//! section). Each sink's worker thread owns its transport and delivers frames strictly in
//! order: first frames to send again, then the spool, then the memory queue.
//!
//! Write-ahead log: a spooled frame stays in the spool until the destination has it. The
//! worker reads it ([`Spool::pop`]), sends it, and commits it ([`Spool::commit`]) once it is
//! acknowledged; only the committed position is persisted (every 200 ms), so after a crash
//! (`kill -9`, OOM, power loss with `spool_fsync = "batch"`) every frame not committed is
//! sent again: at-least-once, duplicates carry the same record `id`. After a lost connection
//! the frames in flight are read from the spool again ([`Spool::rewind`]). "Acknowledged"
//! means:
//!
//! - TCP and TLS: the peer's TCP acknowledged every byte of the frame (the frame's end
//!   offset in the stream is at most the bytes written minus `SIOCOUTQ`, the bytes the
//!   kernel still holds unacknowledged), and the connection was still healthy a second
//!   (`COMMIT_GRACE`) later or was closed in order (FIN). Syslog over TCP/TLS (RFC 6587,
//!   RFC 5425) has no application acknowledgement; a receiver that exits with bytes its
//!   kernel acknowledged but it never read resets the connection (RST, RFC 2525), and those
//!   frames are sent again. A receiver that read the bytes and died before storing them loses
//!   them, and nothing in the protocol can tell (RELP could).
//! - UDP: `send(2)` succeeded (there is nothing more to know).
//! - Files and stdout: written and flushed out of the sink's buffer (`write(2)` done).
//!
//! Durability ([`spool::Fsync`], `spool_fsync`): `"batch"` (default) syncs the spool before a
//! frame is first sent, one `fdatasync(2)` per batch of frames appended meanwhile; `"interval"`
//! syncs once a second. Either way a process crash loses nothing written to the spool.
//!
//! What a crash still loses: a record between the ring buffer and [`Pipeline::submit`] (being
//! enriched), frames a sink holds in memory because its spool could not be written (a full or
//! failing disk: the record is then queued in memory, as without a spool), and records of
//! sinks without a spool.
//!
//! Retries: a failed connection is retried after 100 ms, doubling up to the sink's
//! `retry_max_ms`. Frames written on a TCP or TLS connection stay in flight until the peer's
//! TCP acknowledged their bytes; when the connection fails first they are sent again, in
//! order, on the next one.
//!
//! Counters per sink ([`SinkCounters`]): `delivered`; `queued` (memory) and `spooled` (in the
//! spool, not acknowledged yet) now; `dropped_queue_full` (memory queue full and no spool, or
//! the spool unwritable), `dropped_spool_full` (spool at its size limit), `dropped_failed` (a
//! frame the destination can never take, e.g. larger than a datagram), `dropped_at_exit` (no
//! spool and the destination down at exit); `retries` (failed connection attempts and lost
//! connections); `up`.
//!
//! Shutdown ([`Pipeline::shutdown`]): workers keep delivering until their queues are empty
//! and in-flight frames acknowledged, or the deadline passes; what is not acknowledged stays
//! in the spool for the next run, or counts as `dropped_at_exit`.
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
    events::sinks::{
        self, Encoder, SendError, Transport,
        syslog::{OPEN_TIMEOUT, SEND_TIMEOUT},
    },
    events::{Record, SinkCounters},
};

use spool::{Fsync, Spool};

/// First wait after a failed connection attempt.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// A frame written after the connection was idle this long is preceded by a liveness check.
const IDLE_CHECK: Duration = Duration::from_millis(50);
/// How often in-flight frames are checked for acknowledgement while the queue is empty.
const ACK_POLL: Duration = Duration::from_millis(10);
/// How often the spool is synced with `spool_fsync = "interval"` (and with its head).
const SPOOL_SYNC: Duration = Duration::from_secs(1);
/// How often the spool's committed head is persisted: after a crash, frames committed since
/// are sent again (duplicates).
const HEAD_SYNC: Duration = Duration::from_millis(200);
/// A frame the peer's TCP acknowledged is committed once the connection has stayed healthy
/// this long after, or at an orderly close (FIN): a receiver that exits with bytes its
/// kernel took but it never read resets the connection (RST), and those frames are sent
/// again.
const COMMIT_GRACE: Duration = Duration::from_secs(1);
/// A frame written this long ago and still not acknowledged by the peer's TCP means the peer
/// stopped reading: the connection counts as down.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames sent to a destination without acknowledgements (files, stdout) before its buffer
/// is flushed so they can be committed.
const FLUSH_EVERY: usize = 256;
/// Frames (and bytes) read from the spool at once.
const READ_BATCH: usize = 256;
const READ_BATCH_BYTES: usize = 1 << 20;
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
    /// The on-disk spool (the write-ahead log). Lock order: `spool` before `queue`, so that
    /// moving the memory queue to the spool and taking the next frame never reorder frames;
    /// the one exception, the worker checking both before it sleeps, is safe because only
    /// the worker ever holds both.
    spool: Option<Mutex<Spool>>,
    /// When the spool is synced to disk.
    fsync: Fsync,
    /// Appending to the spool failed: frames go to the memory queue until a retry succeeds.
    spool_failing: AtomicBool,
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
        self.c
            .spooled
            .store(spool.unacknowledged(), Ordering::Relaxed);
        let d = spool.damaged();
        self.c.spool_damaged.store(d.regions, Ordering::Relaxed);
        self.c.spool_damaged_bytes.store(d.bytes, Ordering::Relaxed);
    }

    /// Moves the memory queue to the spool, in order, counting what does not fit; stops at
    /// the first write error, leaving the rest queued. Returns whether the spool took
    /// everything it had room for. `spool` is this sink's spool, locked.
    fn spill_into(&self, spool: &mut Spool) -> bool {
        let mut q = self.lock();
        let mut ok = true;
        while let Some(f) = q.memory.front() {
            match spool.append(f) {
                Ok(true) => {}
                Ok(false) => {
                    let n = self.c.dropped_spool_full.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(sink = %self.name, dropped = n + 1, "spool full: dropping records");
                    }
                }
                Err(e) => {
                    tracing::debug!(sink = %self.name, error = %e, "spool still not writable");
                    ok = false;
                    break;
                }
            }
            if let Some(f) = q.memory.pop_front() {
                q.bytes -= f.len();
            }
        }
        drop(q);
        self.set_spooled(spool);
        ok
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
    /// This sink's hash chain ([`crate::events::audit::chain`]): records are linked in the order
    /// they are submitted, which is their sequence order.
    chain: Mutex<crate::events::audit::chain::Chain>,
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
            fsync: cfg.spool.as_ref().map(|s| s.fsync).unwrap_or_default(),
            spool_failing: AtomicBool::new(false),
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
            marked: 0,
            batch: VecDeque::new(),
            written: 0,
            flushed: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("sink-{}", cfg.name))
            .spawn(move || worker.run())
            .map_err(|e| anyhow::anyhow!("sink `{}`: spawning its thread: {e}", cfg.name))?;
        Ok(Sink {
            encoder: Encoder::for_sink(cfg, host),
            chain: Mutex::new(crate::events::audit::chain::Chain::new()),
            shared,
            worker: Some(handle),
        })
    }

    /// Keys every sink's hash chain with `key` (HMAC-SHA-256, [`crate::events::audit::chain`]);
    /// call before the first [`Self::submit`].
    pub fn key_chains(&self, key: &Arc<[u8]>) {
        for s in &self.sinks {
            *s.chain.lock().unwrap_or_else(PoisonError::into_inner) =
                crate::events::audit::chain::Chain::keyed(key.clone());
        }
    }

    /// Names of the sinks, in config order.
    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.shared.name.clone()).collect()
    }

    /// Hands `record` to every sink without waiting for any destination. Sinks with a spool
    /// come first: the record is appended to each of their spools (their write-ahead logs)
    /// before any sink without one can show it. A sink without a spool queues it in memory;
    /// when that queue is full the record is dropped (counted).
    pub fn submit(&self, record: &Record) {
        for wal in [true, false] {
            for s in self
                .sinks
                .iter()
                .filter(|s| s.shared.spool.is_some() == wal)
            {
                self.submit_to(s, record);
            }
        }
    }

    fn submit_to(&self, s: &Sink, record: &Record) {
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
        if let Some(mut spool) = s.shared.lock_spool()
            && !s.shared.spool_failing.load(Ordering::Relaxed)
        {
            match spool.append(&frame) {
                Ok(true) => {
                    s.shared.set_spooled(&spool);
                    drop(spool);
                    // The worker decides to sleep holding the queue's lock: taking it here
                    // means it either saw this frame or is waiting for the notification.
                    drop(s.shared.lock());
                    s.shared.wake.notify_one();
                    return;
                }
                Ok(false) => {
                    let n = s
                        .shared
                        .c
                        .dropped_spool_full
                        .fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(sink = %s.shared.name, dropped = n + 1, "spool full: dropping records");
                    }
                    return;
                }
                Err(e) => {
                    // The worker retries the spool; until then the memory queue holds them.
                    s.shared.spool_failing.store(true, Ordering::Relaxed);
                    tracing::error!(sink = %s.shared.name, error = %e, "spool write failed: queueing records in memory (lost if egressd crashes)");
                }
            }
        }
        let mut q = s.shared.lock();
        if q.memory.len() >= s.shared.capacity
            || (q.bytes + frame.len() > s.shared.capacity_bytes && !q.memory.is_empty())
        {
            drop(q);
            let n = s
                .shared
                .c
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(sink = %s.shared.name, dropped = n + 1, "sink queue full: dropping records");
            }
            return;
        }
        q.bytes += frame.len();
        q.memory.push_back(frame);
        drop(q);
        s.shared.wake.notify_one();
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

/// A frame the worker holds: in flight, or to be sent again.
struct Held {
    /// The bytes; emptied once a frame read from the spool is sent (the spool has them).
    frame: Vec<u8>,
    /// Read from the spool: committed there once acknowledged, read from it again after a
    /// lost connection.
    wal: bool,
    /// Refused by the destination for good ([`SendError::Reject`]): not sent again, only
    /// committed in its turn.
    rejected: bool,
}

/// A frame written to the destination.
struct Flight {
    /// Its end offset in the connection's stream.
    end: u64,
    /// When it was written.
    at: Instant,
    /// When the peer's TCP was seen to have acknowledged it.
    acked: Option<Instant>,
    held: Held,
}

struct Worker {
    shared: Arc<Shared>,
    transport: Box<dyn Transport>,
    retry_max: Duration,
    /// Frames to send again before anything else (oldest first).
    retry: VecDeque<Held>,
    /// Frames written and not committed yet, in order.
    inflight: VecDeque<Flight>,
    /// How many of the first `inflight` are known acknowledged (`acked` set).
    marked: usize,
    /// Frames read from the spool and not sent yet (pending there).
    batch: VecDeque<Held>,
    /// Bytes written on the current connection.
    written: u64,
    /// `written` at the last successful flush (destinations without acknowledgements).
    flushed: u64,
}

impl Worker {
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Frames sent are tracked until acknowledged: always with a spool (to commit them),
    /// and on TCP/TLS (to send them again after a lost connection).
    fn tracks(&self) -> bool {
        self.shared.spool.is_some() || self.transport.acknowledges()
    }

    /// Commits acknowledged frames (counted as delivered; committed in the spool): on TCP
    /// and TLS once the peer's TCP acknowledged their bytes and the connection is still
    /// healthy [`COMMIT_GRACE`] later; elsewhere once written (and flushed). A frame
    /// unacknowledged for [`ACK_TIMEOUT`] means the peer stopped reading: the connection
    /// fails (its frames are sent again later).
    fn settle(&mut self) {
        self.publish_held();
        if self.inflight.is_empty() {
            return;
        }
        let acks = self.transport.acknowledges();
        let acked = if acks {
            self.written.saturating_sub(self.transport.unacked())
        } else {
            self.flushed
        };
        let now = Instant::now();
        for f in self.inflight.iter_mut().skip(self.marked) {
            if f.end > acked {
                break;
            }
            f.acked = Some(now);
            self.marked += 1;
        }
        let grace = if acks { COMMIT_GRACE } else { Duration::ZERO };
        let due = self
            .inflight
            .iter()
            .take_while(|f| f.acked.is_some_and(|a| now.duration_since(a) >= grace))
            .count();
        if due > 0
            && acks
            && let Err(e) = self.transport.check()
        {
            // Reset or closed since: what it acknowledged may never have been read.
            self.fail(None, &e);
            return;
        }
        self.commit_front(due);
        if self
            .inflight
            .front()
            .is_some_and(|f| f.acked.is_none() && !f.held.rejected && f.at.elapsed() >= ACK_TIMEOUT)
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

    /// Counts the `n` oldest in-flight frames as delivered and commits them in the spool.
    fn commit_front(&mut self, n: usize) {
        self.marked = self.marked.saturating_sub(n);
        let mut commit = 0;
        for f in self.inflight.drain(..n) {
            if !f.held.rejected {
                self.shared.c.delivered.fetch_add(1, Ordering::Relaxed);
            }
            commit += u64::from(f.held.wal);
        }
        if commit > 0
            && let Some(mut spool) = self.shared.lock_spool()
        {
            if let Err(e) = spool.commit(commit) {
                tracing::error!(sink = %self.shared.name, error = %e, "spool commit failed (delivered records may be sent again)");
            }
            self.shared.set_spooled(&spool);
        }
    }

    fn publish_held(&self) {
        let held = (self.inflight.len() + self.retry.len() + self.batch.len()) as u64;
        self.shared.c.held.store(held, Ordering::Relaxed);
    }

    /// The connection failed: close it and send the uncommitted frames again first: the
    /// spool's from the spool (its read cursor goes back to the committed head), the others
    /// (and `frame`, if one was being sent) from memory.
    fn fail(&mut self, frame: Option<Held>, err: &std::io::Error) {
        tracing::warn!(sink = %self.name(), error = %err, "sink connection lost; retrying");
        if err.kind() == std::io::ErrorKind::ConnectionAborted && self.transport.acknowledges() {
            // An orderly close (FIN; TLS close_notify): the receiver read every byte its TCP
            // acknowledged, as a receiver closing with unread bytes resets the connection
            // instead (RFC 2525, what Linux does).
            let acked = self.written.saturating_sub(self.transport.unacked());
            let n = self.inflight.iter().take_while(|f| f.end <= acked).count();
            self.commit_front(n);
        }
        self.transport.close();
        self.shared.c.up.store(false, Ordering::Relaxed);
        self.shared.c.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = frame.filter(|f| !f.wal) {
            self.retry.push_front(f);
        }
        while let Some(f) = self.inflight.pop_back() {
            if !f.held.wal && !f.held.rejected {
                self.retry.push_front(f.held);
            }
        }
        self.marked = 0;
        // Read from the spool again after the rewind below.
        self.batch.clear();
        if let Some(mut spool) = self.shared.lock_spool() {
            spool.rewind();
            self.shared.set_spooled(&spool);
        }
        self.written = 0;
        self.flushed = 0;
    }

    /// Syncs the spool up to the frame just read from it, unless that is done already
    /// (`spool_fsync = "batch"`): one `fdatasync` covers everything appended so far, and
    /// runs without holding the spool, so submitters keep appending meanwhile.
    fn make_durable(&self) {
        let handle = match self.shared.lock_spool() {
            Some(s) if !s.durable() => s.unsynced(),
            _ => return,
        };
        let synced = match handle {
            Ok(Some((f, to))) => f.sync_data().map(|()| Some(to)),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match synced {
            Ok(Some(to)) => {
                if let Some(mut s) = self.shared.lock_spool() {
                    s.synced(to);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(sink = %self.shared.name, error = %e, "spool fdatasync failed: sending anyway");
            }
        }
    }

    fn next_frame(&mut self) -> Option<Held> {
        if let Some(f) = self.retry.pop_front() {
            return Some(f);
        }
        if let Some(f) = self.batch.pop_front() {
            return Some(f);
        }
        // The spool's lock is held while the memory queue is read, so a spill cannot slip
        // older frames behind a newer one taken here.
        let mut spool = self.shared.lock_spool();
        if let Some(sp) = spool.as_mut()
            && !sp.is_empty()
        {
            // A batch per lock: the submitter appending meanwhile waits less.
            let mut bytes = 0;
            let mut failed = None;
            while self.batch.len() < READ_BATCH && bytes < READ_BATCH_BYTES {
                match sp.pop() {
                    Ok(Some(frame)) => {
                        bytes += frame.len();
                        self.batch.push_back(Held {
                            frame,
                            wal: true,
                            rejected: false,
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Also after damage was set aside and nothing was left to return.
            self.shared.set_spooled(sp);
            // Frames are read in the order they were appended: the last one's durability
            // is the batch's.
            let durable = sp.durable();
            drop(spool);
            if let Some(e) = failed {
                // The spool's directory itself fails: new records still flow.
                tracing::error!(sink = %self.shared.name, error = %e, "reading the spool failed: delivering from memory");
            }
            if let Some(f) = self.batch.pop_front() {
                if !durable && self.shared.fsync == Fsync::Batch {
                    self.make_durable();
                }
                return Some(f);
            }
            spool = self.shared.lock_spool();
        }
        let f = {
            let mut q = self.shared.lock();
            let f = q.memory.pop_front();
            q.bytes -= f.as_ref().map_or(0, Vec::len);
            f
        };
        drop(spool);
        f.map(|frame| Held {
            frame,
            wal: false,
            rejected: false,
        })
    }

    /// With a failing spool: tries to move the memory queue into it again.
    fn retry_spool(&self) {
        if !self.shared.spool_failing.load(Ordering::Relaxed) {
            return;
        }
        if let Some(mut spool) = self.shared.lock_spool()
            && self.shared.spill_into(&mut spool)
        {
            self.shared.spool_failing.store(false, Ordering::Relaxed);
            tracing::info!(sink = %self.shared.name, "spool writable again");
        }
    }

    fn run(mut self) {
        let mut backoff = RETRY_MIN;
        let mut next_attempt = Instant::now();
        let mut last_write = Instant::now();
        let mut last_sync = Instant::now();
        let mut last_head = Instant::now();
        let mut logged_down = false;
        let deadline = loop {
            // Reopen (SIGUSR1) applies to files and stdout; network sinks keep their
            // connection (closing it would resend unacknowledged frames: duplicates).
            if self.shared.reopen.swap(false, Ordering::Relaxed)
                && self.transport.is_open()
                && !self.transport.acknowledges()
            {
                match self.transport.flush() {
                    Ok(()) => self.flushed = self.written,
                    Err(e) => {
                        tracing::warn!(sink = %self.name(), error = %e, "flush before reopening failed");
                    }
                }
                self.settle();
                self.transport.close();
                self.shared.c.up.store(false, Ordering::Relaxed);
                tracing::info!(sink = %self.name(), "reopening");
                next_attempt = Instant::now();
                continue;
            }
            self.settle();
            let deadline = self.shared.lock().deadline;
            let up = self.transport.is_open();
            if last_sync.elapsed() >= SPOOL_SYNC {
                self.retry_spool();
                if let Some(mut s) = self.shared.lock_spool()
                    && let Err(e) = s.sync()
                {
                    tracing::error!(sink = %self.shared.name, error = %e, "spool sync failed");
                }
                last_sync = Instant::now();
                last_head = last_sync;
            } else if last_head.elapsed() >= HEAD_SYNC {
                if let Some(mut s) = self.shared.lock_spool()
                    && let Err(e) = s.sync_head()
                {
                    tracing::error!(sink = %self.shared.name, error = %e, "spool head write failed");
                }
                last_head = Instant::now();
            }
            if let Some(d) = deadline {
                let empty = self.retry.is_empty()
                    && self.batch.is_empty()
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
                            self.flushed = 0;
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
            let unflushed = !self.transport.acknowledges() && self.written > self.flushed;
            if unflushed && self.inflight.len() >= FLUSH_EVERY {
                match self.transport.flush() {
                    Ok(()) => self.flushed = self.written,
                    Err(e) => {
                        self.fail(None, &e);
                        continue;
                    }
                }
            }
            let Some(held) = self.next_frame() else {
                if let Err(e) = self.transport.flush() {
                    self.fail(None, &e);
                    continue;
                }
                self.flushed = self.written;
                self.settle();
                let wait = if self.inflight.is_empty() {
                    Duration::from_millis(500)
                } else {
                    ACK_POLL
                };
                let q = self.shared.lock();
                if q.memory.is_empty() && self.shared.lock_spool().is_none_or(|s| s.is_empty()) {
                    let wait = if q.deadline.is_some() { ACK_POLL } else { wait };
                    let _ = self.shared.wake.wait_timeout(q, wait);
                }
                continue;
            };
            if last_write.elapsed() >= IDLE_CHECK
                && let Err(e) = self.transport.check()
            {
                self.fail(Some(held), &e);
                next_attempt = Instant::now();
                continue;
            }
            let send_by = op_deadline(Instant::now() + SEND_TIMEOUT, deadline);
            match self.transport.send(&held.frame, send_by) {
                Ok(n) => {
                    last_write = Instant::now();
                    self.written += n;
                    if self.tracks() {
                        let mut held = held;
                        if held.wal {
                            // Sent again from the spool if need be.
                            held.frame = Vec::new();
                        }
                        self.inflight.push_back(Flight {
                            end: self.written,
                            at: last_write,
                            acked: None,
                            held,
                        });
                    } else {
                        self.shared.c.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(SendError::Retry(e)) => {
                    self.fail(Some(held), &e);
                    next_attempt = Instant::now() + backoff;
                }
                Err(SendError::Reject(e)) => {
                    self.shared.c.dropped_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %self.name(), error = %e, bytes = held.frame.len(), "record rejected by the destination: dropped");
                    if held.wal {
                        // Committed in its turn.
                        self.inflight.push_back(Flight {
                            end: self.written,
                            at: Instant::now(),
                            acked: None,
                            held: Held {
                                frame: Vec::new(),
                                rejected: true,
                                ..held
                            },
                        });
                    }
                }
            }
        };
        self.finish(deadline);
    }

    /// After the deadline or when empty: wait for acknowledgements until the deadline, then
    /// keep what is left for the next run. Frames from the spool stay there uncommitted; the
    /// others (memory) are appended to it.
    fn finish(mut self, deadline: Instant) {
        if self.transport.flush().is_ok() {
            self.flushed = self.written;
        }
        while !self.inflight.is_empty() && Instant::now() < deadline {
            std::thread::sleep(ACK_POLL);
            self.settle();
        }
        self.settle();
        // Acknowledged but within the grace: kept for the next run (duplicates at worst).
        let mut left: Vec<Vec<u8>> = Vec::new();
        let mut in_spool = 0u64;
        for h in self.inflight.drain(..).map(|f| f.held) {
            if h.wal {
                in_spool += 1;
            } else if !h.rejected {
                left.push(h.frame);
            }
        }
        in_spool += self.batch.drain(..).count() as u64;
        for h in self.retry.drain(..) {
            if h.wal {
                in_spool += 1;
            } else if !h.rejected {
                left.push(h.frame);
            }
        }
        self.publish_held();
        self.transport.close();
        self.shared.c.up.store(false, Ordering::Relaxed);
        let shared = self.shared.clone();
        let mut spool = shared.lock_spool();
        {
            let mut q = self.shared.lock();
            q.bytes = 0;
            left.extend(q.memory.drain(..));
        }
        match spool.as_mut() {
            Some(spool) => {
                let mut ok = Ok(());
                for f in &left {
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
                if spool.unacknowledged() > 0 {
                    tracing::warn!(sink = %self.shared.name, frames = spool.unacknowledged(), in_flight = in_spool, "undelivered records kept in the spool for the next run");
                }
                self.shared.set_spooled(spool);
            }
            None => {
                let n = left.len() as u64 + in_spool;
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
mod tests;
#[cfg(test)]
mod wal_tests;
