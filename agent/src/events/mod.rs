//! Ring buffer records -> typed, enriched records that sinks format and deliver.
//!
//! The kernel writes [`egressd_common::Event`] (96 bytes, see that type for byte order);
//! [`decode`] copies one out of a ring-buffer item and [`Enricher::enrich`] turns it into a
//! [`ConnectionEvent`]: wall-clock time, an event id unique per host, host name and labels,
//! the agent, process details read from `/proc` at event time ([`procinfo`]), user and group
//! names, cgroup path with the systemd unit and container id it shows, region name, rule,
//! mode, policy generation and digest, and the kernel's suppression count.
//!
//! Lifecycle records ([`Lifecycle`]: agent start and stop, policy loaded, heartbeat) share
//! the same [`Header`], so every record a host emits has one `id` and one `sequence` number
//! from the same counter: a gap in `sequence` at the SIEM is a lost record.
//!
//! Field names of the native JSON form ([`crate::events::formats::json`]) follow the Elastic Common
//! Schema (ECS 8.x) where it has one (`@timestamp`, `host.name`, `process.pid`,
//! `destination.ip`, ...). The other formats map these records in [`crate::events::formats`].
//!
//! The events layer: this module (decode and enrich), [`procinfo`] (`/proc`, NSS), [`summary`]
//! (suppression summaries), [`worker`] (the ring-buffer reader), [`stats`] (the kernel
//! counters, named), [`formats`] (one file per format, golden files), [`pipeline`] (per-sink
//! queues, retries, the spool), [`sinks`] (one file per sink) and [`audit`] (the record chain,
//! `egressd audit verify`). May use [`crate::kernel`], [`crate::policy`], [`crate::config`] and
//! [`crate::base`], never [`crate::daemon`].
pub mod audit;
pub mod formats;
pub mod pipeline;
pub mod procinfo;
pub mod sample;
pub mod sinks;
pub mod stats;
pub mod summary;
pub mod worker;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use egressd_common::{Event, Hook, Verdict, family};
use serde::Serialize;

use crate::{
    events::stats::{CounterRow, Loss},
    policy::Policy,
};

/// Copies an [`Event`] out of a ring-buffer item; `None` if the item is too short (a
/// layout mismatch between kernel object and daemon, which would be a build error).
pub fn decode(item: &[u8]) -> Option<Event> {
    if item.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data; the item may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) })
}

/// RFC 3339 text of a record's time ([`rfc3339`]: at most 31 bytes), kept inline: no
/// allocation per record.
pub type Timestamp = arrayvec::ArrayString<32>;

/// A record's id ([`Header::id`]: the 16-digit ephemeral id, `-`, and up to 20 digits),
/// kept inline.
pub type EventId = arrayvec::ArrayString<48>;

/// A task's `comm` as text ([`Process::name`]: at most 16 bytes, each invalid UTF-8 byte
/// replaced by U+FFFD, so at most 48), kept inline.
pub type Comm = arrayvec::ArrayString<48>;

/// Fields every record carries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Header {
    /// RFC 3339 UTC time with nanoseconds, e.g. `2026-11-29T09:30:00.123456789Z`.
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    /// Record type: `"connection"`, `"agent_start"`, `"agent_stop"`, `"policy_loaded"`,
    /// `"heartbeat"`, `"reload_failed"`, `"policy_fallback"` or `"tamper_repaired"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Event id, unique per host: `{agent.ephemeral_id}-{sequence}`.
    pub id: EventId,
    /// Position of this record in the agent run's stream, from 1, without gaps: the SIEM can
    /// detect a lost record by a missing number.
    pub sequence: u64,
    /// Observing host (shared by every record of the run: no copy per record).
    pub host: Arc<Host>,
    /// This agent (shared likewise).
    pub agent: Arc<AgentInfo>,
    /// Same time as `timestamp`, nanoseconds since the Unix epoch (for formats that want
    /// numbers; not serialized).
    #[serde(skip)]
    pub unix_ns: i128,
}

/// `host.*`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Host {
    /// Kernel host name (`uname -n`).
    pub name: String,
    /// Operator-defined labels from the config's `[host] labels` (site, role, environment,
    /// ...), sorted by key; omitted when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `agent.*`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct AgentInfo {
    /// egressd version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Random id of this agent run (16 lowercase hex digits), new at every start; prefix of
    /// every event id (ECS `agent.ephemeral_id`).
    pub ephemeral_id: String,
}

/// One denied or audited connection attempt, as sinks receive it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionEvent {
    /// Time, type `"connection"`, id, sequence, host and agent.
    #[serde(flatten)]
    pub header: Header,
    /// `"deny"` (the caller got EPERM) or `"audit"` (let through, would have been denied).
    pub verdict: &'static str,
    /// Kernel hook that judged it, e.g. `"cgroup/connect4"`.
    pub hook: &'static str,
    /// Calling process.
    pub process: Process,
    /// Calling user (real uid).
    pub user: Named,
    /// Calling group (real gid).
    pub group: Named,
    /// cgroup v2 of the caller.
    pub cgroup: Cgroup,
    /// Container the caller runs in, when its cgroup path shows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Address family and transport.
    pub network: Network,
    /// Where the connection was going (absent for a packet socket, which has no IP
    /// destination).
    #[serde(skip_serializing_if = "Destination::is_absent")]
    pub destination: Destination,
    /// Policy that judged it.
    pub policy: PolicyRef,
    /// Rule that decided.
    pub rule: Rule,
    /// Events for the same (process, destination, verdict, hook) that the kernel suppressed since
    /// the previous one it emitted (flood control; the counters still count them).
    pub suppressed: u32,
}

