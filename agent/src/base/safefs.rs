//! Every path egressd (root) writes, and every policy file it trusts, goes through here, the
//! way sshd's `StrictModes` and systemd's `chase()` treat them:
//!
//! - The path is walked from `/` one component at a time with `openat(2)` and `O_NOFOLLOW`.
//!   Every directory on the way must be owned by root (or by the user egressd runs as) and
//!   not writable by group or others, except that an *ancestor* may be a sticky directory
//!   such as `/tmp` (others cannot rename or remove root's entries there). A symbolic link
//!   on the way is followed only when root (or that user) owns it; links others own (the
//!   `/tmp/x -> /etc` trick) are refused. Directories on a read-only mount pass whatever
//!   their mode (nobody can write there; a Kubernetes ConfigMap volume is one).
//! - The directory that holds the file must not be writable by group or others at all,
//!   sticky or not: whoever can create names in it could plant a link or a file there.
//! - The file itself is opened relative to that directory's descriptor with `O_NOFOLLOW |
//!   O_CLOEXEC` (and `O_EXCL` for temporary files), created with an explicit mode, and then
//!   checked through its descriptor: a regular file, owned by root (or that user), not
//!   writable by group or others, and, when opened for writing, with no other hard link
//!   (a second name could be a system file elsewhere on the filesystem).
//!
//! Anything else is refused with an error that names the path and what is wrong with it.
//! Renames and removals happen inside the checked directory (`renameat`, `unlinkat`), so no
//! path is looked up twice.
use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Component, Path, PathBuf},
};

/// Mode of directories egressd creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files egressd creates unless configured otherwise (spool segments, sink files).
pub const FILE_MODE: u32 = 0o600;
/// Symbolic links followed in one walk at most (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The effective user id: the owner trusted besides root.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// An error naming `path` and what is wrong with it (`PermissionDenied`).
fn refused(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {what}; refusing it", path.display()),
    )
}

/// `err` with `path` in front.
fn at(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("NUL byte in a file name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is open.
    cvt(unsafe { libc::fstat(fd, &raw mut st) })?;
    Ok(st)
}

/// Clears `O_NONBLOCK` on the open descriptor `fd`.
fn clear_nonblock(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we hold open.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) })?;
    Ok(())
}

