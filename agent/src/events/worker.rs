//! Enrichment off the daemon's control path.
//!
//! Reading `/proc/PID` can block: the kernel copies `cmdline` out of the process's memory
//! under its mmap lock, and a workload controls both. So the main loop (signals, reloads,
//! `/healthz`, `/metrics`, tamper checks, the watchdog) only decodes ring buffer records
//! and queues them; one thread of its own reads `/proc` and hands the finished events back
//! in order. Time is bounded, and nothing is dropped:
//! - an event that waited longer than [`DEADLINE`] in the queue is sent without `/proc`
//!   details (`process.details = "skipped"`);
//! - while the thread has been stuck on one event for longer than [`STALL`], or the queue
//!   holds [`QUEUE_CAP`] events, new events are built at once the same way;
//! - at shutdown, what the thread has not finished within the given time, the event it is
//!   stuck on included, is built the same way too (the stuck read is abandoned with the
//!   thread).
use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{ConnectionEvent, Enricher, Event, Record};

/// Longest an event waits in the queue for its `/proc` details.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Longest the thread may spend on one event before new events bypass it.
pub const STALL: Duration = Duration::from_millis(500);
/// Events queued at most (each a 100-byte record; the first of a batch also holds an `Arc`).
pub const QUEUE_CAP: usize = 65_536;

/// Submitted events handed back ([`Worker::recycle`]) and waiting for the thread, at most;
/// the thread takes them all at once when it has used up the previous lot, so at most twice
/// this many are held (a 560-byte event plus its own short strings each: about 5 MiB in
/// all, kept while the daemon is idle; up to 32 MiB more while they hold the command lines,
/// at most 4 KiB each, of as many different processes). A flood's read hands the thread up to a sink
/// queue's room at once (10,000 records by default); with a quarter of the spares, most
/// events of a flood were freed on the reader and allocated anew on the thread.
const SPARE_EVENTS: usize = 4096;

/// Finished events a new list of them has room for.
const FINISHED_BATCH: usize = 256;

/// Finished events, in order. Boxed where they are built: handing one over moves a
/// pointer, not the event, the list's growth copies no events, and records box them anyway.
pub type Finished = Vec<Box<ConnectionEvent>>;

struct Job {
    /// The enricher of this job and of the jobs after it that have none: set on the first
    /// job of each [`Worker::push_all`], so a flood's events do not each take a reference
    /// (an atomic add on the reader's core and a subtract on the thread's, on one cache
    /// line the two cores then pass back and forth for every event).
    enricher: Option<Arc<Enricher>>,
    event: Event,
    queued: Instant,
}

/// What the thread is on ([`Shared::current`]).
#[derive(Default)]
struct Current {
    /// The enricher of the last job taken (kept after it is done: the next jobs of its
    /// batch name none).
    enricher: Option<Arc<Enricher>>,
    /// The event being enriched.
    event: Option<Event>,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Finished events not taken yet, in order. The thread signals the channel only when it
    /// makes this non-empty: one wake-up of the main loop per batch, not per event.
    finished: Mutex<Finished>,
    /// Milliseconds since `epoch` + 1 at which the thread took its current event; 0 when idle.
    busy_since: AtomicU64,
    /// The event the thread is on. Whoever takes it out delivers it: the thread when done,
    /// or [`Worker::finish`] when the thread is stuck (then the thread's result is dropped).
    current: Mutex<Current>,
    closed: AtomicBool,
    epoch: Instant,
    /// Events built without `/proc` details, for any of the reasons above.
    skipped: AtomicU64,
    /// Events submitted and handed back ([`Worker::recycle`]), for the thread to build new
    /// ones in.
    spent: Mutex<Finished>,
}

impl Shared {
    fn stalled(&self) -> bool {
        match self.busy_since.load(Ordering::Acquire) {
            0 => false,
            t => {
                let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                now.saturating_sub(t - 1) > u64::try_from(STALL.as_millis()).unwrap_or(0)
            }
        }
    }
}

