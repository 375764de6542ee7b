//! Unit tests of [`super`] (pipeline).
use super::*;
use crate::{config::SpoolConfig, events::sample, events::sinks::file::File};
use std::{io, path::PathBuf};

/// A destination that can be taken down and brought back.
#[derive(Default)]
struct Fake {
    up: bool,
    received: Vec<Vec<u8>>,
    delay: Duration,
}

struct FakeTransport(Arc<Mutex<Fake>>, bool);

impl Transport for FakeTransport {
    fn open(&mut self, _deadline: Instant) -> io::Result<()> {
        if self.0.lock().expect("lock").up {
            self.1 = true;
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
        }
    }
    fn is_open(&self) -> bool {
        self.1
    }
    fn send(&mut self, frame: &[u8], _deadline: Instant) -> Result<u64, SendError> {
        let delay = self.0.lock().expect("lock").delay;
        std::thread::sleep(delay);
        let mut f = self.0.lock().expect("lock");
        if !f.up {
            self.1 = false;
            return Err(SendError::Retry(io::Error::from(io::ErrorKind::BrokenPipe)));
        }
        if frame.windows(8).any(|w| w == b"REJECTME") {
            return Err(SendError::Reject(io::Error::other("too large")));
        }
        f.received.push(frame.to_vec());
        Ok(frame.len() as u64)
    }
    fn close(&mut self) {
        self.1 = false;
    }
}

fn fake(up: bool) -> (Arc<Mutex<Fake>>, Box<dyn Transport>) {
    let f = Arc::new(Mutex::new(Fake {
        up,
        ..Fake::default()
    }));
    (f.clone(), Box::new(FakeTransport(f, false)))
}

fn cfg(name: &str, queue: usize) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        queue,
        retry_max_ms: 20,
        when_full: crate::config::WhenFull::Block,
        ..SinkConfig::stdout()
    }
}

fn rec(seq: u64) -> Record {
    let mut ev = sample::deny();
    ev.header.sequence = seq;
    Record::Connection(Box::new(ev))
}

