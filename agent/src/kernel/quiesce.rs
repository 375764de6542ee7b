//! Waiting out the programs that may still use a map's contents userspace is about to
//! change: a policy set before it is rewritten (below), the summaries of an interval that
//! ended before they are removed (`events::summary`).
//!
//! A program reads the published generation once, then reads the set it selects. Installing
//! generation `g + 1` fills the idle set, which last served `g - 1`: a program that read
//! `g - 1` just before `g` was published could, in principle, still be reading that set. So
//! before the idle set is touched, [`Quiescer::wait`] waits for an RCU grace period: every
//! cgroup program runs inside an RCU read-side critical section, so when the grace period
//! ends, every program that started before it has returned.
//!
//! Userspace cannot call `synchronize_rcu()` itself; the kernel calls it for it after each
//! update of a map-in-map (`maybe_wait_bpf_programs()` in `kernel/bpf/syscall.c`, since
//! Linux 4.20: "wait for any running BPF programs to complete so that userspace, when we
//! return to it, knows that all programs that could be running use the new map value").
//! One update of a private one-slot `BPF_MAP_TYPE_ARRAY_OF_MAPS` is that wait.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::kernel::pin::sys_bpf;

/// `BPF_MAP_CREATE`, `BPF_MAP_UPDATE_ELEM` (`include/uapi/linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_TYPE_ARRAY`, `BPF_MAP_TYPE_ARRAY_OF_MAPS`.
const ARRAY: u32 = 2;
const ARRAY_OF_MAPS: u32 = 12;

/// A one-slot map-in-map whose updates wait for an RCU grace period.
pub struct Quiescer {
    outer: OwnedFd,
    inner: OwnedFd,
}

/// Creates a map: `map_type`, `key_size`, `value_size`, `max_entries`, `map_flags`,
/// `inner_map_fd` (u32 words at the start of `union bpf_attr`).
fn create(map_type: u32, inner: Option<&OwnedFd>) -> anyhow::Result<OwnedFd> {
    let inner_fd = match inner {
        Some(fd) => u32::try_from(fd.as_raw_fd())?,
        None => 0,
    };
    let words: [u32; 6] = [map_type, 4, 4, 1, 0, inner_fd];
    let mut attr = [0u64; 16];
    for (i, pair) in words.chunks(2).enumerate() {
        attr[i] = u64::from(pair[0]) | (u64::from(pair[1]) << 32);
    }
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr).context("creating the quiescence map")?;
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

impl Quiescer {
    /// Creates the maps.
    ///
    /// # Errors
    /// The kernel refuses to create them (no CAP_BPF, no map-in-map support).
    pub fn new() -> anyhow::Result<Self> {
        let inner = create(ARRAY, None)?;
        let outer = create(ARRAY_OF_MAPS, Some(&inner))?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program that was running when it was called has returned.
    ///
    /// # Errors
    /// The update fails (it should not once the maps exist).
    pub fn wait(&self) -> anyhow::Result<()> {
        let key = 0u32;
        let value = u32::try_from(self.inner.as_raw_fd())?;
        // map_fd (u32, padded to 8), key (u64 pointer), value (u64 pointer), flags (u64).
        let mut attr = [
            u64::try_from(self.outer.as_raw_fd())?,
            std::ptr::from_ref(&key) as u64,
            std::ptr::from_ref(&value) as u64,
            0,
        ];
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("waiting for running programs")?;
        Ok(())
    }
}