/// `process.*`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Process {
    /// Thread-group id.
    pub pid: u32,
    /// Task name (`comm`, at most 15 bytes), from the kernel.
    pub name: Comm,
    /// Calling thread.
    pub thread: Id,
    /// Parent process, from `/proc/PID/stat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// Executable path, from the `/proc/PID/exe` link (may end in ` (deleted)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<Arc<str>>,
    /// Arguments joined by spaces, from `/proc/PID/cmdline`; at most
    /// [`procinfo::MAX_CMDLINE`] bytes, longer ones are cut and end in `...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Arc<str>>,
    /// True when the process had exited before `/proc` could be read at event time: only the
    /// kernel's fields (pid, thread, name, user, group, cgroup id) are then known.
    pub exited: bool,
    /// Where `parent`, `executable`, `command_line` and the cgroup path come from
    /// ([`procinfo::Details::label`]): `verified` (read from `/proc` and consistent with
    /// the kernel's record), `exited`, `mismatch` (the pid now runs another program: withheld),
    /// `skipped` (enrichment stalled), `none` (no pid).
    pub details: &'static str,
    /// Whose process fields these are: `"task"` (the task that made the call, read in the
    /// socket hook), `"socket_owner"` (the task that created the socket, recorded when it
    /// was created; a packet hook's event), or `"socket_uid"` (a socket older than egressd:
    /// only `user.id` and `cgroup.id` are known, pid 0).
    pub attribution: &'static str,
}

/// What a [`egressd_common::failsafe`] reason means, `None` for 0 (the policy decided).
pub fn failsafe_reason(code: u8) -> Option<&'static str> {
    use egressd_common::failsafe as f;
    Some(match u32::from(code) {
        f::NONE => return None,
        f::UNPARSEABLE => {
            "headers egressd cannot read or does not walk (e.g. a routing header of type 0 or 3, a truncated header), or a kernel structure an LSM hook could not read"
        }
        f::CHAIN_TOO_LONG => "too many IPv6 extension headers or IPv4 options",
        f::BAD_ENTRY => "corrupt policy map (entry id out of range)",
        f::NO_PAGE => "corrupt policy map (IPv4 table page missing)",
        f::LOCAL_MISROUTED => "loopback destination leaving through another interface",
        f::ROUTE_TOO_LONG => "routing header or source route with too many addresses",
        f::ROUTE_HOP_RULES => {
            "routing hop (or raw socket next hop) in a region with protocol/port rules"
        }
        f::NEXT_HOP_MISMATCH => {
            "raw socket frame leaving to another next hop than its header's destination"
        }
        f::NEXT_HOP_UNVERIFIED => {
            "raw socket frame whose next hop the kernel could not compute (forwarding off on the interface?)"
        }
        f::SCRATCH_RACE => {
            "packet hook interrupted by another packet's on the same CPU: its header walk could not be trusted"
        }
        f::NEXT_HOP_FORCED => {
            "next hop forced onto an interface with no route to the destination (socket bound to a device, IP_PKTINFO, IP_UNICAST_IF)"
        }
        _ => "unknown reason",
    })
}

/// Name of an [`egressd_common::attribution`] code.
pub fn attribution_name(code: u8) -> &'static str {
    match code {
        egressd_common::attribution::TASK => "task",
        egressd_common::attribution::SOCKET_OWNER => "socket_owner",
        egressd_common::attribution::SOCKET_UID => "socket_uid",
        _ => "invalid",
    }
}

/// `process.parent.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Parent {
    /// Parent process id.
    pub pid: u32,
}

/// A numeric id (`process.thread.id`).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Id {
    /// The id.
    pub id: u64,
}

/// A numeric id with its name when the host's user database knows it (`user.*`, `group.*`).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Named {
    /// Numeric id.
    pub id: u64,
    /// Name from the system's user/group database (NSS), if any (shared with the cache of
    /// names: no copy per event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
}

/// `cgroup.*` (no ECS equivalent).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Cgroup {
    /// cgroup v2 id (inode number of its directory), from the kernel.
    pub id: u64,
    /// Path below the cgroup2 mount, e.g. `/system.slice/nginx.service`, from
    /// `/proc/PID/cgroup` (absent when the process had exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    /// Deepest systemd unit (`*.service` or `*.scope`) in `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<Arc<str>>,
}

/// `container.*`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Container {
    /// 64 hex digit container id found in the cgroup path (shared with every event of the
    /// process).
    pub id: Arc<str>,
    /// `docker`, `containerd`, `cri-o`, `podman` or `unknown`, from the path's naming.
    pub runtime: &'static str,
}

