//! Per-socket verdict cache in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`, kernel doc
//! `Documentation/bpf/map_sk_storage.rst`): the verdict lives on the socket, is found with
//! one pointer walk instead of a hash lookup, and is freed with the socket, so connection
//! churn never evicts live entries.
//!
//! An element is never written in place: [`put`] deletes the old one and publishes a new one
//! (the kernel copies the value before linking it under RCU), so a reader on another CPU sees
//! either the whole old verdict or the whole new one, never a mix of two destinations.
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
};
use egressd_common::SockVerdict;

use crate::maps::EGRESSD_SOCKETS_V1;

#[inline(always)]
fn map() -> *mut c_void {
    ptr::from_ref(&EGRESSD_SOCKETS_V1).cast_mut().cast()
}

/// Copy of the verdict cached on `sk` (a full socket; `None` for request and time-wait
/// sockets, which have no storage).
#[inline(always)]
pub fn get(sk: *mut bpf_sock) -> Option<SockVerdict> {
    // SAFETY: `sk` comes from the program context; the helper checks for a full socket.
    let p = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null result points to a live element of value size (RCU-protected for
    // the program's duration).
    Some(unsafe { *p.cast::<SockVerdict>() })
}

/// Caches `v` on `sk`, replacing an earlier verdict (see the module doc for why it is not
/// overwritten). Failures (no memory, not a full socket) only cost a later re-judgement.
#[inline(always)]
pub fn put(sk: *mut bpf_sock, v: SockVerdict) {
    if let Some(old) = get(sk) {
        if old == v {
            return;
        }
        // SAFETY: as in `get`.
        unsafe { bpf_sk_storage_delete(map(), sk.cast()) };
    }
    let mut v = v;
    // SAFETY: `v` is a value-sized stack buffer the kernel copies into the new element.
    unsafe {
        bpf_sk_storage_get(
            map(),
            sk.cast(),
            ptr::from_mut(&mut v).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
}

/// Records in place on `sk`'s cached verdict that it passed the next-hop check for
/// `check` ([`SockVerdict::route_check`]): one aligned 8-byte store, which a reader on
/// another CPU sees whole or not at all; the rest of the verdict is unchanged, so no reader
/// can see a mix of two verdicts. Nothing when `sk` has no cached verdict.
#[inline(always)]
pub fn set_route_check(sk: *mut bpf_sock, check: u64) {
    // SAFETY: as in `get`.
    let p = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) };
    if p.is_null() {
        return;
    }
    // SAFETY: a live element of value size; the field is 8-byte aligned (offset 40).
    unsafe {
        let f = &raw mut (*p.cast::<SockVerdict>()).route_check;
        core::ptr::write_volatile(f, check);
    }
}
