//! Privileges: the up-front capability check, so "not root" is reported as such instead of
//! as an opaque `EPERM` from `bpf(2)`, and [`drop_after_attach`], which keeps only what the
//! attached daemon still uses.
//!
//! What `egressd run` still does after attaching: reloads (map updates through descriptors
//! it holds), tamper repair (`BPF_OBJ_GET` of its pins, `BPF_LINK_UPDATE`, attaching a hook
//! again and pinning its link in its root-owned pin directory), `/proc` enrichment and sink
//! I/O. Measured on Linux 6.18 (the kernel test `security_privileges_dropped_after_attach`,
//! run with each capability removed in turn): all of it works with `CAP_SYS_PTRACE` alone,
//! and only enrichment fails without it (`/proc/PID/exe` of another user's process), since
//! Linux 6.6 checks capabilities when maps and programs are created, not when descriptors
//! are used. On 5.10-6.5 with unprivileged BPF disabled (Debian's default) every `bpf(2)`
//! call needs `CAP_BPF`, and attaching cgroup programs needs `CAP_NET_ADMIN`. So egressd
//! keeps:
//!
//! | capability | needed for |
//! | --- | --- |
//! | `CAP_BPF` | `bpf(2)` on kernels < 6.6 with unprivileged BPF disabled: reloads, tamper checks and repairs |
//! | `CAP_NET_ADMIN` | attaching a detached hook to the cgroup again (tamper repair) on older kernels |
//! | `CAP_SYS_PTRACE` | `/proc/PID/exe` of other users' processes (enrichment) |
//! | `CAP_SYS_ADMIN` | only on a kernel without `CAP_BPF` (< 5.8), where it stands for it |
//!
//! `CAP_PERFMON` and `CAP_SYS_RESOURCE` are only needed to load programs and create maps,
//! which happens before the drop. Everything else (`CAP_DAC_OVERRIDE`, `CAP_SETUID`,
//! `CAP_SYS_MODULE`, `CAP_NET_RAW`, ...) is dropped from the effective, permitted,
//! inheritable, ambient and bounding sets, `no_new_privs` is set, and a seccomp filter
//! (rust-vmm's `seccompiler`) makes system calls egressd never makes after attaching fail
//! with `EPERM`: `execve`, `ptrace`, module loading, `mount` and namespaces, `kexec`,
//! `reboot`, clock setting, `setuid` and friends, keyrings, `userfaultfd`,
//! `perf_event_open`, `open_by_handle_at` and a few more. It is a deny list, not an allow
//! list, on purpose: a system call forgotten in an allow list would kill the daemon (or fail
//! its enforcement repairs) on some kernel or libc; the systemd unit adds its own allow list
//! (`SystemCallFilter=@system-service bpf mount`).
use std::fs;

/// `CAP_NET_ADMIN` (`include/uapi/linux/capability.h`): attaching cgroup socket programs.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_PTRACE`: reading `/proc/PID/exe` of other users' processes.
const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`: implies everything below on kernels without `CAP_BPF`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux >= 5.8): loading programs and creating maps.
const CAP_BPF: u32 = 39;

/// The capabilities egressd keeps after attaching (see the module docs), with their names;
/// `CAP_SYS_ADMIN` only where the kernel has no `CAP_BPF` ([`keep_mask`]).
pub const KEEP: [(u32, &str); 4] = [
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_BPF, "CAP_BPF"),
];

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

/// The highest capability the kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(CAP_BPF)
        .min(63)
}

/// The kept capabilities as a bit mask, on this kernel.
pub fn keep_mask() -> u64 {
    let mut m = KEEP.iter().fold(0, |m, (c, _)| m | (1u64 << c));
    if last_cap() >= CAP_BPF {
        m &= !(1u64 << CAP_SYS_ADMIN);
    }
    m
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

fn capget() -> std::io::Result<[CapData; 2]> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and two data structs, as the v3 ABI expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut h, d.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(d)
}

fn capset(d: &[CapData; 2]) -> std::io::Result<()> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: as in `capget`; the kernel only reads `d`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut h, d.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(op: libc::c_int, a: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: plain integer arguments.
    let r = unsafe {
        libc::prctl(
            op,
            a,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// System calls the seccomp filter refuses with `EPERM` (see the module docs).
fn denied_syscalls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_setgroups,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        libc::SYS_personality,
        libc::SYS_vhangup,
        libc::SYS_syslog,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_modify_ldt,
    ]);
    v
}

/// Installs the deny-list seccomp filter on every thread of the process (`TSYNC`).
fn seccomp() -> anyhow::Result<()> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp: {e}"))?;
    let rules = denied_syscalls()
        .into_iter()
        .map(|n| (n, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| anyhow::anyhow!("seccomp filter: {e}"))?;
    let prog: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| anyhow::anyhow!("seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| anyhow::anyhow!("seccomp: {e}"))
}

/// What [`drop_after_attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities still effective, by name.
    pub kept: Vec<&'static str>,
    /// Whether the bounding set could be reduced too (needs `CAP_SETPCAP`; under the
    /// systemd unit it is already reduced).
    pub bounding: bool,
    /// Whether the seccomp filter is installed.
    pub seccomp: bool,
}

/// After attaching: keeps only [`keep_mask`] (from what the process has) in the effective and
/// permitted sets, clears the inheritable and ambient sets, drops everything else from the
/// bounding set when it can, sets `no_new_privs` and installs the seccomp deny list. Call it
/// while the process has one thread: capabilities are per thread (the filter and
/// `no_new_privs` are synchronised to every thread).
///
/// # Errors
/// `capset`, `no_new_privs` or the filter failed (the daemon then refuses to run on).
pub fn drop_after_attach() -> anyhow::Result<Dropped> {
    let threads = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
        .unwrap_or(1);
    if threads > 1 {
        tracing::warn!(
            threads,
            "dropping capabilities with other threads running: they keep theirs"
        );
    }
    let last = last_cap();
    let keep = keep_mask();
    let mut bounding = true;
    for cap in 0..=last {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        if let Err(e) = prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
            // Without CAP_SETPCAP (systemd already bounded the set) this is refused.
            tracing::debug!(cap, error = %e, "PR_CAPBSET_DROP");
            bounding = false;
            break;
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .or_else(|e| {
        // Kernels without ambient capabilities have nothing to clear.
        if e.raw_os_error() == Some(libc::EINVAL) {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(|e| anyhow::anyhow!("clearing the ambient capabilities: {e}"))?;
    let mut d = capget().map_err(|e| anyhow::anyhow!("capget: {e}"))?;
    let (lo, hi) = (keep as u32, (keep >> 32) as u32);
    d[0].permitted &= lo;
    d[1].permitted &= hi;
    d[0].effective = d[0].permitted;
    d[1].effective = d[1].permitted;
    d[0].inheritable = 0;
    d[1].inheritable = 0;
    capset(&d).map_err(|e| anyhow::anyhow!("capset: {e}"))?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| anyhow::anyhow!("no_new_privs: {e}"))?;
    seccomp()?;
    let eff = u64::from(d[0].effective) | (u64::from(d[1].effective) << 32);
    Ok(Dropped {
        kept: KEEP
            .iter()
            .filter(|(c, _)| eff & (1u64 << c) != 0)
            .map(|(_, n)| *n)
            .collect(),
        bounding,
        seccomp: true,
    })
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
