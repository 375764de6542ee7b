//! The hooks egressd attaches: one table, read by loading, attaching, pinning, tamper checks
//! and `status`, so a new hook is added in one place.
use std::fs::File;

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Lsm,
        ProgramError, links::FdLink,
    },
};
use egressd_common::programs;

/// The program type and attach type of a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (connect4/6, sendmsg4/6; the attach type is in the
    /// program's ELF section).
    SockAddr,
    /// `BPF_PROG_TYPE_CGROUP_SKB`, `BPF_CGROUP_INET_EGRESS`.
    SkbEgress,
    /// `BPF_PROG_TYPE_CGROUP_SKB`, `BPF_CGROUP_INET_INGRESS`.
    SkbIngress,
    /// `BPF_PROG_TYPE_CGROUP_SOCK` (the attach type, `sock_create`, is in the program's ELF
    /// section).
    Sock,
    /// `BPF_PROG_TYPE_LSM`, `BPF_LSM_MAC`: a global program on the LSM hook named after
    /// `lsm/` in [`Hook::name`], attached with a tracing link (not to the cgroup; the
    /// program tests the task's cgroup itself). Optional: where it cannot load or the BPF
    /// LSM is not active, the other hooks still enforce and coverage says what is missing.
    Lsm,
}

/// One hook: the program that serves it, its name as operators know it, and the name of
/// its link pin under `DIR/links`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Program (function) name in the eBPF object, see [`egressd_common::programs`].
    pub program: &'static str,
    /// Section-style hook name, e.g. `cgroup/connect4` (event `hook` field, logs, metrics).
    pub name: &'static str,
    /// File name of the link pin.
    pub pin: &'static str,
    /// Program and attach type.
    pub kind: Kind,
    /// `enum bpf_attach_type` value (`include/uapi/linux/bpf.h`), for `BPF_PROG_QUERY`.
    pub attach_type: u32,
}

/// Every hook, in attach order: `sock_create` first, so sockets created while the others
/// attach already have their owner recorded; the optional LSM hooks last.
pub const HOOKS: [Hook; 9] = [
    Hook {
        program: programs::SOCK_CREATE,
        name: "cgroup/sock_create",
        pin: "sock_create",
        kind: Kind::Sock,
        attach_type: 2,
    },
    Hook {
        program: programs::CONNECT4,
        name: "cgroup/connect4",
        pin: "connect4",
        kind: Kind::SockAddr,
        attach_type: 10,
    },
    Hook {
        program: programs::CONNECT6,
        name: "cgroup/connect6",
        pin: "connect6",
        kind: Kind::SockAddr,
        attach_type: 11,
    },
    Hook {
        program: programs::SENDMSG4,
        name: "cgroup/sendmsg4",
        pin: "sendmsg4",
        kind: Kind::SockAddr,
        attach_type: 14,
    },
    Hook {
        program: programs::SENDMSG6,
        name: "cgroup/sendmsg6",
        pin: "sendmsg6",
        kind: Kind::SockAddr,
        attach_type: 15,
    },
    Hook {
        program: programs::SKB_EGRESS,
        name: "cgroup_skb/egress",
        pin: "skb_egress",
        kind: Kind::SkbEgress,
        attach_type: 1,
    },
    Hook {
        program: programs::SKB_INGRESS,
        name: "cgroup_skb/ingress",
        pin: "skb_ingress",
        kind: Kind::SkbIngress,
        attach_type: 0,
    },
    Hook {
        program: programs::LSM_SOCKET_CREATE,
        name: "lsm/socket_create",
        pin: "lsm_socket_create",
        kind: Kind::Lsm,
        attach_type: 27,
    },
    Hook {
        program: programs::LSM_SOCKET_SENDMSG,
        name: "lsm/socket_sendmsg",
        pin: "lsm_socket_sendmsg",
        kind: Kind::Lsm,
        attach_type: 27,
    },
];

/// The hook served by program `program`.
pub fn by_program(program: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.program == program)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

