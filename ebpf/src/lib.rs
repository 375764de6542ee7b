//! Library target of the eBPF crate; it exists so `agent` can name this package as a build
//! dependency. The programs themselves are the `egressd-ebpf` binary (`src/main.rs`).
#![no_std]
