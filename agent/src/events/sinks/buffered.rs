//! What the line-oriented local sinks (stdout, files) share: frames go through a buffer,
//! written out when the sink's queue runs empty (a quiet stream is never held back), on
//! close, and in a burst at every [`CHUNK`] boundary of the stream; only how the writer is
//! opened differs.
use std::{
    collections::VecDeque,
    io::{self, IoSlice, Write},
    time::Instant,
};

use super::{SendError, Transport};

/// In a burst, writes end at the multiples of this stream offset (64 KiB): one `write(2)`
/// per 64 KiB, and a file's page cache takes each as whole, aligned pages. Measured on this
/// project's test machine (1.3 GB appended with write-behind, CPU of the whole machine):
/// 64 KiB writes at 64 KiB offsets 0.51-0.80 s, 61,440-byte writes 0.76-0.91 s, 65,000-byte
/// writes 0.86-0.96 s.
pub const CHUNK: u64 = 64 << 10;

/// Opens the writer of a [`Buffered`] sink (again after a close: logrotate's SIGUSR1).
pub trait Opener: Send {
    /// The writer opened.
    type Writer: Write + Send;
    /// Names the destination in "not open" errors (`"stdout"`, `"file"`).
    const WHAT: &'static str;
    /// Opens the writer. `resume`: the stream offset the sink stopped at inside a record
    /// whose rest it still holds (a close that could not write it); a destination found
    /// there is continued as it is.
    ///
    /// # Errors
    /// The destination cannot be opened (the sink retries later).
    fn open(&mut self, resume: Option<u64>) -> io::Result<Self::Writer>;
    /// The stream offset the writer's next byte lands at (a file's length at open); 0 where
    /// there is none.
    fn offset(_w: &Self::Writer) -> u64 {
        0
    }
}

/// A [`Transport`] writing through a buffer to what `O` opens.
pub struct Buffered<O: Opener> {
    opener: O,
    out: Option<Out<O::Writer>>,
    /// What a close could not write (a full disk), written first at the next open.
    kept: Option<Kept>,
    /// Records given up and not yet reported by [`Transport::lost`].
    lost: u64,
    /// Records written out by writers since closed, not yet reported by
    /// [`Transport::settled`].
    settled: u64,
    /// Whether a failed close keeps what it could not write ([`Kept`]); not when the caller
    /// sends it again ([`Transport::set_resends`]).
    keep: bool,
}

/// Bytes a failed close kept, and where the stream stopped.
struct Kept {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    at: u64,
    /// `buf` starts inside a record whose head was written.
    torn: bool,
}

impl<O: Opener> Buffered<O> {
    /// Not yet open; `opener` opens it on first use.
    pub fn with_opener(opener: O) -> Self {
        Self {
            opener,
            out: None,
            kept: None,
            lost: 0,
            settled: 0,
            keep: true,
        }
    }
}

/// Records in `b`: the local sinks' frames are lines.
fn lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// A writer and the bytes buffered for it.
struct Out<W: Write> {
    w: W,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    at: u64,
    /// The last byte written ended no record: `buf` starts inside one.
    torn: bool,
    /// Stream offsets where the records taken and not yet written out end (one per frame:
    /// a frame is one line), oldest first: how [`Transport::settled`] counts records written
    /// without reading their bytes again.
    ends: VecDeque<u64>,
    /// Records whose last byte was written, not yet reported by [`Transport::settled`].
    settled: u64,
}

