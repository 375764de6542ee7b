//! What the running kernel lets egressd enforce: feature probes (program types, map types,
//! helpers per program type, the BPF LSM) and the coverage report built from them, one row
//! per egress path. `egressd coverage` prints it, `agent_start` and `status` carry it, and
//! `/metrics` exposes it as `egressd_coverage`.
//!
//! Everything is decided by probing the kernel (as libbpf's `libbpf_probe_bpf_helper` does,
//! through `aya::sys`), never by its version number. Probes load tiny programs, so they need
//! CAP_BPF (root); without it the report says which answers are unknown.
use std::fmt::Write as _;

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use serde::Serialize;

/// Result of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// The kernel offers it.
    Yes,
    /// The kernel does not offer it.
    No,
    /// The probe could not run (no privileges, or an unexpected error).
    Unknown,
}

impl Probe {
    fn of<E>(r: Result<bool, E>) -> Self {
        match r {
            Ok(true) => Self::Yes,
            Ok(false) => Self::No,
            Err(_) => Self::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::No => "no",
            Self::Unknown => "unknown",
        }
    }
}

/// One named probe and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feature {
    /// What was probed, e.g. `helper bpf_sk_storage_get in cgroup_sock`.
    pub name: String,
    /// The answer.
    pub probe: Probe,
    /// Whether egressd cannot start without it.
    pub required: bool,
}

/// How one egress path is covered on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Judged, denied or reported as the policy says.
    Enforced,
    /// Part of the path is judged, part is not (the note says which).
    Partial,
    /// Nothing egressd loads sees this path on this kernel.
    NotCovered,
    /// The probes could not tell (run as root).
    Unknown,
}

impl Status {
    /// `enforced`, `partial`, `not_covered` or `unknown` (metrics label, README table).
    pub fn label(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Partial => "partial",
            Self::NotCovered => "not_covered",
            Self::Unknown => "unknown",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathCoverage {
    /// Stable short name of the path (metrics label), e.g. `udp`.
    pub path: &'static str,
    /// What a process does to take this path.
    pub what: &'static str,
    /// Coverage on this kernel.
    pub status: Status,
    /// The hooks that judge it (empty when none).
    pub hooks: &'static str,
    /// Why, in a few words (which probe decided).
    pub note: String,
}

/// The coverage report of the running kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// One row per egress path.
    pub paths: Vec<PathCoverage>,
    /// Every probe that decided a row.
    pub features: Vec<Feature>,
}

/// Program types whose helpers are probed, with their names in messages.
const PROGRAM_TYPES: [(ProgramType, &str); 3] = [
    (ProgramType::CgroupSockAddr, "cgroup_sock_addr"),
    (ProgramType::CgroupSock, "cgroup_sock"),
    (ProgramType::CgroupSkb, "cgroup_skb"),
];

/// Helpers the programs call, per program type (see `ebpf/src`): all are required.
const HELPERS: [(ProgramType, BpfHelper, &str); 17] = [
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_get_current_pid_tgid,
        "bpf_get_current_pid_tgid",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_get_current_uid_gid,
        "bpf_get_current_uid_gid",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_get_current_comm,
        "bpf_get_current_comm",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_get_current_cgroup_id,
        "bpf_get_current_cgroup_id",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_sk_storage_get,
        "bpf_sk_storage_get",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "bpf_ringbuf_reserve",
    ),
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_ktime_get_boot_ns,
        "bpf_ktime_get_boot_ns",
    ),
    (
        ProgramType::CgroupSock,
        BpfHelper::BPF_FUNC_sk_storage_get,
        "bpf_sk_storage_get",
    ),
    (
        ProgramType::CgroupSock,
        BpfHelper::BPF_FUNC_get_current_pid_tgid,
        "bpf_get_current_pid_tgid",
    ),
    (
        ProgramType::CgroupSock,
        BpfHelper::BPF_FUNC_get_current_comm,
        "bpf_get_current_comm",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_sk_storage_get,
        "bpf_sk_storage_get",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_tcp_sock,
        "bpf_tcp_sock",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_get_socket_uid,
        "bpf_get_socket_uid",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_skb_cgroup_id,
        "bpf_skb_cgroup_id",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_skb_load_bytes,
        "bpf_skb_load_bytes",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "bpf_ringbuf_reserve",
    ),
    (
        ProgramType::CgroupSkb,
        BpfHelper::BPF_FUNC_sk_lookup_udp,
        "bpf_sk_lookup_udp",
    ),
];

