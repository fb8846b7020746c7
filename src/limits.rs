//! Rate limits and quotas: which limits apply to a request, the counting rules (GCRA for the
//! rate, counters with expiry for the quota), and the per-node fallback that keeps admitting
//! while the shared store is unreachable.
//!
//! The shared, exact counting lives in each store's `consume` (a Lua script on Redis); this
//! module owns the semantics and the arithmetic the memory store and the fallback use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::api::ApiSpec;
use crate::session::SessionState;
use crate::store::{SessionStore, StoreError};

/// `rate` requests per `per` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub limit: f64,
    pub per: f64,
}

impl Rate {
    /// GCRA emission interval, in seconds.
    pub fn interval(&self) -> f64 {
        self.per / self.limit
    }
}

/// `max` requests per `renewal` seconds (`renewal` <= 0: never renews).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max: i64,
    pub renewal: i64,
}

/// The limits one request is subject to, and the counter id they are kept under.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub counter: String,
    pub rate: Option<Rate>,
    pub quota: Option<Quota>,
}

/// What a store reports after counting one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rate_exceeded: bool,
    /// Requests left in the current burst.
    pub rate_remaining: u64,
    /// Seconds until the burst is full again (or, when exceeded, until the next is allowed).
    pub rate_reset: f64,
    pub quota_exceeded: bool,
    pub quota_remaining: i64,
    /// Unix seconds of the next quota renewal (0: none).
    pub quota_renews: i64,
}

/// A request refused by its limits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("Rate Limit Exceeded")]
    RateExceeded,
    #[error("Quota exceeded")]
    QuotaExceeded,
}

impl LimitError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExceeded => StatusCode::FORBIDDEN,
        }
    }
}

/// The limits for `session` calling `spec`, or `None` when none apply. Per-API limits in
/// `access_rights[api].limit` override the key's own and are counted separately.
pub fn policy_for(spec: &ApiSpec, session: &SessionState, key_id: &str) -> Option<Policy> {
    let api_limit = session
        .access_to(spec.api_id())
        .and_then(|a| a.limit.as_ref())
        .filter(|l| l.rate > 0.0 || l.quota_max > 0);
    let (rate, per, quota_max, renewal, counter) = match api_limit {
        Some(l) => (
            l.rate,
            l.per,
            l.quota_max,
            l.quota_renewal_rate,
            format!("{}-{key_id}", spec.api_id()),
        ),
        None => (
            session.rate,
            session.per,
            session.quota_max,
            session.quota_renewal_rate,
            key_id.to_owned(),
        ),
    };
    let rate = (!spec.definition.disable_rate_limit && rate > 0.0 && per > 0.0)
        .then_some(Rate { limit: rate, per });
    let quota = (!spec.definition.disable_quota && quota_max > 0).then_some(Quota {
        max: quota_max,
        renewal,
    });
    (rate.is_some() || quota.is_some()).then_some(Policy {
        counter,
        rate,
        quota,
    })
}

impl Usage {
    pub fn verdict(&self) -> Result<(), LimitError> {
        if self.rate_exceeded {
            Err(LimitError::RateExceeded)
        } else if self.quota_exceeded {
            Err(LimitError::QuotaExceeded)
        } else {
            Ok(())
        }
    }

    /// Tyk's headers: the quota's figures when a quota applies, else the rate's.
    pub fn write_headers(&self, policy: &Policy, headers: &mut HeaderMap, now: f64) {
        static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        let (limit, remaining, reset) = match (policy.quota, policy.rate) {
            (Some(quota), _) => (quota.max, self.quota_remaining.max(0), self.quota_renews),
            (None, Some(rate)) => (
                rate.limit as i64,
                self.rate_remaining as i64,
                (now + self.rate_reset).ceil() as i64,
            ),
            (None, None) => return,
        };
        headers.insert(LIMIT.clone(), HeaderValue::from(limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(remaining));
        headers.insert(RESET.clone(), HeaderValue::from(reset));
    }
}

/// Current Unix time in fractional seconds.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// GCRA theoretical arrival time (Unix seconds).
    tat: f64,
    quota_used: i64,
    /// Unix seconds when the quota renews (0: not started).
    quota_renews_at: f64,
}

