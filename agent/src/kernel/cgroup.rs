//! cgroup v2 discovery and validation.
//!
//! The cgroup2 mount point differs between hosts (`/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones), so it is read from `/proc/self/mountinfo`
//! (format: `proc(5)`), never hard-coded.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// `CGROUP2_SUPER_MAGIC` from `include/uapi/linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Returns the mount point of the first cgroup2 filesystem in `/proc/self/mountinfo`.
///
/// Errors: the file cannot be read, or no cgroup2 filesystem is mounted.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_root_from(&text).context(
        "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); egressd attaches to \
         cgroup v2: mount it with `mount -t cgroup2 none /sys/fs/cgroup`",
    )
}

/// Parses mountinfo text: fields are `id parent major:minor root mount-point options
/// [optional...] - fstype source super-options`. Mount points escape spaces as `\040`.
pub fn cgroup2_root_from(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `path` is a directory on a cgroup2 filesystem, so attaching cannot silently
/// target a cgroup v1 hierarchy or an ordinary directory.
pub fn validate(path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cgroup {}", path.display()))?;
    if !meta.is_dir() {
        bail!("cgroup {} is not a directory", path.display());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("cgroup {} contains a NUL byte", path.display()))?;
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        bail!(
            "{} is not a cgroup v2 directory (filesystem magic {:#x}); the cgroup2 mount here \
             is {}",
            path.display(),
            st.f_type,
            cgroup2_root().map_or_else(|e| e.to_string(), |p| p.display().to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_root_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_from(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            cgroup2_root_from("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
