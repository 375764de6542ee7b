//! Load and verifier failures turned into messages an operator can act on.
use super::*;

/// Turns a load failure into one that names the missing kernel feature.
pub(super) fn explain_load(e: EbpfError) -> anyhow::Error {
    let hint = match &e {
        EbpfError::MapError(MapError::CreateError { name, io_error }) => {
            let feature = if name == maps::EVENTS {
                "BPF_MAP_TYPE_RINGBUF (Linux >= 5.8)"
            } else if name.starts_with("EGRESSD_PREFIXES") || name.starts_with("EGRESSD_NAT64") {
                "BPF_MAP_TYPE_LPM_TRIE (Linux >= 4.11)"
            } else if name == maps::SOCKETS || name == maps::OWNERS {
                "BPF_MAP_TYPE_SK_STORAGE (Linux >= 5.2) or BTF for maps"
            } else {
                "BPF maps (CONFIG_BPF_SYSCALL)"
            };
            Some(format!(
                "creating map {name} failed ({io_error}): the kernel lacks {feature}, or the \
                 memory cgroup limit is too low"
            ))
        }
        _ => None,
    };
    let e = anyhow::Error::new(e);
    match hint {
        Some(h) => e.context(h),
        None => e.context("loading the eBPF object"),
    }
}

/// Adds what a program load/attach failure means, for an operator: the program and hook,
/// what the kernel lacks (read from the verifier log, which stays part of the message), the
/// running kernel, and what to do.
pub(super) fn explain_program(hook: &Hook, e: LoadError) -> anyhow::Error {
    let e = match e {
        LoadError::Object(e) => return e.context(format!("{}: broken eBPF object", hook.name)),
        LoadError::Kernel(e) => e,
    };
    let kernel = crate::kernel::coverage::kernel_release();
    let hint = match &e {
        ProgramError::LoadError { verifier_log, .. } => {
            let why = crate::kernel::coverage::verifier_reason(&verifier_log.to_string());
            format!(
                "the kernel ({kernel}) rejected program {} for {}: {why}. This kernel lacks \
                 something the program needs; `egressd coverage` shows what this kernel \
                 offers, and the README lists the kernels egressd is tested on. Please report \
                 it with the verifier log below",
                hook.program, hook.name
            )
        }
        ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EINVAL) => {
            format!(
                "{}: the kernel ({kernel}) refused the attachment (EINVAL): it lacks this \
                 attach type or cgroup bpf_links (CONFIG_CGROUP_BPF), or the cgroup is not v2",
                hook.name
            )
        }
        _ => format!("{} ({}) failed on kernel {kernel}", hook.name, hook.program),
    };
    anyhow::Error::new(e).context(hint)
}
