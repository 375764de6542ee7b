//! The kernel layer: everything that talks to the kernel about the eBPF programs. Loading the
//! object, filling and swapping the maps, attaching to the cgroup (and the tc/egress
//! fallback) and explaining failures ([`loader`]); bpffs pins and the pinned state record
//! ([`pin`]); the hook table ([`hooks`]) and BTF offsets ([`offsets`]) both use;
//! `BPF_PROG_TEST_RUN` of the packet program ([`testrun`]); the feature probes and
//! the coverage report ([`coverage`]); cgroup v2 paths ([`cgroup`]); capabilities
//! ([`privileges`]); the route mirror of the device-forced next-hop check ([`routes`]);
//! batch reads and writes of maps ([`batch`]) and in-place mappings of array maps ([`mmap`]);
//! waiting out running programs ([`quiesce`]).
//!
//! May use [`crate::base`], [`crate::config`] and [`crate::policy`] (what to load), never the
//! event pipeline or the daemon above it.
pub mod batch;
pub mod cgroup;
pub mod coverage;
pub mod hooks;
pub mod loader;
pub mod mmap;
pub mod offsets;
pub mod pin;
pub mod privileges;
pub mod quiesce;
pub mod routes;
pub mod testrun;