/// `network.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Network {
    /// `"ipv4"` or `"ipv6"` (of the destination as judged); `"packet"` (AF_PACKET) or
    /// `"xdp"` (AF_XDP) for a packet socket, which has no IP destination; `"other"` for a
    /// frame of another non-INET socket family (`tc/egress`) or an unreadable socket.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `"tcp"`, `"udp"`, or the protocol number as text; for a packet socket its type
    /// (`"raw"`, `"dgram"`, `"packet"`). Borrowed for a known name: no allocation per event.
    pub transport: Cow<'static, str>,
    /// IANA protocol number (absent for a packet socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iana_number: Option<u8>,
    /// The protocol a packet socket was opened for (an EtherType such as 2048 for IPv4;
    /// 0 = none yet, 3 = every protocol); absent for IP destinations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<u16>,
}

/// `destination.*`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Destination {
    /// Destination address; an IPv4-mapped IPv6 destination is shown as its IPv4 address.
    /// Absent for a packet socket (the frame's addresses are the process's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    /// Policy region of `ip`, or `"unknown"` (shared with every event: no copy per event).
    pub region: Arc<str>,
    /// True when an AF_INET6 socket named it as `::ffff:a.b.c.d`.
    pub mapped: bool,
}

impl Destination {
    /// True for a packet socket's event: no IP destination.
    pub fn is_absent(&self) -> bool {
        self.ip.is_none()
    }
}

/// The policy in force.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyRef {
    /// `"enforce"` or `"audit"`, derived from the verdict.
    pub mode: &'static str,
    /// Generation counter of the loaded policy.
    pub generation: u64,
    /// Digest of the loaded policy (16 hex digits, see [`crate::policy::Policy::digest`];
    /// shared with every event: no copy per event).
    pub digest: Arc<str>,
}

/// `rule.*`: what in the policy decided.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rule {
    /// Rule id from the kernel; 0 means the region allowlist decided.
    pub id: u32,
    /// `"allowlist"` for id 0, `"default"` for the policy default, else the rule's `name` (`"rule-{id}"` if the policy that
    /// judged is no longer known). Borrowed for the fixed names: no allocation per event.
    pub name: Cow<'static, str>,
}

/// Static context of an agent run: what every record repeats.
#[derive(Debug, Clone)]
pub struct Context {
    /// Host name and labels.
    pub host: Host,
    /// Version and ephemeral id.
    pub agent: AgentInfo,
}

/// Hands out event ids and sequence numbers (shared by the event reader and the lifecycle
/// records; lock-free).
#[derive(Debug)]
pub struct Sequencer {
    ctx: Context,
    /// `ctx`'s host and agent as every header shares them.
    host: Arc<Host>,
    agent: Arc<AgentInfo>,
    next: AtomicU64,
}

impl Sequencer {
    /// A sequencer whose first record gets sequence 1.
    pub fn new(ctx: Context) -> Self {
        Self {
            host: Arc::new(ctx.host.clone()),
            agent: Arc::new(ctx.agent.clone()),
            ctx,
            next: AtomicU64::new(1),
        }
    }

    /// The static context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// A header for a new record of type `kind` at `unix_ns` (nanoseconds since the epoch),
    /// with the next sequence number.
    pub fn header(&self, kind: &'static str, unix_ns: i128) -> Header {
        let mut h = self.unnumbered(kind, unix_ns);
        self.number(&mut h);
        h
    }

    /// As [`Self::header`] without a sequence number yet (0, empty id): for records built
    /// off the daemon's main task, numbered by [`Self::number`] when they are submitted, so
    /// that sequence numbers follow the order in which the sinks receive records.
    pub fn unnumbered(&self, kind: &'static str, unix_ns: i128) -> Header {
        Header {
            timestamp: rfc3339(unix_ns),
            kind,
            id: EventId::new(),
            sequence: 0,
            host: self.host.clone(),
            agent: self.agent.clone(),
            unix_ns,
        }
    }

    /// [`Self::unnumbered`] written over `header` (of a record handed back for reuse), its
    /// host and agent kept when they are this run's ([`share`]).
    pub fn unnumbered_into(&self, header: &mut Header, kind: &'static str, unix_ns: i128) {
        let Header {
            timestamp,
            kind: out_kind,
            id,
            sequence,
            host,
            agent,
            unix_ns: out_ns,
        } = header;
        *timestamp = rfc3339(unix_ns);
        *out_kind = kind;
        id.clear();
        *sequence = 0;
        share(host, &self.host);
        share(agent, &self.agent);
        *out_ns = unix_ns;
    }

    /// Gives `header` the next sequence number and its id.
    pub fn number(&self, header: &mut Header) {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        header.sequence = sequence;
        // Every record gets one: without the formatting machinery or an allocation. An
        // ephemeral id longer than [`ephemeral_id`]'s 16 digits is cut to what fits.
        let eid = &self.ctx.agent.ephemeral_id;
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(sequence);
        let mut id = EventId::new();
        let room = id.capacity() - 1 - digits.len();
        id.push_str(&eid[..eid.floor_char_boundary(room.min(eid.len()))]);
        id.push('-');
        id.push_str(digits);
        header.id = id;
    }
}

