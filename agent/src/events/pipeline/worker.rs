//! The worker thread of one sink: takes frames from its memory queue and its spool, writes
//! them to the destination, retries with backoff, commits what the destination
//! acknowledged, and flushes or spools what is left at shutdown.
use super::*;

/// `by`, or the shutdown deadline when that comes first (an operation started at shutdown
/// still gets a moment).
pub(super) fn op_deadline(by: Instant, shutdown: Option<Instant>) -> Instant {
    match shutdown {
        Some(d) => by.min(d.max(Instant::now() + Duration::from_millis(100))),
        None => by,
    }
}

/// A frame the worker holds: in flight, or to be sent again.
pub(super) struct Held {
    /// The bytes; emptied once a frame read from the spool is sent (the spool has them).
    pub(super) frame: Vec<u8>,
    /// Read from the spool: committed there once acknowledged, read from it again after a
    /// lost connection.
    pub(super) wal: bool,
    /// Refused by the destination for good ([`SendError::Reject`]): not sent again, only
    /// committed in its turn.
    pub(super) rejected: bool,
}

/// A frame written to the destination.
pub(super) struct Flight {
    /// Its end offset in the connection's stream.
    pub(super) end: u64,
    /// When it was written.
    pub(super) at: Instant,
    /// When the peer's TCP was seen to have acknowledged it.
    pub(super) acked: Option<Instant>,
    pub(super) held: Held,
}

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) transport: Box<dyn Transport>,
    pub(super) retry_max: Duration,
    /// Frames to send again before anything else (oldest first).
    pub(super) retry: VecDeque<Held>,
    /// Frames written and not committed yet, in order.
    pub(super) inflight: VecDeque<Flight>,
    /// How many of the first `inflight` are known acknowledged (`acked` set).
    pub(super) marked: usize,
    /// Frames taken from the memory queue at once and not sent yet (oldest first): one
    /// lock per batch, not per frame. Newer than `batch`, older than anything the spool or
    /// the memory queue holds now.
    pub(super) taken: VecDeque<Vec<u8>>,
    /// Frames read from the spool and not sent yet (pending there).
    pub(super) batch: VecDeque<Held>,
    /// Bytes written on the current connection.
    pub(super) written: u64,
    /// `written` at the last successful flush (destinations without acknowledgements).
    pub(super) flushed: u64,
    /// Frames sent and no longer needed, handed back to the submitter in batches
    /// ([`Shared::spare`]).
    pub(super) spent: Vec<Vec<u8>>,
    /// Records an untracked buffered sink took and has neither written out nor given up
    /// ([`Transport::settles`]): held, in its buffer.
    pub(super) unsettled: u64,
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
    /// healthy [`COMMIT_GRACE`] later; files and stdout once their buffer reports the record
    /// written out ([`Transport::settled`]); elsewhere once written (and flushed). A frame
    /// unacknowledged for [`ACK_TIMEOUT`] means the peer stopped reading: the connection
    /// fails (its frames are sent again later).
    fn settle(&mut self) {
        self.count_settled();
        self.publish_held();
        if self.inflight.is_empty() {
            return;
        }
        let acks = self.transport.acknowledges();
        let now = Instant::now();
        if !acks && self.transport.settles() {
            self.mark_settled(now);
        } else {
            let acked = if acks {
                self.written.saturating_sub(self.transport.unacked())
            } else {
                self.flushed
            };
            for f in self.inflight.iter_mut().skip(self.marked) {
                if f.end > acked {
                    break;
                }
                f.acked = Some(now);
                self.marked += 1;
            }
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

    /// Counts as delivered the records an untracked buffered sink (a file or stdout without
    /// spool) has written out since the last call: a record it took but could not write (a
    /// full disk until exit) is then in a loss counter only, never in both.
    fn count_settled(&mut self) {
        if self.tracks() || !self.transport.settles() {
            return;
        }
        let n = self.transport.settled();
        if n > 0 {
            self.unsettled = self.unsettled.saturating_sub(n);
            self.shared.c.delivered.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Marks as written the in-flight frames a buffered sink (files, stdout, with a spool)
    /// reports written out since the last call: in order, one per record; a frame refused
    /// for good, of which nothing was written, is passed.
    fn mark_settled(&mut self, now: Instant) {
        let mut n = self.transport.settled();
        for f in self.inflight.iter_mut().skip(self.marked) {
            if !f.held.rejected {
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            f.acked = Some(now);
            self.marked += 1;
        }
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

    /// Records this worker holds: in flight, to send again, taken from the spool or the
    /// memory queue and not sent yet, and in the transport's buffer.
    fn held(&self) -> u64 {
        (self.inflight.len() + self.retry.len() + self.batch.len() + self.taken.len()) as u64
            + self.unsettled
    }

    fn publish_held(&self) {
        self.shared.c.held.store(self.held(), Ordering::Relaxed);
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
        if !self.transport.acknowledges() && self.transport.settles() && self.tracks() {
            // What reached the file (the close's last write included) is delivered: only
            // the rest is sent again, or a full disk would write records twice.
            self.mark_settled(Instant::now());
            self.commit_front(self.marked);
        }
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

    /// Keeps `frame`, sent, for the submitter to write another one into; hands the kept
    /// ones over a batch at a time (one lock), at most [`SPARE_FRAMES`] waiting.
    fn recycle(&mut self, mut frame: Vec<u8>) {
        if frame.capacity() == 0 || frame.capacity() > SPARE_FRAME_BYTES {
            return;
        }
        frame.clear();
        self.spent.push(frame);
        if self.spent.len() >= SUBMIT_CHUNK {
            let mut spare = self.shared.lock_spare();
            let room = SPARE_FRAMES.saturating_sub(spare.len());
            let n = self.spent.len().min(room);
            spare.extend(self.spent.drain(..n));
            drop(spare);
            self.spent.clear();
        }
    }

    fn next_frame(&mut self) -> Option<Held> {
        if let Some(f) = self.retry.pop_front() {
            return Some(f);
        }
        if let Some(f) = self.batch.pop_front() {
            return Some(f);
        }
        if let Some(frame) = self.taken.pop_front() {
            return Some(Held {
                frame,
                wal: false,
                rejected: false,
            });
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
            // The rest of a batch along (the spool is empty, so nothing older waits there).
            let more = q.memory.len().min(READ_BATCH);
            let q = &mut *q;
            for g in q.memory.drain(..more) {
                q.bytes -= g.len();
                self.taken.push_back(g);
            }
            // Published before the queue's lock goes, so that what left the queue is never
            // in neither count (`Pipeline::flush`); `f` too, until it is sent.
            self.shared
                .c
                .held
                .store(self.held() + u64::from(f.is_some()), Ordering::Relaxed);
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

    pub(super) fn run(mut self) {
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
                        // What could not be written goes again, to the reopened file.
                        tracing::warn!(sink = %self.name(), error = %e, "flush before reopening failed");
                        self.fail(None, &e);
                        next_attempt = Instant::now();
                        continue;
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
            let deadline = if self.shared.stopping.load(Ordering::Acquire) {
                self.shared.lock().deadline
            } else {
                None
            };
            let up = self.transport.is_open();
            let now = Instant::now();
            if now.duration_since(last_sync) >= SPOOL_SYNC {
                self.retry_spool();
                if let Some(mut s) = self.shared.lock_spool()
                    && let Err(e) = s.sync()
                {
                    tracing::error!(sink = %self.shared.name, error = %e, "spool sync failed");
                }
                last_sync = Instant::now();
                last_head = last_sync;
            } else if now.duration_since(last_head) >= HEAD_SYNC {
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
                    && self.taken.is_empty()
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
                            let lost = self.transport.lost(false);
                            self.unsettled = self.unsettled.saturating_sub(lost);
                            if lost > 0 {
                                self.shared
                                    .c
                                    .dropped_failed
                                    .fetch_add(lost, Ordering::Relaxed);
                            }
                            self.shared.c.up.store(true, Ordering::Relaxed);
                            // Stuck is measured from the reconnection, not the outage.
                            self.shared.wrote(Instant::now());
                            self.written = 0;
                            self.flushed = 0;
                            // Should it fail again before a write succeeds (which resets
                            // the backoff), the next open waits: a file that opens but
                            // cannot be written (a full disk) is retried ever less often,
                            // not every 100 ms.
                            next_attempt = Instant::now() + backoff;
                            backoff = (backoff * 2).min(self.retry_max);
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
            // Only connections that acknowledge (TCP, TLS) are checked before a write and
            // have their writes timed: files, stdout and UDP ignore deadlines, and take the
            // time read at the top of the loop (one clock read per frame).
            let acks = self.transport.acknowledges();
            let now = if acks { Instant::now() } else { now };
            if acks
                && now.duration_since(last_write) >= IDLE_CHECK
                && let Err(e) = self.transport.check()
            {
                self.fail(Some(held), &e);
                next_attempt = Instant::now();
                continue;
            }
            let send_by = op_deadline(now + SEND_TIMEOUT, deadline);
            match self.transport.send(&held.frame, send_by) {
                Ok(n) => {
                    backoff = RETRY_MIN;
                    last_write = if acks { Instant::now() } else { now };
                    self.shared.wrote(last_write);
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
                        if self.transport.settles() {
                            self.unsettled += 1;
                        } else {
                            self.shared.c.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        self.recycle(held.frame);
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
    pub(super) fn finish(mut self, deadline: Instant) {
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
        left.extend(self.taken.drain(..));
        self.transport.close();
        self.count_settled();
        let unwritten = self.transport.lost(true);
        self.unsettled = self.unsettled.saturating_sub(unwritten);
        self.publish_held();
        if unwritten > 0 {
            self.shared
                .c
                .dropped_at_exit
                .fetch_add(unwritten, Ordering::Relaxed);
            tracing::warn!(sink = %self.shared.name, records = unwritten, "sink could not write records it had taken (disk full?): dropped at exit");
        }
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
