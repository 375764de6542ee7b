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
//! Backpressure: instead of waiting, the ring-buffer reader asks [`Pipeline::room`] how many
//! records it may take (sinks with `when_full = "block"`); a flood a sink cannot keep up with
//! stays in the kernel, which aggregates it, rather than being dropped at a full queue.
//! Records that are not `connection` records may exceed a full queue by [`OVERDRAFT`].
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
//! frame the destination can never take, e.g. larger than a datagram; a file sink's record a
//! failed write cut off in a file rotated before it could be completed), `dropped_at_exit`
//! (no spool and the destination down at exit; a file sink's records a full disk kept); `retries` (failed connection attempts and lost
//! connections); `up`.
//!
//! Shutdown ([`Pipeline::shutdown`]): workers keep delivering until their queues are empty
//! and in-flight frames acknowledged, or the deadline passes; what is not acknowledged stays
//! in the spool for the next run, or counts as `dropped_at_exit`.
pub mod spool;
mod worker;

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
use worker::Worker;

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
/// Records [`Pipeline::submit_all`] hands a sink at once: few enough that the sink's thread
/// starts on them soon, enough that its wake-up is shared by many.
pub const SUBMIT_CHUNK: usize = 64;
/// Sent frames a sink keeps for the submitter to write the next ones into, at most (of at
/// most [`SPARE_FRAME_BYTES`] each: 2 MiB for frames of the usual 2 KiB, 9 MiB at most
/// with the chunk the sink's thread gathers and the one the submitter holds, kept while
/// the daemon is idle): frames allocated by one thread and freed by another
/// cost a tenth of the CPU per record in a flood (`bench_pipeline`), and a sink's queue
/// holds up to 10,000 of them, so a pool of a few chunks ran dry in every flood.
const SPARE_FRAMES: usize = 16 * SUBMIT_CHUNK;
/// A frame's largest capacity kept for reuse (a record with a 4 KiB command line fits).
const SPARE_FRAME_BYTES: usize = 8 << 10;
/// A sink whose worker has written nothing for this long while frames waited in its memory
/// queue as long is stuck (a blocked write): it no longer holds the ring-buffer reader back
/// ([`Pipeline::room`]), and what its full queue cannot take is dropped (counted).
const STUCK: Duration = Duration::from_secs(2);
/// Records other than `connection` records (summaries, each the count of up to millions of
/// attempts; lifecycle records; heartbeats) may exceed a full memory queue by this many
/// (and by [`OVERDRAFT_BYTES`]): one summary interval's worth (a summary per key of the
/// kernel's table) and a few more, so that a queue a flood's records filled still takes them.
const OVERDRAFT: usize = egressd_common::SUMMARY_ENTRIES as usize + 64;
/// The byte allowance of [`OVERDRAFT`] (records of about 1 KiB).
const OVERDRAFT_BYTES: usize = 8 << 20;
/// [`Pipeline::room`] leaves this fraction (1/`HEADROOM`) of every memory queue free of the
/// ring-buffer reader's records, as slack for records its budget does not see (the events
/// a stalled enrichment thread held, when the stall ends; summaries, lifecycle records and
/// heartbeats, which also have [`OVERDRAFT`]).
const HEADROOM: usize = 8;
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
    /// When `memory` last went from empty to not empty.
    filled_at: Option<Instant>,
}

