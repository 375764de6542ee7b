//! The daemon's event path in-process, without the kernel: records per second and CPU time
//! per record from decoded ring-buffer events to a JSON file sink.
//!
//! `bench_pipeline [--records N] [--out FILE]`
//!
//! `N` kernel events of this process (so `/proc` enrichment verifies them, as for a flood
//! from one process) go the daemon's way: the enrichment thread ([`Worker`]), numbering
//! ([`Sequencer::number`]) and [`Pipeline::submit_all`] to one file sink of native JSON lines
//! (default `target/bench-pipeline.jsonl`), in batches of 256 as the ring-buffer reader
//! takes them. Printed as one JSON line: `records_per_s` (first push until the sink has
//! written everything), and `cpu_us_per_record` (user + system time of the whole process,
//! all threads, per record: what a record costs whatever else runs on the machine), and the
//! same per thread (`thread_us_per_record`: the reader, `egressd-enrich`, `sink-file`; the
//! largest bounds the rate on a machine with a core for each).
use std::{
    future::Future as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use egressd::{
    config::{SinkConfig, SinkKind},
    events::{
        self, Enricher, Sequencer, formats::Format, pipeline::Pipeline, sinks, worker::Worker,
    },
};

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time of each thread of this process so far, by name (the main thread: `reader`;
/// `/proc/self/task/*/schedstat`, nanoseconds).
fn thread_cpu() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let name = if t.file_name().to_str() == Some(&std::process::id().to_string()) {
            "reader".to_owned()
        } else {
            std::fs::read_to_string(p.join("comm")).unwrap_or_default()
        };
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name.trim_end().to_owned()).or_default() += ns;
    }
    out
}

fn kernel_event(i: u64, comm: &str) -> egressd_common::Event {
    let mut ev = events::decode(&[0u8; 96]).expect("a zeroed event decodes");
    ev.boot_ns = egressd::base::clock::boot_now_ns();
    ev.pid = std::process::id();
    ev.tid = ev.pid;
    // SAFETY: no preconditions.
    ev.uid = unsafe { libc::getuid() };
    // SAFETY: no preconditions.
    ev.gid = unsafe { libc::getgid() };
    ev.generation = 1;
    ev.region = 0;
    ev.dst_port = 9 + (i % 1000) as u16;
    ev.family = egressd_common::family::INET;
    ev.protocol = 17;
    ev.verdict = egressd_common::Verdict::Deny as u8;
    ev.hook = egressd_common::Hook::Sendmsg4 as u8;
    ev.dst_addr[..4].copy_from_slice(&[198, 18, 2, 1 + (i % 254) as u8]);
    let comm = comm.as_bytes();
    let n = comm.len().min(15);
    ev.comm[..n].copy_from_slice(&comm[..n]);
    ev
}

/// The enrichment thread's finished events if there are any now (one poll, no wait).
fn ready(worker: &mut Worker) -> Option<events::worker::Finished> {
    let fut = std::pin::pin!(worker.next());
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(b) => b,
        std::task::Poll::Pending => None,
    }
}

fn submit(seq: &Sequencer, pipeline: &Pipeline, mut ev: events::ConnectionEvent) {
    seq.number(&mut ev.header);
    pipeline.submit(&events::Record::Connection(Box::new(ev)));
}

/// A batch the enrichment thread finished, numbered and submitted as the daemon does, and
/// its events handed back to the thread (their ids freed here, where they were allocated).
fn submit_all(
    seq: &Sequencer,
    pipeline: &Pipeline,
    worker: &Worker,
    batch: events::worker::Finished,
) {
    let records: Vec<_> = batch
        .into_iter()
        .map(|mut ev| {
            seq.number(&mut ev.header);
            events::Record::Connection(ev)
        })
        .collect();
    pipeline.submit_all(&records);
    worker.recycle_records(records);
}

