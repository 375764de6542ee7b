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
mod tests;
