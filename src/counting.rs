//! The counting rules of rate limits and quotas, with no store in them: the limits one request
//! is under ([`Policy`]), what counting reports ([`Usage`]) and the answers it gives, and the
//! in-process arithmetic (GCRA for the rate, counters with expiry for the quota) that the
//! memory store and the outage fallback use. Stores count by these rules; `limits` decides
//! which apply and leases admissions from a store.

use std::collections::HashMap;
use std::sync::Mutex;

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

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

/// What a store reports after counting requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Requests admitted by this call (0 when a limit refused them; at most what was asked).
    pub granted: u32,
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
    /// The API's own `global_rate_limit`.
    #[error("API Rate Limit Exceeded")]
    ApiRateExceeded,
}

impl LimitError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateExceeded | Self::ApiRateExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExceeded => StatusCode::FORBIDDEN,
        }
    }
}

/// Which limits an API turns off (`disable_rate_limit`, `disable_quota`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Disabled {
    pub rate: bool,
    pub quota: bool,
}

/// The counter of a per-API limit (`access_rights[api].limit`): Tyk's `<api_id>-<key>` scope.
pub fn api_counter(api_id: &str, key_id: &str) -> String {
    format!("{api_id}-{key_id}")
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
        // Room for all three at once (a response's map is sized to the headers it came with).
        headers.reserve(3);
        for (name, value) in [(&LIMIT, limit), (&REMAINING, remaining), (&RESET, reset)] {
            headers.insert(name.clone(), HeaderValue::from(value));
        }
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

impl Counters {
    fn quota_period_over(&self, now: f64) -> bool {
        self.quota_renews_at > 0.0 && now >= self.quota_renews_at
    }

    /// Ends a finished quota period and starts one (of `renewal` seconds) if none runs.
    fn current_quota_period(&mut self, now: f64, renewal: i64) {
        if self.quota_period_over(now) {
            self.quota_used = 0;
            self.quota_renews_at = 0.0;
        }
        if self.quota_renews_at == 0.0 && renewal > 0 {
            self.quota_renews_at = now + renewal as f64;
        }
    }
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

    /// Admits up to `want` requests at `now`, as many as both limits allow, and reports the
    /// outcome; `granted` is 0 when a limit refuses even one.
    pub fn consume(&self, policy: &Policy, now: f64, want: u32) -> Usage {
        let mut map = self.lock();
        let c = match map.get_mut(policy.counter.as_str()) {
            Some(c) => c,
            None => map.entry(policy.counter.clone()).or_default(),
        };
        let mut usage = Usage {
            granted: 0,
            rate_exceeded: false,
            rate_remaining: 0,
            rate_reset: 0.0,
            quota_exceeded: false,
            quota_remaining: -1,
            quota_renews: 0,
        };
        let mut grant = i64::from(want.max(1));
        let tat = c.tat.max(now);
        if let Some(rate) = policy.rate {
            let t = rate.interval();
            // Slots free within the burst; the epsilon absorbs float error (0.8 / 0.2 is 4).
            let free = ((rate.per - (tat - now)) / t + 1e-6).floor() as i64;
            if free < 1 {
                usage.rate_exceeded = true;
                usage.rate_reset = tat + t - rate.per - now;
                return usage;
            }
            grant = grant.min(free);
        }
        if let Some(quota) = policy.quota {
            c.current_quota_period(now, quota.renewal);
            usage.quota_renews = c.quota_renews_at.ceil() as i64;
            let left = quota.max - c.quota_used;
            if left < 1 {
                usage.quota_exceeded = true;
                usage.quota_remaining = 0;
                return usage;
            }
            grant = grant.min(left);
            c.quota_used += grant;
            usage.quota_remaining = quota.max - c.quota_used;
        }
        if let Some(rate) = policy.rate {
            let t = rate.interval();
            c.tat = tat + grant as f64 * t;
            usage.rate_remaining = ((rate.per - (c.tat - now)) / t + 1e-6).floor().max(0.0) as u64;
            usage.rate_reset = c.tat - now;
        }
        usage.granted = grant as u32;
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
        if c.quota_period_over(now) {
            return None;
        }
        Some((c.quota_used, c.quota_renews_at.ceil() as i64))
    }

    /// Adds `count` to a quota counter, starting a period if none runs.
    pub fn add_quota(&self, counter: &str, count: i64, renewal: i64, now: f64) {
        let mut map = self.lock();
        let c = map.entry(counter.to_owned()).or_default();
        c.current_quota_period(now, renewal);
        c.quota_used += count;
    }

    /// Forgets the counters that say no more than a missing one would: a rate window that
    /// has drained and no quota period running. Without this, every key ever counted here
    /// (during each Redis outage, say) would stay in memory.
    pub fn forget_idle(&self, now: f64) {
        self.lock().retain(|_, c| {
            let quota_idle =
                c.quota_period_over(now) || (c.quota_renews_at == 0.0 && c.quota_used == 0);
            !(c.tat <= now && quota_idle)
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn reset_quota(&self, counter: &str) {
        if let Some(c) = self.lock().get_mut(counter) {
            c.quota_used = 0;
            c.quota_renews_at = 0.0;
        }
    }
}