/// Map types the object creates: all are required.
const MAPS: [(MapType, &str); 6] = [
    (MapType::LpmTrie, "lpm_trie"),
    (MapType::RingBuf, "ringbuf"),
    (MapType::SkStorage, "sk_storage"),
    (MapType::PerCpuArray, "percpu_array"),
    (MapType::LruHash, "lru_hash"),
    (MapType::Array, "array"),
];

fn type_name(t: ProgramType) -> &'static str {
    PROGRAM_TYPES
        .iter()
        .find(|(p, _)| *p == t)
        .map_or("?", |(_, n)| n)
}

/// Whether the BPF LSM is active (`bpf` in `/sys/kernel/security/lsm`). As root, securityfs
/// is mounted first where nothing is (as systemd does at boot); `Unknown` when it cannot be
/// read.
pub fn bpf_lsm_active() -> Probe {
    const LSM: &str = "/sys/kernel/security/lsm";
    if !std::path::Path::new(LSM).exists() {
        // SAFETY: plain mount(2) of a pseudo filesystem with static, NUL-terminated strings.
        unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
    }
    match std::fs::read_to_string(LSM) {
        Ok(list) => {
            if list.trim().split(',').any(|l| l == "bpf") {
                Probe::Yes
            } else {
                Probe::No
            }
        }
        Err(_) => Probe::Unknown,
    }
}

/// Probes the running kernel and builds the report, with every probe (for `egressd
/// coverage`, `status` and `check`).
pub fn probe() -> Coverage {
    probe_with(true)
}

/// As [`probe`], for the daemon's start: without the LSM program-type probe, which loads a
/// program and attaches it to an LSM hook (a trampoline update, slow on some machines); the
/// daemon learns the same by loading and attaching its own ([`Coverage::with_lsm`]).
pub fn probe_for_start() -> Coverage {
    probe_with(false)
}

fn probe_with(lsm_program: bool) -> Coverage {
    let mut features = Vec::new();
    for (t, name) in PROGRAM_TYPES {
        features.push(Feature {
            name: format!("program type {name}"),
            probe: Probe::of(is_program_supported(t)),
            required: true,
        });
    }
    for (t, name) in MAPS {
        features.push(Feature {
            name: format!("map type {name}"),
            probe: Probe::of(is_map_supported(t)),
            required: true,
        });
    }
    for (t, helper, name) in HELPERS {
        features.push(Feature {
            name: format!("helper {name} in {}", type_name(t)),
            probe: Probe::of(is_helper_supported(t, helper)),
            required: true,
        });
    }
    // Not used: the packet hook reads the socket's recorded owner instead (see
    // `ebpf/src/owner.rs`). Shown so the report explains why that design is needed.
    features.push(Feature {
        name: "helper bpf_get_current_pid_tgid in cgroup_skb, not used".into(),
        probe: Probe::of(is_helper_supported(
            ProgramType::CgroupSkb,
            BpfHelper::BPF_FUNC_get_current_pid_tgid,
        )),
        required: false,
    });
    features.push(Feature {
        name: LSM_ACTIVE.into(),
        probe: bpf_lsm_active(),
        required: false,
    });
    if lsm_program {
        features.push(Feature {
            name: LSM_PROGRAM.into(),
            probe: Probe::of(is_program_supported(ProgramType::Lsm(LsmAttachType::Mac))),
            required: false,
        });
    }
    features.push(Feature {
        name: TC_PROGRAM.into(),
        probe: Probe::of(is_program_supported(ProgramType::SchedClassifier)),
        required: false,
    });
    for (helper, name) in TC_HELPERS {
        features.push(Feature {
            name: format!("helper {name} in sched_cls (tc/egress)"),
            probe: Probe::of(is_helper_supported(ProgramType::SchedClassifier, helper)),
            required: false,
        });
    }
    features.push(Feature {
        name: LSM_OFFSETS.into(),
        probe: match crate::kernel::offsets::kernel_offsets() {
            Ok(_) => Probe::Yes,
            Err(_) if !std::path::Path::new(crate::kernel::offsets::VMLINUX_BTF).exists() => {
                Probe::No
            }
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "kernel structure offsets");
                Probe::No
            }
        },
        required: false,
    });
    report(kernel_release(), features)
}

