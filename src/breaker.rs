//! Tyk's `circuit_breakers` (its rate breaker): an endpoint's upstream answers are counted
//! over a rolling 10 s window; once it holds `samples` answers of which at least
//! `threshold_percent` failed (an error, or a 5xx), the breaker opens and requests to the
//! endpoint are refused (503) without reaching the upstream, until `return_to_service_after`
//! seconds have passed. While open, one request at a time is let through as a probe after a
//! back-off (500 ms, doubling), unless `disable_half_open_state`: a probe that succeeds closes
//! the breaker early.
//!
//! Each node keeps its own breakers, as Tyk's do. The state is atomics only: requests on
//! every worker read and count it without a lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Seconds of answers the failure rate is taken over, one bucket each.
const WINDOW_SECONDS: usize = 10;
/// The first wait before a probe while open; each failed probe doubles it.
const FIRST_BACKOFF_MS: u64 = 500;

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Failures per answer at which it opens (0 to 1).
    threshold: f64,
    /// Answers in the window before the rate is judged.
    samples: u64,
    return_to_service: Duration,
    half_open: bool,
    buckets: [Bucket; WINDOW_SECONDS],
    /// Milliseconds (of [`now_ms`]) until which it is open; 0: closed.
    open_until: AtomicU64,
    /// While open: when the next probe may go, and the back-off after it.
    probe_at: AtomicU64,
    backoff_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second (of [`now_ms`]) this bucket counts.
    second: AtomicU64,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Breaker {
    pub fn new(
        threshold: f64,
        samples: u64,
        return_to_service: Duration,
        disable_half_open: bool,
    ) -> Self {
        Self {
            threshold,
            samples: samples.max(1),
            return_to_service,
            half_open: !disable_half_open,
            buckets: Default::default(),
            open_until: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(FIRST_BACKOFF_MS),
        }
    }

    /// Whether a request may go to the upstream now.
    pub fn ready(&self) -> bool {
        self.ready_at(now_ms())
    }

    /// Counts an upstream answer: `failed` for an error or a 5xx.
    pub fn record(&self, failed: bool) {
        self.record_at(now_ms(), failed)
    }

    fn ready_at(&self, now: u64) -> bool {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        if now >= until {
            if self
                .open_until
                .compare_exchange(until, 0, Relaxed, Relaxed)
                .is_ok()
            {
                self.close();
            }
            return true;
        }
        if !self.half_open {
            return false;
        }
        let probe_at = self.probe_at.load(Relaxed);
        let backoff = self.backoff_ms.load(Relaxed);
        // One probe per back-off: whoever moves the next probe time sends this one.
        now >= probe_at
            && self
                .probe_at
                .compare_exchange(probe_at, now + backoff, Relaxed, Relaxed)
                .is_ok()
    }

    fn record_at(&self, now: u64, failed: bool) {
        if self.open_until.load(Relaxed) != 0 {
            // A probe's answer.
            if failed {
                let longest = (self.return_to_service.as_millis() as u64).max(FIRST_BACKOFF_MS);
                let backoff = (self.backoff_ms.load(Relaxed) * 2).min(longest);
                self.backoff_ms.store(backoff, Relaxed);
                self.probe_at.store(now + backoff, Relaxed);
            } else {
                self.open_until.store(0, Relaxed);
                self.close();
            }
            return;
        }
        let second = now / 1000;
        let bucket = &self.buckets[(second % WINDOW_SECONDS as u64) as usize];
        if bucket.second.swap(second, Relaxed) != second {
            // A bucket last used a window ago: its counts are stale.
            bucket.successes.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
        }
        if failed {
            bucket.failures.fetch_add(1, Relaxed);
        } else {
            bucket.successes.fetch_add(1, Relaxed);
        }
        let (mut answers, mut failures) = (0u64, 0u64);
        for bucket in &self.buckets {
            if second.saturating_sub(bucket.second.load(Relaxed)) < WINDOW_SECONDS as u64 {
                let f = u64::from(bucket.failures.load(Relaxed));
                failures += f;
                answers += f + u64::from(bucket.successes.load(Relaxed));
            }
        }
        if answers >= self.samples && failures as f64 >= self.threshold * answers as f64 {
            let until = now + (self.return_to_service.as_millis() as u64).max(1);
            if self
                .open_until
                .compare_exchange(0, until, Relaxed, Relaxed)
                .is_ok()
            {
                self.backoff_ms.store(FIRST_BACKOFF_MS, Relaxed);
                self.probe_at.store(now + FIRST_BACKOFF_MS, Relaxed);
                tracing::warn!("circuit breaker tripped: {failures} of {answers} answers failed");
            }
        }
    }

    /// Back to closed: the window starts empty.
    fn close(&self) {
        for bucket in &self.buckets {
            bucket.successes.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
        }
    }
}

/// Milliseconds since the first call, monotonic and never 0 (which means "closed" here, and
/// "answering" for the Redis store's quiet replicas).
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_failure_rate_once_it_has_its_samples() {
        let b = Breaker::new(0.5, 4, Duration::from_secs(10), true);
        let t = 5_000;
        b.record_at(t, true);
        b.record_at(t, true);
        b.record_at(t, true);
        assert!(b.ready_at(t), "three answers are fewer than the samples");
        b.record_at(t, false);
        assert!(!b.ready_at(t + 1), "3 of 4 failed");
        assert!(
            !b.ready_at(t + 9_999),
            "no probe without the half-open state"
        );
        assert!(b.ready_at(t + 10_000), "back in service");
        b.record_at(t + 10_000, true);
        assert!(b.ready_at(t + 10_001), "the window starts empty again");
    }

    #[test]
    fn a_half_open_probe_goes_one_at_a_time_and_closes_it_on_success() {
        let b = Breaker::new(0.5, 2, Duration::from_secs(60), false);
        let t = 1_000;
        b.record_at(t, true);
        b.record_at(t, true);
        assert!(!b.ready_at(t + 100));
        assert!(b.ready_at(t + 500), "the first probe");
        assert!(!b.ready_at(t + 501), "one probe at a time");
        b.record_at(t + 600, true);
        assert!(
            !b.ready_at(t + 1_001),
            "a failed probe doubles the back-off"
        );
        assert!(!b.ready_at(t + 1_500));
        assert!(b.ready_at(t + 1_600), "1 s after the failed probe");
        b.record_at(t + 1_700, false);
        assert!(b.ready_at(t + 1_701), "closed by a probe's success");
        assert!(b.ready_at(t + 1_702));
    }

    #[test]
    fn old_answers_leave_the_window() {
        let b = Breaker::new(0.5, 2, Duration::from_secs(60), true);
        b.record_at(1_000, true);
        b.record_at(20_000, false);
        assert!(b.ready_at(20_001), "the failure 19 s ago no longer counts");
    }
}