impl Hook {
    /// The LSM hook name (`socket_create`) of a [`Kind::Lsm`] hook; empty for others.
    pub fn lsm_hook(&self) -> &'static str {
        self.name.strip_prefix("lsm/").unwrap_or("")
    }

    /// Whether the hook is attached to the cgroup (false for the global LSM programs).
    pub fn on_cgroup(&self) -> bool {
        self.kind != Kind::Lsm
    }

    /// Loads the program into the kernel (the verifier runs here). `btf` caches the
    /// kernel's BTF for the LSM hooks (read at the first that needs it).
    pub fn load(&self, ebpf: &mut Ebpf, btf: &mut Option<Btf>) -> Result<(), LoadError> {
        let res = match self.kind {
            Kind::SockAddr => program::<CgroupSockAddr>(ebpf, self.program)
                .map_err(LoadError::Object)?
                .load(),
            Kind::SkbEgress | Kind::SkbIngress => program::<CgroupSkb>(ebpf, self.program)
                .map_err(LoadError::Object)?
                .load(),
            Kind::Sock => program::<CgroupSock>(ebpf, self.program)
                .map_err(LoadError::Object)?
                .load(),
            Kind::Lsm => {
                let btf = match btf {
                    Some(b) => b,
                    None => btf.insert(
                        Btf::from_sys_fs().map_err(|e| LoadError::Kernel(ProgramError::Btf(e)))?,
                    ),
                };
                program::<Lsm>(ebpf, self.program)
                    .map_err(LoadError::Object)?
                    .load(self.lsm_hook(), btf)
            }
        };
        res.map_err(LoadError::Kernel)
    }

    /// Attaches the loaded program to `cg` (an LSM program globally); the link is owned by the program (dropped with
    /// the [`Ebpf`]), or taken out and returned as an [`FdLink`] when `take` is set (to pin
    /// it).
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        cg: &File,
        take: bool,
    ) -> Result<Option<FdLink>, LoadError> {
        // With bpf_link (Linux >= 5.7, what aya uses) cgroup attachments always coexist with
        // other programs, and the kernel rejects any flag: pass the default.
        let mode = CgroupAttachMode::Single;
        let link = match self.kind {
            Kind::SockAddr => {
                let p = program::<CgroupSockAddr>(ebpf, self.program).map_err(LoadError::Object)?;
                let id = p.attach(cg, mode).map_err(LoadError::Kernel)?;
                if take {
                    Some(p.take_link(id).map_err(LoadError::Kernel)?.try_into())
                } else {
                    None
                }
            }
            Kind::SkbEgress | Kind::SkbIngress => {
                let t = if self.kind == Kind::SkbEgress {
                    CgroupSkbAttachType::Egress
                } else {
                    CgroupSkbAttachType::Ingress
                };
                let p = program::<CgroupSkb>(ebpf, self.program).map_err(LoadError::Object)?;
                let id = p.attach(cg, t, mode).map_err(LoadError::Kernel)?;
                if take {
                    Some(p.take_link(id).map_err(LoadError::Kernel)?.try_into())
                } else {
                    None
                }
            }
            Kind::Sock => {
                let p = program::<CgroupSock>(ebpf, self.program).map_err(LoadError::Object)?;
                let id = p.attach(cg, mode).map_err(LoadError::Kernel)?;
                if take {
                    Some(p.take_link(id).map_err(LoadError::Kernel)?.try_into())
                } else {
                    None
                }
            }
            Kind::Lsm => {
                let p = program::<Lsm>(ebpf, self.program).map_err(LoadError::Object)?;
                let id = p.attach().map_err(LoadError::Kernel)?;
                if take {
                    Some(Ok(FdLink::from(
                        p.take_link(id).map_err(LoadError::Kernel)?,
                    )))
                } else {
                    None
                }
            }
        };
        link.transpose()
            .map_err(|e| LoadError::Object(anyhow::Error::new(e)))
    }
}

/// Why a hook could not be loaded or attached.
#[derive(Debug)]
pub enum LoadError {
    /// The object is not what this build expects (a build fault, not the kernel's).
    Object(anyhow::Error),
    /// The kernel refused (verifier, attach type, permissions).
    Kernel(ProgramError),
}