/// Probe names the LSM rows depend on.
const LSM_ACTIVE: &str = "BPF LSM active";
const LSM_PROGRAM: &str = "program type lsm";
const LSM_OFFSETS: &str = "kernel BTF with the socket and message fields the LSM hooks read";
/// Probe name of the `tc/egress` program type.
const TC_PROGRAM: &str = "program type sched_cls (tc/egress)";
/// Helpers `tc/egress` calls (see `ebpf/src/tc.rs`), probed in `sched_cls`.
const TC_HELPERS: [(BpfHelper, &str); 8] = [
    (BpfHelper::BPF_FUNC_sk_fullsock, "bpf_sk_fullsock"),
    (BpfHelper::BPF_FUNC_fib_lookup, "bpf_fib_lookup"),
    (
        BpfHelper::BPF_FUNC_skb_load_bytes_relative,
        "bpf_skb_load_bytes_relative",
    ),
    (BpfHelper::BPF_FUNC_sk_storage_get, "bpf_sk_storage_get"),
    (BpfHelper::BPF_FUNC_skb_under_cgroup, "bpf_skb_under_cgroup"),
    (BpfHelper::BPF_FUNC_get_socket_uid, "bpf_get_socket_uid"),
    (BpfHelper::BPF_FUNC_skb_cgroup_id, "bpf_skb_cgroup_id"),
    (BpfHelper::BPF_FUNC_ringbuf_reserve, "bpf_ringbuf_reserve"),
];
/// Hook of the packet-socket fallback.
const TC_HOOK: &str = "tc/egress";
/// What the fallback leaves out, for the `packet_socket` note.
const TC_GAPS: &str = "not covered: sends with PACKET_QDISC_BYPASS and AF_XDP (they skip \
                       the queueing layer), frames leaving through devices of another network \
                       namespace (containers), and socket() itself; packet_socket_open/\
                       packet_socket_send do not apply (no task at tc: listed executables' \
                       frames get packet_sockets too)";
/// What the fallback leaves out of `raw_next_hop`, and where it denies more than the LSM.
const TC_RAW_GAPS: &str = "not covered: raw sockets sending through devices of another \
                           network namespace (containers); denied besides (fail closed): \
                           frames through a device with forwarding off (the kernel's FIB \
                           helper answers only where forwarding is on), to IPv6 link-local \
                           destinations, and where policy routing by mark or uid sends the \
                           socket's traffic elsewhere than the FIB lookup (which has neither)";
/// What the next-hop check of `forced_next_hop` covers and leaves out.
const FORCED_GAPS: &str = "denied (fail-closed: next_hop_forced) when the device is in \
                           egressd's network namespace and none of its routes, in any table, \
                           covers the destination (the daemon mirrors them from rtnetlink); \
                           not covered: devices of other network namespaces (containers), and \
                           a route through the device in a table the socket's ip rules do not \
                           reach (it counts)";
/// Hooks of `raw_next_hop` under the fallback.
const TC_RAW_HOOKS: &str = "tc/egress, cgroup_skb/egress";
/// Hooks of the LSM rows.
const LSM_HOOKS: &str = "lsm/socket_create, lsm/socket_sendmsg";
const RAW_HOOKS: &str = "lsm/socket_sendmsg, cgroup_skb/egress";