/// A random 64-bit id as 16 lowercase hex digits, from `getrandom(2)` (falls back to time
/// and pid if that fails, which only happens on kernels older than 3.17).
pub fn ephemeral_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        let t = crate::base::clock::unix_now_ns() as u64 ^ (u64::from(std::process::id()) << 32);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A policy's digest and region names as events share them ([`build`]): made once per
/// policy, not copied per event.
#[derive(Debug, Clone)]
pub struct PolicyNames {
    digest: Arc<str>,
    /// [`Policy::region_name`] of each id below `policy.regions.len()`.
    regions: Vec<Arc<str>>,
}

impl PolicyNames {
    /// The names of `policy`.
    pub fn of(policy: &Policy) -> Self {
        Self {
            digest: policy.digest.as_str().into(),
            regions: (0..policy.regions.len())
                .map(|id| {
                    policy
                        .region_name(u32::try_from(id).unwrap_or(u32::MAX))
                        .into()
                })
                .collect(),
        }
    }

    /// [`Policy::region_name`] of `id` (`policy`: the one these names are of).
    fn share_region(&self, policy: &Policy, id: u32, slot: &mut Arc<str>) {
        match self.regions.get(id as usize) {
            Some(name) => share(slot, name),
            // Retired and unknown ids.
            None => *slot = policy.region_name(id).into(),
        }
    }
}

/// Adds host, process and policy context to kernel events.
pub struct Enricher {
    seq: Arc<Sequencer>,
    policy: Arc<Policy>,
    names: PolicyNames,
    procs: std::sync::Mutex<procinfo::Cache>,
}

impl Enricher {
    /// `seq` numbers the records and carries host and agent; `policy` resolves region ids.
    /// Process details are read from `/proc`.
    pub fn new(seq: Arc<Sequencer>, policy: Arc<Policy>) -> Self {
        Self::with_proc_root(seq, policy, "/proc".into())
    }

    /// Like [`Self::new`] with another procfs root (tests).
    pub fn with_proc_root(
        seq: Arc<Sequencer>,
        policy: Arc<Policy>,
        proc_root: std::path::PathBuf,
    ) -> Self {
        Self {
            seq,
            names: PolicyNames::of(&policy),
            policy,
            procs: std::sync::Mutex::new(procinfo::Cache::new(proc_root)),
        }
    }

    /// Checks process cgroups against the cgroup v2 hierarchy at `root` (ids, and which
    /// names a container id or unit may come from; see [`procinfo::trusted_prefix`]).
    #[must_use]
    pub fn with_cgroup_root(self, root: Option<std::path::PathBuf>) -> Self {
        let procs = self
            .procs
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .with_cgroup_root(root);
        Self {
            procs: std::sync::Mutex::new(procs),
            ..self
        }
    }

    /// Builds the sink-facing event from a kernel record, unnumbered (give it its sequence
    /// number with [`Sequencer::number`] when submitting it), reading `/proc/PID` now (bounded:
    /// one `stat`, and on a cache miss `status`, `exe`, at most [`procinfo::MAX_CMDLINE`]
    /// bytes of `cmdline` and `cgroup`), and reporting it only where it agrees with the
    /// kernel's record ([`procinfo::Cache::lookup`]).
    pub fn enrich(&self, ev: &Event) -> ConnectionEvent {
        let mut out = self.blank();
        self.enrich_into(ev, &mut out);
        out
    }

    /// As [`Self::enrich`], written over `out` (an event already submitted, handed back for
    /// reuse): its shared strings are kept where the new event has the same ones, as a flood
    /// from one process does ([`build_into`]).
    pub fn enrich_into(&self, ev: &Event, out: &mut ConnectionEvent) {
        // Borrowed when it is UTF-8: no allocation for the comparison.
        let name = comm(&ev.comm);
        let claim = procinfo::Claim {
            pid: ev.pid,
            comm: &name,
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            boot_ns: ev.boot_ns,
        };
        // Held while the names are shared into `out`: this thread's own cache, uncontended.
        let mut procs = self
            .procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let details = procs.lookup(&claim);
        let (user, group) = procs.names(ev.uid, ev.gid);
        self.assemble(ev, &details, user, group, out);
    }

    /// As [`Self::enrich`] without reading `/proc` or the user databases: the kernel's fields
    /// only, `process.details = "skipped"` (enrichment stalled; see [`worker`]).
    pub fn skip(&self, ev: &Event) -> ConnectionEvent {
        let mut out = self.blank();
        self.skip_into(ev, &mut out);
        out
    }

    /// As [`Self::skip`], written over `out` (see [`Self::enrich_into`]).
    pub fn skip_into(&self, ev: &Event, out: &mut ConnectionEvent) {
        self.assemble(ev, &procinfo::Details::Skipped, None, None, out);
    }

    /// An empty event to build in ([`Self::enrich_into`], [`Self::skip_into`]).
    pub fn blank(&self) -> ConnectionEvent {
        ConnectionEvent::blank(self.seq.unnumbered("connection", 0), &self.names)
    }