/// In-process counters with the same rules as the Redis script: the memory store's counting
/// and the fallback while Redis is away.
#[derive(Default)]
pub struct LocalCounters {
    counters: Mutex<HashMap<String, Counters>>,
}

impl LocalCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counters>> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request at `now` and reports the outcome.
    pub fn consume(&self, policy: &Policy, now: f64) -> Usage {
        let mut map = self.lock();
        let c = match map.get_mut(policy.counter.as_str()) {
            Some(c) => c,
            None => map.entry(policy.counter.clone()).or_default(),
        };
        let mut usage = Usage {
            rate_exceeded: false,
            rate_remaining: 0,
            rate_reset: 0.0,
            quota_exceeded: false,
            quota_remaining: -1,
            quota_renews: 0,
        };
        let mut new_tat = None;
        if let Some(rate) = policy.rate {
            let t = rate.interval();
            let tat = c.tat.max(now);
            let next = tat + t;
            if next - now > rate.per + 1e-9 {
                usage.rate_exceeded = true;
                usage.rate_reset = tat + t - rate.per - now;
                return usage;
            }
            // The epsilon absorbs float error: 0.8 / 0.2 must count as 4.
            usage.rate_remaining = ((rate.per - (next - now)) / t + 1e-6).floor() as u64;
            usage.rate_reset = next - now;
            new_tat = Some(next);
        }
        if let Some(quota) = policy.quota {
            if c.quota_renews_at > 0.0 && now >= c.quota_renews_at {
                c.quota_used = 0;
                c.quota_renews_at = 0.0;
            }
            if c.quota_renews_at == 0.0 && quota.renewal > 0 {
                c.quota_renews_at = now + quota.renewal as f64;
            }
            if c.quota_used >= quota.max {
                usage.quota_exceeded = true;
                usage.quota_remaining = 0;
            } else {
                c.quota_used += 1;
                usage.quota_remaining = quota.max - c.quota_used;
            }
            usage.quota_renews = c.quota_renews_at.ceil() as i64;
        }
        if !usage.quota_exceeded
            && let Some(tat) = new_tat
        {
            c.tat = tat;
        }
        usage
    }

    /// Adopts the shared store's view of a quota, so a fallback starts where Redis left off.
    pub fn observe(&self, policy: &Policy, usage: &Usage) {
        let Some(quota) = policy.quota else { return };
        let mut map = self.lock();
        if let Some(c) = map.get_mut(policy.counter.as_str()) {
            c.quota_used = quota.max - usage.quota_remaining.max(0);
            c.quota_renews_at = usage.quota_renews as f64;
        } else {
            map.insert(
                policy.counter.clone(),
                Counters {
                    tat: 0.0,
                    quota_used: quota.max - usage.quota_remaining.max(0),
                    quota_renews_at: usage.quota_renews as f64,
                },
            );
        }
    }

    /// Requests counted against a quota and when it renews, if counting has started.
    pub fn quota_used(&self, counter: &str, now: f64) -> Option<(i64, i64)> {
        let map = self.lock();
        let c = map.get(counter)?;
        if c.quota_renews_at > 0.0 && now >= c.quota_renews_at {
            return None;
        }
        Some((c.quota_used, c.quota_renews_at.ceil() as i64))
    }

    /// Adds `count` to a quota counter, starting a period if none runs.
    pub fn add_quota(&self, counter: &str, count: i64, renewal: i64, now: f64) {
        let mut map = self.lock();
        let c = map.entry(counter.to_owned()).or_default();
        if c.quota_renews_at > 0.0 && now >= c.quota_renews_at {
            c.quota_used = 0;
            c.quota_renews_at = 0.0;
        }
        if c.quota_renews_at == 0.0 && renewal > 0 {
            c.quota_renews_at = now + renewal as f64;
        }
        c.quota_used += count;
    }

    pub fn reset_quota(&self, counter: &str) {
        if let Some(c) = self.lock().get_mut(counter) {
            c.quota_used = 0;
            c.quota_renews_at = 0.0;
        }
    }
}