/// Builds the rows from probe answers (pure; unit-tested).
pub fn report(kernel: String, features: Vec<Feature>) -> Coverage {
    let required: Vec<&Feature> = features.iter().filter(|f| f.required).collect();
    let missing: Vec<&str> = required
        .iter()
        .filter(|f| f.probe == Probe::No)
        .map(|f| f.name.as_str())
        .collect();
    let unknown = required.iter().any(|f| f.probe == Probe::Unknown);
    let base = if !missing.is_empty() {
        (
            Status::NotCovered,
            format!("egressd cannot load: missing {}", missing.join(", ")),
        )
    } else if unknown {
        (
            Status::Unknown,
            "probes need CAP_BPF: run as root".to_owned(),
        )
    } else {
        (Status::Enforced, String::new())
    };
    let with = |note: &str| {
        if base.0 == Status::Enforced {
            note.to_owned()
        } else {
            base.1.clone()
        }
    };
    let paths = vec![
        PathCoverage {
            path: "tcp",
            what: "TCP connect() (also TCP Fast Open sendto/sendmsg, io_uring connect)",
            status: base.0,
            hooks: "cgroup/connect4, cgroup/connect6, cgroup_skb/egress",
            note: with("refused with EPERM at connect()"),
        },
        PathCoverage {
            path: "udp",
            what: "UDP connect() then send, sendto/sendmsg/sendmmsg, io_uring",
            status: base.0,
            hooks: "cgroup/connect4, cgroup/connect6, cgroup/sendmsg4, cgroup/sendmsg6, \
                    cgroup_skb/egress",
            note: with("refused with EPERM at the send"),
        },
        PathCoverage {
            path: "raw_ip",
            what: "raw IP and ICMP/ICMPv6 (ping) sockets, SCTP and other IP protocols",
            status: base.0,
            hooks: "cgroup_skb/egress",
            note: with(
                "packets dropped by the packet hook (the send fails with EPERM; an ICMPv6 \
                 ping socket's send reports success, the echo is still dropped)",
            ),
        },
        PathCoverage {
            path: "established",
            what: "flows opened before egressd started or before a policy change",
            status: base.0,
            hooks: "cgroup_skb/egress",
            note: with("re-judged at their next packet (established = \"cut\")"),
        },
        PathCoverage {
            path: "forced_next_hop",
            what: "a socket forced onto a device (SO_BINDTODEVICE, SO_BINDTOIFINDEX, \
                   IP_UNICAST_IF/IPV6_UNICAST_IF, an IP_PKTINFO/IPV6_PKTINFO interface index) \
                   sending to an allowed address the device has no route to: the kernel \
                   assumes it is on that link and sends to whoever answers for it there",
            status: if base.0 == Status::Enforced {
                Status::Partial
            } else {
                base.0
            },
            hooks: "cgroup_skb/egress",
            note: with(FORCED_GAPS),
        },
    ];
    let lsm_state = |n: &str| features.iter().find(|f| f.name == n).map(|f| f.probe);
    let lsm_missing: Vec<&str> = [LSM_ACTIVE, LSM_PROGRAM, LSM_OFFSETS]
        .into_iter()
        .filter(|n| lsm_state(n) != Some(Probe::Yes))
        .collect();
    // "Missing" only where the probe said no; a refused test load (6.18 here: EPERM) is
    // not the same answer and is named as such.
    let (lsm_refused, lsm_absent): (Vec<&str>, Vec<&str>) = lsm_missing
        .iter()
        .partition(|n| lsm_state(n) == Some(Probe::Unknown));
    let lsm = if base.0 != Status::Enforced {
        Err((base.0, base.1.clone()))
    } else if lsm_missing.is_empty() {
        Ok(())
    } else {
        Err((
            Status::NotCovered,
            [
                (!lsm_absent.is_empty()).then(|| format!("missing: {}", lsm_absent.join(", "))),
                (!lsm_refused.is_empty()).then(|| {
                    format!(
                        "the kernel refused a test load of: {}",
                        lsm_refused.join(", ")
                    )
                }),
            ]
            .into_iter()
            .flatten()
            .fold("needs the BPF LSM".to_owned(), |m, p| m + "; " + &p),
        ))
    };
    let mut paths = paths;
    let tc_ready = base.0 == Status::Enforced
        && features
            .iter()
            .any(|f| f.name == TC_PROGRAM && f.probe == Probe::Yes)
        && features
            .iter()
            .filter(|f| f.name.ends_with("in sched_cls (tc/egress)"))
            .all(|f| f.probe == Probe::Yes);
    let fallback = lsm.is_err() && tc_ready;
    paths.extend(lsm_rows(lsm, None));
    let mut c = Coverage {
        kernel,
        paths,
        features,
    };
    if fallback {
        c = c.with_tc(
            Some(Ok(
                "on every interface of egressd's network namespace".into()
            )),
            None,
        );
    }
    c
}

