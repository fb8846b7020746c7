//! The per-node session cache in front of a shared store: fresh for
//! `cached_session_timeout`, and usable for `stale_if_error` more while the store is
//! unreachable (stale-if-error), so a storage outage does not turn into auth failures.
//!
//! Invalidation comes from writes through this node and from cluster notifications (see
//! `store::redis`); a new epoch marks every entry as needing revalidation without dropping it.

use std::collections::hash_map::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Lookup, RecordDigest, SessionStore, StoreError, StoreHealth};
use crate::config::LocalSessionCache;
use crate::limits::{Policy, Usage};
use crate::session::SessionState;

/// One cached record, held in the cache's own slot (not behind another pointer: at a
/// million keys a lookup's cost is its cache-line misses). Revalidating an unchanged record
/// only moves `fetched` and `epoch`, in place: no decode and no new cache entry.
#[derive(Clone)]
struct Cached {
    session: Arc<SessionState>,
    digest: Option<RecordDigest>,
    /// Milliseconds after the cache's `started` when the store last confirmed the record.
    fetched: u64,
    epoch: u64,
}

/// Bounded cache of sessions by storage id. Entries older than `stale_for` are served only
/// once the store confirms them, and give way to newer ones as the cache evicts (S3-FIFO):
/// an expiry timer per entry would cost more on every request than the memory it frees. Keys are hashed with SipHash, as
/// clients choose them.
pub struct SessionCache {
    entries: quick_cache::sync::Cache<String, Cached, quick_cache::UnitWeighter, RandomState>,
    fresh_for: Duration,
    stale_for: Duration,
    epoch: AtomicU64,
    started: Instant,
}

impl SessionCache {
    pub fn new(config: &LocalSessionCache) -> Self {
        let fresh_for = Duration::from_secs(config.cached_session_timeout);
        let stale_for = Duration::from_secs(config.stale_if_error).max(fresh_for);
        Self {
            entries: quick_cache::sync::Cache::with(
                usize::try_from(config.max_entries).unwrap_or(usize::MAX),
                config.max_entries,
                quick_cache::UnitWeighter,
                RandomState::new(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            fresh_for,
            stale_for,
            epoch: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn age(&self, entry: &Cached) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(entry.fetched))
    }

    fn is_fresh(&self, entry: &Cached) -> bool {
        self.age(entry) < self.fresh_for && entry.epoch == self.epoch.load(Ordering::Acquire)
    }

    /// The store confirmed that `key_id` still holds the record with `digest`. An entry
    /// invalidated meanwhile stays gone, and one replaced by another record is left as is.
    fn confirm(&self, key_id: &str, digest: Option<RecordDigest>) {
        let (now, epoch) = (self.now_ms(), self.epoch.load(Ordering::Acquire));
        // On a missing key `entry` hands back an insertion guard, dropped here unused.
        let _ = self
            .entries
            .entry(key_id, Some(Duration::ZERO), |_, entry| {
                if entry.digest == digest {
                    entry.fetched = now;
                    entry.epoch = epoch;
                }
                quick_cache::sync::EntryAction::Retain(())
            });
    }

    /// Drops one entry (a key changed or was deleted somewhere).
    pub fn invalidate(&self, key_id: &str) {
        self.entries.remove(key_id);
    }

    /// Marks every entry as needing revalidation, keeping them for stale-if-error (used when
    /// notifications may have been missed, e.g. across a failover).
    pub fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn insert(&self, key_id: &str, session: Arc<SessionState>, digest: Option<RecordDigest>) {
        self.entries.insert(
            key_id.to_owned(),
            Cached {
                session,
                digest,
                fetched: self.now_ms(),
                epoch: self.epoch.load(Ordering::Acquire),
            },
        );
    }
}

/// A [`SessionStore`] that answers from a [`SessionCache`] and falls back to stale entries
/// while the inner store is unreachable.
pub struct CachedStore {
    inner: Arc<dyn SessionStore>,
    cache: Arc<SessionCache>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn SessionStore>, cache: Arc<SessionCache>) -> Self {
        Self { inner, cache }
    }
}

#[async_trait]
impl SessionStore for CachedStore {
    async fn get(&self, key_id: &str) -> Result<Option<Arc<SessionState>>, StoreError> {
        let cache = &self.cache;
        let cached = cache.entries.get(key_id);
        if cached.as_ref().is_some_and(|c| cache.is_fresh(c)) {
            return Ok(cached.map(|c| c.session));
        }
        let known = cached.as_ref().and_then(|c| c.digest);
        match self.inner.lookup(key_id, known).await {
            Ok(Lookup::Found { session, digest }) => {
                cache.insert(key_id, session.clone(), digest);
                Ok(Some(session))
            }
            Ok(Lookup::Unchanged) => match cached {
                Some(c) => {
                    cache.confirm(key_id, c.digest);
                    Ok(Some(c.session))
                }
                // The store answers Unchanged only to a digest it was given, which came from
                // `cached`; should one break that contract, read the record afresh.
                None => self.inner.get(key_id).await,
            },
            Ok(Lookup::Missing) => {
                cache.invalidate(key_id);
                Ok(None)
            }
            Err(StoreError::Unavailable(reason)) => match cached {
                Some(c) if cache.age(&c) < cache.stale_for => {
                    tracing::debug!("key store unavailable ({reason}); serving a cached session");
                    Ok(Some(c.session.clone()))
                }
                _ => Err(StoreError::Unavailable(reason)),
            },
            Err(e) => Err(e),
        }
    }

