//! The service manager's readiness protocol (`sd_notify(3)`), through the `sd-notify` crate.
//!
//! `egressd run` under a unit with `Type=notify` (systemd sets `NOTIFY_SOCKET`) sends:
//! - `READY=1` with a `STATUS=` line once every hook is attached with the policy in force, so
//!   `systemctl start` returns when egressd enforces, and systemd holds back a reload until
//!   then;
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload (SIGHUP or `--watch`) begins, and
//!   `READY=1` with the new `STATUS=` when it ends, whether it installed a policy or kept the
//!   previous one;
//! - `WATCHDOG=1` from the main loop every half of `WATCHDOG_USEC` (the unit's
//!   `WatchdogSec=`), so a stalled loop gets the service restarted;
//! - `STOPPING=1` when SIGINT or SIGTERM stops it.
//!
//! Without `NOTIFY_SOCKET` nothing is sent. A message that cannot be sent is logged once and
//! never stops the daemon.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sd_notify::NotifyState;

/// Sends readiness, reload, watchdog and stop notifications to the service manager.
#[derive(Debug, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// `WATCHDOG_USEC` (for this process), if the unit has a watchdog.
    watchdog: Option<Duration>,
    /// A send failed already (logged once).
    failed: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often to send `WATCHDOG=1`: half the manager's watchdog timeout, if it set one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Start-up or a reload is complete: the policy described by `status` is in force.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins (`RELOADING=1` with the `MONOTONIC_USEC=` systemd 253 and later
    /// require); [`Notifier::ready`] ends it.
    pub fn reloading(&self, status: &str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status(status)]),
        }
    }

    /// The daemon is alive and its main loop turns.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Shutdown begins.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "notifying the service manager (NOTIFY_SOCKET) failed");
        }
    }
}

/// The `STATUS=` text for the policy in force: generation, digest, mode and size.
pub fn policy_status(generation: u64, digest: &str, mode: &str, v4: usize, v6: usize) -> String {
    format!(
        "enforcing generation {generation}, digest {digest}, mode {mode}, {v4} IPv4 + {v6} IPv6 \
         prefixes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_generation_and_digest() {
        assert_eq!(
            policy_status(3, "3fb60c46ec413f16", "enforce", 2, 1),
            "enforcing generation 3, digest 3fb60c46ec413f16, mode enforce, 2 IPv4 + 1 IPv6 \
             prefixes"
        );
    }

    #[test]
    fn disabled_without_socket_sends_nothing() {
        let n = Notifier::default();
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x");
        n.watchdog();
        assert!(!n.failed.load(Ordering::Relaxed));
    }
}
