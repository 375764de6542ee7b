//! Reload on file change: watches the main policy file and its drop-in directory.
//!
//! Directories are watched, not files, so every way a file gets replaced is seen: editors
//! that write a temporary file and rename it over the original (vim, emacs), config
//! management that does the same (Ansible's `template`, Puppet's `file`), plain rewrites
//! (once the writer closes the file: a file half written is not loaded, see [`changes`]),
//! `rm`, a drop-in directory that appears later, and the `..data` symlink swap of a
//! Kubernetes ConfigMap volume. Events are debounced
//! ([`DEBOUNCE`]) so a burst of writes gives one reload. Only the main file and `*.toml`
//! files in the drop-in directory count; editor swap and backup files are ignored.
//!
//! A change leads to exactly what SIGHUP does (see `daemon`): a valid set of files is
//! installed atomically, an invalid one changes nothing and is reported with
//! `reload_failed`.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use notify_debouncer_full::{
    DebounceEventResult, Debouncer, RecommendedCache, new_debouncer,
    notify::{
        EventKind, RecommendedWatcher, RecursiveMode,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind},
    },
};
use tokio::sync::mpsc;

/// Quiet time after the last change before a reload, in milliseconds.
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// A running watch; [`ConfigWatcher::changed`] resolves once per debounced change.
pub struct ConfigWatcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    rx: mpsc::UnboundedReceiver<()>,
    main: PathBuf,
    /// Each watched directory's path and the directory it named when the watch was set
    /// (device and inode): inotify watches that directory, not the path.
    watched: Vec<(PathBuf, Option<(u64, u64)>)>,
}

/// Device and inode of the directory `path` names now (links followed).
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl ConfigWatcher {
    /// Watches `main` (its directory) and its drop-in directory (`drop_in_dir` from the
    /// file, or `policy.d` beside it) if it exists.
    ///
    /// # Errors
    /// inotify cannot be set up (e.g. `fs.inotify.max_user_instances` reached) or the main
    /// file's directory cannot be watched.
    pub fn new(main: &Path) -> anyhow::Result<Self> {
        let main =
            std::path::absolute(main).with_context(|| format!("resolving {}", main.display()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let filter_main = main.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
            let Ok(events) = res else {
                return;
            };
            // Reads are filtered out before the file is read here: this read's own events
            // would otherwise come back as the next batch, and the next, forever.
            let changed: Vec<_> = events.iter().filter(|e| changes(&e.kind)).collect();
            if changed.is_empty() {
                return;
            }
            let dropins = drop_in_dir(&filter_main);
            let relevant = changed.iter().any(|e| {
                e.paths
                    .iter()
                    .any(|p| is_relevant(p, &filter_main, dropins.as_deref()))
            });
            if relevant {
                let _ = tx.send(());
            }
        })
        .context("setting up the file watch (inotify)")?;
        let mut w = Self {
            debouncer,
            rx,
            main,
            watched: Vec::new(),
        };
        let parent = w.main.parent().unwrap_or(Path::new("/")).to_path_buf();
        let id = identity(&parent);
        w.debouncer
            .watch(&parent, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", parent.display()))?;
        w.watched.push((parent, id));
        w.refresh();
        Ok(w)
    }

    /// Adds a watch on the drop-in directory if it exists now and is not watched yet (call
    /// after each reload: the directory or `drop_in_dir` may have changed).
    pub fn refresh(&mut self) {
        let Some(dir) = drop_in_dir(&self.main) else {
            return;
        };
        if self.watched.iter().any(|(p, _)| *p == dir) || !dir.is_dir() {
            return;
        }
        let id = identity(&dir);
        match self.debouncer.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching the drop-in directory");
                self.watched.push((dir, id));
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
        }
    }

    /// Watches again each watched path that names another directory now: the directory
    /// replaced (`mv policy.d policy.d.old; mkdir policy.d`) or a link to it swapped (a
    /// configuration directory that is a link to a release), which inotify, watching the
    /// old directory, does not report. Only `stat`s (call it often); `true` when a path was
    /// watched again, so its files may have changed unseen: reload.
    pub fn follow_moved(&mut self) -> bool {
        let mut moved = false;
        for (path, id) in &mut self.watched {
            let now = identity(path);
            if now.is_none() || now == *id {
                continue;
            }
            let _ = self.debouncer.unwatch(&*path);
            match self.debouncer.watch(&*path, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "a new directory at a watched path: watching it");
                    *id = now;
                    moved = true;
                }
                Err(e) => tracing::warn!(dir = %path.display(), error = %e, "cannot watch"),
            }
        }
        moved
    }

    /// Resolves at the next debounced change (`None` if the watch thread is gone).
    pub async fn changed(&mut self) -> Option<()> {
        let r = self.rx.recv().await;
        // Coalesce changes that queued up meanwhile.
        while self.rx.try_recv().is_ok() {}
        r
    }
}