/// Events at most pushed and not yet back from the enrichment thread, and records at most
/// in the sink's queue.
const PACE: u64 = 4096;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut records = 300_000u64;
    let mut out = PathBuf::from("target/bench-pipeline.jsonl");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().context("--records N")?.parse()?,
            "--out" => out = args.next().context("--out FILE")?.into(),
            _ => anyhow::bail!("usage: bench_pipeline [--records N] [--out FILE]"),
        }
    }
    let _ = std::fs::remove_file(&out);
    let cfg = egressd::config::parse(
        std::path::Path::new("bench.toml"),
        "allowlist = []\n[regions.us]\nprefixes = [\"198.18.2.0/24\"]\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let policy = Arc::new(egressd::policy::compile(&cfg));
    let seq = Arc::new(Sequencer::new(events::Context {
        host: events::Host {
            name: "bench".into(),
            labels: Default::default(),
        },
        agent: events::AgentInfo {
            version: "0.1.0".into(),
            ephemeral_id: events::ephemeral_id(),
        },
    }));
    let enricher = Arc::new(
        Enricher::new(seq.clone(), policy)
            .with_cgroup_root(egressd::kernel::cgroup::cgroup2_root().ok()),
    );
    let sink = SinkConfig {
        name: "file".into(),
        kind: SinkKind::File {
            path: std::path::absolute(&out)?,
            mode: 0o600,
        },
        format: Format::Json,
        ..SinkConfig::stdout()
    };
    let transport = sinks::transport(&sink)?;
    let pipeline = Pipeline::with_transports(vec![(sink, transport, None)], "bench")?;
    // As the daemon sets it before it reads the ring buffer.
    egressd::daemon::keep_heap_for_records();
    let mut worker = Worker::start()?;
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let evs: Vec<_> = (0..records)
        .map(|i| kernel_event(i, comm.trim_end()))
        .collect();
    let threads0 = thread_cpu();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let mut done = 0u64;
    let mut pushed = 0u64;
    for chunk in evs.chunks(256) {
        pushed += chunk.len() as u64;
        for now in worker.push_all(&enricher, chunk.iter().copied()) {
            submit(&seq, &pipeline, now);
            done += 1;
        }
        // What the enrichment thread finished meanwhile, as the main loop takes it.
        while let Some(batch) = ready(&mut worker) {
            done += batch.len() as u64;
            submit_all(&seq, &pipeline, &worker, batch);
        }
        // A reader does not outrun the pipeline: the kernel's producer is not infinitely
        // fast, and events the enrichment thread cannot queue are built without `/proc`
        // details (a cheaper path than the one measured here).
        while pushed - done > PACE {
            let batch = worker.next().await.context("enrichment thread gone")?;
            done += batch.len() as u64;
            submit_all(&seq, &pipeline, &worker, batch);
        }
        // Nor the sink (its memory queue would drop records, which then cost nothing).
        while pipeline.counters().values().any(|c| c.queued > PACE) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    while done < records {
        let batch = worker.next().await.context("enrichment thread gone")?;
        done += batch.len() as u64;
        submit_all(&seq, &pipeline, &worker, batch);
    }
    anyhow::ensure!(
        pipeline.flush(Duration::from_secs(120)),
        "the sink did not catch up"
    );
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    let threads: serde_json::Map<String, serde_json::Value> = thread_cpu()
        .into_iter()
        .map(|(name, ns)| {
            let spent = ns.saturating_sub(threads0.get(&name).copied().unwrap_or(0));
            let us = (spent as f64 / 1e3 / records as f64 * 1000.0).round() / 1000.0;
            (name, us.into())
        })
        .collect();
    let c = pipeline.shutdown(Duration::from_secs(5));
    let lines = std::fs::read(&out)?.iter().filter(|b| **b == b'\n').count();
    println!(
        "{}",
        serde_json::json!({
            "records": records, "lines": lines, "dropped": c.values().map(|c| c.dropped()).sum::<u64>(),
            "skipped": worker.skipped(),
            "records_per_s": records as f64 / wall.as_secs_f64(),
            "cpu_us_per_record": cpu.as_secs_f64() * 1e6 / records as f64,
            "thread_us_per_record": threads,
        })
    );
    let _ = std::fs::remove_file(&out);
    Ok(())
}