    fn assemble(
        &self,
        ev: &Event,
        details: &procinfo::Details,
        user: Option<&Arc<str>>,
        group: Option<&Arc<str>>,
        out: &mut ConnectionEvent,
    ) {
        self.seq.unnumbered_into(
            &mut out.header,
            "connection",
            crate::base::clock::boot_to_unix_ns(ev.boot_ns),
        );
        build_into(out, &self.policy, &self.names, ev, details, user, group);
    }
}

/// `slot` made to hold `src`. A reference count is touched only when it holds another
/// value: an event rebuilt in place for the same process keeps its strings, with none of
/// the atomic operations that would pull their cache lines away from the threads reading
/// them.
fn share<T: ?Sized>(slot: &mut Arc<T>, src: &Arc<T>) {
    if !Arc::ptr_eq(slot, src) {
        *slot = Arc::clone(src);
    }
}

/// [`share`] for an optional value.
fn share_opt<T: ?Sized>(slot: &mut Option<Arc<T>>, src: Option<&Arc<T>>) {
    match (slot.as_mut(), src) {
        (Some(s), Some(src)) => share(s, src),
        (None, None) => {}
        (_, src) => *slot = src.cloned(),
    }
}

impl ConnectionEvent {
    /// An event under `header` for [`build_into`] to write over: every other field empty.
    fn blank(header: Header, names: &PolicyNames) -> Self {
        Self {
            header,
            verdict: "",
            hook: "",
            process: Process::default(),
            user: Named::default(),
            group: Named::default(),
            cgroup: Cgroup::default(),
            container: None,
            network: Network {
                kind: "",
                transport: Cow::Borrowed(""),
                iana_number: None,
                ethertype: None,
            },
            destination: Destination {
                ip: None,
                port: 0,
                region: names.digest.clone(),
                mapped: false,
            },
            policy: PolicyRef {
                mode: "",
                generation: 0,
                digest: names.digest.clone(),
            },
            rule: Rule {
                id: 0,
                name: Cow::Borrowed(""),
            },
            suppressed: 0,
        }
    }
}

/// Pure assembly of a [`ConnectionEvent`] (no I/O) under `header`: `details` is what
/// `/proc` said; `names` are [`PolicyNames::of`] `policy`.
pub fn build(
    header: Header,
    policy: &Policy,
    names: &PolicyNames,
    ev: &Event,
    details: &procinfo::Details,
    user: Option<&Arc<str>>,
    group: Option<&Arc<str>>,
) -> ConnectionEvent {
    let mut out = ConnectionEvent::blank(header, names);
    build_into(&mut out, policy, names, ev, details, user, group);
    out
}

/// [`build`] written over `out`, all but its header (which the caller sets): every field
/// is assigned, and the shared strings are kept where `out` already holds them ([`share`]).
pub fn build_into(
    out: &mut ConnectionEvent,
    policy: &Policy,
    names: &PolicyNames,
    ev: &Event,
    details: &procinfo::Details,
    user: Option<&Arc<str>>,
    group: Option<&Arc<str>>,
) {
    // Destructured whole: a field added to the event and not written here does not compile
    // (a stale value from the event before would otherwise be reported).
    let ConnectionEvent {
        header: _,
        verdict: out_verdict,
        hook,
        process,
        user: out_user,
        group: out_group,
        cgroup,
        container,
        network,
        destination,
        policy: policy_ref,
        rule,
        suppressed,
    } = out;
    let info = details.info();
    let packet = match ev.family {
        family::PACKET => Some("packet"),
        family::XDP => Some("xdp"),
        family::INET | family::INET6 => None,
        // A frame of another non-INET socket family, judged at `tc/egress`.
        _ => Some("other"),
    };
    let ip = if ev.family == family::INET {
        IpAddr::V4(Ipv4Addr::new(
            ev.dst_addr[0],
            ev.dst_addr[1],
            ev.dst_addr[2],
            ev.dst_addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(ev.dst_addr))
    };
    let verdict = Verdict::from_u8(ev.verdict);
    *out_verdict = match verdict {
        Some(Verdict::Deny) => "deny",
        Some(Verdict::Audit) => "audit",
        Some(Verdict::Allow) => "allow",
        None => "invalid",
    };
    *hook = hook_name(ev.hook);
    let Process {
        pid,
        name,
        thread,
        parent,
        executable,
        command_line,
        exited,
        details: details_label,
        attribution,
    } = process;
    *pid = ev.pid;
    *name = comm(&ev.comm);
    thread.id = u64::from(ev.tid);
    *parent = info.and_then(|i| i.ppid).map(|pid| Parent { pid });
    share_opt(executable, info.and_then(|i| i.exe.as_ref()));
    share_opt(command_line, info.and_then(|i| i.command_line.as_ref()));
    *exited = *details == procinfo::Details::Exited;
    *details_label = details.label();
    *attribution = attribution_name(ev.attribution);
    out_user.id = u64::from(ev.uid);
    share_opt(&mut out_user.name, user);
    out_group.id = u64::from(ev.gid);
    share_opt(&mut out_group.name, group);
    match (container.as_mut(), info.and_then(|i| i.container.as_ref())) {
        (Some(c), Some(src)) => {
            share(&mut c.id, &src.id);
            c.runtime = src.runtime;
        }
        (_, src) => *container = src.cloned(),
    }
    cgroup.id = ev.cgroup_id;
    share_opt(
        &mut cgroup.systemd_unit,
        info.and_then(|i| i.systemd_unit.as_ref()),
    );
    share_opt(&mut cgroup.path, info.and_then(|i| i.cgroup.as_ref()));
    *network = Network {
        kind: match packet {
            Some(k) => k,
            None if ip.is_ipv4() => "ipv4",
            None => "ipv6",
        },
        transport: if packet.is_some() {
            socket_type(ev.protocol)
        } else {
            protocol_name(ev.protocol)
        },
        iana_number: packet.is_none().then_some(ev.protocol),
        ethertype: packet.map(|_| ev.dst_port),
    };
    destination.ip = packet.is_none().then_some(ip);
    destination.port = ev.dst_port;
    names.share_region(policy, ev.region, &mut destination.region);
    destination.mapped = ev.mapped != 0;
    policy_ref.mode = if verdict == Some(Verdict::Audit) {
        "audit"
    } else {
        "enforce"
    };
    policy_ref.generation = ev.generation;
    share(&mut policy_ref.digest, &names.digest);
    rule.id = ev.rule;
    // The policy's rule name; "allowlist" for region allowlist and default decisions.
    rule.name = match failsafe_reason(ev.reason) {
        Some(why) => format!("fail-closed: {why}").into(),
        None => rule_label(policy, ev.rule, packet.is_some()),
    };
    *suppressed = ev.suppressed;
}

/// What decided, in words: `packet_sockets` for a packet socket, `allowlist` for rule 0,
/// `default` for the policy default, else the rule's name (`rule-{id}` if the policy no
/// longer knows it).
pub fn rule_label(policy: &Policy, rule: u32, packet: bool) -> Cow<'static, str> {
    if packet {
        "packet_sockets".into()
    } else if rule == 0 {
        "allowlist".into()
    } else if rule == egressd_common::RULE_DEFAULT {
        "default".into()
    } else {
        policy
            .rule_name(rule)
            .map_or_else(|| format!("rule-{rule}"), str::to_owned)
            .into()
    }
}

