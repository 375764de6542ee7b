//! BPF LSM hooks: sockets that put frames on the wire past the INET socket hooks
//! (AF_PACKET, AF_XDP), and the next hop of raw IP sockets that write their own header.
//!
//! These are global programs (they run for every task of the host, 5.7+ with the BPF LSM
//! active); each acts only for tasks under the enforced cgroup, tested with
//! `bpf_current_task_under_cgroup` against [`EGRESSD_LSM_CGROUP_V1`] (a tracing helper since
//! 4.9, so this works on 5.10 booted with `lsm=...,bpf`, where `lsm_cgroup` (6.0) and
//! `bpf_get_current_ancestor_cgroup_id` in LSM programs are missing). Kernel structures are
//! read with `bpf_probe_read_kernel` at offsets userspace took from the running kernel's
//! BTF ([`KernelOffsets`]); a failed read denies (fail closed, [`failsafe::UNPARSEABLE`]).
use core::ptr;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
    programs::LsmContext,
};
use egressd_common::{
    ExeKey, Hook, KernelOffsets, REGION_UNKNOWN, Verdict, attribution, exe, failsafe, family,
    set_of, unwrap,
};

use crate::{
    addr::Dest,
    decide::{self, Decision},
    maps::{EGRESSD_LSM_CGROUP_V1, EGRESSD_PACKET_EXES_V1, EGRESSD_SETTINGS_V1},
    owner::{self, Who},
    report,
};

/// Field offsets of the running kernel, set by userspace before load (read-only, so the
/// verifier sees constants).
#[unsafe(no_mangle)]
static EGRESSD_KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    socket_type: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_v6_daddr: 0,
    sk_protocol: 0,
    hdrincl_byte: 0,
    hdrincl_mask: 0,
    _pad: 0,
    msg_name: 0,
    msg_namelen: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
};

/// `-EPERM`.
const EPERM: i32 = -1;
/// `SOCK_RAW` (`include/linux/net.h`).
const SOCK_RAW: i16 = 3;
/// `IPPROTO_RAW`: a raw socket that always writes its own IP header.
const IPPROTO_RAW: u16 = 255;
/// `sizeof(struct sockaddr_in)`; `SIN6_LEN_RFC2133` (the least `rawv6_sendmsg` accepts).
const SOCKADDR_IN: i32 = 16;
const SOCKADDR_IN6: i32 = 24;

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a static; volatile so the compiler does not fold the zeros above.
    unsafe { ptr::read_volatile(&EGRESSD_KERNEL_OFFSETS) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: usize, off: u16) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const T) }.map_err(|_| ())
}

/// Whether the current task is under the enforced cgroup; `Err` when the kernel could not
/// tell (an empty slot: the map was tampered with).
#[inline(always)]
fn in_cgroup() -> Result<bool, ()> {
    EGRESSD_LSM_CGROUP_V1
        .current_task_under_cgroup(0)
        .map_err(|_| ())
}

/// The `packet_sockets` verdict under the generation in force (allow before any policy).
#[inline(always)]
pub(crate) fn packet_setting(generation: u64) -> Verdict {
    if generation == 0 {
        return Verdict::Allow;
    }
    let v = EGRESSD_SETTINGS_V1
        .get(set_of(generation) as u32)
        .map_or(Verdict::Deny as u8, |s| s.packet_sockets);
    Verdict::from_u8(v).unwrap_or(Verdict::Deny)
}

/// Reports a denial or audit of the current task. A function of its own (a BPF-to-BPF
/// call): inlined into `conclude`'s callers, the socket_sendmsg program's frame and the
/// IPv6 table lookup's passed the 512-byte combined stack limit of 5.10's verifier.
#[inline(never)]
fn report_task(hook: Hook, d: &Dest, dec: &Decision) {
    let who = Who {
        attribution: attribution::TASK,
        owner: owner::current(),
    };
    report::event(hook, d, dec, &who, true);
}