/// The rows the LSM hooks decide: `Ok` when they judge (with the `packet_sockets` setting
/// when known), else the status and why not.
fn lsm_rows(
    lsm: Result<(), (Status, String)>,
    setting: Option<crate::config::PacketSockets>,
) -> [PathCoverage; 2] {
    let packet_what = "AF_PACKET and AF_XDP sockets (frames built by the process; \
                       CAP_NET_RAW), also SOCK_PACKET and PACKET_TX_RING";
    let raw_what = "raw IP sockets writing their own header (IP_HDRINCL, IPPROTO_RAW) sent \
                    to another next hop than the header names";
    match lsm {
        Ok(()) => [
            PathCoverage {
                path: "packet_socket",
                what: packet_what,
                status: Status::Enforced,
                hooks: LSM_HOOKS,
                note: match setting {
                    Some(s) => format!(
                        "packet_sockets = \"{s}\": socket() and each send judged for tasks \
                         of the enforced cgroup"
                    ),
                    None => "socket() and each send get the policy's packet_sockets \
                             (deny: EPERM)"
                        .into(),
                },
            },
            PathCoverage {
                path: "raw_next_hop",
                what: raw_what,
                status: Status::Enforced,
                hooks: RAW_HOOKS,
                note: "the sendto (or connected) address is judged at the send, the header \
                       by the packet hook"
                    .into(),
            },
        ],
        Err((status, why)) => [
            PathCoverage {
                path: "packet_socket",
                what: packet_what,
                status,
                hooks: "",
                note: format!("{why}; keep CAP_NET_RAW from workloads"),
            },
            PathCoverage {
                path: "raw_next_hop",
                what: raw_what,
                status,
                hooks: "",
                note: format!("{why}; only the header's destination is judged (cgroup_skb/egress)"),
            },
        ],
    }
}

impl Coverage {
    /// Replaces the LSM rows by what the daemon found when it attached: `lsm` is
    /// `Enforcer::lsm_coverage` (why the hooks do not run), `setting` the policy's
    /// `packet_sockets`.
    pub fn with_lsm(
        mut self,
        lsm: Result<(), String>,
        setting: crate::config::PacketSockets,
    ) -> Self {
        let base_ok = self
            .paths
            .iter()
            .find(|p| p.path == "tcp")
            .is_some_and(|p| p.status == Status::Enforced);
        let lsm = if base_ok {
            lsm.map_err(|why| (Status::NotCovered, why))
        } else {
            return self;
        };
        self.paths
            .retain(|p| p.path != "packet_socket" && p.path != "raw_next_hop");
        self.paths.extend(lsm_rows(lsm, Some(setting)));
        self
    }
}

impl Coverage {
    /// Replaces the `packet_socket` row by what the `tc/egress` fallback does: `tc` is
    /// `Enforcer::tc_coverage` (`None`: not started, the LSM hooks judge; `Ok`: where it is
    /// attached; `Err`: why it does not judge), `setting` the policy's `packet_sockets`
    /// when known.
    pub fn with_tc(
        mut self,
        tc: Option<Result<String, String>>,
        setting: Option<crate::config::PacketSockets>,
    ) -> Self {
        let Some(tc) = tc else {
            return self;
        };
        if let Some(row) = self.paths.iter_mut().find(|p| p.path == "raw_next_hop")
            && row.status == Status::NotCovered
        {
            match &tc {
                Ok(at) => {
                    row.status = Status::Partial;
                    row.hooks = TC_RAW_HOOKS;
                    row.note = format!(
                        "each frame of a raw IP socket created under the enforced cgroup must \
                         leave through the device and to the neighbour its header's \
                         destination is routed to (bpf_fib_lookup), else it is denied at \
                         tc/egress, {at}; {TC_RAW_GAPS}"
                    );
                }
                Err(why) => {
                    row.note = format!("{}; tc/egress fallback: {why}", row.note);
                }
            }
        }
        let Some(row) = self.paths.iter_mut().find(|p| p.path == "packet_socket") else {
            return self;
        };
        if row.status == Status::Enforced || row.status == Status::Unknown {
            return self;
        }
        let lsm_why = row.note.clone();
        match tc {
            Ok(at) => {
                row.status = Status::Partial;
                row.hooks = TC_HOOK;
                let setting = setting.map_or_else(
                    || "packet_sockets (deny: dropped)".to_owned(),
                    |s| format!("packet_sockets = \"{s}\""),
                );
                row.note = format!(
                    "each frame of a non-INET socket created under the enforced cgroup that \
                     goes through an interface's queueing layer gets {setting} at tc/egress, \
                     {at}; {TC_GAPS}. (LSM hooks: {lsm_why})"
                );
            }
            Err(why) => {
                row.note = format!("{lsm_why}; tc/egress fallback: {why}");
            }
        }
        self
    }
}