fn seqs(frames: &[Vec<u8>]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_slice(f).expect("JSON line");
            v["sequence"].as_u64().expect("sequence")
        })
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("egressd-pipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn outage_spools_and_delivers_in_order() {
    let dir = tmp("outage");
    let (f, t) = fake(true);
    let spool = Spool::open(&dir, 1 << 20).expect("spool");
    let p = Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
    for i in 1..=50 {
        p.submit(&rec(i));
    }
    wait_for("first batch", || {
        f.lock().expect("lock").received.len() == 50
    });
    f.lock().expect("lock").up = false;
    for i in 51..=150 {
        p.submit(&rec(i));
    }
    // Every frame is spooled at submit (the write-ahead log); the worker finds it down.
    wait_for("spooling while down", || {
        let c = p.counters();
        c["s"].spooled > 0 && !c["s"].up
    });
    f.lock().expect("lock").up = true;
    for i in 151..=160 {
        p.submit(&rec(i));
    }
    assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
    let got = seqs(&f.lock().expect("lock").received);
    assert_eq!(got, (1..=160).collect::<Vec<_>>());
    let c = p.shutdown(Duration::from_secs(1));
    assert_eq!(c["s"].delivered, 160);
    assert_eq!(c["s"].dropped(), 0);
    assert!(c["s"].retries > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn full_queue_without_spool_drops_and_counts() {
    let (f, t) = fake(false);
    let p = Pipeline::with_transports(vec![(cfg("s", 10), t, None)], "h").expect("start");
    for i in 1..=25 {
        p.submit(&rec(i));
    }
    let c = p.counters();
    assert_eq!((c["s"].queued, c["s"].dropped_queue_full), (10, 15));
    let c = p.shutdown(Duration::from_millis(100));
    assert_eq!(c["s"].dropped_at_exit, 10);
    assert!(f.lock().expect("lock").received.is_empty());
}

/// A queue full of connection records still takes summaries and lifecycle records (up to
/// the overdraft), so a flood's records never crowd out the counts of what was aggregated.
#[test]
fn full_queue_takes_summaries_and_lifecycle_records() {
    let (_f, t) = fake(false);
    let p = Pipeline::with_transports(vec![(cfg("s", 10), t, None)], "h").expect("start");
    p.submit_all(&(1..=12).map(rec).collect::<Vec<_>>());
    p.submit(&Record::Summary(Box::new(sample::flood_summary())));
    let stop = sample::lifecycle().pop().expect("a lifecycle record");
    p.submit(&Record::Lifecycle(Box::new(stop)));
    let c = p.counters();
    assert_eq!((c["s"].queued, c["s"].dropped_queue_full), (12, 2));
    drop(p);
}

/// `submit_all` over several chunks: each sink gets every record in order, its chain links
/// them in that order, the spool sink's records are in its spool before the memory sink
/// shows them, and a full memory queue counts exactly what it could not take.
#[test]
fn submit_all_keeps_order_chain_and_counts() {
    let dir = tmp("batch");
    let (wal_f, wal_t) = fake(true);
    let (mem_f, mem_t) = fake(false);
    let spool = Spool::open(&dir, 1 << 24).expect("spool");
    let n = 3 * SUBMIT_CHUNK as u64 + 7;
    let p = Pipeline::with_transports(
        vec![
            (cfg("mem", 100), mem_t, None),
            (cfg("wal", 1000), wal_t, Some(spool)),
        ],
        "h",
    )
    .expect("start");
    let records: Vec<Record> = (1..=n).map(rec).collect();
    p.submit_all(&records);
    let c = p.counters();
    assert_eq!(
        (c["mem"].queued, c["mem"].dropped_queue_full),
        (100, n - 100)
    );
    wait_for("the spool sink", || {
        wal_f.lock().expect("lock").received.len() == n as usize
    });
    let got = wal_f.lock().expect("lock").received.clone();
    assert_eq!(seqs(&got), (1..=n).collect::<Vec<_>>());
    // The same links as one record at a time.
    let mut chain = crate::events::audit::chain::Chain::new();
    let enc = Encoder::for_sink(&cfg("wal", 1), "h");
    for (r, frame) in records.iter().zip(&got) {
        assert_eq!(&enc.encode_sealed(r, &mut chain).frame, frame);
    }
    mem_f.lock().expect("lock").up = true;
    assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
    assert_eq!(
        seqs(&mem_f.lock().expect("lock").received),
        (1..=100).collect::<Vec<_>>()
    );
    let c = p.shutdown(Duration::from_secs(1));
    assert_eq!((c["wal"].delivered, c["wal"].dropped()), (n, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spool_full_drops_and_counts() {
    let dir = tmp("full");
    let (_f, t) = fake(false);
    // As submitted: with the hash chain link (of fixed length).
    let frame_len = Encoder::for_sink(&cfg("s", 1), "h")
        .encode_sealed(&rec(1), &mut crate::events::audit::chain::Chain::new())
        .frame
        .len() as u64;
    // Room for exactly 5 frames (with their 4-byte length and 4-byte checksum).
    let spool = Spool::open(&dir, 5 * (frame_len + 8)).expect("spool");
    let p = Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
    for i in 1..=8 {
        p.submit(&rec(i));
    }
    wait_for("spill", || {
        let c = p.counters();
        c["s"].spooled + c["s"].dropped_spool_full == 8
    });
    let c = p.shutdown(Duration::from_millis(50));
    assert_eq!((c["s"].spooled, c["s"].dropped_spool_full), (5, 3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spool_survives_restart_and_goes_first() {
    let dir = tmp("restart");
    let (_f, t) = fake(false);
    let p = Pipeline::with_transports(
        vec![(
            cfg("s", 1000),
            t,
            Some(Spool::open(&dir, 1 << 20).expect("spool")),
        )],
        "h",
    )
    .expect("start");
    for i in 1..=20 {
        p.submit(&rec(i));
    }
    let c = p.shutdown(Duration::from_millis(50));
    assert_eq!(c["s"].spooled, 20);
    let (f, t) = fake(true);
    let p = Pipeline::with_transports(
        vec![(
            cfg("s", 1000),
            t,
            Some(Spool::open(&dir, 1 << 20).expect("spool")),
        )],
        "h",
    )
    .expect("restart");
    p.submit(&rec(21));
    assert!(p.flush(Duration::from_secs(10)));
    assert_eq!(
        seqs(&f.lock().expect("lock").received),
        (1..=21).collect::<Vec<_>>()
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13 item 4: a spool damaged while the agent was down (a frame's bytes changed)
/// delivers every intact frame and the new records, and counts what it set aside.
#[test]
fn damaged_spool_does_not_stop_delivery() {
    let dir = tmp("damaged");
    let (_f, t) = fake(false);
    let spool = Spool::open(&dir, 1 << 20).expect("spool");
    let p = Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
    for i in 1..=20 {
        p.submit(&rec(i));
    }
    assert_eq!(p.shutdown(Duration::from_millis(50))["s"].spooled, 20);
    // Flip the last byte of the first segment: record 20's checksum no longer matches.
    let seg = std::fs::read_dir(&dir)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&seg, &bytes).expect("write");
    let (f, t) = fake(true);
    let spool = Spool::open(&dir, 1 << 20).expect("spool");
    let p =
        Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("restart");
    p.submit(&rec(21));
    assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
    let mut want: Vec<u64> = (1..=19).collect();
    want.push(21);
    assert_eq!(seqs(&f.lock().expect("lock").received), want);
    let c = p.counters();
    assert_eq!(c["s"].spool_damaged, 1);
    assert!(c["s"].spool_damaged_bytes > 0);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_sink_stalls_neither_submit_nor_other_sinks() {
    let (slow, t1) = fake(true);
    slow.lock().expect("lock").delay = Duration::from_millis(20);
    let (fast, t2) = fake(true);
    let p = Pipeline::with_transports(
        vec![(cfg("slow", 1000), t1, None), (cfg("fast", 1000), t2, None)],
        "h",
    )
    .expect("start");
    let t0 = Instant::now();
    for i in 1..=200 {
        p.submit(&rec(i));
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "submit blocked");
    wait_for("fast sink", || {
        fast.lock().expect("lock").received.len() == 200
    });
    assert!(slow.lock().expect("lock").received.len() < 200);
    drop(p);
}

#[test]
fn room_follows_moving_sinks_only() {
    let (slow, t1) = fake(true);
    let (_down, t2) = fake(false);
    let p = Pipeline::with_transports(
        vec![(cfg("slow", 80), t1, None), (cfg("down", 10), t2, None)],
        "h",
    )
    .expect("start");
    wait_for("slow sink up", || p.counters()["slow"].up);
    // The sink that is down (its queue of 10 soon full) never limits; the slow one keeps
    // an eighth of its 80 for other records.
    assert_eq!(p.room(), Some(70));
    // A write that blocks: the worker holds the first record, the next 40 wait in memory.
    slow.lock().expect("lock").delay = Duration::from_secs(3);
    p.submit(&rec(1));
    wait_for("the first record taken", || {
        p.counters()["slow"].queued == 0
    });
    p.submit_all(&(2..=41).map(rec).collect::<Vec<_>>());
    assert_eq!(p.room(), Some(30));
    // Nothing written for STUCK while records waited: the blocked sink no longer holds
    // the reader back.
    std::thread::sleep(STUCK + Duration::from_millis(100));
    assert_eq!(p.room(), None);
    slow.lock().expect("lock").delay = Duration::ZERO;
    wait_for("the slow sink moving again", || p.room() == Some(70));
    drop(p);
}

#[test]
fn drop_newest_sink_never_limits() {
    let (slow, t) = fake(true);
    let cfg = SinkConfig {
        when_full: crate::config::WhenFull::DropNewest,
        ..cfg("debug", 80)
    };
    let p = Pipeline::with_transports(vec![(cfg, t, None)], "h").expect("start");
    wait_for("sink up", || p.counters()["debug"].up);
    slow.lock().expect("lock").delay = Duration::from_secs(1);
    p.submit_all(&(1..=200).map(rec).collect::<Vec<_>>());
    assert_eq!(p.room(), None);
    assert!(p.counters()["debug"].dropped_queue_full > 0);
    slow.lock().expect("lock").delay = Duration::ZERO;
    drop(p);
}

#[test]
fn flood_keeps_memory_bounded_and_counts_every_drop() {
    let (down, t1) = fake(false);
    let (up, t2) = fake(true);
    let p = Pipeline::with_transports(
        vec![
            (cfg("down", 1000), t1, None),
            (cfg("up", 100_000), t2, None),
        ],
        "h",
    )
    .expect("start");
    let n = 20_000;
    for i in 1..=n {
        p.submit(&rec(i));
    }
    let c = p.counters();
    assert_eq!(
        c["down"].queued, 1000,
        "the queue never grows past its bound"
    );
    assert_eq!(c["down"].dropped_queue_full, n - 1000);
    wait_for("the healthy sink", || {
        up.lock().expect("lock").received.len() == n as usize
    });
    let c = p.shutdown(Duration::from_millis(50));
    assert_eq!(
        c["down"].dropped(),
        n,
        "every record of the dead sink is counted"
    );
    assert_eq!((c["up"].delivered, c["up"].dropped()), (n, 0));
    assert!(down.lock().expect("lock").received.is_empty());
}

#[test]
fn rejected_frames_are_counted() {
    let (f, t) = fake(true);
    let p = Pipeline::with_transports(vec![(cfg("s", 100), t, None)], "h").expect("start");
    let mut big = sample::deny();
    big.process.command_line = Some("REJECTME".into());
    p.submit(&rec(1));
    p.submit(&Record::Connection(Box::new(big)));
    p.submit(&rec(3));
    wait_for("delivery", || f.lock().expect("lock").received.len() == 2);
    let c = p.shutdown(Duration::from_secs(1));
    assert_eq!((c["s"].delivered, c["s"].dropped_failed), (2, 1));
}

#[test]
fn file_sink_reopens_after_rotation() {
    let dir = tmp("file");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("events.log");
    let mut c = cfg("file", 100);
    c.kind = crate::config::SinkKind::File {
        path: path.clone(),
        mode: crate::base::safefs::FILE_MODE,
    };
    let p = Pipeline::with_transports(vec![(c, Box::new(File::new(path.clone())), None)], "h")
        .expect("start");
    p.submit(&rec(1));
    p.submit(&rec(2));
    assert!(p.flush(Duration::from_secs(5)));
    wait_for("first file", || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 2)
    });
    let rotated = dir.join("events.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    p.reopen();
    p.submit(&rec(3));
    let c = p.shutdown(Duration::from_secs(5));
    assert_eq!(c["file"].delivered, 3);
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    let new = std::fs::read_to_string(&path).expect("new file");
    assert_eq!(old.lines().count(), 2, "{old}");
    assert_eq!(new.lines().count(), 1, "{new}");
    assert!(new.contains("\"sequence\":3"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spool_config_is_used_by_start() {
    let dir = tmp("start");
    let mut c = cfg("s", 10);
    c.spool = Some(SpoolConfig {
        dir: dir.join("s"),
        max_bytes: 1 << 20,
        fsync: Fsync::Batch,
    });
    let p = Pipeline::start(&[c], "h").expect("start");
    assert!(dir.join("s").is_dir());
    assert_eq!(p.names(), ["s"]);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A receiver that accepts and then reads one byte every 4 s, never closing.
fn trickler() -> (String, Arc<AtomicBool>) {
    use std::os::fd::AsRawFd as _;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt reads one int.
    unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const small).cast(),
            4,
        )
    };
    let addr = l.local_addr().expect("addr").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let st = st.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while !st.load(Ordering::Relaxed) {
                    if io::Read::read(&mut c, &mut b).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(4));
                }
            });
        }
    });
    (addr, stop)
}

/// Issue 22 item 8: a syslog receiver that trickles one byte every 4 s counts as down
/// once a frame misses its write deadline; records go to the spool while it has room
/// (none dropped), and shutdown returns within its deadline plus a few seconds whatever
/// the receiver does. Before: the worker sat in one write for minutes, the memory queue
/// filled and records were dropped, and shutdown waited for the write.
#[test]
fn trickling_receiver_spools_and_shutdown_is_bounded() {
    let (addr, stop) = trickler();
    let dir = tmp("trickle");
    let spool = Spool::open(&dir, 1 << 30).expect("spool");
    let transport = Box::new(crate::events::sinks::syslog::Tcp::new(addr));
    let p = Pipeline::with_transports(vec![(cfg("s", 1000), transport, Some(spool))], "h")
        .expect("start");
    let mut big = sample::deny();
    big.process.command_line = Some("x".repeat(1500).into());
    let n = 20_000u64;
    for i in 1..=n {
        big.header.sequence = i;
        p.submit(&Record::Connection(Box::new(big.clone())));
    }
    let c = p.counters();
    assert_eq!(
        c["s"].dropped(),
        0,
        "dropped while the spool had room: {c:?}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(p.shutdown(Duration::from_secs(1)));
    });
    let c = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("shutdown did not return within 15 s");
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(c["s"].dropped(), 0, "{c:?}");
    assert_eq!(c["s"].delivered + c["s"].spooled, n, "{c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 22 item 6: records of a workload that fills its command line with control
/// characters (six bytes each once escaped) queue for a dead sink: the memory queue is
/// bounded in bytes as well as records, and each frame stays small (fields capped after
/// escaping). Before: 47 KB command lines made 282 KB frames and a 10,000-record queue
/// held gigabytes.
#[test]
fn queue_is_bounded_in_bytes() {
    let (_f, t) = fake(false);
    let mut c = cfg("s", 10_000);
    c.queue_bytes = 1 << 20;
    let p = Pipeline::with_transports(vec![(c, t, None)], "h").expect("start");
    let mut ev = sample::deny();
    ev.process.command_line = Some("\u{1b}".repeat(47_000).into());
    let n = 2_000u64;
    for i in 1..=n {
        ev.header.sequence = i;
        p.submit(&Record::Connection(Box::new(ev.clone())));
    }
    let (bytes, frames, largest) = {
        let q = p.sinks[0].shared.lock();
        let largest = q.memory.iter().map(Vec::len).max().unwrap_or(0);
        (q.bytes, q.memory.len() as u64, largest)
    };
    assert!(bytes <= 1 << 20, "{bytes} bytes queued");
    assert!(largest < 8 << 10, "a frame of {largest} bytes");
    let c = p.counters();
    assert_eq!(frames + c["s"].dropped_queue_full, n, "{c:?}");
    drop(p);
}

/// The sequences of the whole records in `text`, and how many lines are not one (a record
/// cut by the full disk).
fn lines_of(text: &[u8]) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut cut = 0;
    for l in text.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<serde_json::Value>(l) {
            Ok(v) => seqs.push(v["sequence"].as_u64().expect("sequence")),
            Err(_) => cut += 1,
        }
    }
    (seqs, cut)
}

#[test]
fn a_full_disk_writes_no_record_twice_with_a_spool() {
    // With a spool, what a failed write did not take is sent again from it: only that. The
    // records written before the disk filled count as delivered at once.
    let dir = tmp("fulldisk");
    let disk = crate::events::sinks::buffered::kept_tests::Disk::default();
    *disk.room.lock().expect("room") = 40_000;
    let t: Box<dyn Transport> = Box::new(crate::events::sinks::buffered::Buffered::with_opener(
        disk.clone(),
    ));
    let spool = Spool::open(&dir, 8 << 20).expect("spool");
    let p = Pipeline::with_transports(vec![(cfg("s", 1000), t, Some(spool))], "h").expect("start");
    let n = 300;
    for i in 1..=n {
        p.submit(&rec(i));
    }
    wait_for("the disk to fill", || *disk.room.lock().expect("room") == 0);
    wait_for("a failed write", || p.counters()["s"].retries > 0);
    let (written, _) = lines_of(&disk.files.lock().expect("files")[0]);
    wait_for("the written records counted", || {
        p.counters()["s"].delivered == written.len() as u64
    });
    *disk.room.lock().expect("room") = usize::MAX;
    assert!(p.flush(Duration::from_secs(10)), "{:?}", p.counters());
    let c = p.shutdown(Duration::from_secs(1));
    let (seqs, cut) = lines_of(&disk.files.lock().expect("files")[0]);
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "records written twice: {seqs:?}");
    assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
    assert!(cut <= 1, "{cut} cut records");
    assert_eq!((c["s"].delivered, c["s"].dropped()), (n, 0), "{c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