/// Counts, reports and returns the LSM verdict for `d` decided as `dec` at `hook`.
#[inline(always)]
fn conclude(hook: Hook, d: &Dest, dec: &Decision) -> i32 {
    report::count(hook, dec.region, dec.verdict);
    if dec.verdict != Verdict::Allow {
        report_task(hook, d, dec);
    }
    if dec.verdict == Verdict::Deny {
        EPERM
    } else {
        0
    }
}

/// The grant ([`exe`]) of the current task's executable in [`EGRESSD_PACKET_EXES_V1`], 0
/// for none: the (device, inode) of `current->mm->exe_file`, which the task cannot choose
/// short of executing another file. A kernel thread (no `mm`) or a failed read has none.
#[inline(always)]
fn exe_grant(off: &KernelOffsets) -> u8 {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as usize;
    let key = (|| -> Result<ExeKey, ()> {
        let mm = read::<usize>(task, off.task_mm)?;
        let file = read::<usize>(mm, off.mm_exe_file)?;
        let inode = read::<usize>(file, off.file_inode)?;
        let ino = read::<u64>(inode, off.inode_ino)?;
        let sb = read::<usize>(inode, off.inode_sb)?;
        let dev = read::<u32>(sb, off.sb_dev)?;
        Ok(ExeKey { dev, _pad: 0, ino })
    })();
    match key {
        // SAFETY: a read-only lookup of a plain value.
        Ok(k) => unsafe { EGRESSD_PACKET_EXES_V1.get(&k) }
            .copied()
            .unwrap_or(0),
        Err(()) => 0,
    }
}

/// A packet socket (`fam`, socket type `kind`, protocol argument `proto`) created or used
/// by a task under the enforced cgroup; `need` is the [`exe`] grant that lets its
/// executable through whatever `packet_sockets` says.
#[inline(always)]
fn packet_socket(hook: Hook, fam: u8, kind: u8, proto: u16, need: u8) -> i32 {
    let generation = decide::generation();
    let mut verdict = packet_setting(generation);
    if verdict != Verdict::Allow {
        let off = offsets();
        if off.valid != 0 && exe_grant(&off) >= need {
            verdict = Verdict::Allow;
        }
    }
    let d = Dest {
        family: fam,
        mapped: unwrap::NONE,
        protocol: kind,
        addr: [0; 16],
        port: proto,
    };
    let dec = Decision {
        generation,
        region: REGION_UNKNOWN,
        verdict,
        rule: 0,
        reason: failsafe::NONE,
    };
    conclude(hook, &d, &dec)
}

/// A denial because a kernel structure could not be read (for tasks under the enforced
/// cgroup, or when that cannot be told either).
#[inline(always)]
fn unreadable(hook: Hook, fam: u8) -> i32 {
    if in_cgroup() == Ok(false) {
        return 0;
    }
    let d = Dest {
        family: fam,
        mapped: unwrap::NONE,
        protocol: 0,
        addr: [0; 16],
        port: 0,
    };
    let dec = Decision::fail_closed(decide::generation(), failsafe::UNPARSEABLE);
    conclude(hook, &d, &dec)
}

/// `lsm/socket_create(int family, int type, int protocol, int kern)`.
#[inline(always)]
pub fn socket_create(ctx: &LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return ret;
    }
    let fam: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || (fam != i32::from(family::PACKET) && fam != i32::from(family::XDP)) {
        return 0;
    }
    let fam = fam as u8;
    match in_cgroup() {
        Ok(false) => 0,
        Ok(true) => {
            let kind: i32 = ctx.arg(1);
            let proto: i32 = ctx.arg(2);
            // The protocol argument is in network byte order (an EtherType for AF_PACKET);
            // the type may carry SOCK_NONBLOCK/SOCK_CLOEXEC above its low bits.
            packet_socket(
                Hook::LsmSocketCreate,
                fam,
                (kind & 0xf) as u8,
                u16::from_be(proto as u16),
                exe::OPEN,
            )
        }
        Err(()) => unreadable(Hook::LsmSocketCreate, fam),
    }
}

