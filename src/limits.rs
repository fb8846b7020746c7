//! Rate limits and quotas on the request path: which limits apply to a request, leases of
//! admissions from the shared store, and the per-node fallback that keeps admitting while the
//! store is unreachable.
//!
//! The shared, exact counting lives in each store's `consume` (a Lua script on Redis); the
//! rules and the arithmetic are `counting`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::counting::{Disabled, LocalCounters, Policy, Quota, Rate, Usage, api_counter, now_secs};
use crate::session::{KeyAccess, Limits};
use crate::store::{SessionStore, StoreError};

/// The limits for a key with `access` calling the API `api_id`, or `None` when none apply.
/// Per-API limits in `access_rights[api].limit` override the key's own and are counted
/// separately.
pub fn policy_for(
    api_id: &str,
    disabled: Disabled,
    access: &KeyAccess,
    key_id: &str,
) -> Option<Policy> {
    let api_limit = access
        .access_to(api_id)
        .and_then(|a| a.limit)
        .filter(|l| l.rate > 0.0 || l.quota_max > 0);
    let (limits, counter) = match api_limit {
        Some(l) => (l, api_counter(api_id, key_id)),
        None => (access.limits, key_id.to_owned()),
    };
    let Limits {
        rate,
        per,
        quota_max,
        quota_renewal_rate: renewal,
    } = limits;
    let rate = (!disabled.rate && rate > 0.0 && per > 0.0).then_some(Rate { limit: rate, per });
    let quota = (!disabled.quota && quota_max > 0).then_some(Quota {
        max: quota_max,
        renewal,
    });
    (rate.is_some() || quota.is_some()).then_some(Policy {
        counter,
        rate,
        quota,
    })
}

/// How long admissions leased from the store may be used before they are given back.
const LEASE_LIFETIME: std::time::Duration = std::time::Duration::from_millis(250);
/// Most admissions leased at once.
const MAX_LEASE: u32 = 64;
/// Flushes between two sweeps of the local counters for idle ones.
const FORGET_IDLE_EVERY: u64 = 20;

/// Admissions a node obtained from the store in one round trip and has not used yet.
struct Lease {
    left: u32,
    renewal: i64,
    quota: bool,
    expires: std::time::Instant,
    /// The store's figures when the lease was granted, for the headers.
    usage: Usage,
}

/// Applies limits for a node: asks the store (exact, shared), and while the store is
/// unreachable counts locally and remembers what to add to the shared quota later.
///
/// Where the limits are large, one round trip leases several admissions (at most 1% of the
/// rate per second and 1% of the remaining quota, up to [`MAX_LEASE`]), used locally for up
/// to [`LEASE_LIFETIME`]; what is not used is given back to the quota. Leases are granted
/// atomically by the store, so the limits are never exceeded; small limits (a rate under 200
/// per second, a quota with under 200 left) are counted request by request.
pub struct Limiter {
    store: Arc<dyn SessionStore>,
    local: LocalCounters,
    /// Hashed with foldhash, looked up on every limited request: its keys are counters of
    /// authenticated keys, which a client cannot choose.
    leases: Mutex<HashMap<String, Lease, foldhash::fast::RandomState>>,
    /// Quota requests admitted while the store was away, or leased and unused:
    /// counter → (count, renewal). Negative counts give admissions back.
    pending: Mutex<HashMap<String, (i64, i64)>>,
}

impl Limiter {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self {
            store,
            local: LocalCounters::default(),
            leases: Mutex::new(HashMap::default()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counters with a live lease, and the quota use waiting to be written to the store (for
    /// `/metrics`).
    pub fn figures(&self) -> (u64, u64) {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner()).len();
        let pending: i64 = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(count, _)| (*count).max(0))
            .sum();
        (leases as u64, pending.max(0) as u64)
    }

    fn add_pending(&self, counter: &str, count: i64, renewal: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(counter) {
            Some(entry) => entry.0 += count,
            None => {
                pending.insert(counter.to_owned(), (count, renewal));
            }
        }
    }