/// Summary of the loaded policy (in `agent_start` and `policy_loaded`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicySummary {
    /// Config file it was read from.
    pub file: String,
    /// `"enforce"` or `"audit"`.
    pub mode: String,
    /// Policy digest.
    pub digest: String,
    /// Generation in the kernel.
    pub generation: u64,
    /// How the kernel looks up IPv4 destinations of this generation: `"table"` (DIR-24-8)
    /// or `"trie"` (LPM trie); see the `ipv4_lookup` setting.
    pub ipv4_lookup: String,
    /// Configured regions.
    pub regions: usize,
    /// IPv4 prefixes.
    pub prefixes_v4: usize,
    /// IPv6 prefixes.
    pub prefixes_v6: usize,
    /// Allowlisted region names.
    pub allowlist: Vec<String>,
}

/// Delivery counters of one sink (see [`crate::events::pipeline`] for their exact meaning).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct SinkCounters {
    /// Records the destination acknowledged (for TCP and TLS: the peer's TCP; files and
    /// stdout: written out of the sink's buffer; see [`crate::events::pipeline`]). A record
    /// counted here is in no loss counter.
    pub delivered: u64,
    /// Records waiting in memory now.
    pub queued: u64,
    /// Records in the on-disk spool not acknowledged yet (waiting or in flight) now.
    pub spooled: u64,
    /// Records dropped because the in-memory queue was full and there is no spool (or the
    /// spool could not be written).
    pub dropped_queue_full: u64,
    /// Records dropped because the spool had reached its size limit.
    pub dropped_spool_full: u64,
    /// Records dropped because the destination refused them for good (too large for a
    /// datagram, unwritable file).
    pub dropped_failed: u64,
    /// Connection (or open) attempts that failed.
    pub retries: u64,
    /// Whether the sink is connected (or open) now.
    pub up: bool,
    /// Records neither delivered nor spooled when the agent stopped (sinks without a spool
    /// whose destination was down at exit).
    pub dropped_at_exit: u64,
    /// Damaged places of the spool set aside since the start (`damaged-*` files in the
    /// spool directory): a frame with an impossible length or a wrong checksum and the
    /// rest of its segment, or an unreadable segment. Their records are lost.
    pub spool_damaged: u64,
    /// Bytes of those places.
    pub spool_damaged_bytes: u64,
}

impl SinkCounters {
    /// All drops of this sink.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_spool_full
            + self.dropped_failed
            + self.dropped_at_exit
    }
}

/// Losses by stage: kernel, decoding, and each sink (`lost` in `agent_stop` and heartbeats).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LossReport {
    /// Kernel-side losses (`ringbuf_full`).
    #[serde(flatten)]
    pub kernel: Loss,
    /// Records dropped by all sinks together (sum of their `dropped_*`).
    pub sink_write_failed: u64,
    /// Ring-buffer records too short to decode.
    pub undecodable: u64,
    /// Per-sink counters, by sink name.
    pub sinks: BTreeMap<String, SinkCounters>,
}