    async fn set(
        &self,
        key_id: &str,
        session: &SessionState,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        // Entries come from reads only: a written key is first read back from the store,
        // so the cache never holds what the store did not confirm.
        self.cache.invalidate(key_id);
        self.inner.set(key_id, session, ttl).await
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        self.cache.invalidate(key_id);
        self.inner.delete(key_id).await
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list().await
    }

    async fn health(&self) -> StoreHealth {
        self.inner.health().await
    }

    async fn consume(&self, policy: &Policy, want: u32) -> Result<Usage, StoreError> {
        self.inner.consume(policy, want).await
    }

    async fn add_quota_usage(
        &self,
        counter: &str,
        count: i64,
        renewal: i64,
    ) -> Result<(), StoreError> {
        self.inner.add_quota_usage(counter, count, renewal).await
    }

    async fn quota_used(&self, counter: &str) -> Result<Option<(i64, i64)>, StoreError> {
        self.inner.quota_used(counter).await
    }

    async fn reset_quota(&self, counter: &str) -> Result<(), StoreError> {
        self.inner.reset_quota(counter).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A store that can be switched to "unreachable" to exercise stale-if-error.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        inner: crate::store::MemoryStore,
    }

    #[async_trait]
    impl SessionStore for Flaky {
        async fn get(&self, k: &str) -> Result<Option<Arc<SessionState>>, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.inner.get(k).await
        }
        async fn set(
            &self,
            k: &str,
            s: &SessionState,
            t: Option<Duration>,
        ) -> Result<(), StoreError> {
            self.inner.set(k, s, t).await
        }
        async fn delete(&self, k: &str) -> Result<bool, StoreError> {
            self.inner.delete(k).await
        }
        async fn list(&self) -> Result<Vec<String>, StoreError> {
            self.inner.list().await
        }
        async fn health(&self) -> StoreHealth {
            self.inner.health().await
        }
        async fn consume(&self, p: &Policy, n: u32) -> Result<Usage, StoreError> {
            self.inner.consume(p, n).await
        }
        async fn add_quota_usage(&self, c: &str, n: i64, r: i64) -> Result<(), StoreError> {
            self.inner.add_quota_usage(c, n, r).await
        }
        async fn quota_used(&self, c: &str) -> Result<Option<(i64, i64)>, StoreError> {
            self.inner.quota_used(c).await
        }
        async fn reset_quota(&self, c: &str) -> Result<(), StoreError> {
            self.inner.reset_quota(c).await
        }
    }

    fn config(fresh: u64, stale: u64) -> LocalSessionCache {
        LocalSessionCache {
            cached_session_timeout: fresh,
            stale_if_error: stale,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stale_if_error_within_bound_only() {
        let flaky = Arc::new(Flaky::default());
        let cache = Arc::new(SessionCache::new(&config(0, 120)));
        let store = CachedStore::new(flaky.clone(), cache.clone());
        store
            .set("k", &SessionState::default(), None)
            .await
            .unwrap();
        store.get("k").await.unwrap();
        flaky.down.store(true, Ordering::Relaxed);
        assert!(
            store.get("k").await.unwrap().is_some(),
            "stale entry served"
        );
        assert!(matches!(
            store.get("other").await,
            Err(StoreError::Unavailable(_))
        ));

        let cache = Arc::new(SessionCache::new(&config(0, 0)));
        let store = CachedStore::new(flaky.clone(), cache);
        flaky.down.store(false, Ordering::Relaxed);
        store.get("k").await.unwrap();
        flaky.down.store(true, Ordering::Relaxed);
        assert!(store.get("k").await.is_err(), "past the stale bound");
    }

    #[test]
    fn confirming_never_revives_an_entry_nor_refreshes_another_record() {
        let cache = SessionCache::new(&config(60, 120));
        cache.confirm("gone", Some(1));
        assert!(cache.entries.get("gone").is_none(), "not brought back");

        cache.insert("k", Arc::new(SessionState::default()), Some(2));
        cache.new_epoch();
        cache.confirm("k", Some(1));
        assert!(
            !cache.is_fresh(&cache.entries.get("k").unwrap()),
            "another record's confirmation"
        );
        cache.confirm("k", Some(2));
        assert!(cache.is_fresh(&cache.entries.get("k").unwrap()));
    }

    #[tokio::test]
    async fn new_epoch_forces_revalidation() {
        let flaky = Arc::new(Flaky::default());
        let cache = Arc::new(SessionCache::new(&config(60, 120)));
        let store = CachedStore::new(flaky.clone(), cache.clone());
        store
            .set("k", &SessionState::default(), None)
            .await
            .unwrap();
        store.get("k").await.unwrap();
        flaky.inner.delete("k").await.unwrap();
        assert!(
            store.get("k").await.unwrap().is_some(),
            "fresh cache answers"
        );
        cache.new_epoch();
        assert!(
            store.get("k").await.unwrap().is_none(),
            "revalidated after a new epoch"
        );
    }
}
