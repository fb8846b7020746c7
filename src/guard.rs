//! Defences against key guessing that sit beside authentication: refusing a client address
//! after repeated failed keys (`auth_failure_limit`, off by default), and counting requests
//! let through on a record that is bound to its key by hash alone (written by Tyk).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::config::AuthFailureLimit;

/// Client addresses remembered by the failure limit; beyond it the least used are forgotten.
pub const TRACKED_ADDRESSES: usize = 100_000;

/// What the guard has seen, for `/hello`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GuardCounts {
    /// Requests authorised by a record without a `tollgate_key_verifier`.
    pub weakly_bound_requests: u64,
    /// Keyed requests refused because their address failed too often.
    pub refused_for_failures: u64,
}

pub struct KeyGuard {
    failures: Option<FailureLimit>,
    weakly_bound: AtomicU64,
    refused: AtomicU64,
}

struct FailureLimit {
    max: u32,
    window_ms: u64,
    by_address: quick_cache::sync::Cache<IpAddr, Window>,
    started: Instant,
}

/// Failures from one address in the window that began at `start` (ms).
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    failures: u32,
}

impl KeyGuard {
    pub fn new(limit: &AuthFailureLimit) -> Self {
        let failures = (limit.max_failures > 0).then(|| FailureLimit {
            max: limit.max_failures,
            window_ms: limit.window.saturating_mul(1000),
            by_address: quick_cache::sync::Cache::new(TRACKED_ADDRESSES),
            started: Instant::now(),
        });
        Self {
            failures,
            weakly_bound: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `ip` may present a key now: false while its failures fill the window.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let Some(limit) = &self.failures else {
            return true;
        };
        let now = limit.now_ms();
        let blocked = limit
            .by_address
            .get(&ip)
            .is_some_and(|w| now < w.start + limit.window_ms && w.failures >= limit.max);
        if blocked {
            self.refused.fetch_add(1, Relaxed);
        }
        !blocked
    }

    /// `ip` presented a key that was refused.
    pub fn failed(&self, ip: IpAddr) {
        let Some(limit) = &self.failures else {
            return;
        };
        let now = limit.now_ms();
        let window = match limit.by_address.get(&ip) {
            Some(w) if now < w.start + limit.window_ms => Window {
                failures: w.failures.saturating_add(1),
                ..w
            },
            _ => Window {
                start: now,
                failures: 1,
            },
        };
        limit.by_address.insert(ip, window);
    }

    /// A request was let through on a record bound by its hash alone.
    pub fn weakly_bound(&self) {
        self.weakly_bound.fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> GuardCounts {
        GuardCounts {
            weakly_bound_requests: self.weakly_bound.load(Relaxed),
            refused_for_failures: self.refused.load(Relaxed),
        }
    }
}

impl FailureLimit {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let guard = KeyGuard::new(&AuthFailureLimit {
            max_failures: 3,
            window: 60,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        for _ in 0..3 {
            assert!(guard.admits(a));
            guard.failed(a);
        }
        assert!(!guard.admits(a));
        assert!(guard.admits(b), "other addresses are not affected");
        assert_eq!(guard.counts().refused_for_failures, 1);

        let off = KeyGuard::new(&AuthFailureLimit::default());
        for _ in 0..100 {
            off.failed(a);
        }
        assert!(off.admits(a), "off by default");
    }

    #[test]
    fn a_window_that_ended_starts_over() {
        let guard = KeyGuard::new(&AuthFailureLimit {
            max_failures: 1,
            window: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        guard.failed(a);
        assert!(!guard.admits(a));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(guard.admits(a));
    }
}