impl LossReport {
    /// Every record lost anywhere.
    pub fn total(&self) -> u64 {
        self.kernel.ringbuf_full + self.sink_write_failed + self.undecodable
    }
}

/// Counters carried by `agent_stop` and `heartbeat`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Counters {
    /// Kernel counters by (hook, region, verdict).
    pub counters: Vec<CounterRow>,
    /// Losses.
    pub lost: LossReport,
    /// Connection events decoded and handed to the sinks so far.
    pub connection_events: u64,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Further kernel statistics by name, serialized at this level (e.g. `flows`: packet
    /// and byte counters, `reloads`: reload outcomes), as the daemon collects them.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Where a fallback policy came from: the record kept in the state directory.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastGoodRef {
    /// Digest of the kept policy.
    pub digest: String,
    /// The generation it was in force as when it was kept.
    pub generation: u64,
    /// When it was kept, RFC 3339 UTC.
    pub saved_at: String,
    /// The record's path.
    pub file: String,
}

/// What an `agent_start` adopted: the links an earlier egressd pinned were still attached,
/// so the kernel kept enforcing while no daemon ran.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Adopted {
    /// The policy generation in force when this run adopted the pins.
    pub previous_generation: u64,
}

/// Body of a lifecycle record.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum LifecycleBody {
    /// `agent_start`: enforcement began.
    Start {
        /// Loaded policy.
        policy: PolicySummary,
        /// cgroup v2 directory the programs are attached to.
        cgroup: String,
        /// Names of the configured sinks.
        sinks: Vec<String>,
        /// Which egress paths this kernel lets egressd enforce ([`crate::kernel::coverage`]).
        coverage: crate::kernel::coverage::Summary,
        /// Pinned enforcement of an earlier run that this run adopted without detaching it
        /// (`run --pin-dir`); absent when nothing was adopted.
        #[serde(skip_serializing_if = "Option::is_none")]
        adopted: Option<Adopted>,
        /// Configured heartbeat interval in seconds (0: no heartbeats), so a run that ends
        /// before its first heartbeat can still be proven continuous.
        interval_secs: u64,
    },
    /// `policy_loaded`: a policy is in the kernel.
    PolicyLoaded {
        /// Loaded policy.
        policy: PolicySummary,
    },
    /// `heartbeat`: periodic counters, so silence can be told from absence.
    Heartbeat {
        /// Counters so far.
        #[serde(flatten)]
        counters: Counters,
        /// Configured heartbeat interval in seconds.
        interval_secs: u64,
    },
    /// `reload_failed`: a reload (SIGHUP) was refused; the policy in force is unchanged.
    ReloadFailed {
        /// Why, with the file location for configuration errors.
        error: String,
        /// Generation still in force.
        generation_in_force: u64,
    },
    /// `policy_fallback`: at start, the policy on disk was invalid; egressd enforces the last
    /// good policy it kept ([`crate::daemon::lastgood`]) instead, and stays degraded until a reload
    /// of a valid set.
    PolicyFallback {
        /// Why the files on disk were refused (`file:line:column: field: message`).
        error: String,
        /// The last good policy, now in force.
        policy: PolicySummary,
        /// When and as which generation the last good policy was kept.
        last_good: LastGoodRef,
    },
    /// `tamper_repaired`: pinned enforcement was found detached, replaced or changed behind
    /// egressd's back, and restored.
    TamperRepaired {
        /// What was wrong and what was done, one line per repair.
        repairs: Vec<String>,
        /// Generation in force after the repair.
        generation_in_force: u64,
    },
    /// `agent_stop`: the daemon ends; final counters.
    Stop {
        /// Final counters.
        #[serde(flatten)]
        counters: Counters,
        /// The programs stay attached and judging (`--pin-dir`); else they were detached.
        /// Said in the message only.
        #[serde(skip)]
        pinned: bool,
    },
}

impl LifecycleBody {
    /// The one-line human-readable summary every format carries (ECS `message`, OCSF
    /// `message`, CEF `msg`).
    pub fn message(&self) -> String {
        match self {
            Self::Start { policy, cgroup, .. } => format!(
                "egressd started: policy {} ({}) attached to {cgroup}",
                policy.digest, policy.mode
            ),
            Self::PolicyLoaded { policy } => format!(
                "policy {} loaded (generation {}, mode {})",
                policy.digest, policy.generation, policy.mode
            ),
            Self::Heartbeat { counters, .. } => format!(
                "egressd alive: {} connection events, {} lost",
                counters.connection_events,
                counters.lost.total()
            ),
            Self::ReloadFailed {
                error,
                generation_in_force,
            } => format!(
                "policy reload failed, generation {generation_in_force} stays in force: {error}"
            ),
            Self::PolicyFallback { error, policy, .. } => format!(
                "the policy on disk is invalid; the last good policy {} is in force as \
                 generation {}: {error}",
                policy.digest, policy.generation
            ),
            Self::TamperRepaired { repairs, .. } => format!(
                "pinned enforcement was tampered with and restored: {}",
                repairs.join("; ")
            ),
            Self::Stop { counters, pinned } => format!(
                "egressd stopped: {}, {} connection events, {} lost",
                if *pinned {
                    "programs stay attached (pinned)"
                } else {
                    "programs detached"
                },
                counters.connection_events,
                counters.lost.total()
            ),
        }
    }
}

