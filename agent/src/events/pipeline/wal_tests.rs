//! Unit tests of [`super`] (pipeline) over a real TCP connection: commits and the WAL.
use super::*;
use crate::events::sample;

/// Over a real TCP connection: frames are committed (the spool's head persisted past
/// them) about [`COMMIT_GRACE`] after the peer's TCP acknowledged them, without any
/// shutdown, so a `kill -9` then would not send them again.
#[test]
fn acknowledged_frames_are_committed_while_running() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("egressd-wal-commit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SinkConfig {
        name: "s".into(),
        ..SinkConfig::stdout()
    };
    let p = Pipeline::with_transports(
        vec![(
            cfg,
            Box::new(crate::events::sinks::syslog::Tcp::new(addr)),
            Some(Spool::open(&dir, 1 << 20).expect("spool")),
        )],
        "h",
    )
    .expect("start");
    for i in 1..=100 {
        let mut ev = sample::deny();
        ev.header.sequence = i;
        p.submit(&Record::Connection(Box::new(ev)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.counters()["s"].delivered < 100 {
        assert!(Instant::now() < deadline, "{:?}", p.counters());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(HEAD_SYNC * 3);
    // What a restart after `kill -9` now would find.
    let again = Spool::open(&dir, 1 << 20).expect("reopen");
    assert_eq!(again.len(), 0, "committed frames would be sent again");
    drop(again);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
