//! A sink's bounded on-disk queue of frames, oldest first, and its write-ahead log.
//!
//! Every frame of a sink with a spool is appended here before it is sent
//! ([`crate::events::pipeline`]); it stays until the destination has acknowledged it. Two positions
//! move through the spool: the *read cursor* ([`Spool::pop`]: the next frame to send) and the
//! *committed head* ([`Spool::commit`]: the oldest frame not yet known delivered). Only the
//! committed head is persisted, so after a crash (`kill -9`, power loss) everything from it
//! on is sent again: at-least-once, with duplicates (same record `id`) and never losses.
//!
//! Layout of the spool directory: segment files `{id:020}.seg` (ids increase; a segment holds
//! at most [`SEGMENT_BYTES`]) that start with [`MAGIC`] and hold frames `[length: u32
//! little-endian][CRC-32 (ISO-HDLC, as zlib) of the bytes: u32 little-endian][bytes]`, and
//! a `head` file `"{segment id} {byte offset}\n"` naming the committed head, written when
//! the pipeline asks ([`Spool::sync_head`], every 200 ms), when a segment is finished, and at
//! exit. A frame cut short by a crash at
//! the end of the last segment is dropped (its write never completed, so it was never sent).
//! Segments of egressd versions before the checksum (no [`MAGIC`], frames `[length][bytes]`)
//! are still read, and so are the low-numbered segments older versions wrote at exit.
//!
//! Durability: [`Spool::append`] is a `write(2)`, which a process crash cannot undo (the
//! page cache keeps it); surviving a power loss or kernel crash needs `fdatasync(2)`, which
//! the pipeline asks for per [`Fsync`] policy: [`Spool::durable`] tells whether the last
//! frame popped is covered by one, [`Spool::unsynced`] hands out the segment to sync (outside
//! the pipeline's lock) and [`Spool::synced`] records it. A finished segment is synced, with
//! the directory, when the next one is created.
//!
//! Damage never stops delivery: a frame whose length is impossible or whose checksum does
//! not match, and a segment that cannot be read, are set aside with what follows them in
//! that segment as `damaged-{segment}-{offset}` (0600, for an operator to look at), logged
//! and counted ([`Spool::damaged`]); delivery goes on with the next segment.
//!
//! The directory is opened once through [`crate::base::safefs`] (created 0700; it and its parents
//! owned by root and not writable by others) and every file in it is opened relative to it
//! with `O_NOFOLLOW`: segments are created 0600; `head` is written as a fresh `O_EXCL`
//! temporary file (random name) renamed inside the directory. The modes are explicit, so no
//! umask widens them, and a spool an older version or an operator left wider (a 0755
//! directory, 0644 segments) is narrowed to 0700 and 0600 when opened: the records (command
//! lines, user names) are root's alone. A name that looks like a segment but is not a
//! regular file owned by root and writable by nobody else (a link, a file another user
//! planted) is never read: it is renamed to `rejected-NAME` and reported.
use std::{
    collections::VecDeque,
    ffi::{OsStr, OsString},
    fs,
    io::{self, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
};

use crate::base::safefs::{DIR_MODE, FILE_MODE, TrustedDir};

/// Segment size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Id of the first segment of an empty spool (older versions wrote lower ids at exit).
const FIRST_ID: u64 = 1 << 40;
/// Frame length prefix.
const LEN_BYTES: u64 = 4;
/// Largest frame a segment may claim to hold (a larger length prefix means a damaged file).
const MAX_FRAME: u64 = 64 << 20;
/// First bytes of a segment with checksummed frames.
pub const MAGIC: &[u8; 8] = b"egrspl2\n";
/// Checksum bytes after the length prefix (segments with [`MAGIC`]).
const CRC_BYTES: u64 = 4;

pub use crate::config::output::Fsync;

/// What was set aside as damaged since the spool was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// Damaged places set aside (a frame and the rest of its segment, or a whole segment).
    pub regions: u64,
    /// Frames those places were counted to hold when the spool was opened or written.
    pub frames: u64,
    /// Bytes set aside.
    pub bytes: u64,
}

/// One segment file: its id, frame format, and the uncommitted and unread frames and bytes
/// it holds.
#[derive(Debug, Clone, Copy)]
struct Seg {
    id: u64,
    /// Frames carry a checksum (the file starts with [`MAGIC`]).
    checked: bool,
    /// Frames not committed yet (read or not).
    frames: u64,
    /// Their bytes (prefixes included).
    bytes: u64,
    /// Frames not read yet.
    unread: u64,
    /// Their bytes.
    unread_bytes: u64,
}

impl Seg {
    const fn new(id: u64, checked: bool) -> Self {
        Self {
            id,
            checked,
            frames: 0,
            bytes: 0,
            unread: 0,
            unread_bytes: 0,
        }
    }

    const fn prefix(&self) -> u64 {
        if self.checked {
            LEN_BYTES + CRC_BYTES
        } else {
            LEN_BYTES
        }
    }

    /// Offset of the first frame.
    const fn start(&self) -> u64 {
        if self.checked { MAGIC.len() as u64 } else { 0 }
    }
}

/// An open spool directory.
pub struct Spool {
    dir: TrustedDir,
    max_bytes: u64,
    /// Segments from the committed head's on, oldest first.
    segs: VecDeque<Seg>,
    /// Offset of the committed head in `segs[0]`.
    head_offset: u64,
    /// The read cursor: index in `segs`, offset there, and a reader positioned at it.
    read_seg: usize,
    read_off: u64,
    reader: Option<BufReader<fs::File>>,
    /// Frames read and not committed, oldest first: (segment id, bytes with the prefix).
    pending: VecDeque<(u64, u64)>,
    /// Their bytes.
    pending_bytes: u64,
    /// Appender on the last segment and its size.
    writer: Option<(fs::File, u64)>,
    /// Everything before this (segment id, offset) is synced to disk.
    synced_to: (u64, u64),
    /// Whether the last frame popped lies before `synced_to`.
    last_durable: bool,
    /// Uncommitted bytes (prefixes included) and unread frames.
    bytes: u64,
    records: u64,
    head_dirty: bool,
    damage: Damage,
}