/// The report in a few fields, for `agent_start` (every format) and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// Paths (see [`PathCoverage::path`]) judged as the policy says.
    pub enforced: Vec<&'static str>,
    /// Paths judged in part (see the report's note); left out of records when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<&'static str>,
    /// Paths nothing egressd loads sees on this kernel.
    pub not_covered: Vec<&'static str>,
    /// Paths the probes could not decide.
    pub unknown: Vec<&'static str>,
}

impl Coverage {
    /// The compact form.
    pub fn summary(&self) -> Summary {
        let with = |st: Status| {
            self.paths
                .iter()
                .filter(|p| p.status == st)
                .map(|p| p.path)
                .collect()
        };
        Summary {
            kernel: self.kernel.clone(),
            enforced: with(Status::Enforced),
            partial: with(Status::Partial),
            not_covered: with(Status::NotCovered),
            unknown: with(Status::Unknown),
        }
    }

    /// The report as a text table (for `egressd coverage`).
    pub fn table(&self) -> String {
        let mut out = format!("kernel {}\n\n", self.kernel);
        let _ = writeln!(out, "{:<14} {:<12} HOW", "PATH", "STATUS");
        for p in &self.paths {
            let _ = writeln!(out, "{:<14} {:<12} {}", p.path, p.status.label(), p.what);
            if !p.hooks.is_empty() {
                let _ = writeln!(out, "{:<27} hooks: {}", "", p.hooks);
            }
            if !p.note.is_empty() {
                let _ = writeln!(out, "{:<27} {}", "", p.note);
            }
        }
        let _ = writeln!(out, "\nprobes:");
        for f in &self.features {
            let _ = writeln!(
                out,
                "  {:<8} {}{}",
                f.probe.label(),
                f.name,
                if f.required { "" } else { " (optional)" }
            );
        }
        out
    }
}