    /// Takes one admission from a live lease; otherwise says what the last lease left of the
    /// quota (the hint for the next lease's size). One lock either way.
    fn take_leased(&self, policy: &Policy) -> Result<Usage, Option<i64>> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lease) = leases.get_mut(policy.counter.as_str()) else {
            return Err(None);
        };
        if lease.left == 0 || lease.expires <= std::time::Instant::now() {
            return Err(Some(lease.usage.quota_remaining));
        }
        lease.left -= 1;
        let mut usage = lease.usage;
        usage.granted = 1;
        usage.rate_remaining = usage.rate_remaining.saturating_add(u64::from(lease.left));
        if usage.quota_remaining >= 0 {
            usage.quota_remaining += i64::from(lease.left);
        }
        Ok(usage)
    }

    /// How many admissions to ask for: 1 unless the limits are large.
    fn lease_size(policy: &Policy, last_remaining: Option<i64>) -> u32 {
        let mut size = MAX_LEASE as f64;
        if let Some(rate) = policy.rate {
            size = size.min(rate.limit / rate.per * 0.01);
        }
        if policy.quota.is_some() {
            size = size.min(last_remaining.unwrap_or(0) as f64 * 0.01);
        }
        size.max(1.0) as u32
    }

    /// Counts one request under `policy`.
    pub async fn admit(&self, policy: &Policy) -> Usage {
        let last_remaining = match self.take_leased(policy) {
            Ok(usage) => return usage,
            Err(hint) => hint,
        };
        let want = Self::lease_size(policy, last_remaining);
        match self.store.consume(policy, want).await {
            Ok(usage) => {
                self.local.observe(policy, &usage);
                let lease = Lease {
                    left: usage.granted.saturating_sub(1),
                    renewal: policy.quota.map_or(0, |q| q.renewal),
                    quota: policy.quota.is_some(),
                    expires: std::time::Instant::now() + LEASE_LIFETIME,
                    usage,
                };
                let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                let replaced = leases.insert(policy.counter.clone(), lease);
                match replaced {
                    // The store has no quota left but this node still holds some it leased:
                    // those admissions are its to use.
                    Some(mut old) if usage.quota_exceeded && old.quota && old.left > 0 => {
                        old.left -= 1;
                        let mut admitted = old.usage;
                        admitted.granted = 1;
                        admitted.quota_remaining = i64::from(old.left);
                        leases.insert(policy.counter.clone(), old);
                        admitted
                    }
                    // Concurrent requests each took a lease: keep the admissions together.
                    // Leased rate slots are only good for the lease's lifetime.
                    Some(old)
                        if old.left > 0
                            && (policy.rate.is_none()
                                || old.expires > std::time::Instant::now()) =>
                    {
                        if let Some(lease) = leases.get_mut(policy.counter.as_str()) {
                            lease.left += old.left;
                        }
                        Usage {
                            granted: usage.granted.min(1),
                            ..usage
                        }
                    }
                    Some(old) => {
                        drop(leases);
                        self.give_back(&policy.counter, &old);
                        Usage {
                            granted: usage.granted.min(1),
                            ..usage
                        }
                    }
                    None => Usage {
                        granted: usage.granted.min(1),
                        ..usage
                    },
                }
            }
            Err(e) => {
                tracing::debug!("limits counted locally: {e}");
                let usage = self.local.consume(policy, now_secs(), 1);
                if let (Some(quota), 1) = (policy.quota, usage.granted) {
                    self.add_pending(&policy.counter, 1, quota.renewal);
                }
                usage
            }
        }
    }

    /// Unused quota admissions of a lease go back to the store with the next flush.
    fn give_back(&self, counter: &str, lease: &Lease) {
        if lease.quota && lease.left > 0 {
            self.add_pending(counter, -i64::from(lease.left), lease.renewal);
        }
    }

    /// Ends expired leases (giving back what they did not use), then adds locally counted
    /// quota usage to the store; what fails stays pending.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let now = std::time::Instant::now();
        let expired: Vec<(String, Lease)> = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = leases
                .iter()
                .filter(|(_, l)| {
                    l.expires + LEASE_LIFETIME * 40 <= now || (l.left > 0 && l.expires <= now)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| leases.remove(&k).map(|l| (k, l)))
                .collect()
        };
        for (counter, lease) in &expired {
            self.give_back(counter, lease);
        }
        let batch: Vec<(String, (i64, i64))> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        let mut first_error = None;
        for (counter, (count, renewal)) in batch {
            if count == 0 {
                continue;
            }
            if let Err(e) = self.store.add_quota_usage(&counter, count, renewal).await {
                self.add_pending(&counter, count, renewal);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes every `every` until the limiter is dropped.
    pub fn spawn_flusher(self: &Arc<Self>, every: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            for tick in 1u64.. {
                tokio::time::sleep(every).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = limiter.flush().await {
                    tracing::debug!("quota usage not yet added to the store: {e}");
                }
                if tick % FORGET_IDLE_EVERY == 0 {
                    limiter.local.forget_idle(now_secs());
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
    fn idle_counters_are_forgotten_and_running_ones_kept() {
        let c = LocalCounters::default();
        let rated = policy(Some((10.0, 1.0)), None);
        c.consume(&rated, 100.0, 1);
        let quota = Policy {
            counter: "q".into(),
            ..policy(None, Some((5, 60)))
        };
        c.consume(&quota, 100.0, 1);
        c.forget_idle(100.05);
        assert_eq!(c.len(), 2, "a rate window and a quota period still running");
        c.forget_idle(100.2);
        assert_eq!(c.len(), 1, "the drained rate window is forgotten");
        assert!(c.quota_used("q", 100.2).is_some());
        c.forget_idle(160.0);
        assert_eq!(c.len(), 0, "the quota period is over");
        // Forgetting changes nothing a request sees: a fresh counter allows the full burst.
        assert_eq!(c.consume(&rated, 161.0, 10).granted, 10);
    }

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let c = LocalCounters::default();
        let p = policy(Some((10.0, 1.0)), None);
        let admitted = (0..15)
            .filter(|_| !c.consume(&p, 100.0, 1).rate_exceeded)
            .count();
        assert_eq!(admitted, 10, "a full burst of `rate` at once");
        assert!(c.consume(&p, 100.05, 1).rate_exceeded);
        assert!(
            !c.consume(&p, 100.1, 1).rate_exceeded,
            "one more per interval"
        );
        let u = c.consume(&p, 102.0, 1);
        assert_eq!(u.rate_remaining, 9, "refilled after `per`");
    }

    #[test]
    fn quota_counts_renews_and_reports() {
        let c = LocalCounters::default();
        let p = policy(None, Some((3, 60)));
        let remaining: Vec<i64> = (0..4)
            .map(|_| c.consume(&p, 10.0, 1).quota_remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0, 0]);
        assert!(c.consume(&p, 10.0, 1).quota_exceeded);
        assert_eq!(c.consume(&p, 10.0, 1).quota_renews, 70);
        assert!(!c.consume(&p, 71.0, 1).quota_exceeded, "renewed");
        c.reset_quota("k");
        assert_eq!(c.quota_used("k", 72.0).unwrap().0, 0);
    }

    #[test]
    fn grants_as_many_as_both_limits_allow() {
        let c = LocalCounters::default();
        let p = policy(Some((10.0, 1.0)), Some((4, 60)));
        let u = c.consume(&p, 5.0, 8);
        assert_eq!(u.granted, 4, "the quota bounds the grant");
        assert_eq!(u.quota_remaining, 0);
        assert_eq!(u.rate_remaining, 6);
        assert_eq!(c.consume(&p, 5.0, 8).granted, 0);
        let p = policy(Some((10.0, 1.0)), None);
        let c = LocalCounters::default();
        assert_eq!(
            c.consume(&p, 5.0, 64).granted,
            10,
            "the burst bounds the grant"
        );
    }

    #[test]
    fn lease_sizes() {
        let big = policy(Some((1e9, 1.0)), Some((1_000_000_000, 3600)));
        assert_eq!(Limiter::lease_size(&big, None), 1, "first ask for one");
        assert_eq!(Limiter::lease_size(&big, Some(1_000_000)), MAX_LEASE);
        let small = policy(Some((100.0, 1.0)), None);
        assert_eq!(Limiter::lease_size(&small, None), 1);
        let quota = policy(None, Some((1000, 60)));
        assert_eq!(Limiter::lease_size(&quota, Some(150)), 1);
        assert_eq!(Limiter::lease_size(&quota, Some(900)), 9);
    }

    #[test]
    fn a_rate_refusal_consumes_no_quota() {
        let c = LocalCounters::default();
        let p = policy(Some((1.0, 10.0)), Some((5, 60)));
        assert!(!c.consume(&p, 1.0, 1).rate_exceeded);
        assert!(c.consume(&p, 1.0, 1).rate_exceeded);
        assert_eq!(c.quota_used("k", 1.0).unwrap().0, 1);
    }
}