/// The drop-in directory of `main`: `drop_in_dir` read from the file (relative to its
/// directory), else `policy.d` beside it. `None` when the file cannot be read or parsed
/// (the reload will report that). Read like the policy itself: a FIFO or device in the
/// file's place is not waited on ([`crate::base::safefs::read_regular`]), which would
/// hold up the watcher thread, and on SIGHUP the daemon's loop.
pub fn drop_in_dir(main: &Path) -> Option<PathBuf> {
    let base = main.parent().unwrap_or(Path::new("."));
    let text = crate::base::safefs::read_regular(main).ok()?;
    let value: toml::Table = toml::from_str(&text).ok()?;
    Some(match value.get("drop_in_dir").and_then(|v| v.as_str()) {
        Some(d) => base.join(d),
        None => base.join("policy.d"),
    })
}

/// Whether an event of `kind` ends a change of what a file holds: a close after writing
/// (inotify `IN_CLOSE_WRITE`), a rename into or out of place (`IN_MOVED_TO`,
/// `IN_MOVED_FROM`), a removal, a directory made (a drop-in directory that appears). Not
/// the writes themselves nor a file's creation (`IN_MODIFY`, `IN_CREATE`): a writer that
/// pauses in the middle of a file would have the part written so far loaded, a valid
/// policy cut short (its close comes after the last write, and a rename after the whole
/// file). Not opens, reads and closes after reading (`IN_OPEN`, `IN_ACCESS`,
/// `IN_CLOSE_NOWRITE`): the daemon reads the files itself on every reload.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(c) => matches!(c, CreateKind::Folder),
        EventKind::Remove(_) => true,
        EventKind::Modify(m) => matches!(m, ModifyKind::Name(_)),
        EventKind::Access(a) => matches!(a, AccessKind::Close(AccessMode::Write)),
        EventKind::Any | EventKind::Other => false,
    }
}