/// `lsm/socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`.
#[inline(always)]
pub fn socket_sendmsg(ctx: &LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return ret;
    }
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    let sock: usize = ctx.arg(0);
    let msg: usize = ctx.arg(1);
    let hook = Hook::LsmSocketSendmsg;
    let Ok(sk) = read::<usize>(sock, off.socket_sk) else {
        return unreadable(hook, 0);
    };
    let Ok(fam) = read::<u16>(sk, off.skc_family) else {
        return unreadable(hook, 0);
    };
    let fam = fam as u8;
    if fam == family::PACKET || fam == family::XDP {
        return match in_cgroup() {
            Ok(false) => 0,
            Ok(true) => {
                let kind = read::<i16>(sock, off.socket_type).unwrap_or(0);
                let proto = read::<u16>(sk, off.sk_protocol).unwrap_or(0);
                packet_socket(hook, fam, kind as u8, u16::from_be(proto), exe::SEND)
            }
            Err(()) => unreadable(hook, fam),
        };
    }
    if fam != family::INET && fam != family::INET6 {
        return 0;
    }
    match read::<i16>(sock, off.socket_type) {
        Ok(SOCK_RAW) => {}
        Ok(_) => return 0,
        Err(()) => return unreadable(hook, fam),
    }
    match in_cgroup() {
        Ok(true) => {}
        Ok(false) => return 0,
        Err(()) => return unreadable(hook, fam),
    }
    match raw_next_hop(&off, sk, msg, fam) {
        Ok(Some(mut d)) => {
            let dec = decide::next_hop(&mut d, decide::generation());
            conclude(hook, &d, &dec)
        }
        Ok(None) => 0,
        Err(()) => unreadable(hook, fam),
    }
}

/// The address a raw socket's datagram is routed to, when the socket writes its own IP
/// header (`IP_HDRINCL`/`IPV6_HDRINCL`, or `IPPROTO_RAW`): the `sendto` address, else the
/// connected one. `None` for a socket whose header the kernel writes (its destination is
/// the routed address, which the packet hook judges) or a send the kernel refuses anyway.
#[inline(always)]
fn raw_next_hop(off: &KernelOffsets, sk: usize, msg: usize, fam: u8) -> Result<Option<Dest>, ()> {
    let protocol = read::<u16>(sk, off.sk_protocol)?;
    let flags = read::<u8>(sk, off.hdrincl_byte)?;
    if flags & off.hdrincl_mask == 0 && protocol != IPPROTO_RAW {
        return Ok(None);
    }
    let name = read::<usize>(msg, off.msg_name)?;
    let namelen = read::<i32>(msg, off.msg_namelen)?;
    let mut d = Dest {
        family: fam,
        mapped: unwrap::NONE,
        protocol: protocol as u8,
        addr: [0; 16],
        port: 0,
    };
    if fam == family::INET {
        let a: [u8; 4] = if name != 0 {
            if namelen < SOCKADDR_IN {
                return Ok(None);
            }
            // raw_sendmsg takes AF_UNSPEC as AF_INET and refuses any other family.
            let f = read::<u16>(name, 0)?;
            if f != u16::from(family::INET) && f != 0 {
                return Ok(None);
            }
            read::<[u8; 4]>(name, 4)?
        } else {
            read::<[u8; 4]>(sk, off.skc_daddr)?
        };
        d.addr[..4].copy_from_slice(&a);
        return Ok(Some(d));
    }
    let a: [u8; 16] = if name != 0 {
        if namelen < SOCKADDR_IN6 {
            return Ok(None);
        }
        let f = read::<u16>(name, 0)?;
        if f != u16::from(family::INET6) && f != 0 {
            return Ok(None);
        }
        read::<[u8; 16]>(name, 8)?
    } else {
        read::<[u8; 16]>(sk, off.skc_v6_daddr)?
    };
    if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff {
        d.family = family::INET;
        d.mapped = unwrap::MAPPED;
        d.addr[..4].copy_from_slice(&a[12..]);
    } else {
        d.addr = a;
    }
    Ok(Some(d))
}
