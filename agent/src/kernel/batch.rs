//! Batch operations on BPF maps (`BPF_MAP_*_BATCH` of `include/uapi/linux/bpf.h`, Linux
//! 5.6+): one `bpf(2)` call for many elements where aya makes one per element. Filling a
//! large policy's tries, and reading the per-CPU counter arrays (36,864 slots of attempts) for
//! every heartbeat, scrape and stop: one call per slot cost the
//! daemon 30-100 ms of CPU natively each time, and seconds in a VM under TCG.
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::anyhow;
use aya::Pod;
use aya::maps::{IterableMap as _, MapData, PerCpuArray};

/// `BPF_MAP_DELETE_BATCH` of `keys`; false when it did not delete them all (the caller then
/// deletes one by one, ignoring keys already gone).
pub fn delete<K: Copy>(fd: RawFd, keys: &[K]) -> bool {
    if keys.is_empty() {
        return true;
    }
    let Ok(count) = u32::try_from(keys.len()) else {
        return false;
    };
    let Ok(map_fd) = u32::try_from(fd) else {
        return false;
    };
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: 0,
        count,
        map_fd,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `keys` outlives the call and holds `count` keys of the map's key size.
    let r = unsafe { bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) };
    r.is_ok() && attr.count == count
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `bpf(cmd, attr)` for one of the batch commands; the kernel writes the elements done back
/// into `attr.count` (and the position token into `*attr.out_batch`).
///
/// # Safety
/// `attr`'s `keys`, `values`, `in_batch` and `out_batch` are null or point to memory valid
/// for `count` elements of the map's key and value sizes (tokens: one key).
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix; its pointers as the caller promises.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut *attr, size_of::<BatchAttr>()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `BPF_MAP_UPDATE_BATCH` (`include/uapi/linux/bpf.h`): one syscall for all elements,
/// several times faster than one `BPF_MAP_UPDATE_ELEM` each for a large policy. Returns
/// `Ok(false)` when the kernel does not support batch updates for this map type (then the
/// caller inserts one by one), an error when it failed part way.
pub fn update<K: Copy, V: Copy>(fd: RawFd, keys: &[K], values: &[V]) -> anyhow::Result<bool> {
    if keys.is_empty() {
        return Ok(true);
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len().min(values.len()))?,
        map_fd: u32::try_from(fd)?,
        elem_flags: 0,
        flags: 0,
    };
    let want = attr.count;
    // SAFETY: keys and values outlive the call and hold `count` elements of the map's key
    // and value sizes.
    let Err(err) = (unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) }) else {
        return Ok(true);
    };
    // ENOTSUPP (524, kernel-internal) and EOPNOTSUPP: the map type has no batch operation
    // (LPM tries before 5.x), so nothing was stored and `count` was never written back (it
    // still holds what was asked). EINVAL: an old kernel without the command; it stored
    // nothing only if it says so.
    let unsupported = match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | 524) => true,
        Some(libc::EINVAL) => attr.count == 0,
        _ => false,
    };
    if unsupported {
        return Ok(false);
    }
    Err(anyhow!(
        "BPF_MAP_UPDATE_BATCH stored {} of {want} elements: {err}",
        attr.count
    ))
}

/// Every element of the BPF array (plain or per-CPU) behind `fd`: `len` elements of
/// `per_elem` values each (1, or the possible CPU count of a per-CPU array, each value
/// padded to 8 bytes by the kernel, which `V`'s size must already be), in index order.
/// `Ok(None)`: the kernel has no batch lookup for it (before 5.6); the caller reads one by
/// one. Errors: any other failure of `BPF_MAP_LOOKUP_BATCH`.
fn lookup_array<V: Pod + Default>(
    fd: RawFd,
    len: u32,
    per_elem: usize,
) -> anyhow::Result<Option<Vec<V>>> {
    debug_assert!(per_elem == 1 || size_of::<V>().is_multiple_of(8));
    let n = len as usize;
    let mut out = vec![V::default(); n * per_elem];
    let mut keys = vec![0u32; n];
    let mut values = vec![V::default(); n * per_elem];
    // The position token: for an array, the last index read (`batch.out_batch`).
    let mut token = 0u32;
    let mut next = 0u32;
    let mut first = true;
    // Each call returns at least one element or ends, so `len + 1` calls bound the loop.
    for _ in 0..=n {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: len,
            map_fd: u32::try_from(fd)?,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `keys` holds `len` u32 keys and `values` `len` elements of `per_elem`
        // values of the map's (padded) value size; the tokens are u32, an array's key size.
        let err = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        let end = match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None => false,
            // The last elements: `count` of them are valid.
            Some(libc::ENOENT) => true,
            Some(libc::EOPNOTSUPP | libc::EINVAL | 524) if first => return Ok(None),
            _ => {
                return Err(anyhow!(
                    "BPF_MAP_LOOKUP_BATCH: {}",
                    err.unwrap_or_else(std::io::Error::last_os_error)
                ));
            }
        };
        let got = (attr.count as usize).min(n);
        for (i, key) in keys[..got].iter().enumerate() {
            let k = *key as usize;
            if k < n {
                out[k * per_elem..(k + 1) * per_elem]
                    .copy_from_slice(&values[i * per_elem..(i + 1) * per_elem]);
            }
        }
        if end || got == 0 {
            return Ok(Some(out));
        }
        token = next;
        first = false;
    }
    Err(anyhow!(
        "BPF_MAP_LOOKUP_BATCH did not reach the end of the array"
    ))
}

/// Every element of a per-CPU array, each CPU's value in a row of the result
/// ([`PerCpuRead::slot`]). Errors: map reads, or the possible CPU count unknown.
pub fn read_per_cpu<V: Pod + Default>(
    map: &PerCpuArray<MapData, V>,
) -> anyhow::Result<PerCpuRead<V>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let fd = map.map().fd().as_fd().as_raw_fd();
    if size_of::<V>().is_multiple_of(8)
        && let Some(values) = lookup_array(fd, map.len(), cpus)?
    {
        return Ok(PerCpuRead { values, cpus });
    }
    let mut values = Vec::with_capacity(map.len() as usize * cpus);
    for i in 0..map.len() {
        values.extend(map.get(&i, 0)?.iter().copied());
    }
    Ok(PerCpuRead { values, cpus })
}

/// A per-CPU array read whole by [`read_per_cpu`].
pub struct PerCpuRead<V> {
    values: Vec<V>,
    cpus: usize,
}

impl<V> PerCpuRead<V> {
    /// The possible CPUs' values of element `index` (empty past the end).
    pub fn slot(&self, index: u32) -> &[V] {
        let at = index as usize * self.cpus;
        self.values.get(at..at + self.cpus).unwrap_or(&[])
    }
}