/// Whether a change of `path` can change the loaded configuration.
fn is_relevant(path: &Path, main: &Path, dropins: Option<&Path>) -> bool {
    if path == main {
        return true;
    }
    // Kubernetes ConfigMap and Secret volumes swap a `..data` symlink atomically.
    if path.file_name().is_some_and(|n| n == "..data") {
        return true;
    }
    let Some(dir) = dropins else {
        return false;
    };
    if path == dir {
        return true;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.parent() == Some(dir)
        && path.extension().is_some_and(|x| x == "toml")
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify_debouncer_full::notify::event::{DataChange, RemoveKind, RenameMode};
        assert!(!changes(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes(&EventKind::Access(AccessKind::Read)));
        assert!(!changes(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        // A writer between two writes: not yet.
        assert!(!changes(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(!changes(&EventKind::Create(CreateKind::File)));
        assert!(changes(&EventKind::Create(CreateKind::Folder)));
        assert!(changes(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes(&EventKind::Remove(RemoveKind::File)));
    }

    /// Reads of the files are no change, and a writer that pauses in the middle of the file
    /// does not get the part written so far loaded: the change counts when it closes the
    /// file (before, the pause was taken for the end of a change).
    /// Whether a change is reported within 10 s (a debounce of 300 ms, stretched on a busy
    /// machine: a fixed wait of three debounces failed under load).
    fn changed(w: &mut ConfigWatcher) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if w.rx.try_recv().is_ok() {
                return true;
            }
            std::thread::sleep(DEBOUNCE / 10);
        }
        false
    }

    #[test]
    fn reads_and_half_written_files_do_not_reload() {
        use std::io::Write as _;
        let t = crate::base::safefs::tests::Tmp::new("watch-loop");
        let main = t.0.join("policy.toml");
        std::fs::write(&main, "allowlist = []\n").expect("write");
        let mut w = ConfigWatcher::new(&main).expect("watch");
        let quiet = |w: &mut ConfigWatcher, what: &str| {
            std::thread::sleep(DEBOUNCE * 3);
            assert!(w.rx.try_recv().is_err(), "{what}: taken as a change");
        };
        for _ in 0..5 {
            let _ = drop_in_dir(&main);
            std::thread::sleep(DEBOUNCE / 3);
        }
        quiet(&mut w, "reading the file");
        let mut f = std::fs::File::create(&main).expect("create");
        f.write_all(b"allowlist = [").expect("write");
        quiet(&mut w, "a file half written");
        f.write_all(b"]\n").expect("write");
        drop(f);
        assert!(changed(&mut w), "closing the written file is a change");
    }

    /// A drop-in directory replaced by another at the same path is followed: its files'
    /// changes count again (before, the watch stayed on the old directory, and changes of
    /// the new one never reloaded).
    #[test]
    fn a_replaced_directory_is_followed() {
        let t = crate::base::safefs::tests::Tmp::new("watch-moved");
        let main = t.0.join("policy.toml");
        std::fs::write(&main, "allowlist = []\n").expect("write");
        std::fs::create_dir(t.0.join("policy.d")).expect("mkdir");
        let mut w = ConfigWatcher::new(&main).expect("watch");
        assert!(!w.follow_moved());
        std::fs::rename(t.0.join("policy.d"), t.0.join("policy.d.old")).expect("mv");
        std::fs::create_dir(t.0.join("policy.d")).expect("mkdir");
        assert!(w.follow_moved(), "the new directory is watched");
        assert!(!w.follow_moved());
        std::thread::sleep(DEBOUNCE * 3);
        while w.rx.try_recv().is_ok() {}
        std::fs::write(t.0.join("policy.d/a.toml"), "").expect("write");
        assert!(changed(&mut w), "a file of the new directory is a change");
    }

    /// A FIFO in the policy file's place is not waited on: the watcher thread (and, on
    /// SIGHUP, the daemon's loop through `refresh`) would block in `open` until a writer
    /// came, and none comes once a file is put back over it.
    #[test]
    fn drop_in_dir_does_not_wait_on_a_fifo() {
        use crate::base::safefs::tests::{Tmp, mkfifo, within_5s};
        let t = Tmp::new("watch-fifo");
        let p = t.0.join("policy.toml");
        mkfifo(&p);
        assert_eq!(within_5s(move || drop_in_dir(&p)), None);
    }

    #[test]
    fn relevant_paths() {
        let main = Path::new("/etc/egressd/policy.toml");
        let d = Path::new("/etc/egressd/policy.d");
        assert!(is_relevant(main, main, Some(d)));
        assert!(is_relevant(
            Path::new("/etc/egressd/policy.d/a.toml"),
            main,
            Some(d)
        ));
        assert!(is_relevant(d, main, Some(d)));
        assert!(!is_relevant(
            Path::new("/etc/egressd/.policy.toml.swp"),
            main,
            Some(d)
        ));
        assert!(!is_relevant(
            Path::new("/etc/egressd/policy.toml~"),
            main,
            Some(d)
        ));
        assert!(!is_relevant(
            Path::new("/etc/egressd/policy.d/.a.toml.swp"),
            main,
            Some(d)
        ));
        assert!(!is_relevant(
            Path::new("/etc/egressd/policy.d/a.toml.bak"),
            main,
            Some(d)
        ));
        assert!(!is_relevant(
            Path::new("/etc/egressd/other.toml"),
            main,
            Some(d)
        ));
        assert!(is_relevant(Path::new("/etc/egressd/..data"), main, Some(d)));
    }
}