/// The enrichment thread and the signal of its finished events.
pub struct Worker {
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Worker {
    /// Starts the thread.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            finished: Mutex::new(Vec::new()),
            busy_since: AtomicU64::new(0),
            current: Mutex::new(Current::default()),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            skipped: AtomicU64::new(0),
            spent: Mutex::new(Vec::new()),
        });
        let (tx, done) = tokio::sync::mpsc::unbounded_channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("egressd-enrich".into())
            .spawn(move || run(&s, &tx))?;
        Ok(Self { shared, done })
    }

    /// [`Self::push_all`] of one event: `Some` when it was built at once.
    pub fn push(&self, enricher: &Arc<Enricher>, event: Event) -> Option<ConnectionEvent> {
        self.push_all(enricher, [event]).pop()
    }

    /// Queues each of `events` for enrichment by `enricher`, in order, with one lock of the
    /// queue and one wake-up of the thread (a ring buffer read in a flood hands over
    /// hundreds at once). Returns, in order, those built at once without `/proc` details
    /// because the thread is stalled or the queue is full (submit them now; queued ones
    /// come out of [`Self::next`]).
    pub fn push_all(
        &self,
        enricher: &Arc<Enricher>,
        events: impl IntoIterator<Item = Event>,
    ) -> Vec<ConnectionEvent> {
        let mut now = Vec::new();
        let queued = Instant::now();
        let stalled = self.shared.stalled();
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_empty = q.is_empty();
        let mut first = true;
        for event in events {
            if q.len() >= QUEUE_CAP || stalled {
                now.push(event);
                continue;
            }
            q.push_back(Job {
                enricher: first.then(|| enricher.clone()),
                event,
                queued,
            });
            first = false;
        }
        let added = was_empty && !q.is_empty();
        drop(q);
        if added {
            self.shared.ready.notify_one();
        }
        self.shared
            .skipped
            .fetch_add(now.len() as u64, Ordering::Relaxed);
        now.iter().map(|ev| enricher.skip(ev)).collect()
    }

    /// Whether the thread has been on one event for longer than [`STALL`] (new events are
    /// then built at once, without `/proc` details).
    pub fn stalled(&self) -> bool {
        self.shared.stalled()
    }

    /// Events handed over and not yet taken back: queued, being enriched, or finished and
    /// waiting for [`Self::next`].
    pub fn pending(&self) -> usize {
        let queued = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let finished = self
            .shared
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let busy = usize::from(self.shared.busy_since.load(Ordering::Acquire) != 0);
        queued + finished + busy
    }

    /// The events finished since the last call, in order (cancel-safe, for `select!`);
    /// `None` once the thread is gone.
    pub async fn next(&mut self) -> Option<Finished> {
        self.done.recv().await?;
        while self.done.try_recv().is_ok() {}
        Some(self.take_finished())
    }

    fn take_finished(&self) -> Finished {
        std::mem::take(
            &mut *self
                .shared
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Hands events back once submitted: the thread builds new ones in their boxes, and
    /// their strings are freed there, by the thread that allocated them. Freed by the
    /// caller instead, most of them take the enrichment thread's malloc arena lock (glibc
    /// keeps only a few chunks per size in the freeing thread's cache), which that thread
    /// then waits for in a flood: `bench_pipeline` measured 0.15 µs per record on the
    /// reader for it. Whatever the caller allocated since (the id from
    /// [`super::Sequencer::number`]) must be taken out first, so that the caller frees it.
    /// At most [`SPARE_EVENTS`] wait; the rest are freed here. Takes only a lock of its own,
    /// never held with another.
    pub fn recycle(&self, events: impl IntoIterator<Item = Box<ConnectionEvent>>) {
        let mut spent = self
            .shared
            .spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut events = events.into_iter();
        let room = SPARE_EVENTS.saturating_sub(spent.len());
        spent.extend(events.by_ref().take(room));
        drop(spent);
        drop(events);
    }

    /// [`Worker::recycle`] of the connection events among submitted `records`; other
    /// records are dropped.
    pub fn recycle_records(&self, records: impl IntoIterator<Item = Record>) {
        self.recycle(records.into_iter().filter_map(|r| match r {
            Record::Connection(ev) => Some(ev),
            Record::Lifecycle(_) | Record::Summary(_) => None,
        }));
    }

    /// Events sent without `/proc` details (`process.details = "skipped"`) since the
    /// start: the thread was stalled, the queue full, or an event waited past [`DEADLINE`].
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Stops the thread: waits up to `within` for it to finish the queue, then builds what
    /// is left without `/proc` details. Returns every event not yet taken from
    /// [`Self::next`], in queue order.
    pub fn finish(&mut self, within: Duration) -> Finished {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ready.notify_all();
        let until = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            out.append(&mut self.take_finished());
            let idle = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
                && self.shared.busy_since.load(Ordering::Acquire) == 0;
            if idle || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out.append(&mut self.take_finished());
        // The event the thread is stuck on (its read is abandoned with the thread), then
        // the queue behind it, taken together under the queue's lock, so the thread cannot
        // take a job in between (it would be sent after this returns: lost). Under the
        // `current` lock the thread sends under: its event is either among the finished
        // ones already or still in `current` (and then never sent). The enricher of the
        // last job taken, read there too, is the one of the jobs at the front that name
        // none.
        let (stuck, rest, mut enricher) = {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut current = self
                .shared
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            out.append(&mut self.take_finished());
            (
                current.event.take(),
                q.drain(..).collect::<Vec<Job>>(),
                current.enricher.clone(),
            )
        };
        let skip = |enricher: &Enricher, event: &Event| {
            self.shared.skipped.fetch_add(1, Ordering::Relaxed);
            Box::new(enricher.skip(event))
        };
        if let (Some(event), Some(e)) = (stuck, &enricher) {
            out.push(skip(e, &event));
        }
        for j in rest {
            if j.enricher.is_some() {
                enricher = j.enricher;
            }
            // The first job of every batch names its enricher, and the thread keeps the one
            // of the last job it took until the queue runs empty: every job has one.
            if let Some(e) = &enricher {
                out.push(skip(e, &j.event));
            }
        }
        out
    }
}

fn run(s: &Shared, tx: &tokio::sync::mpsc::UnboundedSender<()>) {
    // Events handed back, taken a batch at a time (one lock).
    let mut spare: Finished = Vec::new();
    // The enricher of the last job taken (a job without one has the one before it).
    let mut enricher: Option<Arc<Enricher>> = None;
    loop {
        let (job, taken) = {
            let mut q = s.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(j) = q.pop_front() {
                    // Marked busy while the queue lock is held, so `finish` never sees the
                    // queue empty and the thread idle while a job is in hand. One clock
                    // read per event, for this and for its deadline.
                    let taken = Instant::now();
                    let now = u64::try_from(taken.duration_since(s.epoch).as_millis())
                        .unwrap_or(u64::MAX);
                    s.busy_since.store(now + 1, Ordering::Release);
                    let mut current = s.current.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(e) = &j.enricher {
                        current.enricher = Some(e.clone());
                        enricher = Some(e.clone());
                    }
                    current.event = Some(j.event);
                    break (j, taken);
                }
                if s.closed.load(Ordering::Acquire) {
                    return;
                }
                // Every batch queued so far is done, and the next job starts one (naming its
                // enricher): an idle thread keeps no enricher (and no policy) alive after a
                // reload.
                if enricher.take().is_some() {
                    s.current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .enricher = None;
                }
                q = s.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Built in an event handed back when there is one ([`Worker::recycle`]), written
        // over in place: its strings are the ones this thread shared into it, kept where
        // they are the same (a flood from one process) and freed here otherwise. The
        // `spent` lock is taken alone (no other lock is held here).
        if spare.is_empty() {
            std::mem::swap(
                &mut spare,
                &mut *s.spent.lock().unwrap_or_else(PoisonError::into_inner),
            );
        }
        let late = taken.duration_since(job.queued) > DEADLINE;
        if late {
            s.skipped.fetch_add(1, Ordering::Relaxed);
        }
        // Set with the first job of each batch, which names its enricher.
        let Some(e) = enricher.as_deref() else {
            debug_assert!(false, "a job without an enricher before it");
            s.current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .event = None;
            s.busy_since.store(0, Ordering::Release);
            continue;
        };
        let mut event = spare.pop().unwrap_or_else(|| Box::new(e.blank()));
        if late {
            e.skip_into(&job.event, &mut event);
        } else {
            e.enrich_into(&job.event, &mut event);
        }
        // Handed over under the `current` lock, so `finish` sees this event exactly once:
        // among the finished ones, or (when it took `current` first) built by itself.
        let sent = {
            let mut current = s.current.lock().unwrap_or_else(PoisonError::into_inner);
            current.event.take().is_some() && {
                let mut finished = s.finished.lock().unwrap_or_else(PoisonError::into_inner);
                if finished.capacity() == 0 {
                    // Taken as a whole by the main loop: room for a batch at once, not a
                    // reallocation at every power of two.
                    finished.reserve(FINISHED_BATCH);
                }
                finished.push(event);
                finished.len() > 1 || tx.send(()).is_ok()
            }
        };
        s.busy_since.store(0, Ordering::Release);
        if !sent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Sequencer, sample};

    fn enricher(proc_root: std::path::PathBuf) -> Arc<Enricher> {
        enricher_of(proc_root, "198.18.2.0/24")
    }

    /// An enricher of a policy with one denied region of `prefix` (the digest tells them
    /// apart).
    fn enricher_of(proc_root: std::path::PathBuf, prefix: &str) -> Arc<Enricher> {
        let cfg = crate::config::parse(
            std::path::Path::new("t.toml"),
            &format!("allowlist = []\n[regions.us]\nprefixes = [\"{prefix}\"]\n"),
        )
        .expect("valid");
        Arc::new(Enricher::with_proc_root(
            Arc::new(Sequencer::new(sample::context())),
            Arc::new(crate::policy::compile(&cfg)),
            proc_root,
        ))
    }

    fn event(pid: u32) -> Event {
        Event {
            pid,
            ..crate::events::tests::kernel_event()
        }
    }

    #[tokio::test]
    async fn events_come_back_in_order_and_finish_flushes() {
        let e = enricher("/nonexistent-proc".into());
        let mut w = Worker::start().expect("thread");
        for pid in 1..=3 {
            assert!(w.push(&e, event(pid)).is_none());
        }
        let first = w.next().await.expect("events");
        assert_eq!(
            (first[0].process.pid, first[0].process.details),
            (1, "exited")
        );
        let rest = w.finish(Duration::from_secs(2));
        let pids: Vec<u32> = first.iter().chain(&rest).map(|e| e.process.pid).collect();
        assert_eq!(pids, vec![1, 2, 3]);
    }

    /// Events handed back are the boxes the next events are built in, their contents
    /// replaced whole.
    #[tokio::test]
    async fn recycled_events_are_built_in_again() {
        let e = enricher("/nonexistent-proc".into());
        let mut w = Worker::start().expect("thread");
        for pid in 1..=3 {
            assert!(w.push(&e, event(pid)).is_none());
        }
        let mut first = Vec::new();
        while first.len() < 3 {
            first.extend(w.next().await.expect("events"));
        }
        let boxes: Vec<*const ConnectionEvent> = first.iter().map(|b| &raw const **b).collect();
        w.recycle(first);
        assert_eq!(w.shared.spent.lock().expect("lock").len(), 3);
        for pid in 4..=6 {
            assert!(w.push(&e, event(pid)).is_none());
        }
        let mut again = Vec::new();
        while again.len() < 3 {
            again.extend(w.next().await.expect("events"));
        }
        assert!(w.shared.spent.lock().expect("lock").is_empty());
        let pids: Vec<u32> = again.iter().map(|e| e.process.pid).collect();
        assert_eq!(pids, vec![4, 5, 6]);
        let fresh = e.enrich(&event(4));
        assert_eq!(again[0].process, fresh.process);
        for b in &again {
            assert!(boxes.contains(&&raw const **b), "a new box");
        }
        assert!(w.finish(Duration::from_secs(2)).is_empty());
    }

    /// An idle thread holds no enricher: after a reload the old one (and its policy) is
    /// freed once its events are done.
    #[tokio::test]
    async fn an_idle_thread_keeps_no_enricher() {
        let e = enricher("/nonexistent-proc".into());
        let mut w = Worker::start().expect("thread");
        assert!(w.push_all(&e, [1, 2].map(event)).is_empty());
        let mut done = 0;
        while done < 2 {
            done += w.next().await.expect("events").len();
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&e) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(Arc::strong_count(&e), 1);
        assert!(w.finish(Duration::from_secs(2)).is_empty());
    }

    /// No more than [`SPARE_EVENTS`] wait for the thread; the rest are freed at once.
    #[test]
    fn recycle_keeps_at_most_spare_events() {
        let e = enricher("/nonexistent-proc".into());
        let mut w = Worker::start().expect("thread");
        let built = |n: usize| (0..n).map(|_| Box::new(e.skip(&event(1))));
        w.recycle(built(SPARE_EVENTS - 10));
        assert_eq!(
            w.shared.spent.lock().expect("lock").len(),
            SPARE_EVENTS - 10
        );
        w.recycle(built(25));
        assert_eq!(w.shared.spent.lock().expect("lock").len(), SPARE_EVENTS);
        w.recycle(built(1));
        assert_eq!(w.shared.spent.lock().expect("lock").len(), SPARE_EVENTS);
        assert!(w.finish(Duration::from_secs(2)).is_empty());
    }

    /// A `/proc` root under which reading pid 77's `stat` never returns (a FIFO without a
    /// writer): the thread stalls on pid 77.
    fn stuck_proc(tag: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("egressd-{tag}-{}", std::process::id()));
        let dir = root.join("77");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let fifo =
            std::ffi::CString::new(dir.join("stat").to_string_lossy().as_bytes()).expect("path");
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        root
    }

    /// A `/proc` read that never returns (a FIFO named `stat` without a writer) stalls the
    /// thread; events then bypass it, and `finish` returns in bounded time with every event.
    #[tokio::test]
    async fn a_stalled_read_never_holds_events_back() {
        let root = stuck_proc("stall");
        let e = enricher(root.clone());
        let mut w = Worker::start().expect("thread");
        assert!(w.push(&e, event(77)).is_none());
        assert!(w.push(&e, event(5)).is_none());
        std::thread::sleep(STALL + Duration::from_millis(200));
        let bypass = w.push(&e, event(6)).expect("built at once while stalled");
        assert_eq!((bypass.process.pid, bypass.process.details), (6, "skipped"));
        assert_eq!(w.skipped(), 1);
        let t = Instant::now();
        let rest = w.finish(Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The stuck event and the one queued behind it are delivered, without details.
        let pids: Vec<(u32, &str)> = rest
            .iter()
            .map(|e| (e.process.pid, e.process.details))
            .collect();
        assert_eq!(pids, vec![(77, "skipped"), (5, "skipped")]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Only the first job of a batch names its enricher: the jobs after it, left in the
    /// queue behind a stuck read, are built at `finish` by their batch's enricher, and a
    /// later batch's by its own.
    #[tokio::test]
    async fn finish_builds_each_left_job_with_its_batch_enricher() {
        let root = stuck_proc("batch");
        let one = enricher_of(root.clone(), "198.18.2.0/24");
        let two = enricher_of(root.clone(), "198.18.3.0/24");
        assert_ne!(
            one.skip(&event(1)).policy.digest,
            two.skip(&event(1)).policy.digest
        );
        let mut w = Worker::start().expect("thread");
        assert!(w.push_all(&one, [77, 5, 8].map(event)).is_empty());
        assert!(w.push_all(&two, [9, 10].map(event)).is_empty());
        let rest = w.finish(Duration::from_millis(300));
        let got: Vec<(u32, bool)> = rest
            .iter()
            .map(|e| {
                (
                    e.process.pid,
                    e.policy.digest == one.skip(&event(1)).policy.digest,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(77, true), (5, true), (8, true), (9, false), (10, false)]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