/// State shared by the submitter and a sink's worker.
struct Shared {
    name: String,
    /// `when_full = "block"`: the sink limits [`Pipeline::room`].
    blocks: bool,
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
    /// Frames sent, cleared, handed back by the worker for the submitter to reuse.
    spare: Mutex<Vec<Vec<u8>>>,
    wake: Condvar,
    reopen: AtomicBool,
    /// Set once `queue.deadline` is: the worker reads the deadline under the queue's lock
    /// only then, not once per frame.
    stopping: AtomicBool,
    /// Shared with the transport: blocking I/O in progress ends at the shutdown deadline.
    stop: Arc<sinks::Stop>,
    c: Atomics,
    /// Start of the clock of `wrote_ms`.
    epoch: Instant,
    /// Milliseconds from `epoch` to the worker's last frame written (0: none yet).
    wrote_ms: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a frame written at `now` (the worker's loop clock).
    fn wrote(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis());
        self.wrote_ms
            .store(ms.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long ago the worker last wrote a frame (since the sink started, if never).
    fn since_write(&self, now: Instant) -> Duration {
        self.epoch
            .checked_add(Duration::from_millis(self.wrote_ms.load(Ordering::Relaxed)))
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    fn lock_spare(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
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

impl Sink {
    /// This sink's part of [`Pipeline::room`] at `now`.
    fn room(&self, now: Instant) -> Option<usize> {
        let sh = &self.shared;
        if !sh.blocks
            || (sh.spool.is_some() && !sh.spool_failing.load(Ordering::Relaxed))
            || !sh.c.up.load(Ordering::Relaxed)
        {
            return None;
        }
        let q = sh.lock();
        let waited = q.filled_at.is_some_and(|t| now.duration_since(t) >= STUCK);
        if !q.memory.is_empty() && waited && sh.since_write(now) >= STUCK {
            return None;
        }
        let free = (sh.capacity - sh.capacity / HEADROOM).saturating_sub(q.memory.len());
        let free_bytes = (sh.capacity_bytes - sh.capacity_bytes / HEADROOM).saturating_sub(q.bytes);
        let mean = q.bytes.checked_div(q.memory.len()).unwrap_or(1).max(1);
        Some(free.min(free_bytes / mean))
    }
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
            blocks: cfg.when_full == crate::config::WhenFull::Block,
            capacity: cfg.queue.max(1),
            capacity_bytes: cfg.queue_bytes.max(1),
            spool: spool.map(Mutex::new),
            fsync: cfg.spool.as_ref().map(|s| s.fsync).unwrap_or_default(),
            spool_failing: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                memory: VecDeque::new(),
                bytes: 0,
                deadline: None,
                filled_at: None,
            }),
            spare: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            reopen: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: Arc::default(),
            c: Atomics::default(),
            epoch: Instant::now(),
            wrote_ms: AtomicU64::new(0),
        });
        let mut transport = transport;
        transport.set_stop(shared.stop.clone());
        if let Some(s) = &shared.spool {
            shared.set_spooled(&s.lock().unwrap_or_else(PoisonError::into_inner));
            // What a failed write did not take is sent again from the spool or memory.
            transport.set_resends();
        }
        let worker = Worker {
            shared: shared.clone(),
            transport,
            retry_max: Duration::from_millis(cfg.retry_max_ms.max(1)),
            retry: VecDeque::new(),
            inflight: VecDeque::new(),
            marked: 0,
            batch: VecDeque::new(),
            taken: VecDeque::new(),
            written: 0,
            flushed: 0,
            spent: Vec::new(),
            unsettled: 0,
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
        self.submit_all(std::slice::from_ref(record));
    }

    /// [`Self::submit`] of each of `records`, in order, in chunks of [`SUBMIT_CHUNK`]: every
    /// sink encodes a chunk, then takes it with one lock of its queue and at most one
    /// wake-up of its thread (a flood's records come in batches; a wake-up costs more than
    /// a record). Sinks with a spool get each chunk before any sink without one.
    pub fn submit_all(&self, records: &[Record]) {
        for chunk in records.chunks(SUBMIT_CHUNK) {
            self.submit_chunk(chunk);
        }
    }

    fn submit_chunk(&self, records: &[Record]) {
        let overdraft = !records.iter().any(|r| matches!(r, Record::Connection(_)));
        for wal in [true, false] {
            for s in self
                .sinks
                .iter()
                .filter(|s| s.shared.spool.is_some() == wal)
            {
                let frames = {
                    // One lock for the chunk's spare frames, taken before the chain's.
                    let mut spare = {
                        let mut all = s.shared.lock_spare();
                        let from = all.len().saturating_sub(records.len());
                        all.split_off(from)
                    };
                    let mut chain = s.chain.lock().unwrap_or_else(PoisonError::into_inner);
                    records
                        .iter()
                        .map(|r| Self::encode(s, r, &mut chain, spare.pop()))
                        .collect()
                };
                Self::enqueue(s, frames, overdraft);
            }
        }
    }

    /// `record` as `s` frames it, sealed with the next link of its chain, into `spare` if
    /// given.
    fn encode(
        s: &Sink,
        record: &Record,
        chain: &mut crate::events::audit::chain::Chain,
        spare: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let encoded = match spare {
            Some(buf) => s.encoder.encode_sealed_in(record, chain, buf),
            None => s.encoder.encode_sealed(record, chain),
        };
        if encoded.truncated {
            let n = s.shared.c.truncated.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(sink = %s.shared.name, truncated = n + 1, max = s.encoder.max_bytes, "records longer than the sink's max_message_bytes: truncated");
            }
        }
        encoded.frame
    }