/// Applies limits for a node: asks the store (exact, shared), and while the store is
/// unreachable counts locally and remembers what to add to the shared quota later.
pub struct Limiter {
    store: Arc<dyn SessionStore>,
    local: LocalCounters,
    /// Quota requests admitted while the store was away: counter → (count, renewal).
    pending: Mutex<HashMap<String, (i64, i64)>>,
}

impl Limiter {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self {
            store,
            local: LocalCounters::default(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request under `policy`.
    pub async fn admit(&self, policy: &Policy) -> Usage {
        match self.store.consume(policy).await {
            Ok(usage) => {
                self.local.observe(policy, &usage);
                usage
            }
            Err(e) => {
                tracing::debug!("limits counted locally: {e}");
                let usage = self.local.consume(policy, now_secs());
                if let (Some(quota), false) =
                    (policy.quota, usage.quota_exceeded || usage.rate_exceeded)
                {
                    let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    pending
                        .entry(policy.counter.clone())
                        .or_insert((0, quota.renewal))
                        .0 += 1;
                }
                usage
            }
        }
    }

    /// Adds locally counted quota usage to the store; what fails stays pending.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch: Vec<(String, (i64, i64))> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        let mut first_error = None;
        for (counter, (count, renewal)) in batch {
            if let Err(e) = self.store.add_quota_usage(&counter, count, renewal).await {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.entry(counter).or_insert((0, renewal)).0 += count;
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes pending usage every `every` until the limiter is dropped.
    pub fn spawn_flusher(self: &Arc<Self>, every: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                let has_pending = !limiter
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if has_pending && limiter.flush().await.is_ok() {
                    tracing::info!("quota usage counted during the outage added to the store");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: Option<(f64, f64)>, quota: Option<(i64, i64)>) -> Policy {
        Policy {
            counter: "k".into(),
            rate: rate.map(|(limit, per)| Rate { limit, per }),
            quota: quota.map(|(max, renewal)| Quota { max, renewal }),
        }
    }

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let c = LocalCounters::default();
        let p = policy(Some((10.0, 1.0)), None);
        let admitted = (0..15)
            .filter(|_| !c.consume(&p, 100.0).rate_exceeded)
            .count();
        assert_eq!(admitted, 10, "a full burst of `rate` at once");
        assert!(c.consume(&p, 100.05).rate_exceeded);
        assert!(!c.consume(&p, 100.1).rate_exceeded, "one more per interval");
        let u = c.consume(&p, 102.0);
        assert_eq!(u.rate_remaining, 9, "refilled after `per`");
    }

    #[test]
    fn quota_counts_renews_and_reports() {
        let c = LocalCounters::default();
        let p = policy(None, Some((3, 60)));
        let remaining: Vec<i64> = (0..4)
            .map(|_| c.consume(&p, 10.0).quota_remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0, 0]);
        assert!(c.consume(&p, 10.0).quota_exceeded);
        assert_eq!(c.consume(&p, 10.0).quota_renews, 70);
        assert!(!c.consume(&p, 71.0).quota_exceeded, "renewed");
        c.reset_quota("k");
        assert_eq!(c.quota_used("k", 72.0).unwrap().0, 0);
    }

    #[test]
    fn a_rate_refusal_consumes_no_quota() {
        let c = LocalCounters::default();
        let p = policy(Some((1.0, 10.0)), Some((5, 60)));
        assert!(!c.consume(&p, 1.0).rate_exceeded);
        assert!(c.consume(&p, 1.0).rate_exceeded);
        assert_eq!(c.quota_used("k", 1.0).unwrap().0, 1);
    }
}
