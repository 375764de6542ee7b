//! A file, appended to (created with the sink's `mode`, 0600 by default, if missing). For
//! logrotate: rename the file, then send the agent SIGUSR1 (`postrotate kill -USR1 $(pidof
//! egressd)`); the sink finishes the record it is writing, flushes, closes and opens the path
//! again, so no record is split across files or lost.
//!
//! Every open goes through [`crate::base::safefs`]: the directory must be owned by root and not
//! writable by others (nor its ancestors, sticky ones like `/tmp` aside), and the file is
//! opened relative to it with `O_NOFOLLOW`; a link, a file someone else owns or one others
//! can write is refused, naming the path.
//!
//! Write-behind: the sink starts the writeback of every [`WINDOW`] it appends and drops the
//! window before it from the page cache once written back ([`WriteBehind`]), so a flood of
//! records occupies about two windows of page cache instead of growing it by gigabytes of
//! dirty pages that the kernel's flusher writes back later in one burst.
use std::{
    io::{self, Write},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::buffered::{Buffered, Opener};

/// An append-only file sink.
pub type File = Buffered<Path>;

/// The path a [`File`] sink appends to, and the mode it is created with.
pub struct Path(PathBuf, u32);

impl File {
    /// A sink for `path` (opened on first use), created with mode 0600 if missing.
    pub fn new(path: PathBuf) -> Self {
        Self::with_mode(path, crate::base::safefs::FILE_MODE)
    }

    /// A sink for `path` (opened on first use), created with `mode` if missing.
    pub fn with_mode(path: PathBuf, mode: u32) -> Self {
        Self::with_opener(Path(path, mode))
    }
}

impl Opener for Path {
    type Writer = WriteBehind;
    const WHAT: &'static str = "file";

    fn open(&mut self, resume: Option<u64>) -> io::Result<WriteBehind> {
        let mut f = crate::base::safefs::open_append(&self.0, self.1)?;
        let mut end = f.metadata()?.len();
        // `resume`: this sink holds the rest of the record the file ends with.
        if end > 0 && resume != Some(end) {
            // A burst's writes end inside a record (see `buffered::CHUNK`): a run that died
            // in one left part of a record. The next record starts on a line of its own.
            let mut last = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, end - 1)?;
            if last[0] != b'\n' {
                f.write_all(b"\n")?;
                end += 1;
                tracing::warn!(
                    path = %self.0.display(),
                    "file sink: the file ended inside a record (a run stopped, or a write failed, \
                     while writing it); a line break was added so the next record starts on its own line"
                );
            }
        }
        // Appends go to the end: offsets count from the length at open.
        Ok(WriteBehind {
            file: f,
            end,
            started: end,
            dropped: end,
            on: true,
            paused: 0,
        })
    }

    fn offset(w: &WriteBehind) -> u64 {
        w.end
    }
}

/// Bytes appended between two writeback starts (8 MiB).
pub const WINDOW: u64 = 8 << 20;

/// A start of writeback slower than this means the device's queue is full.
const BUSY: Duration = Duration::from_millis(20);

/// Windows left to the page cache alone after a [`BUSY`] start (128 MiB).
const PAUSE_WINDOWS: u32 = 16;

/// A file opened for appending, with write-behind: whenever [`WINDOW`] bytes were appended
/// since the last start, their writeback is started (`sync_file_range(2)` with
/// `SYNC_FILE_RANGE_WRITE`: queued to the device, not waited for, though queuing itself
/// waits when the device's queue is full) and the window before them, whose writeback was
/// started one window earlier, is dropped from the page cache (`posix_fadvise(2)`
/// `POSIX_FADV_DONTNEED`; pages still dirty or under writeback stay, nothing is lost).
/// Offsets are bytes from the start of the file, counted from its length at open (the file
/// is only appended to).
///
/// Why: without it a flood writes gigabytes of dirty page cache, each page a fresh one,
/// and the flusher writes them back in one burst seconds later; with it the same few
/// megabytes of pages are reused, already in memory. Measured here (1.3 GB in 64 KiB
/// writes, CPU of the whole machine, writeback included): 0.5-0.6 s against 2.3-3.6 s
/// without, the difference being pages the hypervisor had taken back (virtio-balloon free
/// page reporting) and faults in again at the first write of each. The costs: a reader of
/// the file (a log shipper) more than about two windows behind the writer reads from disk;
/// and a disk slower than the records would hold the sink to its pace, where the page cache
/// would have absorbed a burst: so when starting a window's writeback takes longer than
/// [`BUSY`], the next [`PAUSE_WINDOWS`] windows are left to the page cache as without
/// write-behind.
///
/// Both calls are hints: offsets made wrong by someone else truncating the file
/// (logrotate's `copytruncate`) only make them useless until the next open. On a file that
/// supports neither call, the first failure turns write-behind off for this open.
pub struct WriteBehind {
    file: std::fs::File,
    /// Offset after the last byte appended.
    end: u64,
    /// Start of the bytes whose writeback is not started yet.
    started: u64,
    /// Start of the bytes not yet dropped from the page cache.
    dropped: u64,
    /// Off after a call failed.
    on: bool,
    /// Windows still left alone after a [`BUSY`] start.
    paused: u32,
}

