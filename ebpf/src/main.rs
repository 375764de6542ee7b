//! egressd kernel programs: entry points only. Socket-address hooks are thin wrappers over
//! [`sock::judge`], packet hooks over [`skb`]; the decision is [`decide::decide`].
#![no_std]
#![no_main]
// 64-bit atomic add for exact per-CPU counters (see report::add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod addr;
mod cache;
mod decide;
mod forced;
mod lsm;
mod maps;
mod memo;
mod nexthop;
mod owner;
mod report;
mod skb;
mod sock;
mod summary;
mod tc;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, lsm},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, TcContext},
};
use egressd_common::Hook;

/// `cgroup/connect4`: TCP `connect()` (also TCP Fast Open's implicit connect), connected
/// UDP, on AF_INET sockets.
#[cgroup_sock_addr(connect4)]
pub fn egressd_connect4(ctx: SockAddrContext) -> i32 {
    sock::judge(&ctx, Hook::Connect4)
}

/// `cgroup/connect6`: as connect4 for AF_INET6 sockets (IPv4-mapped destinations included).
#[cgroup_sock_addr(connect6)]
pub fn egressd_connect6(ctx: SockAddrContext) -> i32 {
    sock::judge(&ctx, Hook::Connect6)
}

/// `cgroup/sendmsg4`: `sendto()`/`sendmsg()` with an explicit destination, AF_INET UDP.
#[cgroup_sock_addr(sendmsg4)]
pub fn egressd_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::judge(&ctx, Hook::Sendmsg4)
}

/// `cgroup/sendmsg6`: as sendmsg4 for AF_INET6 UDP sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn egressd_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::judge(&ctx, Hook::Sendmsg6)
}

/// `cgroup/sock_create`: records the creating task on each AF_INET/AF_INET6 socket, for the
/// packet hook's events. Always lets the socket be created.
#[cgroup_sock(sock_create)]
pub fn egressd_sock_create(ctx: SockContext) -> i32 {
    owner::record(ctx.sock);
    1
}

/// `cgroup_skb/egress`: packet-level backstop and egress accounting.
#[cgroup_skb(egress)]
pub fn egressd_skb_egress(ctx: SkBuffContext) -> i32 {
    skb::egress(&ctx)
}

/// `cgroup_skb/ingress`: ingress accounting.
#[cgroup_skb(ingress)]
pub fn egressd_skb_ingress(ctx: SkBuffContext) -> i32 {
    skb::ingress(&ctx)
}

/// `lsm/socket_create`: AF_PACKET and AF_XDP sockets created by tasks under the enforced
/// cgroup get the policy's `packet_sockets` verdict (`-EPERM` when denied).
#[lsm(hook = "socket_create")]
pub fn egressd_lsm_socket_create(ctx: LsmContext) -> i32 {
    lsm::socket_create(&ctx)
}

/// `lsm/socket_sendmsg`: sends on AF_PACKET/AF_XDP sockets (also those created before
/// egressd or passed in), and the next hop of raw IP sockets that write their own header.
#[lsm(hook = "socket_sendmsg")]
pub fn egressd_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    lsm::socket_sendmsg(&ctx)
}

/// `tc/egress` (clsact egress or TCX): frames of non-INET sockets created under the
/// enforced cgroup, where the LSM hooks do not run (see [`tc`]).
#[classifier]
pub fn egressd_tc_egress(ctx: TcContext) -> i32 {
    tc::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable call to this, so it is never taken.
    loop {}
}

/// GPL-compatible licence, required for the ring buffer and cgroup helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