    /// Appends `frames` (in order) to the spool of `s` if it has a working one, else (and
    /// from the first failed append on) to its memory queue; `overdraft`: records that are
    /// not `connection` records, which may exceed a full queue by [`OVERDRAFT`].
    fn enqueue(s: &Sink, frames: Vec<Vec<u8>>, overdraft: bool) {
        let mut rest = frames.into_iter().peekable();
        if let Some(mut spool) = s.shared.lock_spool()
            && !s.shared.spool_failing.load(Ordering::Relaxed)
        {
            let mut appended = false;
            let mut full = 0;
            while let Some(frame) = rest.peek() {
                match spool.append(frame) {
                    Ok(true) => appended = true,
                    Ok(false) => full += 1,
                    Err(e) => {
                        // The worker retries the spool; until then the memory queue holds them.
                        s.shared.spool_failing.store(true, Ordering::Relaxed);
                        tracing::error!(sink = %s.shared.name, error = %e, "spool write failed: queueing records in memory (lost if egressd crashes)");
                        break;
                    }
                }
                rest.next();
            }
            s.shared.set_spooled(&spool);
            drop(spool);
            if let Some(total) = count_dropped(&s.shared.c.dropped_spool_full, full) {
                tracing::warn!(sink = %s.shared.name, dropped = total, "spool full: dropping records");
            }
            if appended {
                // The worker decides to sleep holding the queue's lock: taking it here
                // means it either saw these frames or is waiting for the notification.
                drop(s.shared.lock());
                s.shared.wake.notify_one();
            }
            if rest.peek().is_none() {
                return;
            }
        }
        let (capacity, capacity_bytes) = if overdraft {
            (
                s.shared.capacity + OVERDRAFT,
                s.shared.capacity_bytes + OVERDRAFT_BYTES,
            )
        } else {
            (s.shared.capacity, s.shared.capacity_bytes)
        };
        let mut q = s.shared.lock();
        let was_empty = q.memory.is_empty();
        let mut dropped = 0;
        for frame in rest {
            if q.memory.len() >= capacity
                || (q.bytes + frame.len() > capacity_bytes && !q.memory.is_empty())
            {
                dropped += 1;
                continue;
            }
            q.bytes += frame.len();
            q.memory.push_back(frame);
        }
        let queued = !q.memory.is_empty();
        if was_empty && queued {
            q.filled_at = Some(Instant::now());
        }
        drop(q);
        if let Some(total) = count_dropped(&s.shared.c.dropped_queue_full, dropped) {
            tracing::warn!(sink = %s.shared.name, dropped = total, "sink queue full: dropping records");
        }
        // The worker waits for frames only on an empty queue (deciding so under its lock):
        // one wake-up per batch, not a futex call per record.
        if was_empty && queued {
            s.shared.wake.notify_one();
        }
    }

    /// Records the sinks can take now without dropping any: the least free room among the
    /// memory queues of sinks that block when full (`when_full = "block"`: the default of
    /// file and syslog sinks), are up, have no working spool, and are not stuck (frames
    /// waited in the queue for [`STUCK`] while the worker wrote nothing). The free room of a
    /// queue is the lesser of its free records and its free bytes divided by its mean frame
    /// size, less a [`HEADROOM`] share kept for other records. `None`
    /// when no sink limits the rate: every sink drops when full, spools to disk, is down
    /// (its records are dropped and counted until it is back: it must not hold back the
    /// others), or is stuck.
    ///
    /// The daemon reads no more ring-buffer records than this (less those still being
    /// enriched): in a flood the ring buffer then fills and the kernel aggregates the
    /// attempts it cannot queue into `connection_summary` counts, instead of records being
    /// made, linked into the chains, and dropped at a full queue.
    pub fn room(&self) -> Option<usize> {
        let now = Instant::now();
        self.sinks.iter().filter_map(|s| s.room(now)).min()
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
            s.shared.stopping.store(true, Ordering::Release);
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
            s.shared.stopping.store(true, Ordering::Release);
            s.shared.stop.set(now);
            s.shared.wake.notify_one();
        }
        self.join(now + JOIN_GRACE);
    }
}

/// Adds `n` dropped records to `counter`; the new total when it passed a power of two (so
/// a flood of drops warns about log2 times, not once per record), else `None`.
fn count_dropped(counter: &std::sync::atomic::AtomicU64, n: u64) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let before = counter.fetch_add(n, Ordering::Relaxed);
    (before..before + n)
        .any(u64::is_power_of_two)
        .then_some(before + n)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wal_tests;
