//! Unit tests of [`super`] (spool).
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