fn lstatat(dir: libc::c_int, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: fstatat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `name` is a valid C string.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn openat(dir: libc::c_int, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the kernel returns a new descriptor we own.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_only_mount(fd: libc::c_int) -> bool {
    // SAFETY: fstatvfs writes into the zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is open.
    let r = unsafe { libc::fstatvfs(fd, &raw mut st) };
    r == 0 && st.f_flag & libc::ST_RDONLY != 0
}

fn kind(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// Whether a directory with `st` may be passed through (`last`: it holds the file).
fn check_dir(path: &Path, fd: libc::c_int, st: &libc::stat, last: bool) -> io::Result<()> {
    if kind(st.st_mode) != libc::S_IFDIR {
        return Err(refused(path, "not a directory"));
    }
    if !trusted_owner(st.st_uid) {
        return Err(refused(
            path,
            format!("directory owned by uid {}, not by root", st.st_uid),
        ));
    }
    let writable = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if writable && (last || !sticky) && !read_only_mount(fd) {
        return Err(refused(
            path,
            format!(
                "directory writable by {} (mode {:04o}); make it owned by root and not \
                 writable by others (chmod go-w)",
                if st.st_mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Whether a file with `st` may be written or trusted.
/// A file egressd writes or narrows the mode of must have no other name: a second hard link
/// may be outside the checked directory (a system file), whose contents or mode would change.
fn check_single_link(path: &Path, nlink: impl Into<u64>) -> io::Result<()> {
    let nlink = nlink.into();
    if nlink > 1 {
        return Err(refused(
            path,
            format!(
                "file with {nlink} hard links (another name of it may be elsewhere); give it \
                 a name of its own"
            ),
        ));
    }
    Ok(())
}

fn check_file(path: &Path, st: &libc::stat) -> io::Result<()> {
    if kind(st.st_mode) != libc::S_IFREG {
        return Err(refused(path, "not a regular file"));
    }
    if !trusted_owner(st.st_uid) {
        return Err(refused(
            path,
            format!("file owned by uid {}, not by root", st.st_uid),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refused(
            path,
            format!(
                "file writable by group or others (mode {:04o}); chmod go-w",
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Walks `path` from `/` (see the module docs). With `file`, the last component may be a
/// file (or a link to one): the walk then stops before it and returns its name. With
/// `create`, missing directories are made with [`DIR_MODE`].
fn walk(path: &Path, file: bool, create: bool) -> io::Result<(TrustedDir, Option<OsString>)> {
    let abs = std::path::absolute(path).map_err(|e| at(path, e))?;
    let root = openat(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    check_dir(
        Path::new("/"),
        root.as_raw_fd(),
        &fstat(root.as_raw_fd())?,
        false,
    )?;
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut todo: std::collections::VecDeque<OsString> = std::collections::VecDeque::new();
    let push_components = |todo: &mut std::collections::VecDeque<OsString>, p: &Path| {
        let parts: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect();
        for part in parts.into_iter().rev() {
            todo.push_front(part);
        }
    };
    push_components(&mut todo, &abs);
    let mut links = 0;
    let mut name_out = None;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let Some((cur, cur_path)) = stack.last() else {
            break;
        };
        let here = cur_path.join(&name);
        let c = cstr(&name)?;
        let st = match lstatat(cur.as_raw_fd(), &c) {
            Ok(st) => st,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && create && !(file && todo.is_empty()) =>
            {
                // SAFETY: `c` is a valid C string.
                let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), DIR_MODE) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(at(&here, e));
                    }
                } else {
                    tracing::info!(dir = %here.display(), mode = "0700", "created directory");
                }
                todo.push_front(name);
                continue;
            }
            Err(e) => return Err(at(&here, e)),
        };
        match kind(st.st_mode) {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(refused(&here, "too many levels of symbolic links"));
                }
                if !trusted_owner(st.st_uid) {
                    return Err(refused(
                        &here,
                        format!("symbolic link owned by uid {}, not by root", st.st_uid),
                    ));
                }
                let target = readlinkat(cur.as_raw_fd(), &c).map_err(|e| at(&here, e))?;
                if target.is_absolute() {
                    stack.truncate(1);
                }
                push_components(&mut todo, &target);
            }
            libc::S_IFDIR => {
                let fd = openat(
                    cur.as_raw_fd(),
                    &c,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| at(&here, e))?;
                check_dir(&here, fd.as_raw_fd(), &fstat(fd.as_raw_fd())?, false)?;
                stack.push((fd, here));
            }
            _ if file && todo.is_empty() => {
                name_out = Some(name);
            }
            _ => return Err(refused(&here, "not a directory")),
        }
    }
    let Some((fd, dir)) = stack.pop() else {
        return Err(refused(path, "empty path"));
    };
    if file && name_out.is_none() {
        return Err(refused(path, "a directory, not a file"));
    }
    check_dir(&dir, fd.as_raw_fd(), &fstat(fd.as_raw_fd())?, true)?;
    // An O_PATH descriptor cannot be listed: reopen the checked directory itself.
    let fd = openat(fd.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| at(&dir, e))?;
    Ok((TrustedDir { fd, path: dir }, name_out))
}

fn readlinkat(dir: libc::c_int, name: &CStr) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the kernel writes at most `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(n);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// A directory checked as the module docs say, held open: files in it are opened, created,
/// renamed and removed relative to its descriptor.
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl TrustedDir {
    /// Opens the existing directory `path`.
    ///
    /// # Errors
    /// A component is missing, not a directory, or fails the ownership and mode checks.
    pub fn open(path: &Path) -> io::Result<Self> {
        walk(path, false, false).map(|(d, _)| d)
    }

    /// Opens `path`, creating missing directories with mode 0700.
    ///
    /// # Errors
    /// As [`Self::open`]; a directory cannot be created.
    pub fn create(path: &Path) -> io::Result<Self> {
        walk(path, false, true).map(|(d, _)| d)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.fd.as_fd()
    }

    /// Opens the directory `name` in this one (`O_NOFOLLOW`: a link is refused) and checks
    /// it as the directory that holds files.
    ///
    /// # Errors
    /// Missing (`NotFound`), a link, not a directory, or it fails the checks.
    pub fn subdir(&self, name: &OsStr) -> io::Result<TrustedDir> {
        let p = self.name_path(name);
        let c = cstr(name)?;
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => refused(&p, "not a directory (a symbolic link?)"),
            _ => at(&p, e),
        })?;
        check_dir(&p, fd.as_raw_fd(), &fstat(fd.as_raw_fd())?, true)?;
        Ok(TrustedDir { fd, path: p })
    }

    /// Removes the empty directory `name` in this one.
    ///
    /// # Errors
    /// As `unlinkat(2)` with `AT_REMOVEDIR`.
    pub fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid C string relative to our directory.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(|_| ())
            .map_err(|e| at(&self.name_path(name), e))
    }

    /// Takes every permission bit beyond `mode` off this directory (`fchmod` on a descriptor
    /// of it; never adds one). For directories an older version or an operator made with a
    /// wider mode (0755 under the usual umask): what egressd keeps in them is root's alone.
    /// Returns whether the mode changed.
    ///
    /// # Errors
    /// As `openat(2)` of `.` and `fchmod(2)`.
    pub fn restrict(&self, mode: u32) -> io::Result<bool> {
        let c = cstr(OsStr::new("."))?;
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| at(&self.path, e))?;
        restrict_fd(&self.path, File::from(fd), mode)
    }

    /// Takes every permission bit beyond `mode` off the file `name` in this directory
    /// (opened with `O_NOFOLLOW` and checked like [`Self::read`]; never adds one). Returns
    /// whether the mode changed.
    ///
    /// # Errors
    /// As [`Self::read`]; `fchmod(2)`.
    pub fn restrict_file(&self, name: &OsStr, mode: u32) -> io::Result<bool> {
        let f = self.open_checked(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        restrict_fd(&self.name_path(name), f, mode)
    }

    /// The directory's path as it was resolved (links followed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn name_path(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn open_checked(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let p = self.name_path(name);
        let c = cstr(name)?;
        // O_NONBLOCK: opening a FIFO (or a device) put in the file's place would otherwise
        // wait for a writer, holding up the daemon's loop and its signals; only a regular
        // file gets past `check_file`, which then reads and writes blocking as usual.
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            flags | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            mode,
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused(&p, "a symbolic link")
            } else {
                at(&p, e)
            }
        })?;
        let st = fstat(fd.as_raw_fd())?;
        check_file(&p, &st)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            check_single_link(&p, st.st_nlink)?;
        }
        clear_nonblock(fd.as_raw_fd()).map_err(|e| at(&p, e))?;
        Ok(File::from(fd))
    }

    /// Opens `name` for appending, creating it with `mode` if missing.
    ///
    /// # Errors
    /// `name` is a link, not a regular file, owned by someone else or writable by others.
    pub fn append(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_checked(name, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, mode)
    }

    /// As [`Self::append`], readable too (a file sink reads the end a crash may have left).
    ///
    /// # Errors
    /// As [`Self::append`].
    pub fn append_readable(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_checked(name, libc::O_RDWR | libc::O_APPEND | libc::O_CREAT, mode)
    }

    /// Opens the existing `name` for reading.
    ///
    /// # Errors
    /// Missing (`NotFound`), or as [`Self::append`].
    pub fn read(&self, name: &OsStr) -> io::Result<File> {
        self.open_checked(name, libc::O_RDONLY, 0)
    }

    /// Opens the existing `name` for writing (not appending, not truncating).
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn write(&self, name: &OsStr) -> io::Result<File> {
        self.open_checked(name, libc::O_WRONLY, 0)
    }

    /// Creates `name`, which must not exist (`O_EXCL`), with `mode`.
    ///
    /// # Errors
    /// `name` exists (a link included), or the file cannot be created.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_checked(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Writes `data` to `name` atomically: a fresh temporary file (`O_EXCL`, `mode`) synced
    /// and renamed over `name` inside this directory.
    ///
    /// # Errors
    /// Disk errors; the temporary name exists and cannot be removed.
    pub fn replace(&self, name: &OsStr, data: &[u8], mode: u32) -> io::Result<()> {
        self.replace_with(name, mode, &mut |f| f.write_all(data))
    }

    /// [`TrustedDir::replace`] with the contents written by `write` (buffered), so that a
    /// large file need not be in memory first.
    ///
    /// # Errors
    /// As [`TrustedDir::replace`]; whatever `write` returns.
    pub fn replace_with(
        &self,
        name: &OsStr,
        mode: u32,
        write: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<()> {
        use std::io::Write as _;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".tmp{}-{:016x}",
            std::process::id(),
            fastrand_u64()
        ));
        let res = (|| {
            let f = self.create_new(&tmp, mode)?;
            let mut w = io::BufWriter::with_capacity(1 << 16, f);
            write(&mut w)?;
            w.flush()?;
            let f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
            f.sync_all()?;
            self.rename(&tmp, name)
        })();
        if res.is_err() {
            let _ = self.remove(&tmp);
        }
        res
    }

    /// Renames `from` to `to`, both in this directory (a link named `to` is replaced, never
    /// followed).
    ///
    /// # Errors
    /// As `renameat(2)`.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let d = self.fd.as_raw_fd();
        // SAFETY: valid C strings; both names are relative to the same directory.
        cvt(unsafe { libc::renameat(d, f.as_ptr(), d, t.as_ptr()) })
            .map(|_| ())
            .map_err(|e| at(&self.name_path(from), e))
    }

    /// Removes the name `name` (a file or a link; never what a link points to).
    ///
    /// # Errors
    /// As `unlinkat(2)`.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid C string relative to our directory.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
            .map(|_| ())
            .map_err(|e| at(&self.name_path(name), e))
    }

    /// `lstat` of `name` (links not followed).
    ///
    /// # Errors
    /// As `fstatat(2)`.
    pub fn lstat(&self, name: &OsStr) -> io::Result<libc::stat> {
        lstatat(self.fd.as_raw_fd(), &cstr(name)?).map_err(|e| at(&self.name_path(name), e))
    }

    /// Whether `name` would pass the checks of [`Self::read`] (a regular file owned by root,
    /// not writable by others), without opening it: `Err` says why not.
    ///
    /// # Errors
    /// See above.
    pub fn check_entry(&self, name: &OsStr) -> io::Result<()> {
        self.checked_entry(name).map(drop)
    }

    /// [`Self::check_entry`], returning the entry's `lstat`.
    fn checked_entry(&self, name: &OsStr) -> io::Result<libc::stat> {
        let st = self.lstat(name)?;
        if kind(st.st_mode) == libc::S_IFLNK {
            return Err(refused(&self.name_path(name), "a symbolic link"));
        }
        check_file(&self.name_path(name), &st)?;
        Ok(st)
    }

    /// Whether egressd could write `name` (it passes [`Self::check_entry`] and has no other
    /// hard link, as [`Self::append`] requires), without opening it.
    ///
    /// # Errors
    /// See above.
    pub fn check_writable(&self, name: &OsStr) -> io::Result<()> {
        let st = self.checked_entry(name)?;
        check_single_link(&self.name_path(name), st.st_nlink)
    }

    /// The names in the directory (`.` and `..` left out), unsorted.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let fd = openat(
            self.fd.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        // SAFETY: fdopendir takes ownership of the descriptor on success.
        let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if dir.is_null() {
            return Err(at(&self.path, io::Error::last_os_error()));
        }
        std::mem::forget(fd);
        let mut out = Vec::new();
        loop {
            // SAFETY: `dir` is a valid DIR* used by this thread only.
            let ent = unsafe { libc::readdir64(dir) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated string inside the entry.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(OsStr::from_bytes(b).to_os_string());
            }
        }
        // SAFETY: closes the DIR* and its descriptor.
        unsafe { libc::closedir(dir) };
        Ok(out)
    }

    /// Syncs the directory (after renames, so they survive a crash).
    ///
    /// # Errors
    /// As `fsync(2)`.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: `fd` is open.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(|_| ())
    }
}

/// A 64-bit random number for temporary names (from the kernel, never fails in practice).
fn fastrand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        u64::from(std::process::id()) << 32
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| u64::from(d.subsec_nanos()))
    }
}

/// `fchmod`s `f` to `mode` when it has a permission bit `mode` lacks (set-id and sticky bits
/// included); logs the change. A regular file with another hard link is refused, narrowed
/// or not: its other name may be a system file.
fn restrict_fd(path: &Path, f: File, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = f.metadata().map_err(|e| at(path, e))?;
    if meta.is_file() {
        check_single_link(path, meta.nlink())?;
    }
    let now = meta.permissions().mode() & 0o7777;
    if now & !mode == 0 {
        return Ok(false);
    }
    let new = now & mode;
    f.set_permissions(std::fs::Permissions::from_mode(new))
        .map_err(|e| at(path, e))?;
    tracing::info!(path = %path.display(), was = %format!("{now:04o}"), now = %format!("{new:04o}"), "mode narrowed");
    Ok(true)
}

/// Opens the existing file `path` for appending, and reading (creating it with `mode` if
/// missing) in a [`TrustedDir`]: what a file sink writes to. An existing file with
/// permission bits beyond `mode` (one logrotate's `create 0644` made) is narrowed to
/// `mode`, never widened.
///
/// # Errors
/// The directory or the file fails the checks (the error names it and why).
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let (dir, name) = split(path)?;
    let f = TrustedDir::open(dir)?.append_readable(name, mode)?;
    restrict_fd(path, f.try_clone().map_err(|e| at(path, e))?, mode)?;
    Ok(f)
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => Ok((
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        )),
        _ => Err(refused(path, "not a file name")),
    }
}

/// Writes `data` to `path` atomically: a temporary file with a random name is created in
/// the same directory with `O_CREAT | O_EXCL | O_NOFOLLOW` and `mode`, synced, and renamed
/// over `path` relative to the directory's descriptor (a link at `path` is replaced, never
/// followed). As root the directory must pass the checks of the module docs; another user
/// may write where the system lets them (a sticky `/tmp` included: the temporary name is
/// unpredictable and never opened twice).
///
/// # Errors
/// The directory fails the checks (as root), or a disk error.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let dir = if euid() == 0 {
        TrustedDir::open(dir)?
    } else {
        let c = cstr(dir.as_os_str())?;
        TrustedDir {
            fd: openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| at(dir, e))?,
            path: dir.to_path_buf(),
        }
    };
    dir.replace(name, data, mode)?;
    dir.sync()
}

/// Reads the file `path` that root is to trust (a policy file): links are followed only
/// when root owns them, every directory on the way passes the checks of the module docs,
/// and the file must be a regular file owned by root and not writable by group or others.
///
/// # Errors
/// The file cannot be read, or fails a check (the error names the path and why).
pub fn read_trusted(path: &Path) -> io::Result<String> {
    let (dir, name) = walk(path, true, false)?;
    let name = name.ok_or_else(|| refused(path, "not a file"))?;
    read_capped(path, dir.read(&name)?)
}

/// Largest configuration file [`read_trusted`] and [`read_regular`] read: a policy of a
/// million prefixes is about 22 MB, so anything near this is a mistake (a log or an image
/// in the policy's place), refused before it is read into memory.
pub const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// Reads the opened regular file `f` (of `path`) as UTF-8, refusing one larger than
/// [`MAX_CONFIG_BYTES`].
fn read_capped(path: &Path, f: File) -> io::Result<String> {
    use std::io::Read as _;
    let len = f.metadata().map_err(|e| at(path, e))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(refused(
            path,
            format!("{len} bytes, more than a configuration file may hold ({MAX_CONFIG_BYTES})"),
        ));
    }
    let mut b = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut b)
        .map_err(|e| at(path, e))?;
    if b.len() as u64 > MAX_CONFIG_BYTES {
        return Err(refused(
            path,
            "grew past the configuration size limit while read",
        ));
    }
    String::from_utf8(b).map_err(|e| {
        let ok = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..ok].iter().filter(|c| **c == b'\n').count();
        let start = bytes[..ok]
            .iter()
            .rposition(|c| *c == b'\n')
            .map_or(0, |i| i + 1);
        // The bytes before `ok` are valid UTF-8: count characters, not bytes.
        let column =
            1 + std::str::from_utf8(&bytes[start..ok]).map_or(ok - start, |l| l.chars().count());
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}:{line}:{column}: not valid UTF-8", path.display()),
        )
    })
}

/// Reads `path` (links followed) as UTF-8 for an unprivileged caller, which gets none of
/// [`read_trusted`]'s ownership checks: it must be a regular file (a FIFO or device is
/// refused without waiting on it) of at most [`MAX_CONFIG_BYTES`].
///
/// # Errors
/// It cannot be opened or read, is not a regular file, or is too large.
pub fn read_regular(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| at(path, e))?;
    if kind(fstat(f.as_raw_fd()).map_err(|e| at(path, e))?.st_mode) != libc::S_IFREG {
        return Err(refused(path, "not a regular file"));
    }
    clear_nonblock(f.as_raw_fd()).map_err(|e| at(path, e))?;
    read_capped(path, f)
}

/// Checks that the directory `path` passes the checks of the module docs (for a policy's
/// drop-in directory).
///
/// # Errors
/// It does not (the error names the path and why), or it cannot be opened.
pub fn check_trusted_dir(path: &Path) -> io::Result<()> {
    TrustedDir::open(path).map(|_| ())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    /// A private (0700) temporary directory, removed on drop.
    pub(crate) struct Tmp(pub PathBuf);

    impl Tmp {
        pub(crate) fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "egressd-safefs-{name}-{}-{:x}",
                std::process::id(),
                fastrand_u64()
            ));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            Self(d)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `cmd` as nobody (uid/gid 65534, no groups, no capabilities); panics on failure.
    pub(crate) fn as_nobody(args: &[&str]) {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .args(args)
            .output()
            .expect("setpriv");
        assert!(
            out.status.success(),
            "{args:?} as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether the tests run as root (the attacker-is-another-user tests need it).
    pub(crate) fn root() -> bool {
        euid() == 0
    }

    #[test]
    fn writable_directories_and_foreign_links_are_refused() {
        let t = Tmp::new("dirs");
        let ok = t.0.join("ok");
        std::fs::create_dir(&ok).expect("mkdir");
        let f = open_append(&ok.join("events.log"), FILE_MODE).expect("a private directory");
        let mode = f.metadata().expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "created with the explicit mode");
        // A file someone made 0644 (logrotate's `create`) is narrowed to the sink's mode.
        std::fs::set_permissions(
            ok.join("events.log"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let f = open_append(&ok.join("events.log"), 0o640).expect("reopen");
        let mode = f.metadata().expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "narrowed, never widened");
        // Group- and world-writable holding directories.
        for m in [0o775, 0o777, 0o1777] {
            let d = t.0.join(format!("w{m:o}"));
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).expect("chmod");
            let e = open_append(&d.join("events.log"), FILE_MODE).expect_err("writable dir");
            assert!(e.to_string().contains(&d.display().to_string()), "{e}");
            assert!(e.to_string().contains("writable by"), "{e}");
        }
        // A world-writable ancestor without the sticky bit.
        let anc = t.0.join("anc");
        std::fs::create_dir_all(anc.join("sub")).expect("mkdir");
        std::fs::set_permissions(&anc, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = open_append(&anc.join("sub/x.log"), FILE_MODE).expect_err("writable ancestor");
        assert!(e.to_string().contains("anc"), "{e}");
        // ... but a sticky one, like /tmp, is fine.
        std::fs::set_permissions(&anc, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        open_append(&anc.join("sub/x.log"), FILE_MODE).expect("sticky ancestor");
        // A link as the file name is refused, not followed.
        let target = t.0.join("target");
        std::fs::write(&target, "keep\n").expect("write");
        symlink(&target, ok.join("link.log")).expect("symlink");
        let e = open_append(&ok.join("link.log"), FILE_MODE).expect_err("symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
        // A second hard link to a file (here one outside the directory, 0644) is refused
        // for writing: neither its contents nor its mode change; reading it is fine.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::hard_link(&target, ok.join("hard.log")).expect("link");
        let e = open_append(&ok.join("hard.log"), FILE_MODE).expect_err("hard link");
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert!(e.to_string().contains("hard.log"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
        let m = std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o644, "mode untouched");
        let d = TrustedDir::open(&ok).expect("dir");
        d.read(OsStr::new("hard.log"))
            .expect("read-only open of a linked file");
        // Nor is its mode narrowed (a spool segment's check).
        let e = d
            .restrict_file(OsStr::new("hard.log"), FILE_MODE)
            .expect_err("hard link");
        assert!(e.to_string().contains("2 hard links"), "{e}");
        let m = std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o644, "mode untouched");
        // A root-owned link to a directory on the way is followed.
        symlink(&ok, t.0.join("via")).expect("symlink");
        open_append(&t.0.join("via/events.log"), FILE_MODE).expect("root's link");
        // Creating directories: 0700.
        let made = TrustedDir::create(&t.0.join("a/b/c")).expect("create");
        let m = std::fs::metadata(made.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o700);
    }

    /// Makes a FIFO at `p` (mode 0600); panics on failure.
    pub(crate) fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    /// Runs `f` on a thread and fails the test if it has not returned within 5 s (a read
    /// that waits on a FIFO never would).
    pub(crate) fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the read waited on the FIFO instead of refusing it")
    }

    #[test]
    fn fifos_are_refused_without_waiting() {
        let t = Tmp::new("fifo");
        let p = t.0.join("policy.toml");
        mkfifo(&p);
        let q = p.clone();
        let e = within_5s(move || read_regular(&q)).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        if root() {
            let e = within_5s(move || read_trusted(&p)).expect_err("a FIFO");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let t = Tmp::new("utf8");
        let p = t.0.join("policy.toml");
        // Column in characters: "é" is two bytes, one column.
        std::fs::write(&p, b"mode = \"enforce\"\nname = \"a\xc3\xa9\xffb\"\n").expect("write");
        let e = read_regular(&p).expect_err("invalid UTF-8");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().ends_with("policy.toml:2:11: not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn oversized_configuration_files_are_refused_unread() {
        let t = Tmp::new("big");
        let p = t.0.join("policy.toml");
        // Sparse: no disk, and the cap refuses it before a byte is read.
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(MAX_CONFIG_BYTES + 1))
            .expect("sparse file");
        let e = read_regular(&p).expect_err("too large");
        assert!(
            e.to_string().contains("more than a configuration file"),
            "{e}"
        );
        if root() {
            let e = read_trusted(&p).expect_err("too large");
            assert!(
                e.to_string().contains("more than a configuration file"),
                "{e}"
            );
        }
    }

    #[test]
    fn files_writable_by_others_are_refused() {
        let t = Tmp::new("files");
        let p = t.0.join("policy.toml");
        std::fs::write(&p, "x").expect("write");
        assert_eq!(read_trusted(&p).expect("0644"), "x");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = read_trusted(&p).expect_err("0666");
        assert!(
            e.to_string().contains("policy.toml") && e.to_string().contains("0666"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).expect("chmod");
        read_trusted(&p).expect_err("0620");
    }

    /// Issue 22 item 1, as an unprivileged user would do it: nobody owns a directory on the
    /// sink's path and plants a link there; root must neither follow it nor append.
    #[test]
    fn links_and_directories_of_an_unprivileged_user_are_refused() {
        if !root() {
            eprintln!("not root: the other-user cases need root");
            return;
        }
        let t = Tmp::new("nobody");
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let user = t.0.join("user");
        std::fs::create_dir(&user).expect("mkdir");
        std::os::unix::fs::chown(&user, Some(65534), Some(65534)).expect("chown");
        let victim = t.0.join("victim");
        std::fs::write(&victim, "root only\n").expect("write");
        let link = user.join("events.log");
        as_nobody(&[
            "ln",
            "-s",
            &victim.display().to_string(),
            &link.display().to_string(),
        ]);
        let e = open_append(&link, FILE_MODE).expect_err("user's directory");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root only\n"
        );
        // A link nobody owns in a sticky directory root trusts (the /tmp case).
        let sticky = t.0.join("sticky");
        std::fs::create_dir(&sticky).expect("mkdir");
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let rootdir = t.0.join("rootdir");
        std::fs::create_dir(&rootdir).expect("mkdir");
        let via = sticky.join("logs");
        as_nobody(&[
            "ln",
            "-s",
            &rootdir.display().to_string(),
            &via.display().to_string(),
        ]);
        let e = open_append(&via.join("events.log"), FILE_MODE).expect_err("user's link");
        assert!(
            e.to_string().contains("symbolic link owned by uid 65534"),
            "{e}"
        );
        // A policy file nobody owns.
        let p = rootdir.join("policy.toml");
        std::fs::write(&p, "x").expect("write");
        std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
        let e = read_trusted(&p).expect_err("foreign owner");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }

    /// Issue 22 item 3: `regions import --output` into a directory another user can write,
    /// where that user planted the old predictable temporary name as a link: as root it is
    /// refused and the link's target is untouched; in a private directory a link at the
    /// output name is replaced, not followed.
    #[test]
    fn atomic_write_follows_no_link() {
        let t = Tmp::new("import");
        let victim = t.0.join("victim");
        std::fs::write(&victim, "root only\n").expect("write");
        let out = t.0.join("eu.toml");
        symlink(&victim, &out).expect("symlink");
        write_atomically(&out, b"[regions.eu]\n", 0o644).expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root only\n"
        );
        assert_eq!(
            std::fs::read_to_string(&out).expect("read"),
            "[regions.eu]\n"
        );
        assert!(std::fs::symlink_metadata(&out).expect("stat").is_file());
        if !root() {
            return;
        }
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let user = t.0.join("user");
        std::fs::create_dir(&user).expect("mkdir");
        std::os::unix::fs::chown(&user, Some(65534), Some(65534)).expect("chown");
        let tmp = user.join(format!(".eu.toml.tmp{}", std::process::id()));
        as_nobody(&[
            "ln",
            "-s",
            &victim.display().to_string(),
            &tmp.display().to_string(),
        ]);
        let e = write_atomically(&user.join("eu.toml"), b"x", 0o644).expect_err("user's dir");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root only\n"
        );
    }
}
