//! Up-front capability check, so "not root" is reported as such instead of as an opaque
//! `EPERM` from `bpf(2)`.
use std::fs;

/// `CAP_NET_ADMIN` (`include/uapi/linux/capability.h`): attaching cgroup socket programs.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: implies everything below on kernels without `CAP_BPF`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux >= 5.8): loading programs and creating maps.
const CAP_BPF: u32 = 39;

/// Returns an error naming the missing capabilities when the effective set (from
/// `/proc/self/status`, `CapEff`, a hex bit mask) cannot load and attach the programs.
pub fn check() -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    missing(eff).map_or(Ok(()), |m| {
        Err(anyhow::anyhow!(
            "insufficient privileges: missing {m} in the effective capability set; egressd \
             loads eBPF programs and attaches them to a cgroup, which needs CAP_BPF and \
             CAP_NET_ADMIN (or CAP_SYS_ADMIN): run it as root"
        ))
    })
}

/// `None` when the capability mask `eff` suffices, else the names of what is missing.
pub fn missing(eff: u64) -> Option<String> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        return None;
    }
    let mut m = Vec::new();
    if !has(CAP_BPF) {
        m.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        m.push("CAP_NET_ADMIN");
    }
    Some(m.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert_eq!(missing(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)), None);
        assert_eq!(missing(1 << CAP_BPF).as_deref(), Some("CAP_NET_ADMIN"));
        assert_eq!(missing(0).as_deref(), Some("CAP_BPF and CAP_NET_ADMIN"));
    }
}