/// A lifecycle record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lifecycle {
    /// Time, type, id, sequence, host and agent.
    #[serde(flatten)]
    pub header: Header,
    /// What happened.
    #[serde(flatten)]
    pub body: LifecycleBody,
}

/// Anything that goes to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A denied or audited connection attempt.
    Connection(Box<ConnectionEvent>),
    /// Agent start/stop, policy loaded, heartbeat.
    Lifecycle(Box<Lifecycle>),
    /// Attempts the kernel aggregated ([`summary`]).
    Summary(Box<summary::SummaryEvent>),
}

impl Record {
    /// The common fields.
    pub fn header(&self) -> &Header {
        match self {
            Record::Connection(c) => &c.header,
            Record::Lifecycle(l) => &l.header,
            Record::Summary(s) => &s.header,
        }
    }
}

/// Kernel hook name for a [`Hook`] code, `"unknown"` for codes this build does not know.
pub fn hook_name(code: u8) -> &'static str {
    match Hook::from_u8(code) {
        Some(Hook::Connect4) => "cgroup/connect4",
        Some(Hook::Connect6) => "cgroup/connect6",
        Some(Hook::Sendmsg4) => "cgroup/sendmsg4",
        Some(Hook::Sendmsg6) => "cgroup/sendmsg6",
        Some(Hook::SkbEgress) => "cgroup_skb/egress",
        Some(Hook::SkbIngress) => "cgroup_skb/ingress",
        Some(Hook::LsmSocketCreate) => "lsm/socket_create",
        Some(Hook::LsmSocketSendmsg) => "lsm/socket_sendmsg",
        Some(Hook::TcEgress) => "tc/egress",
        None => "unknown",
    }
}

/// Socket type of a packet socket (`include/linux/net.h`), else the number.
fn socket_type(kind: u8) -> Cow<'static, str> {
    match kind {
        1 => "stream".into(),
        2 => "dgram".into(),
        3 => "raw".into(),
        10 => "packet".into(),
        n => n.to_string().into(),
    }
}

/// [`crate::base::protocol::name`], borrowed for a known protocol.
fn protocol_name(number: u8) -> Cow<'static, str> {
    crate::base::protocol::NAMES
        .iter()
        .find(|&&(_, p)| p == number)
        .map_or_else(|| number.to_string().into(), |&(n, _)| n.into())
}

/// NUL-terminated task name to text, as `String::from_utf8_lossy` decodes it.
fn comm(raw: &[u8; 16]) -> Comm {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut name = Comm::new();
    // At most 16 bytes, each at most 3 when replaced: it fits.
    for chunk in raw[..end].utf8_chunks() {
        name.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            name.push(char::REPLACEMENT_CHARACTER);
        }
    }
    name
}

/// Writes `v`'s last `out.len()` decimal digits into `out`, zero-padded (by a constant
/// divisor: a multiplication per digit).
fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the Unix epoch (up to 2554).
fn second_text(secs: u64) -> [u8; 20] {
    let (days, s) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut t = *b"0000-00-00T00:00:00.";
    put_digits(&mut t[0..4], year);
    put_digits(&mut t[5..7], month);
    put_digits(&mut t[8..10], day);
    put_digits(&mut t[11..13], s / 3600);
    put_digits(&mut t[14..16], s / 60 % 60);
    put_digits(&mut t[17..19], s % 60);
    t
}

thread_local! {
    /// The second [`rfc3339`] wrote last and its text up to the fraction: a flood's
    /// records share it.
    static SECOND: std::cell::Cell<(u64, [u8; 20])> =
        const { std::cell::Cell::new((u64::MAX, [0; 20])) };
}

/// Formats Unix-epoch nanoseconds as RFC 3339 UTC with 9 fractional digits.
pub fn rfc3339(unix_ns: i128) -> Timestamp {
    // Every record carries one: written by hand for times from 1970 to 2554 (what fits
    // in a u64; the formatter below parses its description on every call), the date and
    // time of day once per second; the rest the general way.
    if let Ok(ns) = u64::try_from(unix_ns) {
        let (secs, nanos) = (ns / 1_000_000_000, ns % 1_000_000_000);
        let second = match SECOND.get() {
            (s, text) if s == secs => text,
            _ => {
                let text = second_text(secs);
                SECOND.set((secs, text));
                text
            }
        };
        let mut text = [b'Z'; 30];
        text[..20].copy_from_slice(&second);
        put_digits(&mut text[20..29], nanos);
        if let Ok(t) = std::str::from_utf8(&text)
            && let Ok(t) = Timestamp::from(t)
        {
            return t;
        }
    }
    let text = rfc3339_general(unix_ns);
    // The `time` crate's years are -9999 to 9999: 31 bytes at most.
    Timestamp::from(&text).unwrap_or_default()
}

/// [`rfc3339`] by the `time` crate's formatter, for any time.
fn rfc3339_general(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests;
