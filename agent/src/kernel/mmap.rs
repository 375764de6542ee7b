//! Shared mappings of `BPF_F_MMAPABLE` array maps (`include/uapi/linux/bpf.h`, Linux 5.5+):
//! userspace reads and writes the elements in place, with no `bpf(2)` call at all. The IPv4
//! and IPv6 tables are copied in this way, and the unreported counts ([`U64Array`]) read every
//! second: a batch lookup of their 110,592 slots held the daemon loop 15-36 ms each time.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::atomic::AtomicU64,
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;

/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`): the array can be mapped by userspace.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes of an array map's value area as `mmap` sees it: `max_entries` elements every
/// `value_size` bytes rounded up to 8, in whole pages.
pub fn value_area(info: &aya::maps::MapInfo) -> usize {
    (info.max_entries() as usize * (info.value_size() as usize).next_multiple_of(8))
        .next_multiple_of(egressd_common::table::PAGE_BYTES)
}

/// A shared mapping of part of an array map's value area, unmapped on drop. The kernel lays
/// the elements out every `value_size` bytes rounded up to 8, from offset 0.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is process memory with no thread affinity; it lives until `drop`.
unsafe impl Send for Mapping {}

impl Mapping {
    /// `len` bytes of map `fd`'s value area from byte `offset` (page aligned), readable, and
    /// writable with `write`. `name` names the map in errors.
    ///
    /// # Errors
    /// `mmap(2)` failed: the map is not `BPF_F_MMAPABLE`, or the range is past its end.
    pub fn window(
        fd: RawFd,
        name: &str,
        offset: usize,
        len: usize,
        write: bool,
    ) -> anyhow::Result<Self> {
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps `len` bytes of the array shared; the pointer is only used within `len`
        // and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                libc::off_t::try_from(offset)?,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of {name} ({len} bytes)"));
        }
        Ok(Self { ptr, len })
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.cast()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: `mmap` refuses a length of 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `window` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A `BPF_F_MMAPABLE` array map of `u64` mapped read-write as atomics: the programs add to
/// its slots with atomic adds, userspace loads and stores them (aligned 8-byte accesses, whole
/// or not at all).
pub struct U64Array {
    mapping: Mapping,
    slots: usize,
    /// Kept open, though the mapping alone keeps the map alive: the daemon's descriptors are
    /// where its kernel memory is accounted (`memlock` in `/proc/PID/fdinfo`).
    _map: MapData,
}

impl U64Array {
    /// Maps all of `map`, which `name` names in errors.
    ///
    /// # Errors
    /// The map's values are not 8 bytes, it was created without `BPF_F_MMAPABLE` (a map an
    /// older build pinned), or `mmap(2)` failed.
    pub fn new(map: MapData, name: &str) -> anyhow::Result<Self> {
        let info = map
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        if info.value_size() != 8 {
            bail!("{name} holds values of {} bytes, not 8", info.value_size());
        }
        if info.map_flags() & BPF_F_MMAPABLE == 0 {
            bail!("{name} was created without BPF_F_MMAPABLE: it cannot be read in place");
        }
        let slots = info.max_entries() as usize;
        let len = value_area(&info);
        let mapping = Mapping::window(map.fd().as_fd().as_raw_fd(), name, 0, len, true)?;
        Ok(Self {
            mapping,
            slots,
            _map: map,
        })
    }

    /// The map's slots.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `slots` 8-byte aligned u64 (page-aligned start, `len`
        // ≥ 8 × `slots`), lives as long as `self`, and is only accessed atomically here and
        // by the programs.
        unsafe { std::slice::from_raw_parts(self.mapping.ptr().cast::<AtomicU64>(), self.slots) }
    }
}