impl<W: Write> Out<W> {
    /// Buffers `frame`; when it reaches a [`CHUNK`] boundary, writes the buffer and the
    /// frame up to the last boundary it reaches in one `writev(2)`.
    ///
    /// # Errors
    /// The write failed. The bytes written are gone from the buffer, the rest stays; the
    /// frame is not buffered if none of it was written (the sink sends it again). If part of
    /// it was, its rest is buffered and this returns `Ok` (sending the frame again would
    /// write its head twice): the next flush writes it or reports the error. A close that
    /// cannot write it keeps it for the next open ([`Kept`]), which completes the cut
    /// record or counts it lost.
    fn push(&mut self, frame: &[u8]) -> io::Result<()> {
        let start = self.at + self.buf.len() as u64;
        let end = start + frame.len() as u64;
        let cut = end - end % CHUNK;
        self.ends.push_back(end);
        if cut <= start {
            self.buf.extend_from_slice(frame);
            return Ok(());
        }
        let head = usize::try_from(cut - start).unwrap_or(frame.len());
        let held = self.buf.len();
        let (done, r) = self.write_out(&frame[..head]);
        if done <= held {
            // None of the frame written: not taken (an error, the buffer's rest kept).
            self.ends.pop_back();
            return r;
        }
        self.buf.extend_from_slice(&frame[done - held..]);
        Ok(())
    }

