//! A sink's bounded on-disk queue of frames, oldest first.
//!
//! Layout of the spool directory: segment files `{id:020}.seg` (ids increase; a segment holds
//! at most [`SEGMENT_BYTES`]) of frames `[length: u32 little-endian][bytes]`, and a `head`
//! file `"{segment id} {byte offset}\n"` naming the next frame to deliver, written at most
//! once a second, when a segment is finished, and at exit. After a crash the frames since the
//! last `head` write are delivered again (duplicates, never losses); a frame cut short by the
//! crash at the end of the last segment is dropped.
//!
//! [`Spool::prepend`] puts frames *before* everything else (records that were in flight when
//! the agent stopped), so delivery after a restart stays in the original order.
//!
//! The directory is opened once through [`crate::safefs`] (created 0700; it and its parents
//! owned by root and not writable by others) and every file in it is opened relative to it
//! with `O_NOFOLLOW`: segments are created 0600; `head` and prepended segments are written
//! as fresh `O_EXCL` temporary files (random names) renamed inside the directory. The modes
//! are explicit, so no umask widens them, and a spool an older version or an operator left
//! wider (a 0755 directory, 0644 segments) is narrowed to 0700 and 0600 when opened: the
//! records (command lines, user names) are root's alone. A name that looks like a segment but is not
//! a regular file owned by root and writable by nobody else (a link, a file another user
//! planted) is never read: it is renamed to `rejected-NAME` and reported.
use std::{
    collections::VecDeque,
    ffi::{OsStr, OsString},
    fs,
    io::{self, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
};

use crate::safefs::{DIR_MODE, FILE_MODE, TrustedDir};

/// Segment size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Id of the first segment of an empty spool; lower ids are left for [`Spool::prepend`].
const FIRST_ID: u64 = 1 << 40;
/// Frame length prefix.
const LEN_BYTES: u64 = 4;
/// Largest frame a segment may claim to hold (a larger length prefix means a damaged file).
const MAX_FRAME: u64 = 64 << 20;

/// An open spool directory.
pub struct Spool {
    dir: TrustedDir,
    max_bytes: u64,
    /// Segment ids, oldest first.
    segs: VecDeque<u64>,
    /// Reader on `segs[0]` and its offset.
    reader: Option<(BufReader<fs::File>, u64)>,
    /// Offset in `segs[0]` where reading starts (from `head`).
    head_offset: u64,
    /// Appender on the last segment and its size.
    writer: Option<(fs::File, u64)>,
    /// Unread bytes (prefixes included) and frames.
    bytes: u64,
    records: u64,
    head_dirty: bool,
}

fn seg_name(id: u64) -> OsString {
    OsString::from(format!("{id:020}.seg"))
}

/// Counts the complete frames of `f` from `offset`; returns (frames, bytes, end of the last
/// complete frame).
fn scan(f: fs::File, offset: u64) -> io::Result<(u64, u64, u64)> {
    let len = f.metadata()?.len();
    let mut r = BufReader::new(f);
    r.seek(SeekFrom::Start(offset))?;
    let (mut n, mut pos) = (0, offset);
    let mut buf = [0u8; 4];
    while pos + LEN_BYTES <= len {
        r.read_exact(&mut buf)?;
        let flen = u64::from(u32::from_le_bytes(buf));
        if flen > MAX_FRAME || pos + LEN_BYTES + flen > len {
            break;
        }
        r.seek_relative(i64::try_from(flen).map_err(io::Error::other)?)?;
        pos += LEN_BYTES + flen;
        n += 1;
    }
    Ok((n, pos - offset, pos))
}

/// Writes `data` as `name` in `dir` atomically (a fresh `O_EXCL` temporary, renamed).
fn replace(dir: &TrustedDir, name: &str, data: &[u8]) -> io::Result<()> {
    dir.replace(OsStr::new(name), data, FILE_MODE)
}

impl Spool {
    /// Opens (creating) the spool in `dir` with a size limit of `max_bytes`, recovering what
    /// a previous run left there.
    ///
    /// # Errors
    /// The directory cannot be created or read, or fails the ownership and mode checks of
    /// [`crate::safefs`]; a segment cannot be read or repaired.
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
            segs: ids.iter().copied().collect(),
            reader: None,
            head_offset: if ids.first() == Some(&head_id) {
                head_off
            } else {
                0
            },
            writer: None,
            bytes: 0,
            records: 0,
            head_dirty: false,
        };
        let last = ids.len().saturating_sub(1);
        for (i, id) in ids.iter().enumerate() {
            let from = if i == 0 { s.head_offset } else { 0 };
            let f = s.dir.read(&seg_name(*id))?;
            let len = f.metadata()?.len();
            let (n, b, end) = scan(f, from)?;
            s.records += n;
            s.bytes += b;
            if i == last && end < len {
                // A frame cut short by a crash.
                s.dir.write(&seg_name(*id))?.set_len(end)?;
            }
        }
        Ok(s)
    }

    /// Frames waiting.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// No frame waiting.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes waiting (length prefixes included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a frame; `Ok(false)` when it does not fit under the size limit (the caller
    /// counts it as dropped).
    ///
    /// # Errors
    /// Disk errors.
    pub fn append(&mut self, frame: &[u8]) -> io::Result<bool> {
        let need = LEN_BYTES + frame.len() as u64;
        if self.bytes + need > self.max_bytes {
            return Ok(false);
        }
        let rotate = match &self.writer {
            None => true,
            Some((_, size)) => *size >= SEGMENT_BYTES,
        };
        if rotate {
            let id = self.segs.back().map_or(FIRST_ID, |l| l + 1);
            let f = self.dir.append(&seg_name(id), FILE_MODE)?;
            let size = f.metadata()?.len();
            if self.segs.back() != Some(&id) {
                self.segs.push_back(id);
            }
            self.writer = Some((f, size));
        }
        let mut buf = Vec::with_capacity(need as usize);
        buf.extend_from_slice(
            &u32::try_from(frame.len())
                .map_err(io::Error::other)?
                .to_le_bytes(),
        );
        buf.extend_from_slice(frame);
        if let Some((f, size)) = self.writer.as_mut() {
            f.write_all(&buf)?;
            *size += need;
        }
        self.bytes += need;
        self.records += 1;
        Ok(true)
    }

    /// Takes the oldest frame.
    ///
    /// # Errors
    /// Disk errors (the frame stays in the spool).
    pub fn pop(&mut self) -> io::Result<Option<Vec<u8>>> {
        while self.records > 0 {
            let Some(&id) = self.segs.front() else {
                return Ok(None);
            };
            if self.reader.is_none() {
                let mut f = self.dir.read(&seg_name(id))?;
                f.seek(SeekFrom::Start(self.head_offset))?;
                self.reader = Some((BufReader::new(f), self.head_offset));
            }
            let Some((r, off)) = self.reader.as_mut() else {
                continue;
            };
            let mut len = [0u8; 4];
            match r.read_exact(&mut len) {
                Ok(()) => {
                    let n = u32::from_le_bytes(len) as usize;
                    if n as u64 > MAX_FRAME {
                        return Err(io::Error::other(format!(
                            "spool segment {}: damaged frame length {n}",
                            id
                        )));
                    }
                    let mut frame = vec![0u8; n];
                    r.read_exact(&mut frame)?;
                    *off += LEN_BYTES + n as u64;
                    self.head_offset = *off;
                    self.bytes = self.bytes.saturating_sub(LEN_BYTES + n as u64);
                    self.records -= 1;
                    self.head_dirty = true;
                    return Ok(Some(frame));
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.segs.len() == 1 {
                        // The writer's segment: nothing more yet (should not happen while
                        // records > 0).
                        return Ok(None);
                    }
                    // Finished segment: delete it and go on with the next.
                    self.reader = None;
                    self.segs.pop_front();
                    self.head_offset = 0;
                    self.dir.remove(&seg_name(id))?;
                    self.head_dirty = true;
                    self.sync()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Puts `frames` (oldest first) before everything in the spool, ignoring the size limit
    /// (they were accepted before).
    ///
    /// # Errors
    /// Disk errors.
    pub fn prepend(&mut self, frames: &[Vec<u8>]) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for f in frames {
            buf.extend_from_slice(
                &u32::try_from(f.len())
                    .map_err(io::Error::other)?
                    .to_le_bytes(),
            );
            buf.extend_from_slice(f);
        }
        let added = buf.len() as u64;
        let id = match self.segs.front().copied() {
            Some(front) => {
                // Move the unread rest of the front segment behind the new frames, so the
                // head is at offset 0 of the new front segment.
                let mut f = self.dir.read(&seg_name(front))?;
                f.seek(SeekFrom::Start(self.head_offset))?;
                f.read_to_end(&mut buf)?;
                self.reader = None;
                if self.segs.len() == 1 {
                    self.writer = None;
                }
                let id = front - 1;
                self.dir.replace(&seg_name(id), &buf, FILE_MODE)?;
                self.dir.remove(&seg_name(front))?;
                self.segs.pop_front();
                id
            }
            None => {
                self.dir.replace(&seg_name(FIRST_ID), &buf, FILE_MODE)?;
                FIRST_ID
            }
        };
        self.segs.push_front(id);
        self.head_offset = 0;
        self.bytes += added;
        self.records += frames.len() as u64;
        self.head_dirty = true;
        self.sync()
    }

    /// Writes the `head` file if it changed (atomically: a fresh temporary file renamed
    /// inside the directory) and syncs the segments to disk.
    ///
    /// # Errors
    /// Disk errors.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.head_dirty {
            return Ok(());
        }
        if let Some((f, _)) = &self.writer {
            f.sync_data()?;
        }
        let id = self.segs.front().copied().unwrap_or(0);
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
        assert!(s.append(&[0u8; 40]).expect("append"));
        assert!(s.append(&[1u8; 40]).expect("append"));
        assert!(!s.append(&[2u8; 40]).expect("append"), "over the limit");
        assert_eq!(s.bytes(), 88);
        assert_eq!(s.pop().expect("pop"), Some(vec![0u8; 40]));
        assert!(s.append(&[3u8; 40]).expect("append"), "room again");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn prepend_keeps_order_and_survives_reopen() {
        let d = dir("prepend");
        let mut s = Spool::open(&d, 1 << 20).expect("open");
        for i in 0..10 {
            s.append(&frame(i)).expect("append");
        }
        for i in 0..3 {
            assert_eq!(s.pop().expect("pop"), Some(frame(i)));
        }
        s.prepend(&[frame(100), frame(101)]).expect("prepend");
        s.append(&frame(10)).expect("append");
        s.sync().expect("sync");
        drop(s);
        let mut s = Spool::open(&d, 1 << 20).expect("reopen");
        let mut got = Vec::new();
        while let Some(f) = s.pop().expect("pop") {
            got.push(f);
        }
        let mut want = vec![frame(100), frame(101)];
        want.extend((3..11).map(frame));
        assert_eq!(got, want);
        // Prepend into an empty spool.
        s.prepend(&[frame(7)]).expect("prepend");
        assert_eq!(s.pop().expect("pop"), Some(frame(7)));
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
        use crate::safefs::tests::{Tmp, root};
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
        use crate::safefs::tests::{Tmp, as_nobody, root};
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
        use crate::safefs::tests::{Tmp, root};
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
}
