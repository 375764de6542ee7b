//! Who is behind a socket. Socket hooks run in the calling task and read it directly; the
//! packet hook must not (it may run in softirq or in another task, and kernels before 6.10
//! refuse the current-task helpers in `cgroup_skb` altogether), so `cgroup/sock_create`
//! records the creating task on the socket ([`maps::EGRESSD_OWNERS_V1`], socket-local
//! storage) and the packet hook reports that.
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_uid, bpf_ktime_get_boot_ns,
            bpf_sk_storage_get, bpf_skb_cgroup_id,
        },
    },
    programs::SkBuffContext,
};
use egressd_common::{SockOwner, attribution};

use crate::maps::EGRESSD_OWNERS_V1;

/// Process fields of an event and where they come from.
#[derive(Clone, Copy)]
pub struct Who {
    /// [`attribution`] code.
    pub attribution: u8,
    /// The fields (zero where unknown, see [`attribution::SOCKET_UID`]).
    pub owner: SockOwner,
}

/// The current task. Only for hooks that run in the calling task's context (socket
/// creation and socket-address hooks), where these helpers exist on every supported kernel.
#[inline(always)]
pub fn current() -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    SockOwner {
        // SAFETY: helpers without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        // SAFETY: as above.
        created_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

#[inline(always)]
fn map() -> *mut c_void {
    ptr::from_ref(&EGRESSD_OWNERS_V1).cast_mut().cast()
}

/// Records the current task as the owner of `sk` (at `cgroup/sock_create`). A failure (no
/// memory) only makes later packet events of this socket [`attribution::SOCKET_UID`].
#[inline(always)]
pub fn record(sk: *mut bpf_sock) {
    let mut owner = current();
    // SAFETY: `sk` is the program's socket; `owner` is a value-sized buffer the kernel copies.
    unsafe {
        bpf_sk_storage_get(
            map(),
            sk.cast(),
            ptr::from_mut(&mut owner).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
}

/// Who is behind a packet at a `cgroup_skb` hook: the recorded owner of its socket, else
/// the socket's uid and the packet's cgroup.
#[inline(always)]
pub fn of_packet(ctx: &SkBuffContext, sk: *mut bpf_sock) -> Who {
    of_skb(ctx.skb.skb, sk)
}

/// As [`of_packet`], for any packet program (`cgroup_skb`, `sched_cls`) given its
/// `skb` and the packet's full socket `sk` (or null).
#[inline(always)]
pub fn of_skb(skb: *mut __sk_buff, sk: *mut bpf_sock) -> Who {
    if !sk.is_null() {
        // SAFETY: `sk` comes from the packet; the helper checks for a full socket.
        let p = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) };
        if !p.is_null() {
            return Who {
                attribution: attribution::SOCKET_OWNER,
                // SAFETY: a non-null result points to a live value-sized element.
                owner: unsafe { *p.cast::<SockOwner>() },
            };
        }
    }
    // SAFETY: valid context pointer of a packet program.
    let (uid, cgroup_id) = unsafe { (bpf_get_socket_uid(skb), bpf_skb_cgroup_id(skb)) };
    Who {
        attribution: attribution::SOCKET_UID,
        owner: SockOwner {
            cgroup_id,
            uid,
            ..SockOwner::default()
        },
    }
}