/// `uname -r`, or `unknown`.
pub fn kernel_release() -> String {
    // SAFETY: `uname` fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates `release`.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// What a verifier log says the kernel lacks, in an operator's words (the log itself stays
/// in the error).
pub fn verifier_reason(log: &str) -> String {
    for line in log.lines() {
        for marker in ["program of this type cannot use helper ", "unknown func "] {
            if let Some(rest) = line.split(marker).nth(1) {
                let helper = rest.split('#').next().unwrap_or(rest).trim();
                return format!("this program type may not call helper {helper} on this kernel");
            }
        }
        if line.contains("uses reserved fields") {
            return format!("an instruction this kernel does not know ({})", line.trim());
        }
        if line.contains("invalid bpf_context access") {
            return format!(
                "a context field this kernel does not offer ({})",
                line.trim()
            );
        }
    }
    "see the verifier log".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(name: &str, probe: Probe) -> Feature {
        Feature {
            name: name.into(),
            probe,
            required: true,
        }
    }

    #[test]
    fn all_present_enforces_socket_paths_not_packet_sockets() {
        let c = report("6.1.0".into(), vec![feature("a", Probe::Yes)]);
        let status = |p: &str| c.paths.iter().find(|r| r.path == p).map(|r| r.status);
        assert_eq!(status("tcp"), Some(Status::Enforced));
        assert_eq!(status("raw_ip"), Some(Status::Enforced));
        assert_eq!(status("packet_socket"), Some(Status::NotCovered));
        assert_eq!(status("raw_next_hop"), Some(Status::NotCovered));
        // Judged by cgroup_skb against the route mirror; other namespaces' devices are not.
        assert_eq!(status("forced_next_hop"), Some(Status::Partial));
        let note = &c
            .paths
            .iter()
            .find(|r| r.path == "packet_socket")
            .map(|r| r.note.clone());
        assert!(
            note.as_ref().is_some_and(|n| n.contains("BPF LSM active")),
            "{note:?}"
        );
    }

    #[test]
    fn lsm_probes_enforce_packet_sockets() {
        let c = report(
            "6.1.0".into(),
            vec![
                feature("a", Probe::Yes),
                Feature {
                    name: LSM_ACTIVE.into(),
                    probe: Probe::Yes,
                    required: false,
                },
                Feature {
                    name: LSM_PROGRAM.into(),
                    probe: Probe::Yes,
                    required: false,
                },
                Feature {
                    name: LSM_OFFSETS.into(),
                    probe: Probe::Yes,
                    required: false,
                },
            ],
        );
        let status = |c: &Coverage, p: &str| c.paths.iter().find(|r| r.path == p).map(|r| r.status);
        assert_eq!(status(&c, "packet_socket"), Some(Status::Enforced));
        // What the daemon found overrides the probes.
        let c = c.with_lsm(
            Err("the BPF LSM is not active".into()),
            crate::config::PacketSockets::Deny,
        );
        assert_eq!(status(&c, "packet_socket"), Some(Status::NotCovered));
        assert_eq!(status(&c, "raw_next_hop"), Some(Status::NotCovered));
    }

    #[test]
    fn tc_fallback_makes_packet_sockets_partial() {
        let tc = |probe| Feature {
            name: TC_PROGRAM.into(),
            probe,
            required: false,
        };
        let status = |c: &Coverage, p: &str| c.paths.iter().find(|r| r.path == p).map(|r| r.status);
        let c = report(
            "5.10.0".into(),
            vec![feature("a", Probe::Yes), tc(Probe::Yes)],
        );
        assert_eq!(status(&c, "packet_socket"), Some(Status::Partial));
        assert_eq!(status(&c, "raw_next_hop"), Some(Status::Partial));
        let row = c
            .paths
            .iter()
            .find(|r| r.path == "packet_socket")
            .map(|r| r.note.clone());
        assert!(
            row.as_ref()
                .is_some_and(|n| n.contains("PACKET_QDISC_BYPASS") && n.contains("AF_XDP")),
            "{row:?}"
        );
        assert_eq!(
            c.summary().partial,
            vec!["forced_next_hop", "packet_socket", "raw_next_hop"]
        );
        // Without sched_cls there is no fallback.
        let c = report(
            "5.10.0".into(),
            vec![feature("a", Probe::Yes), tc(Probe::No)],
        );
        assert_eq!(status(&c, "packet_socket"), Some(Status::NotCovered));
        assert_eq!(status(&c, "raw_next_hop"), Some(Status::NotCovered));
        // What the daemon found decides: a fallback that failed is not covered, with why.
        let c = c.with_tc(Some(Err("no interface".into())), None);
        assert_eq!(status(&c, "packet_socket"), Some(Status::NotCovered));
        assert_eq!(status(&c, "raw_next_hop"), Some(Status::NotCovered));
        let c = c.with_tc(
            Some(Ok("via tcx".into())),
            Some(crate::config::PacketSockets::Audit),
        );
        assert_eq!(status(&c, "packet_socket"), Some(Status::Partial));
        assert_eq!(status(&c, "raw_next_hop"), Some(Status::Partial));
        // Where the LSM hooks judge, the fallback is not started and changes nothing.
        let c = report(
            "6.1.0".into(),
            [LSM_ACTIVE, LSM_PROGRAM, LSM_OFFSETS]
                .into_iter()
                .map(|n| Feature {
                    name: n.into(),
                    probe: Probe::Yes,
                    required: false,
                })
                .chain([feature("a", Probe::Yes), tc(Probe::Yes)])
                .collect(),
        )
        .with_tc(None, None);
        assert_eq!(status(&c, "packet_socket"), Some(Status::Enforced));
    }

    #[test]
    fn a_missing_required_feature_is_named() {
        let c = report(
            "5.4.0".into(),
            vec![
                feature("map type ringbuf", Probe::No),
                feature("b", Probe::Yes),
            ],
        );
        assert_eq!(c.paths[0].status, Status::NotCovered);
        assert!(
            c.paths[0].note.contains("map type ringbuf"),
            "{}",
            c.paths[0].note
        );
    }

    #[test]
    fn unprivileged_probes_are_unknown() {
        let c = report("6.1.0".into(), vec![feature("a", Probe::Unknown)]);
        assert_eq!(c.paths[0].status, Status::Unknown);
    }

    #[test]
    fn verifier_reasons() {
        assert_eq!(
            verifier_reason(
                "0: (85) call bpf_get_current_pid_tgid#14\nprogram of this type cannot use helper bpf_get_current_pid_tgid#14\n"
            ),
            "this program type may not call helper bpf_get_current_pid_tgid on this kernel"
        );
        assert!(verifier_reason("BPF_STX uses reserved fields").contains("instruction"));
        assert_eq!(verifier_reason("whatever"), "see the verifier log");
    }
}
