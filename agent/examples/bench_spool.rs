//! Sink half of `cargo xtask bench` (see `docs/benchmarks.md`): records per second through a
//! syslog TCP sink with and without its spool as write-ahead log, in one run.
//!
//! `bench_spool [--records N] [--dir DIR]`
//!
//! For each variant (no spool: memory queue only; spool with `spool_fsync = "interval"`;
//! spool with `spool_fsync = "batch"`), `N` native JSON `connection` records are submitted
//! as fast as one thread can (the ring-buffer reader's role) to a [`Pipeline`] with one
//! syslog TCP sink (RFC 6587 octet counting) whose receiver, a thread on loopback, reads and
//! counts the messages. Printed as one JSON line per variant: `submit_per_s` (the reader
//! thread's cost: encoding, and with the spool the `write(2)` to it), `through_per_s` (first
//! submit to last message read by the receiver: the sustained rate) and `commit_lag_ms` (from
//! then until the sink counted the last one delivered, i.e. committed it: the one-second
//! grace after TCP's acknowledgement). The spool lives in `DIR` (default:
//! `target/bench-spool`, on the disk the build is on; a tmpfs would make `fdatasync` free).
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egressd::{
    config::{SinkConfig, SinkKind, SpoolConfig, SyslogConfig, SyslogTransport},
    events::formats::Format,
    events::pipeline::{
        Pipeline,
        spool::{Fsync, Spool},
    },
    events::sinks,
    events::{Record, sample},
};
use serde_json::json;

/// A receiver on loopback that counts octet-counted messages; returns its address and count.
fn receiver() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    let n = Arc::new(AtomicU64::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 20, c);
                let mut len = Vec::new();
                let mut msg = Vec::new();
                loop {
                    len.clear();
                    match r.read_until(b' ', &mut len) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let Some(n) = std::str::from_utf8(&len[..len.len() - 1])
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        return;
                    };
                    msg.resize(n, 0);
                    if r.read_exact(&mut msg).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((addr, n))
}

fn sink(addr: &str, records: usize, spool: Option<SpoolConfig>) -> SinkConfig {
    SinkConfig {
        name: "siem".into(),
        kind: SinkKind::Syslog(SyslogConfig {
            transport: SyslogTransport::Tcp,
            address: addr.into(),
            server_name: None,
            ca: None,
            client_auth: None,
            facility: 16,
            app_name: "egressd".into(),
        }),
        format: Format::Json,
        // Room for the whole run: the memory variant drops nothing either.
        when_full: egressd::config::WhenFull::default(),
        queue: records,
        queue_bytes: records * 4096,
        max_message_bytes: egressd::config::DEFAULT_SYSLOG_MESSAGE_BYTES,
        spool,
        retry_max_ms: 200,
    }
}

fn run(
    name: &str,
    records: usize,
    dir: &std::path::Path,
    fsync: Option<Fsync>,
) -> anyhow::Result<serde_json::Value> {
    let (addr, received) = receiver()?;
    let _ = std::fs::remove_dir_all(dir);
    let spool_cfg = fsync.map(|fsync| SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 40,
        fsync,
    });
    let cfg = sink(&addr, records, spool_cfg.clone());
    let spool = match &spool_cfg {
        Some(s) => Some(Spool::open(&s.dir, s.max_bytes)?),
        None => None,
    };
    let transport = sinks::transport(&cfg)?;
    let p = Pipeline::with_transports(vec![(cfg, transport, spool)], "bench")?;
    let recs: Vec<Record> = (1..=records as u64)
        .map(|i| {
            let mut ev = sample::deny();
            ev.header.sequence = i;
            ev.header.id = egressd::events::EventId::from(&format!("bench-{i}")).expect("fits");
            Record::Connection(Box::new(ev))
        })
        .collect();
    let t0 = Instant::now();
    for r in &recs {
        p.submit(r);
    }
    let submitted = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < records as u64 {
        if Instant::now() > deadline {
            bail!("{name}: not received in 300 s: {:?}", p.counters());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let through = t0.elapsed();
    while p.counters()["siem"].delivered < records as u64 {
        if Instant::now() > deadline {
            bail!("{name}: not committed in 300 s: {:?}", p.counters());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let committed = t0.elapsed();
    let got = received.load(Ordering::Relaxed);
    let c = p.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(dir);
    if got < records as u64 || c["siem"].dropped() != 0 {
        bail!(
            "{name}: received {got} of {records}; counters {:?}",
            c["siem"]
        );
    }
    Ok(json!({
        "variant": name,
        "records": records,
        "submit_per_s": records as f64 / submitted.as_secs_f64(),
        "through_per_s": records as f64 / through.as_secs_f64(),
        "commit_lag_ms": (committed - through).as_secs_f64() * 1e3,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut records = 200_000usize;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-spool");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().context("--records N")?.parse()?,
            "--dir" => dir = PathBuf::from(args.next().context("--dir DIR")?),
            other => bail!("unknown argument {other}"),
        }
    }
    for (name, fsync) in [
        ("memory queue (no spool)", None),
        ("spool WAL, fsync interval", Some(Fsync::Interval)),
        ("spool WAL, fsync batch", Some(Fsync::Batch)),
    ] {
        println!("{}", run(name, records, &dir, fsync)?);
    }
    Ok(())
}