    /// Writes everything buffered.
    ///
    /// # Errors
    /// The write failed; what was not written stays buffered.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out(&[]).1.and_then(|()| self.w.flush())
    }

    /// Writes the buffer, then `head`, until all is written or a write fails (`EINTR`
    /// retried); forgets what was written of the buffer. Returns the bytes written, of both.
    fn write_out(&mut self, head: &[u8]) -> (usize, io::Result<()>) {
        let held = self.buf.len();
        let total = held + head.len();
        let mut done = 0;
        let mut r = Ok(());
        while done < total {
            let w = if done < held {
                self.w
                    .write_vectored(&[IoSlice::new(&self.buf[done..]), IoSlice::new(head)])
            } else {
                self.w.write(&head[done - held..])
            };
            match w {
                Ok(0) => {
                    r = Err(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        if done > 0 {
            let last = if done <= held {
                self.buf[done - 1]
            } else {
                head[done - held - 1]
            };
            self.torn = last != b'\n';
        }
        self.buf.drain(..done.min(held));
        self.at += done as u64;
        while self.ends.front().is_some_and(|&e| e <= self.at) {
            self.ends.pop_front();
            self.settled += 1;
        }
        (done, r)
    }
}

impl<O: Opener> Transport for Buffered<O> {
    fn open(&mut self, _deadline: Instant) -> io::Result<()> {
        let resume = self.kept.as_ref().filter(|k| k.torn).map(|k| k.at);
        let w = self.opener.open(resume)?;
        let at = O::offset(&w);
        let mut buf = Vec::with_capacity(2 * CHUNK as usize);
        // Resuming a cut record: the stream stays inside it until its rest is written.
        let mut torn = false;
        if let Some(k) = self.kept.take() {
            torn = k.torn && k.at == at;
            let mut from = 0;
            if k.torn && k.at != at {
                // Not the file the record was cut in (rotated, or written by someone else):
                // its rest would start a line with a fragment. That record is lost.
                from = k
                    .buf
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(k.buf.len(), |i| i + 1);
                self.lost += lines(&k.buf[..from]).max(1);
                tracing::warn!(
                    what = O::WHAT,
                    "a record cut off by a failed write could not be completed: the destination changed"
                );
            }
            buf.extend_from_slice(&k.buf[from..]);
        }
        // The records a failed close kept end where their line breaks are.
        let ends = buf
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c == b'\n')
            .map(|(i, _)| at + i as u64 + 1)
            .collect();
        self.out = Some(Out {
            w,
            buf,
            at,
            torn,
            ends,
            settled: 0,
        });
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.out.is_some()
    }

    fn send(&mut self, frame: &[u8], _deadline: Instant) -> Result<u64, SendError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| SendError::Retry(io::Error::other(format!("{} not open", O::WHAT))))?;
        out.push(frame).map_err(SendError::Retry)?;
        Ok(frame.len() as u64)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn close(&mut self) {
        let Some(mut o) = self.out.take() else {
            return;
        };
        let failed = o.flush().is_err();
        self.settled += o.settled;
        if failed && self.keep && !o.buf.is_empty() {
            // Taken records: written at the next open, not dropped (a full disk).
            self.kept = Some(Kept {
                buf: o.buf,
                at: o.at,
                torn: o.torn,
            });
        }
    }

    fn settles(&self) -> bool {
        true
    }

    fn set_resends(&mut self) {
        self.keep = false;
    }

    fn settled(&mut self) -> u64 {
        let open = self
            .out
            .as_mut()
            .map_or(0, |o| std::mem::take(&mut o.settled));
        open + std::mem::take(&mut self.settled)
    }

    fn lost(&mut self, give_up: bool) -> u64 {
        let mut n = std::mem::take(&mut self.lost);
        if give_up && let Some(k) = self.kept.take() {
            n += lines(&k.buf);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is given; accepts at most `room` more bytes, then fails. With
    /// `short`, every call takes at most 4,097 bytes and every third is interrupted.
    struct Rec {
        data: Vec<u8>,
        /// Stream offset after each write call that wrote something.
        ends: Vec<u64>,
        start: u64,
        room: usize,
        short: bool,
        calls: usize,
    }

    impl Write for Rec {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.short && self.calls.is_multiple_of(3) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.room == 0 {
                return Err(io::Error::other("disk full"));
            }
            let mut cap = if self.short { 4_097 } else { usize::MAX };
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.room).min(cap);
                self.data.extend_from_slice(&b[..k]);
                self.room -= k;
                cap -= k;
                n += k;
            }
            self.ends.push(self.start + self.data.len() as u64);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn out(start: u64, room: usize) -> Out<Rec> {
        Out {
            torn: false,
            ends: VecDeque::new(),
            settled: 0,
            w: Rec {
                data: Vec::new(),
                ends: Vec::new(),
                start,
                room,
                short: false,
                calls: 0,
            },
            buf: Vec::new(),
            at: start,
        }
    }

    /// Frames of 1..1,500 bytes, each a line of its own digit.
    fn frames() -> Vec<Vec<u8>> {
        (0..400usize)
            .map(|i| {
                let mut f = vec![b'0' + (i % 10) as u8; 1 + (i * 7919) % 1500];
                f.push(b'\n');
                f
            })
            .collect()
    }

    #[test]
    fn bursts_end_at_chunk_boundaries_and_keep_every_byte() {
        for start in [0, 7, CHUNK - 1, 3 * CHUNK + 100] {
            let mut o = out(start, usize::MAX);
            let mut want = Vec::new();
            for f in frames() {
                o.push(&f).expect("push");
                want.extend_from_slice(&f);
            }
            let before_flush = o.w.ends.len();
            assert!(
                before_flush >= 4,
                "{start}: {before_flush} writes in a burst"
            );
            assert!(
                o.w.ends.iter().all(|e| e % CHUNK == 0),
                "{start}: a burst's write ended off a boundary: {:?}",
                o.w.ends
            );
            o.flush().expect("flush");
            assert_eq!(o.w.data, want, "{start}: bytes lost or reordered");
            assert!(o.buf.is_empty());
            assert_eq!(o.at, start + want.len() as u64);
        }
    }

    #[test]
    fn short_and_interrupted_writes_lose_and_repeat_nothing() {
        for start in [0, 5, CHUNK - 3] {
            let mut o = out(start, usize::MAX);
            o.w.short = true;
            let mut want = Vec::new();
            for f in frames() {
                o.push(&f).expect("push");
                want.extend_from_slice(&f);
            }
            o.flush().expect("flush");
            assert_eq!(o.w.data, want, "{start}: bytes lost, repeated or reordered");
            assert!(
                o.w.calls > want.len() / 4_097,
                "{start}: writes were not short"
            );
        }
    }

    #[test]
    fn a_failed_write_keeps_what_was_not_written_and_tears_no_frame() {
        let all = frames();
        // Fail inside the buffer (the frame not written: the sink sends it again) and
        // inside the frame that reached the boundary (its rest stays buffered).
        let mut torn = 0;
        for room in (1_000..3_000).chain(64_000..67_000).step_by(37) {
            let mut o = out(0, room);
            let mut sent = Vec::new();
            let (mut failed, mut full) = (false, false);
            for f in &all {
                match o.push(f) {
                    Ok(()) => sent.extend_from_slice(f),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                if o.w.room == 0 {
                    // The disk filled inside this frame: accepted, its rest buffered.
                    torn += 1;
                    full = true;
                    break;
                }
            }
            // The disk has room again: everything accepted comes out once, in order.
            o.w.room = usize::MAX;
            o.flush().expect("flush");
            assert_eq!(o.w.data, sent, "room {room}: written != accepted");
            assert!(failed || full, "room {room}: the disk never filled");
        }
        assert!(torn > 0, "no case filled the disk inside a frame");
    }
}

/// Tests of what a failed close keeps, and the full disk they run on (also the pipeline's).
#[cfg(test)]
pub(crate) mod kept_tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A file in memory whose disk has `room` bytes left; `rotate` makes the next open
    /// start a new, empty file.
    #[derive(Clone, Default)]
    pub(crate) struct Disk {
        pub(crate) files: Arc<Mutex<Vec<Vec<u8>>>>,
        pub(crate) room: Arc<Mutex<usize>>,
        rotate: Arc<Mutex<bool>>,
    }

    pub(crate) struct Handle(Disk);

    impl Write for Handle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.0.room.lock().expect("room");
            if *room == 0 {
                return Err(io::Error::other("No space left on device"));
            }
            let n = buf.len().min(*room);
            *room -= n;
            let mut files = self.0.files.lock().expect("files");
            files.last_mut().expect("file").extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Opener for Disk {
        type Writer = Handle;
        const WHAT: &'static str = "test";

        /// Ends a cut-off line unless told to resume there, as `file::Path` does.
        fn open(&mut self, resume: Option<u64>) -> io::Result<Handle> {
            let mut files = self.files.lock().expect("files");
            if files.is_empty() || std::mem::take(&mut *self.rotate.lock().expect("rotate")) {
                files.push(Vec::new());
            }
            let f = files.last_mut().expect("file");
            if f.last().is_some_and(|&c| c != b'\n') && resume != Some(f.len() as u64) {
                f.push(b'\n');
            }
            Ok(Handle(self.clone()))
        }

        fn offset(w: &Handle) -> u64 {
            w.0.files
                .lock()
                .expect("files")
                .last()
                .map_or(0, |f| f.len() as u64)
        }
    }

    /// Sends records until a write fails, as the worker does: returns those accepted.
    fn fill(t: &mut Buffered<Disk>, from: usize) -> Vec<u8> {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        t.open(deadline).expect("open");
        let mut sent = Vec::new();
        for i in from.. {
            let rec = format!("{{\"sequence\":{i},\"pad\":\"{}\"}}\n", "x".repeat(700));
            match t.send(rec.as_bytes(), deadline) {
                Ok(_) => sent.extend_from_slice(rec.as_bytes()),
                Err(_) => break,
            }
        }
        t.close();
        sent
    }

    #[test]
    fn records_a_full_disk_refused_are_written_after_it_has_room_again() {
        // Room ends inside a record (the burst's write cuts one) and on a record boundary.
        for room in [100_000, 65_536 + 5_000, 3 * 65_536] {
            let disk = Disk::default();
            *disk.room.lock().expect("room") = room;
            let mut t = Buffered::with_opener(disk.clone());
            let sent = fill(&mut t, 1);
            assert!(t.kept.is_some(), "room {room}: nothing kept");
            let before = t.settled();
            assert_eq!(
                before,
                lines(&disk.files.lock().expect("files")[0]),
                "room {room}: written records"
            );
            *disk.room.lock().expect("room") = usize::MAX;
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            t.open(deadline).expect("reopen");
            t.flush().expect("flush");
            assert_eq!(t.lost(false), 0, "room {room}");
            assert_eq!(before + t.settled(), lines(&sent), "room {room}");
            let files = disk.files.lock().expect("files");
            assert_eq!(files.len(), 1);
            assert_eq!(files[0], sent, "room {room}: records lost or cut");
        }
    }

    /// A sink whose disk filled inside a record: the disk, the sink, the records it took.
    fn cut_by_a_full_disk() -> (Disk, Buffered<Disk>, Vec<u8>) {
        let disk = Disk::default();
        *disk.room.lock().expect("room") = 100_000;
        let mut t = Buffered::with_opener(disk.clone());
        let sent = fill(&mut t, 1);
        assert!(
            t.kept.as_ref().is_some_and(|k| k.torn),
            "the full disk cut no record"
        );
        (disk, t, sent)
    }

    #[test]
    fn a_cut_record_survives_a_reopen_that_writes_nothing() {
        let (disk, mut t, sent) = cut_by_a_full_disk();
        // Still full: the reopen writes nothing and the close keeps it all again.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        t.open(deadline).expect("reopen");
        t.close();
        assert!(
            t.kept.as_ref().is_some_and(|k| k.torn),
            "the cut record was forgotten"
        );
        *disk.room.lock().expect("room") = usize::MAX;
        t.open(deadline).expect("reopen");
        t.flush().expect("flush");
        assert_eq!(t.lost(false), 0);
        assert_eq!(disk.files.lock().expect("files")[0], sent);
    }

    #[test]
    fn a_cut_record_is_counted_lost_when_the_file_changed() {
        let (disk, mut t, sent) = cut_by_a_full_disk();
        // Rotated meanwhile: the cut record's rest cannot complete it.
        *disk.rotate.lock().expect("rotate") = true;
        *disk.room.lock().expect("room") = usize::MAX;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        t.open(deadline).expect("reopen");
        t.flush().expect("flush");
        assert_eq!(t.lost(false), 1);
        // Each record is written or lost, never both.
        assert_eq!(t.settled() + 1, lines(&sent));
        let files = disk.files.lock().expect("files");
        let (old, new) = (&files[0], &files[1]);
        assert!(
            !old.ends_with(b"\n") && new.starts_with(b"{\"sequence\":"),
            "{new:?}"
        );
        // Every record but the cut one is whole, in one file or the other.
        let whole = |f: &Vec<u8>| {
            f.split(|&c| c == b'\n')
                .filter(|l| l.ends_with(b"\"}"))
                .count()
        };
        assert_eq!(whole(old) + whole(new) + 1, lines(&sent) as usize);
    }

    #[test]
    fn a_caller_that_resends_gets_nothing_kept() {
        // With a spool the worker sends again what a failed write did not take: keeping it
        // too would write those records twice.
        let disk = Disk::default();
        *disk.room.lock().expect("room") = 100_000;
        let mut t = Buffered::with_opener(disk.clone());
        t.set_resends();
        fill(&mut t, 1);
        assert!(t.kept.is_none(), "kept for a caller that resends");
        let written = disk.files.lock().expect("files")[0].clone();
        *disk.room.lock().expect("room") = usize::MAX;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        t.open(deadline).expect("reopen");
        t.flush().expect("flush");
        // Only the line break the open adds after a cut record (the file sink's repair).
        let mut want = written;
        if !want.ends_with(b"\n") {
            want.push(b'\n');
        }
        assert_eq!(disk.files.lock().expect("files")[0], want, "written again");
        assert_eq!(t.lost(true), 0);
    }

    #[test]
    fn records_still_unwritten_at_exit_are_counted() {
        let disk = Disk::default();
        *disk.room.lock().expect("room") = 100_000;
        let mut t = Buffered::with_opener(disk.clone());
        let sent = fill(&mut t, 1);
        let written = lines(&disk.files.lock().expect("files")[0]);
        assert_eq!(t.settled(), written);
        assert_eq!(t.settled(), 0, "counted twice");
        assert_eq!(t.lost(false), 0);
        assert_eq!(t.lost(true), lines(&sent) - written);
        assert_eq!(t.lost(true), 0, "counted twice");
    }
}
