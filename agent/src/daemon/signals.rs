//! Signals the daemon handles but whose default action kills: kept blocked from before
//! `main` until the daemon's handlers are installed.
//!
//! `systemctl reload` (SIGHUP) or logrotate (SIGUSR1) may signal a process that has only just
//! been started. Until tokio's handlers exist, the default action of both is to terminate, so
//! such a signal used to kill `egressd run` (exit status 129). The `egressd` binary therefore
//! blocks them in a constructor that runs before `main` (see `main.rs`), with
//! [`block_early`]; [`unblock_early`] releases them once the handlers are installed (in
//! [`crate::daemon::run_with`]), or at once for the other subcommands. A signal that arrived
//! in between stays pending and is then served by the handler: a SIGHUP sent during start-up
//! reloads after it. SIGINT and SIGTERM are not blocked: before their handlers exist nothing
//! is attached yet, so their default action is a clean stop.
//!
//! What no program can change: a signal delivered before its first instruction runs (during
//! `execve`, or in the parent before `execve`) meets the default action. With `Type=notify`
//! systemd sends no reload before `READY=1`.

/// The signals kept blocked until the handlers are installed.
pub const EARLY: [libc::c_int; 2] = [libc::SIGHUP, libc::SIGUSR1];

fn early_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set; sigaddset only fails for invalid signal
    // numbers, and these are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in EARLY {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks [`EARLY`] in the calling thread (threads it creates later inherit the mask).
/// Async-signal-safe and allocation-free, so that it can run in a constructor before `main`.
pub fn block_early() {
    let set = early_set();
    // SAFETY: a valid set; no old mask is requested.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Unblocks [`EARLY`] in the calling thread: what is pending is delivered now, to the
/// handlers if they are installed, else with the default action.
pub fn unblock_early() {
    let set = early_set();
    // SAFETY: a valid set; no old mask is requested.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}