impl WriteBehind {
    /// Starts the writeback of `[started, end)` and drops `[dropped, started)`.
    fn behind(&mut self) {
        if self.paused > 0 {
            self.paused -= 1;
            self.started = self.end;
            self.dropped = self.end;
            return;
        }
        let fd = self.file.as_raw_fd();
        let len = |a: u64, b: u64| i64::try_from(b - a).unwrap_or(i64::MAX);
        let at = |a: u64| i64::try_from(a).unwrap_or(i64::MAX);
        let t = Instant::now();
        // SAFETY: plain syscalls on an open descriptor; offsets and lengths are in range.
        let rc = unsafe {
            libc::sync_file_range(
                fd,
                at(self.started),
                len(self.started, self.end),
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            self.off("sync_file_range", io::Error::last_os_error());
            return;
        }
        if t.elapsed() > BUSY {
            self.paused = PAUSE_WINDOWS;
            tracing::debug!(took = ?t.elapsed(), "file sink: the disk is busy; write-behind paused");
        }
        if self.started > self.dropped {
            // SAFETY: as above.
            let rc = unsafe {
                libc::posix_fadvise(
                    fd,
                    at(self.dropped),
                    len(self.dropped, self.started),
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            if rc != 0 {
                self.off("posix_fadvise", io::Error::from_raw_os_error(rc));
                return;
            }
        }
        self.dropped = self.started;
        self.started = self.end;
    }

    /// Counts `n` bytes appended; starts the next window's writeback when one is full.
    fn wrote(&mut self, n: usize) {
        self.end += n as u64;
        if self.on && self.end - self.started >= WINDOW {
            self.behind();
        }
    }

    fn off(&mut self, call: &str, e: io::Error) {
        tracing::debug!(call, error = %e, "file sink: write-behind off for this file");
        self.on = false;
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `f` between the page-aligned offsets `from` and `to` that are in the page
    /// cache (`mincore(2)` of a read-only mapping).
    fn resident(f: &std::fs::File, from: u64, to: u64) -> usize {
        let len = usize::try_from(to - from).expect("len");
        // SAFETY: a fresh shared read-only mapping of an open file, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                i64::try_from(from).expect("offset"),
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        let mut v = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `p` maps `len` bytes; `v` has one byte per page.
        let rc = unsafe { libc::mincore(p, len, v.as_mut_ptr()) };
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        v.iter().filter(|b| **b & 1 != 0).count()
    }

    /// `dir`, made afresh with mode 0755 whatever the umask (the sink refuses a directory
    /// others can write).
    fn private_dir(dir: PathBuf) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn a_record_cut_off_by_a_crash_does_not_swallow_the_next() {
        use super::super::Transport as _;
        let dir =
            private_dir(std::env::temp_dir().join(format!("egressd-torn-{}", std::process::id())));
        let path = dir.join("events.log");
        std::fs::write(&path, b"{\"whole\":1}\n{\"cut\":").expect("seed");
        let mut sink = File::new(path.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        sink.open(deadline).expect("open");
        sink.send(b"{\"next\":2}\n", deadline).expect("send");
        sink.close();
        let got = std::fs::read_to_string(&path).expect("read");
        assert_eq!(got, "{\"whole\":1}\n{\"cut\":\n{\"next\":2}\n");
        // A file that ends with a whole line is appended to as it is.
        sink.open(deadline).expect("open again");
        sink.send(b"{\"last\":3}\n", deadline).expect("send");
        sink.close();
        let got = std::fs::read_to_string(&path).expect("read");
        assert!(got.ends_with("{\"next\":2}\n{\"last\":3}\n"), "{got:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn written_back_windows_leave_the_page_cache() {
        // In the build's directory: /tmp may be a tmpfs, whose pages never leave memory.
        let dir = private_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(format!("test-write-behind-{}", std::process::id())),
        );
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a zeroed out-parameter of plain integers.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out-parameter.
        let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut fs) };
        assert_eq!(rc, 0, "statfs: {}", io::Error::last_os_error());
        // Filesystems whose pages live in the page cache (not tmpfs, ZFS's ARC, NFS...).
        if ![
            libc::EXT4_SUPER_MAGIC,
            libc::XFS_SUPER_MAGIC,
            libc::BTRFS_SUPER_MAGIC,
        ]
        .contains(&fs.f_type)
        {
            eprintln!(
                "skipped: {} is on a filesystem of type {:#x}, not ext4, XFS or Btrfs",
                dir.display(),
                fs.f_type
            );
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let path = dir.join("events.log");
        // Offsets count from the length at open.
        std::fs::write(&path, b"before\n").expect("seed");
        let mut w = Path(path.clone(), crate::base::safefs::FILE_MODE)
            .open(None)
            .expect("open");
        let chunk: Vec<u8> = (0..64usize << 10).map(|i| b'a' + (i % 26) as u8).collect();
        let per = usize::try_from(WINDOW).expect("window") / chunk.len();
        for _ in 0..per {
            w.write_all(&chunk).expect("write");
        }
        // The first window is on disk: clean, so the next window's start can drop it.
        w.file.sync_all().expect("sync");
        for _ in 0..per {
            w.write_all(&chunk).expect("write");
        }
        let page = 4096;
        // Page 0 holds bytes from before the open: never dropped.
        let first = resident(&w.file, page, WINDOW);
        let second = resident(&w.file, WINDOW + page, 2 * WINDOW);
        assert_eq!(first, 0, "the first window, written back, is still cached");
        // Not dropped by write-behind (memory pressure alone could take a few).
        let pages = usize::try_from((WINDOW - page) / page).expect("pages");
        assert!(
            second > pages / 2,
            "the second window, not written back yet, left the cache: {second} of {pages} pages"
        );
        assert!(w.on, "write-behind turned itself off on a regular file");
        drop(w);
        let got = std::fs::read(&path).expect("read");
        assert_eq!(&got[..7], b"before\n");
        assert_eq!(got.len(), 7 + 2 * per * chunk.len());
        assert!(
            got[7..].chunks(chunk.len()).all(|c| c == chunk),
            "content changed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
