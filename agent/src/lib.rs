//! egressd: eBPF host agent that keeps a host's outbound connections inside allowlisted
//! regions.
//!
//! Pipeline: [`config`] (TOML files with located errors) -> [`policy`] (pure compilation into
//! map contents, also the reference model) -> [`loader`] (maps, programs, cgroup attach) ->
//! [`events`] (ring buffer -> typed, enriched records) -> [`formats`] (native JSON, ECS, OCSF,
//! CEF) -> [`pipeline`] (queues, spool, loss counters) -> [`sinks`], with [`stats`]
//! reading the kernel counters.
pub mod base;
pub mod config;
pub mod daemon;
pub mod events;
pub mod kernel;
pub mod policy;