fn seg_name(id: u64) -> OsString {
    OsString::from(format!("{id:020}.seg"))
}

/// Counts the complete frames of `f` (frames with a `prefix`-byte header) from `offset`;
/// returns (frames, bytes, end of the last complete frame).
fn scan(f: fs::File, offset: u64, prefix: u64) -> io::Result<(u64, u64, u64)> {
    let len = f.metadata()?.len();
    let mut r = BufReader::new(f);
    r.seek(SeekFrom::Start(offset))?;
    let (mut n, mut pos) = (0, offset);
    let mut buf = [0u8; 4];
    while pos + prefix <= len {
        r.read_exact(&mut buf)?;
        let flen = u64::from(u32::from_le_bytes(buf));
        if flen > MAX_FRAME || pos + prefix + flen > len {
            break;
        }
        r.seek_relative(i64::try_from(prefix - LEN_BYTES + flen).map_err(io::Error::other)?)?;
        pos += prefix + flen;
        n += 1;
    }
    Ok((n, pos - offset, pos))
}

/// Whether the segment file `f` starts with [`MAGIC`] (checksummed frames).
fn is_checked(f: &mut fs::File) -> io::Result<bool> {
    let mut m = [0u8; 8];
    let mut got = 0;
    while got < m.len() {
        match f.read(&mut m[got..])? {
            0 => break,
            n => got += n,
        }
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(got == m.len() && &m == MAGIC)
}

/// `[len][crc][frame]`.
fn encode(frame: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.extend_from_slice(
        &u32::try_from(frame.len())
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

/// Writes `data` as `name` in `dir` atomically (a fresh `O_EXCL` temporary, renamed).
fn replace(dir: &TrustedDir, name: &str, data: &[u8]) -> io::Result<()> {
    dir.replace(OsStr::new(name), data, FILE_MODE)
}

impl Spool {
    /// Opens (creating) the spool in `dir` with a size limit of `max_bytes`, recovering what
    /// a previous run left there: every frame from the committed head on is read again.
    ///
    /// # Errors
    /// The directory cannot be created or read, or fails the ownership and mode checks of
    /// [`crate::base::safefs`]; a segment cannot be read or repaired.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let tdir = TrustedDir::create(dir)?;
        tdir.restrict(DIR_MODE)?;
        let mut ids: Vec<u64> = Vec::new();
        for name in tdir.entries()? {
            if name.as_encoded_bytes().starts_with(b".") {
                // A temporary file left by a crash (only the name goes; links are not
                // followed).
                if name.to_string_lossy().contains(".tmp") {
                    let _ = tdir.remove(&name);
                }
                continue;
            }
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            match tdir
                .check_entry(&name)
                .and_then(|()| tdir.restrict_file(&name, FILE_MODE))
            {
                Ok(_) => ids.push(id),
                Err(e) => {
                    let mut aside = OsString::from("rejected-");
                    aside.push(&name);
                    tracing::error!(error = %e, set_aside_as = %aside.to_string_lossy(), "spool segment is not egressd's own: never delivered");
                    tdir.rename(&name, &aside)?;
                }
            }
        }
        ids.sort_unstable();
        if let Err(e) = tdir.restrict_file(OsStr::new("head"), FILE_MODE)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::error!(error = %e, "spool head: mode not narrowed");
        }
        let head = match tdir.read(OsStr::new("head")) {
            Ok(mut f) => {
                let mut s = String::new();
                f.read_to_string(&mut s).ok().map(|_| s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(error = %e, "spool head ignored: delivering from the oldest segment");
                None
            }
        };
        let (head_id, head_off) = head
            .and_then(|s| {
                let (a, b) = s.trim().split_once(' ')?;
                Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
            })
            .unwrap_or((0, 0));
        // Segments before the head are fully delivered.
        for id in ids.iter().filter(|id| **id < head_id) {
            tdir.remove(&seg_name(*id))?;
        }
        ids.retain(|id| *id >= head_id);
        let mut s = Self {
            dir: tdir,
            max_bytes,
            segs: VecDeque::new(),
            head_offset: 0,
            read_seg: 0,
            read_off: 0,
            reader: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            writer: None,
            // What is on disk now is as durable as it gets; new frames go to a new segment.
            synced_to: (ids.last().map_or(0, |l| l + 1), 0),
            last_durable: true,
            bytes: 0,
            records: 0,
            head_dirty: false,
            damage: Damage::default(),
        };
        let last = ids.len().saturating_sub(1);
        for (i, &id) in ids.iter().enumerate() {
            let mut f = match s.dir.read(&seg_name(id)) {
                Ok(f) => f,
                Err(e) => {
                    s.set_aside_whole(id, &e)?;
                    continue;
                }
            };
            let checked = is_checked(&mut f)?;
            let mut seg = Seg::new(id, checked);
            let from = if id == head_id {
                head_off.max(seg.start())
            } else {
                seg.start()
            };
            if s.segs.is_empty() {
                s.head_offset = from;
                s.read_off = from;
            }
            let len = f.metadata()?.len();
            let (n, b, end) = scan(f, from, seg.prefix())?;
            if end < len {
                let torn = i == last && s.torn_frame_at(id, end, len, seg.prefix());
                if !torn {
                    // Not a frame cut short by a crash at the end: damage.
                    s.set_aside_tail(id, end)?;
                }
                s.dir.write(&seg_name(id))?.set_len(end)?;
            }
            seg.frames = n;
            seg.bytes = b;
            seg.unread = n;
            seg.unread_bytes = b;
            s.records += n;
            s.bytes += b;
            s.segs.push_back(seg);
        }
        Ok(s)
    }

    /// Frames waiting to be read ([`Self::pop`]).
    pub fn len(&self) -> u64 {
        self.records
    }

    /// No frame waiting to be read.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Frames read and not committed yet (in flight).
    pub fn pending(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Frames not known delivered: waiting and in flight. After a crash all of them are
    /// sent again.
    pub fn unacknowledged(&self) -> u64 {
        self.records + self.pending()
    }

    /// Bytes on disk not committed (frame headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes waiting to be read: what counts against the size limit. Frames read and not
    /// committed yet (in flight, about a second's worth on a healthy connection) come on
    /// top, so a fast sink never drops records because of its acknowledgement lag.
    pub fn waiting_bytes(&self) -> u64 {
        self.bytes.saturating_sub(self.pending_bytes)
    }

    /// What was set aside as damaged since the spool was opened.
    pub fn damaged(&self) -> Damage {
        self.damage
    }

    /// Appends a frame; `Ok(false)` when it does not fit under the size limit (the caller
    /// counts it as dropped; see [`Self::waiting_bytes`]). One `write(2)`; see
    /// [`Self::unsynced`] for `fdatasync`.
    ///
    /// # Errors
    /// Disk errors (a full disk included; nothing is counted as spooled then).
    pub fn append(&mut self, frame: &[u8]) -> io::Result<bool> {
        let need = LEN_BYTES + CRC_BYTES + frame.len() as u64;
        if self.waiting_bytes() + need > self.max_bytes {
            return Ok(false);
        }
        let rotate = match (&self.writer, self.segs.back()) {
            (None, _) | (_, None) => true,
            (Some((_, size)), Some(last)) => *size >= SEGMENT_BYTES || !last.checked,
        };
        if rotate {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(usize::try_from(need).unwrap_or(0));
        encode(frame, &mut buf)?;
        if let Some((f, size)) = self.writer.as_mut() {
            if let Err(e) = f.write_all(&buf) {
                // A partial frame (full disk): cut it off so the segment stays readable,
                // and write the next frame to a new segment.
                let _ = f.set_len(*size);
                self.writer = None;
                return Err(e);
            }
            *size += need;
        }
        if let Some(last) = self.segs.back_mut() {
            last.frames += 1;
            last.bytes += need;
            last.unread += 1;
            last.unread_bytes += need;
        }
        self.bytes += need;
        self.records += 1;
        Ok(true)
    }

    /// Starts a new segment for appending, syncing the finished one (and the directory, for
    /// the new name).
    fn rotate(&mut self) -> io::Result<()> {
        let id = self.segs.back().map_or(FIRST_ID, |l| l.id + 1);
        if let Some((old, _)) = self.writer.take()
            && let Err(e) = old.sync_data()
        {
            tracing::error!(error = %e, "spool: syncing a finished segment failed");
        }
        let mut f = self.dir.append(&seg_name(id), FILE_MODE)?;
        if let Err(e) = f.set_len(0).and_then(|()| f.write_all(MAGIC)) {
            // A full disk: no half-made segment stays behind.
            drop(f);
            let _ = self.dir.remove(&seg_name(id));
            return Err(e);
        }
        if let Err(e) = self.dir.sync() {
            tracing::error!(error = %e, "spool: syncing the directory failed");
        }
        // Everything in earlier segments is on disk now.
        self.synced_to = self.synced_to.max((id, 0));
        if self.segs.is_empty() {
            self.reader = None;
            self.head_offset = MAGIC.len() as u64;
            self.read_seg = 0;
            self.read_off = MAGIC.len() as u64;
        }
        self.segs.push_back(Seg::new(id, true));
        self.writer = Some((f, MAGIC.len() as u64));
        Ok(())
    }

    /// Reads the next frame at the read cursor; it stays in the spool (pending) until
    /// [`Self::commit`]. A damaged frame (impossible length, wrong checksum) and the rest of
    /// its segment, or a segment that cannot be read, are set aside and counted
    /// ([`Self::damaged`]); the next intact frame is returned.
    ///
    /// # Errors
    /// The damaged part cannot be set aside (the directory itself fails).
    pub fn pop(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let Some(&seg) = self.segs.get(self.read_seg) else {
                return Ok(None);
            };
            if seg.unread == 0 {
                if self.read_seg + 1 < self.segs.len() {
                    self.read_seg += 1;
                    self.reader = None;
                    self.read_off = self.segs[self.read_seg].start();
                    continue;
                }
                return Ok(None);
            }
            let at = (seg.id, self.read_off);
            match self.read_frame(seg) {
                Ok(frame) => {
                    let used = seg.prefix() + frame.len() as u64;
                    let s = &mut self.segs[self.read_seg];
                    s.unread -= 1;
                    s.unread_bytes = s.unread_bytes.saturating_sub(used);
                    self.read_off += used;
                    self.records -= 1;
                    self.pending.push_back((seg.id, used));
                    self.pending_bytes += used;
                    self.last_durable = at < self.synced_to;
                    return Ok(Some(frame));
                }
                Err(why) => self.set_aside_rest(seg, &why)?,
            }
        }
    }

    /// Puts the read cursor back at the committed head: every pending frame is read again
    /// (after a lost connection, whatever was in flight is sent again, from disk).
    pub fn rewind(&mut self) {
        self.records += self.pending();
        self.pending.clear();
        self.pending_bytes = 0;
        for s in &mut self.segs {
            s.unread = s.frames;
            s.unread_bytes = s.bytes;
        }
        self.read_seg = 0;
        self.read_off = self.head_offset;
        self.reader = None;
    }

    /// Whether the frame [`Self::pop`] returned last is synced to disk.
    pub fn durable(&self) -> bool {
        self.last_durable
    }

    /// The segment being appended to (a second handle, to `fdatasync` without holding the
    /// spool) and the position up to which that sync covers it; `None` when everything is
    /// synced. Pass the position to [`Self::synced`] once the sync succeeded.
    ///
    /// # Errors
    /// The handle cannot be duplicated.
    pub fn unsynced(&self) -> io::Result<Option<(fs::File, (u64, u64))>> {
        let Some((f, size)) = &self.writer else {
            return Ok(None);
        };
        let Some(last) = self.segs.back() else {
            return Ok(None);
        };
        let to = (last.id, *size);
        if to <= self.synced_to {
            return Ok(None);
        }
        Ok(Some((f.try_clone()?, to)))
    }

    /// Records that everything before `to` is synced (see [`Self::unsynced`]).
    pub fn synced(&mut self, to: (u64, u64)) {
        self.synced_to = self.synced_to.max(to);
    }

    /// Commits the `n` oldest pending frames: the destination has them. Segments wholly
    /// committed are deleted.
    ///
    /// # Errors
    /// A finished segment cannot be deleted, or the head cannot be written then.
    pub fn commit(&mut self, n: u64) -> io::Result<()> {
        for _ in 0..n {
            let Some((id, used)) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(used);
            // Segments left with nothing uncommitted (one a previous run finished, or one
            // whose unread rest was set aside) go first, so the frame's segment is in front.
            self.drop_finished()?;
            match self.segs.front_mut() {
                Some(front) if front.id == id => {
                    front.frames = front.frames.saturating_sub(1);
                    front.bytes = front.bytes.saturating_sub(used);
                    self.head_offset += used;
                    self.bytes = self.bytes.saturating_sub(used);
                    self.head_dirty = true;
                }
                front => {
                    tracing::error!(segment = id, front = ?front.map(|f| f.id), "spool: committed frame not at the head (a bug): head left where it is");
                }
            }
        }
        self.drop_finished()
    }

    /// Deletes front segments with nothing uncommitted left (except the one being written).
    fn drop_finished(&mut self) -> io::Result<()> {
        let mut dropped = false;
        while let Some(&front) = self.segs.front() {
            if front.frames > 0 || (self.segs.len() == 1 && self.writer.is_some()) {
                break;
            }
            self.segs.pop_front();
            if self.segs.is_empty() {
                self.writer = None;
            }
            if self.read_seg == 0 {
                self.reader = None;
                self.read_off = self.segs.front().map_or(0, Seg::start);
            } else {
                self.read_seg -= 1;
            }
            self.head_offset = self.segs.front().map_or(0, Seg::start);
            self.head_dirty = true;
            self.dir.remove(&seg_name(front.id))?;
            dropped = true;
        }
        if dropped {
            self.sync()?;
        }
        Ok(())
    }

    /// Reads the frame at the read cursor in `seg`; `Err` says what is damaged.
    fn read_frame(&mut self, seg: Seg) -> Result<Vec<u8>, String> {
        if self.reader.is_none() {
            let mut f = self
                .dir
                .read(&seg_name(seg.id))
                .map_err(|e| format!("cannot open: {e}"))?;
            f.seek(SeekFrom::Start(self.read_off))
                .map_err(|e| format!("cannot seek: {e}"))?;
            self.reader = Some(BufReader::with_capacity(64 << 10, f));
        }
        let off = self.read_off;
        let Some(r) = self.reader.as_mut() else {
            return Err("no reader".into());
        };
        let mut head = [0u8; 8];
        let head = &mut head[..usize::try_from(seg.prefix()).unwrap_or(4)];
        r.read_exact(head)
            .map_err(|e| format!("frame header at {off}: {e}"))?;
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if u64::from(n) > MAX_FRAME {
            return Err(format!("impossible frame length {n} at {off}"));
        }
        let mut frame = vec![0u8; n as usize];
        r.read_exact(&mut frame)
            .map_err(|e| format!("frame of {n} bytes at {off}: {e}"))?;
        if seg.checked {
            let want = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if crc32fast::hash(&frame) != want {
                return Err(format!("checksum mismatch in the frame at {off}"));
            }
        }
        Ok(frame)
    }

    /// Sets the unread rest of segment `seg` (at the read cursor) aside as damaged: a copy
    /// is kept, the segment is cut at the cursor and no longer appended to, and reading goes
    /// on with the next segment.
    fn set_aside_rest(&mut self, seg: Seg, why: &str) -> io::Result<()> {
        self.reader = None;
        let off = self.read_off;
        let name = format!("damaged-{:020}-{off}", seg.id);
        let copied = self.dir.read(&seg_name(seg.id)).and_then(|mut f| {
            f.seek(SeekFrom::Start(off))?;
            let mut rest = Vec::new();
            f.take(SEGMENT_BYTES + MAX_FRAME).read_to_end(&mut rest)?;
            self.dir.replace(OsStr::new(&name), &rest, FILE_MODE)?;
            Ok(rest.len() as u64)
        });
        let bytes = match copied {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(segment = seg.id, error = %e, "could not keep a copy of the damaged part");
                seg.unread_bytes
            }
        };
        tracing::error!(
            segment = seg.id,
            offset = off,
            frames = seg.unread,
            bytes,
            set_aside_as = %name,
            "spool damaged ({why}): set aside, delivery goes on"
        );
        self.damage.regions += 1;
        self.damage.frames += seg.unread;
        self.damage.bytes += bytes;
        self.records = self.records.saturating_sub(seg.unread);
        self.bytes = self.bytes.saturating_sub(seg.unread_bytes);
        if self.read_seg + 1 == self.segs.len() {
            // The segment being written: later frames go to a new one.
            self.writer = None;
        }
        if let Err(e) = self
            .dir
            .write(&seg_name(seg.id))
            .and_then(|f| f.set_len(off))
        {
            tracing::error!(segment = seg.id, error = %e, "could not cut the damaged segment");
        }
        let s = &mut self.segs[self.read_seg];
        s.frames = s.frames.saturating_sub(s.unread);
        s.bytes = s.bytes.saturating_sub(s.unread_bytes);
        s.unread = 0;
        s.unread_bytes = 0;
        self.drop_finished()?;
        self.head_dirty = true;
        self.sync()
    }

    /// Whether the bytes from `end` to `len` of segment `id` are the start of one frame
    /// whose write a crash cut short (a plausible length that runs past the end).
    fn torn_frame_at(&self, id: u64, end: u64, len: u64, prefix: u64) -> bool {
        if len - end < LEN_BYTES {
            return true;
        }
        let Ok(mut f) = self.dir.read(&seg_name(id)) else {
            return false;
        };
        let mut b = [0u8; 4];
        if f.seek(SeekFrom::Start(end)).is_err() || f.read_exact(&mut b).is_err() {
            return false;
        }
        let flen = u64::from(u32::from_le_bytes(b));
        flen <= MAX_FRAME && end + prefix + flen > len
    }

    /// Keeps a copy of segment `id` from `offset` on as damaged and counts it (at open; the
    /// caller cuts the segment there).
    fn set_aside_tail(&mut self, id: u64, offset: u64) -> io::Result<()> {
        let name = format!("damaged-{id:020}-{offset}");
        let mut f = self.dir.read(&seg_name(id))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut rest = Vec::new();
        f.take(SEGMENT_BYTES + MAX_FRAME).read_to_end(&mut rest)?;
        self.dir.replace(OsStr::new(&name), &rest, FILE_MODE)?;
        tracing::error!(segment = id, offset, bytes = rest.len(), set_aside_as = %name, "spool damaged (unreadable frames): set aside, delivery goes on");
        self.damage.regions += 1;
        self.damage.bytes += rest.len() as u64;
        Ok(())
    }

    /// Sets a whole segment that cannot be read aside (at open).
    fn set_aside_whole(&mut self, id: u64, e: &io::Error) -> io::Result<()> {
        let name = format!("damaged-{id:020}-0");
        tracing::error!(segment = id, error = %e, set_aside_as = %name, "spool segment unreadable: set aside, delivery goes on");
        self.dir.rename(&seg_name(id), OsStr::new(&name))?;
        self.damage.regions += 1;
        Ok(())
    }

    /// Writes the `head` file (the committed head) if it moved, atomically (a fresh
    /// temporary file renamed inside the directory), after syncing the segment being
    /// written.
    ///
    /// # Errors
    /// Disk errors.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some((f, to)) = self.unsynced()? {
            f.sync_data()?;
            self.synced(to);
        }
        self.sync_head()
    }

    /// Writes the `head` file if the committed head moved (as [`Self::sync`], without
    /// syncing the segment being written: a head lost with the page cache only means
    /// frames are sent again).
    ///
    /// # Errors
    /// Disk errors.
    pub fn sync_head(&mut self) -> io::Result<()> {
        if !self.head_dirty {
            return Ok(());
        }
        let id = self.segs.front().map_or(0, |s| s.id);
        replace(
            &self.dir,
            "head",
            format!("{id} {}\n", self.head_offset).as_bytes(),
        )?;
        self.head_dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egressd-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn frame(i: usize) -> Vec<u8> {
        format!("frame-{i}-{}", "x".repeat(i % 7)).into_bytes()
    }

    #[test]
    fn fifo_across_segments_and_reopen() {
        let d = dir("fifo");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        // Large frames so several segments are used.
        let big = |i: usize| {
            let mut f = frame(i);
            f.resize(300_000, b'.');
            f
        };
        for i in 0..40 {
            assert!(s.append(&big(i)).expect("append"));
        }
        assert_eq!(s.len(), 40);
        for i in 0..15 {
            assert_eq!(s.pop().expect("pop"), Some(big(i)));
        }
        s.commit(15).expect("commit");
        s.sync().expect("sync");
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).expect("reopen");
        assert_eq!(s.len(), 25);
        for i in 15..40 {
            assert_eq!(s.pop().expect("pop"), Some(big(i)), "frame {i}");
        }
        assert_eq!(s.pop().expect("pop"), None);
        assert!(s.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn size_limit() {
        let d = dir("limit");
        let mut s = Spool::open(&d, 100).expect("open");
        // Each frame: 40 bytes, a 4-byte length and a 4-byte checksum.
        assert!(s.append(&[0u8; 40]).expect("append"));
        assert!(s.append(&[1u8; 40]).expect("append"));
        assert!(!s.append(&[2u8; 40]).expect("append"), "over the limit");
        assert_eq!(s.bytes(), 96);
        assert_eq!(s.pop().expect("pop"), Some(vec![0u8; 40]));
        // Read (in flight) frames do not count: room again before the commit.
        assert!(s.append(&[3u8; 40]).expect("append"), "room again");
        assert_eq!((s.bytes(), s.waiting_bytes()), (144, 96));
        assert!(!s.append(&[4u8; 40]).expect("append"), "over the limit");
        s.commit(1).expect("commit");
        assert_eq!((s.bytes(), s.waiting_bytes()), (96, 96));
        let _ = fs::remove_dir_all(&d);
    }

    /// The write-ahead log: frames read and not committed (in flight when the process
    /// died) are read again after a reopen, in order, with the rest; committed ones are not.
    #[test]
    fn uncommitted_frames_are_read_again_after_reopen() {
        let d = dir("wal");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        for i in 0..10 {
            s.append(&frame(i)).expect("append");
        }
        for i in 0..6 {
            assert_eq!(s.pop().expect("pop"), Some(frame(i)));
        }
        assert_eq!((s.len(), s.pending(), s.unacknowledged()), (4, 6, 10));
        s.commit(2).expect("commit");
        s.sync().expect("sync");
        // No sync after this commit: like a crash, frame 2 comes again (a duplicate).
        s.commit(1).expect("commit");
        drop(s);
        let mut s = Spool::open(&d, 1 << 20).expect("reopen");
        let mut got = Vec::new();
        while let Some(f) = s.pop().expect("pop") {
            got.push(f);
        }
        assert_eq!(got, (2..10).map(frame).collect::<Vec<_>>());
        s.commit(8).expect("commit");
        s.sync().expect("sync");
        drop(s);
        let mut s = Spool::open(&d, 1 << 20).expect("reopen");
        assert_eq!(s.pop().expect("pop"), None);
        assert!(
            segments(&d).is_empty(),
            "everything committed: no segment left"
        );
        let _ = fs::remove_dir_all(&d);
    }

    /// A previous run committed everything in its last segment: the frames of this run's
    /// first segment are committed at their own offsets (the head never lands inside a
    /// frame), across reopens.
    #[test]
    fn commit_after_a_finished_segment_of_a_previous_run() {
        let d = dir("prevrun");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        s.append(&frame(1)).expect("append");
        s.pop().expect("pop");
        s.commit(1).expect("commit");
        s.sync().expect("sync");
        drop(s);
        for round in 0..3 {
            let mut s = Spool::open(&d, 1 << 20).expect("reopen");
            // Frames of different sizes, so a head off by one frame would be mid-frame.
            for i in 0..5 {
                s.append(&frame(10 * round + i)).expect("append");
            }
            for _ in 0..3 {
                s.pop().expect("pop").expect("frame");
            }
            s.commit(3).expect("commit");
            s.sync().expect("sync");
            drop(s);
            let mut s = Spool::open(&d, 1 << 20).expect("reopen");
            assert_eq!(s.damaged(), Damage::default(), "round {round}");
            let rest: Vec<Vec<u8>> = std::iter::from_fn(|| s.pop().expect("pop")).collect();
            assert_eq!(rest, vec![frame(10 * round + 3), frame(10 * round + 4)]);
            s.commit(2).expect("commit");
            s.sync().expect("sync");
        }
        let _ = fs::remove_dir_all(&d);
    }

    /// Rewinding reads the pending frames again, in order, before the unread ones.
    #[test]
    fn rewind_reads_pending_frames_again() {
        let d = dir("rewind");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        let big = |i: usize| {
            let mut f = frame(i);
            f.resize(700_000, b'.');
            f
        };
        for i in 0..12 {
            assert!(s.append(&big(i)).expect("append"));
        }
        for i in 0..9 {
            assert_eq!(s.pop().expect("pop"), Some(big(i)));
        }
        s.commit(2).expect("commit");
        s.rewind();
        assert_eq!((s.len(), s.pending()), (10, 0));
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| s.pop().expect("pop")).collect();
        assert_eq!(got, (2..12).map(big).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&d);
    }

    /// Committing deletes wholly committed segments, not before: a frame read from a later
    /// segment keeps an earlier, uncommitted one on disk.
    #[test]
    fn segments_go_only_when_committed() {
        let d = dir("segcommit");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        let big = |i: usize| {
            let mut f = frame(i);
            f.resize(1 << 20, b'.');
            f
        };
        for i in 0..10 {
            assert!(s.append(&big(i)).expect("append"));
        }
        let n = segments(&d).len();
        assert!(n >= 3, "{n}");
        for i in 0..10 {
            assert_eq!(s.pop().expect("pop"), Some(big(i)));
        }
        assert_eq!(segments(&d).len(), n, "nothing committed");
        s.commit(5).expect("commit");
        assert!(segments(&d).len() < n);
        s.commit(5).expect("commit");
        assert_eq!(segments(&d).len(), 1);
        assert_eq!(s.bytes(), 0);
        let _ = fs::remove_dir_all(&d);
    }

    /// `durable` tells whether a popped frame is covered by a sync; `unsynced` and `synced`
    /// sync outside the spool.
    #[test]
    fn durability_is_tracked() {
        let d = dir("durable");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        s.append(b"a").expect("append");
        s.append(b"b").expect("append");
        let (f, to) = s.unsynced().expect("dup").expect("something to sync");
        f.sync_data().expect("fdatasync");
        s.synced(to);
        s.append(b"c").expect("append");
        assert_eq!(s.pop().expect("pop"), Some(b"a".to_vec()));
        assert!(s.durable());
        assert_eq!(s.pop().expect("pop"), Some(b"b".to_vec()));
        assert!(s.durable());
        assert_eq!(s.pop().expect("pop"), Some(b"c".to_vec()));
        assert!(!s.durable());
        s.sync().expect("sync");
        assert!(s.unsynced().expect("dup").is_none());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn truncated_tail_is_dropped() {
        let d = dir("torn");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        s.append(&frame(1)).expect("append");
        s.append(&frame(2)).expect("append");
        drop(s);
        let seg = fs::read_dir(&d)
            .expect("ls")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .expect("segment")
            .path();
        let len = fs::metadata(&seg).expect("stat").len();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(len - 3)
            .expect("truncate");
        let mut s = Spool::open(&d, 1 << 20).expect("reopen");
        assert_eq!(s.len(), 1);
        assert_eq!(s.pop().expect("pop"), Some(frame(1)));
        s.append(&frame(3)).expect("append");
        assert_eq!(s.pop().expect("pop"), Some(frame(3)));
        let _ = fs::remove_dir_all(&d);
    }

    /// Issue 18: records at rest are root's alone whatever the umask. A spool created under
    /// umask 022 is 0700 (its new parents too) with 0600 segments and head, which another
    /// user cannot read; one an older version left 0755 with 0644 files is narrowed to
    /// 0700/0600 when opened, and its records are still delivered.
    #[test]
    fn spool_is_private_whatever_the_umask() {
        use crate::base::safefs::tests::{Tmp, root};
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777;
        let t = Tmp::new("spool-umask");
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // SAFETY: umask has no preconditions; restored below (022 is the usual one anyway).
        let old = unsafe { libc::umask(0o022) };
        let d = t.0.join("new/spool");
        let opened = Spool::open(&d, 1 << 20).and_then(|mut s| {
            s.append(b"denied: alice's command line")?;
            s.pop()?;
            s.commit(1)?;
            s.append(b"second")?;
            s.sync()
        });
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        opened.expect("spool");
        assert_eq!(mode(&t.0.join("new")), 0o700, "a new parent");
        assert_eq!(mode(&d), 0o700);
        let files: Vec<std::path::PathBuf> = fs::read_dir(&d)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        assert!(files.iter().any(|f| f.ends_with("head")), "{files:?}");
        assert!(
            files
                .iter()
                .any(|f| f.extension().is_some_and(|x| x == "seg"))
        );
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        if root() {
            let seg = files
                .iter()
                .find(|f| f.extension().is_some_and(|x| x == "seg"))
                .expect("segment");
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                .arg(seg)
                .output()
                .expect("setpriv");
            assert!(
                !out.status.success() && out.stdout.is_empty(),
                "nobody read the spool"
            );
        }
        // What an older version left: 0755 and 0644.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in &files {
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let mut s = Spool::open(&d, 1 << 20).expect("reopen");
        assert_eq!(mode(&d), 0o700);
        for f in &files {
            assert_eq!(mode(f), 0o600, "narrowed: {}", f.display());
        }
        assert_eq!(s.pop().expect("pop"), Some(b"second".to_vec()));
    }

    /// Issue 22 item 1: a spool directory an unprivileged user can write is refused before
    /// anything in it is read, truncated or delivered.
    #[test]
    fn spool_in_a_directory_others_own_is_refused() {
        use crate::base::safefs::tests::{Tmp, as_nobody, root};
        use std::os::unix::fs::PermissionsExt as _;
        if !root() {
            eprintln!("not root: the other-user case needs root");
            return;
        }
        let t = Tmp::new("spool-nobody");
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let victim = t.0.join("victim");
        fs::write(&victim, "root's file\n").expect("write");
        let spool = t.0.join("spool");
        fs::create_dir(&spool).expect("mkdir");
        std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).expect("chown");
        let seg = spool.join(format!("{FIRST_ID:020}.seg"));
        let v = victim.display().to_string();
        as_nobody(&["ln", "-s", &v, &seg.display().to_string()]);
        as_nobody(&[
            "ln",
            "-s",
            &v,
            &spool.join("head.tmp").display().to_string(),
        ]);
        let e = Spool::open(&spool, 1 << 20).err().expect("refused");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "root's file\n");
    }

    /// Defense in depth: even in a directory root owns, a segment that is a link (dangling
    /// or not) or a file someone else owns is set aside, never read, truncated or
    /// delivered, and the spool still opens.
    #[test]
    fn foreign_segments_are_set_aside() {
        use crate::base::safefs::tests::{Tmp, root};
        let t = Tmp::new("spool-forged");
        let victim = t.0.join("victim");
        fs::write(&victim, "root's file, 1234567\n").expect("write");
        let d = t.0.join("spool");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        s.append(b"own-1").expect("append");
        s.sync().expect("sync");
        drop(s);
        // A link to a root file with a segment name (would be truncated by the torn-frame
        // repair), and a dangling one.
        std::os::unix::fs::symlink(&victim, d.join(format!("{:020}.seg", FIRST_ID + 1)))
            .expect("symlink");
        std::os::unix::fs::symlink(
            t.0.join("nowhere"),
            d.join(format!("{:020}.seg", FIRST_ID + 2)),
        )
        .expect("symlink");
        if root() {
            // A forged segment another user owns, holding an "agent_stop".
            let forged = d.join(format!("{:020}.seg", FIRST_ID + 3));
            let frame = b"{\"type\":\"agent_stop\"}";
            let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(frame);
            fs::write(&forged, bytes).expect("write");
            std::os::unix::fs::chown(&forged, Some(65534), Some(65534)).expect("chown");
        }
        let mut s = Spool::open(&d, 1 << 20).expect("the spool still opens");
        let mut got = Vec::new();
        while let Some(f) = s.pop().expect("pop") {
            got.push(f);
        }
        assert_eq!(got, vec![b"own-1".to_vec()], "only egressd's own frames");
        assert_eq!(
            fs::read_to_string(&victim).expect("read"),
            "root's file, 1234567\n"
        );
        let aside = fs::read_dir(&d)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rejected-"))
            .count();
        assert_eq!(aside, if root() { 3 } else { 2 });
    }

    fn segments(d: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn damaged_files(d: &Path) -> Vec<PathBuf> {
        fs::read_dir(d)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
            })
            .collect()
    }

    /// Issue 13 item 4: a frame whose bytes changed on disk is found by its checksum; it
    /// and the rest of its segment are set aside (0600) and counted, and every intact frame
    /// before and after it is delivered, new ones too.
    #[test]
    fn damaged_frame_is_set_aside_and_delivery_goes_on() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir("damaged");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        let big = |i: usize| {
            let mut f = frame(i);
            f.resize(1 << 20, b'.');
            f
        };
        // Five frames of 1 MiB per 4 MiB segment: frames 0-3 in the first, 4-7 in the second.
        for i in 0..8 {
            assert!(s.append(&big(i)).expect("append"));
        }
        drop(s);
        let segs = segments(&d);
        assert!(segs.len() >= 2, "{segs:?}");
        // Flip a byte inside frame 1 of the first segment.
        let mut bytes = fs::read(&segs[0]).expect("read");
        let at = MAGIC.len() + 2 * 8 + (1 << 20) + 100;
        bytes[at] ^= 0xff;
        fs::write(&segs[0], &bytes).expect("write");
        let mut s = Spool::open(&d, 1 << 30).expect("reopen");
        assert_eq!(s.pop().expect("pop"), Some(big(0)));
        let mut got = Vec::new();
        while let Some(f) = s.pop().expect("pop") {
            got.push(f);
        }
        let first_of_second = got.first().cloned().expect("later frames");
        assert!(got.len() >= 4 && got.len() < 7, "{}", got.len());
        assert_eq!(first_of_second[..8], big(8 - got.len())[..8]);
        let dmg = s.damaged();
        assert_eq!((dmg.regions, dmg.frames), (1, 7 - got.len() as u64));
        assert!(dmg.bytes > 1 << 20);
        let kept = damaged_files(&d);
        assert_eq!(kept.len(), 1);
        let mode = fs::metadata(&kept[0]).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // New records flow.
        s.append(b"after").expect("append");
        assert_eq!(s.pop().expect("pop"), Some(b"after".to_vec()));
        let _ = fs::remove_dir_all(&d);
    }

    /// An impossible length in the middle of a finished segment (not a torn last frame) is
    /// set aside at open, with what follows it; the next segment is delivered.
    #[test]
    fn garbage_segment_tail_is_set_aside_at_open() {
        let d = dir("garbage");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        for i in 0..6 {
            let mut f = frame(i);
            f.resize(1 << 20, b'.');
            assert!(s.append(&f).expect("append"));
        }
        drop(s);
        let segs = segments(&d);
        let mut bytes = fs::read(&segs[0]).expect("read");
        let second = MAGIC.len() + 8 + (1 << 20);
        bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&segs[0], &bytes).expect("write");
        let mut s = Spool::open(&d, 1 << 30).expect("reopen");
        assert_eq!(s.damaged().regions, 1);
        let mut n = 0;
        while let Some(f) = s.pop().expect("pop") {
            assert!(f.starts_with(b"frame-"));
            n += 1;
        }
        assert_eq!(n, 1 + 6 - 4, "frame 0, then the second segment");
        assert_eq!(damaged_files(&d).len(), 1);
        let _ = fs::remove_dir_all(&d);
    }

    /// Segments written before frames had a checksum are still delivered.
    #[test]
    fn unchecked_segments_of_older_versions_are_read() {
        let d = dir("v1");
        fs::create_dir_all(&d).expect("mkdir");
        let mut v1 = Vec::new();
        for f in [b"old-1".as_slice(), b"old-2"] {
            v1.extend_from_slice(&(f.len() as u32).to_le_bytes());
            v1.extend_from_slice(f);
        }
        fs::write(d.join(format!("{FIRST_ID:020}.seg")), &v1).expect("write");
        // A segment with a lower id, as older versions wrote at exit for frames in flight.
        let mut low = MAGIC.to_vec();
        encode(b"in-flight", &mut low).expect("encode");
        fs::write(d.join(format!("{:020}.seg", FIRST_ID - 1)), &low).expect("write");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        assert_eq!(s.len(), 3);
        s.append(b"new-3").expect("append");
        let mut got = Vec::new();
        while let Some(f) = s.pop().expect("pop") {
            got.push(String::from_utf8(f).expect("utf8"));
        }
        assert_eq!(got, ["in-flight", "old-1", "old-2", "new-3"]);
        assert_eq!(s.damaged(), Damage::default());
        let _ = fs::remove_dir_all(&d);
    }

    /// A full disk: the append fails, the segment keeps only whole frames, everything
    /// written is delivered, and appends work again once there is room.
    #[test]
    fn full_disk_keeps_whole_frames() {
        use crate::base::safefs::tests::root;
        if !root() {
            eprintln!("not root: mounting a small tmpfs needs root");
            return;
        }
        let base = dir("enospc");
        fs::create_dir_all(&base).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(&base)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs here");
            return;
        }
        let d = base.join("spool");
        let mut s = Spool::open(&d, 1 << 30).expect("open");
        let mut written = 0;
        let err = loop {
            match s.append(&[b'x'; 3000]) {
                Ok(_) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "the tmpfs never filled");
        };
        assert!(err.raw_os_error() == Some(libc::ENOSPC), "{err}");
        let mut n = 0;
        while let Some(f) = s.pop().expect("pop") {
            assert_eq!(f.len(), 3000);
            n += 1;
        }
        assert_eq!(n, written);
        s.commit(n).expect("commit");
        assert!(s.append(b"room again").expect("append"));
        assert_eq!(s.pop().expect("pop"), Some(b"room again".to_vec()));
        drop(s);
        let _ = std::process::Command::new("umount").arg(&base).status();
        let _ = fs::remove_dir_all(&base);
    }
}
