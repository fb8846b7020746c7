//! The per-node session cache in front of a shared store: fresh for
//! `cached_session_timeout`, and usable for `stale_if_error` more while the store is
//! unreachable (stale-if-error), so a storage outage does not turn into auth failures.
//!
//! Invalidation comes from writes through this node, from cluster notifications and, while
//! the store follows changes as they happen (Redis key tracking, see `store::redis`), from the
//! store itself: an entry read while changes were followed stays fresh until it is invalidated,
//! with no revalidation after `cached_session_timeout`. A new epoch marks every entry as
//! needing revalidation without dropping it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use compact_str::CompactString;
use tokio::sync::mpsc;

use super::{CacheStats, Lookup, RecordDigest, SessionStore, StoreError, StoreHealth, StoreStats};
use crate::config::LocalSessionCache;
use crate::counting::{Policy, Usage};
use crate::session::{Credential, KeyAccess, SessionState};

/// One cached record, held in the cache's own slot (not behind another pointer: at a
/// million keys a lookup's cost is its cache-line misses). Revalidating an unchanged record
/// only moves `fetched`, `fresh_until` and `epoch`, in place: no decode and no new cache entry.
#[derive(Clone)]
struct Cached {
    credential: Credential,
    digest: Option<RecordDigest>,
    /// Milliseconds after the cache's `started` when the store last confirmed the record.
    fetched: u64,
    /// Used without asking the store until then (`u64::MAX`: until invalidated, for a record
    /// read while the store followed changes).
    fresh_until: u64,
    epoch: u64,
}

/// Bounded cache of sessions by storage id. Entries older than `stale_for` are served only
/// once the store confirms them, and give way to newer ones as the cache evicts (S3-FIFO):
/// an expiry timer per entry would cost more on every request than the memory it frees. Keys
/// are hashed with SipHash, as clients choose them, and held inline up to 24 bytes (Tyk's
/// hashed key ids are 8 to 16), so comparing one touches no other cache line.
pub struct SessionCache {
    entries:
        quick_cache::sync::Cache<CompactString, Cached, quick_cache::UnitWeighter, RandomState>,
    /// Recently read accesses by a hash of their value: keys made from one policy have the
    /// same access, and sharing one copy keeps it in the CPU's caches for all of them (and
    /// out of each entry's memory). Bounded, so that keys with accesses of their own pass by.
    shared: quick_cache::sync::Cache<u64, Arc<KeyAccess>>,
    /// Keys the store said it does not hold: a client repeating an unknown key is answered
    /// from here for [`MISSING_FOR`] instead of costing a store read each time.
    missing:
        quick_cache::sync::Cache<CompactString, Missing, quick_cache::UnitWeighter, RandomState>,
    missing_for: Duration,
    /// Where changed keys are sent to be read again (see [`CachedStore::new`]).
    refresh: std::sync::OnceLock<mpsc::Sender<CompactString>>,
    access_hasher: foldhash::fast::RandomState,
    fresh_for: Duration,
    stale_for: Duration,
    follow_changes: bool,
    epoch: AtomicU64,
    /// Whether the store reports every change of a session record as it happens.
    followed: AtomicBool,
    /// The epoch of the latest stretch of followed changes, and when it ended (`u64::MAX`
    /// while it lasts): its records were known current until then, which is what
    /// stale-if-error counts from.
    followed_epoch: AtomicU64,
    followed_until: AtomicU64,
    /// Counts invalidations, epochs and changes of `followed`: a read that saw it move may
    /// have missed an invalidation of its own record, so it is not held as followed.
    changes: AtomicU64,
    started: Instant,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_serves: AtomicU64,
}

/// How many distinct accesses [`SessionCache::share`] remembers.
const SHARED_ACCESSES: usize = 1024;

/// How long an unknown key is answered as unknown without asking the store (never longer
/// than `cached_session_timeout`), and how many such keys are remembered. Writes through this
/// node, cluster notifications and followed changes forget an entry at once.
pub const MISSING_FOR: Duration = Duration::from_secs(2);
pub const MISSING_ENTRIES: usize = 10_000;

/// An unknown key's entry: answered as unknown until `until` (ms), within `epoch`.
#[derive(Clone, Copy)]
struct Missing {
    until: u64,
    epoch: u64,
}

/// What the cache knew when a store read began; see [`SessionCache::begin_read`].
#[derive(Clone, Copy)]
struct ReadStart {
    changes: u64,
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
            shared: quick_cache::sync::Cache::new(SHARED_ACCESSES),
            missing: quick_cache::sync::Cache::with(
                MISSING_ENTRIES,
                MISSING_ENTRIES as u64,
                quick_cache::UnitWeighter,
                RandomState::new(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            missing_for: fresh_for.min(MISSING_FOR),
            refresh: std::sync::OnceLock::new(),
            access_hasher: foldhash::fast::RandomState::default(),
            fresh_for,
            stale_for,
            follow_changes: config.follow_changes,
            epoch: AtomicU64::new(0),
            followed: AtomicBool::new(false),
            followed_epoch: AtomicU64::new(u64::MAX),
            followed_until: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            started: Instant::now(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_serves: AtomicU64::new(0),
        }
    }

    /// What the cache counted, and the entries it holds.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale_serves: self.stale_serves.load(Ordering::Relaxed),
            entries: self.entries.len() as u64,
        }
    }

    /// Whether the store should report changes as they happen (`follow_changes`).
    pub fn follows_changes(&self) -> bool {
        self.follow_changes
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How long ago the record was last known current.
    fn age(&self, entry: &Cached) -> Duration {
        let now = self.now_ms();
        let known_at = if entry.fresh_until == u64::MAX
            && entry.epoch == self.followed_epoch.load(Ordering::SeqCst)
        {
            self.followed_until.load(Ordering::SeqCst).min(now)
        } else {
            entry.fetched
        };
        Duration::from_millis(now.saturating_sub(known_at))
    }

    fn is_fresh(&self, entry: &Cached) -> bool {
        self.now_ms() < entry.fresh_until && entry.epoch == self.epoch.load(Ordering::Acquire)
    }

    /// Taken before a store read, to tell afterwards whether its record can be held as
    /// followed.
    fn begin_read(&self) -> ReadStart {
        ReadStart {
            changes: self.changes.load(Ordering::SeqCst),
        }
    }

    /// How long a record read since `start` stays fresh: until invalidated when changes were
    /// followed all along (a `cached_session_timeout` of 0 still asks the store every time),
    /// else `cached_session_timeout`.
    fn fresh_until(&self, start: ReadStart, now: u64) -> u64 {
        let followed = self.followed.load(Ordering::SeqCst)
            && self.changes.load(Ordering::SeqCst) == start.changes;
        if followed && !self.fresh_for.is_zero() {
            u64::MAX
        } else {
            now.saturating_add(self.fresh_for.as_millis() as u64)
        }
    }

    /// After storing a record read since `start`: if anything was invalidated meanwhile, the
    /// invalidation may have been for this record and applied before it was stored, so the
    /// entry is asked for again on its next use (and kept for stale-if-error, like any entry
    /// that needs revalidation). Storing first and checking after is what makes this sound:
    /// an invalidation counted after this check removes the entry after it was stored.
    fn settle(&self, key_id: &str, start: ReadStart) {
        if self.changes.load(Ordering::SeqCst) != start.changes {
            // On a missing key `entry` hands back an insertion guard, dropped here unused.
            let _ = self.entries.entry(
                &CompactString::from(key_id),
                Some(Duration::ZERO),
                |_, entry| {
                    entry.fresh_until = 0;
                    quick_cache::sync::EntryAction::Retain(())
                },
            );
        }
    }

    /// The store confirmed that `key_id` still holds the record with `digest`. An entry
    /// invalidated meanwhile stays gone, and one replaced by another record is left as is.
    fn confirm(&self, key_id: &str, digest: Option<RecordDigest>, start: ReadStart) {
        let now = self.now_ms();
        let (fresh_until, epoch) = (
            self.fresh_until(start, now),
            self.epoch.load(Ordering::Acquire),
        );
        // On a missing key `entry` hands back an insertion guard, dropped here unused.
        let _ = self.entries.entry(
            &CompactString::from(key_id),
            Some(Duration::ZERO),
            |_, entry| {
                if entry.digest == digest {
                    entry.fetched = now;
                    entry.fresh_until = fresh_until;
                    entry.epoch = epoch;
                }
                quick_cache::sync::EntryAction::Retain(())
            },
        );
        self.settle(key_id, start);
    }

    /// A key changed or was deleted somewhere. Its entry is no longer fresh, but it is kept
    /// for stale-if-error and read again at once in the background (an unchanged record
    /// is then confirmed, a changed one replaces it, a deleted one goes): so a key changed
    /// just before the store becomes unreachable stays known.
    pub fn invalidate(&self, key_id: &str) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.missing.remove(key_id);
        let key = CompactString::from(key_id);
        let mut cached = false;
        // On a missing key `entry` hands back an insertion guard, dropped here unused.
        let _ = self.entries.entry(&key, Some(Duration::ZERO), |_, entry| {
            entry.fresh_until = 0;
            cached = true;
            quick_cache::sync::EntryAction::Retain(())
        });
        if cached && let Some(refresh) = self.refresh.get() {
            // A full queue leaves the entry to be read again on its next use.
            let _ = refresh.try_send(key);
        }
    }

    /// Drops one entry: the key was deleted through this node.
    fn forget(&self, key_id: &str) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(key_id);
        self.missing.remove(key_id);
    }

    /// Whether the store said a moment ago, in this epoch, that it does not hold `key_id`.
    fn known_missing(&self, key_id: &str) -> bool {
        self.missing.get(key_id).is_some_and(|m| {
            m.until > self.now_ms() && m.epoch == self.epoch.load(Ordering::Acquire)
        })
    }

    /// The store does not hold `key_id`, as read since `start`. Not remembered when anything
    /// was invalidated meanwhile: that may have been this key being written.
    fn remember_missing(&self, key_id: &str, start: ReadStart) {
        self.entries.remove(key_id);
        if self.missing_for.is_zero() {
            return;
        }
        let until = self.now_ms() + self.missing_for.as_millis() as u64;
        let epoch = self.epoch.load(Ordering::Acquire);
        self.missing.insert(key_id.into(), Missing { until, epoch });
        if self.changes.load(Ordering::SeqCst) != start.changes {
            self.missing.remove(key_id);
        }
    }

    /// Marks every entry as needing revalidation, keeping them for stale-if-error (used when
    /// notifications may have been missed, e.g. across a failover).
    pub fn new_epoch(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the store reports every change as it happens from now on. Either way every
    /// entry needs revalidation: one read while changes were followed may miss a change
    /// made once they no longer are, and one read before may be out of date already.
    pub fn set_followed(&self, followed: bool) {
        if followed {
            let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            self.followed_epoch.store(epoch, Ordering::SeqCst);
            self.followed_until.store(u64::MAX, Ordering::SeqCst);
            self.followed.store(true, Ordering::SeqCst);
        } else {
            if !self.followed.swap(false, Ordering::SeqCst) {
                return;
            }
            self.followed_until.store(self.now_ms(), Ordering::SeqCst);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// `credential` with the copy of its access that other keys already share, when one is
    /// known.
    fn shared(&self, credential: Credential) -> Credential {
        Credential {
            access: self.share(credential.access),
            ..credential
        }
    }

    /// A copy of `access` that other keys already share, when one is known.
    fn share(&self, access: Arc<KeyAccess>) -> Arc<KeyAccess> {
        let hash = self.access_hasher.hash_one(&*access);
        match self.shared.get(&hash) {
            Some(known) if known == access => known,
            _ => {
                self.shared.insert(hash, access.clone());
                access
            }
        }
    }

    fn insert(
        &self,
        key_id: &str,
        credential: Credential,
        digest: Option<RecordDigest>,
        start: ReadStart,
    ) {
        let now = self.now_ms();
        self.entries.insert(
            key_id.into(),
            Cached {
                credential,
                digest,
                fetched: now,
                fresh_until: self.fresh_until(start, now),
                epoch: self.epoch.load(Ordering::Acquire),
            },
        );
        self.settle(key_id, start);
    }
}

/// A [`SessionStore`] that answers from a [`SessionCache`] and falls back to stale entries
/// while the inner store is unreachable.
pub struct CachedStore {
    inner: Arc<dyn SessionStore>,
    cache: Arc<SessionCache>,
}

/// Changed keys waiting to be read again; beyond it, an entry is read again on its next use.
const REFRESH_QUEUE: usize = 4096;

impl CachedStore {
    /// Must be called within a Tokio runtime: a task reads changed keys again, one at a time
    /// (so at most one store read of its own is in flight), until the cache is dropped.
    pub fn new(inner: Arc<dyn SessionStore>, cache: Arc<SessionCache>) -> Self {
        let (tx, mut changed) = mpsc::channel::<CompactString>(REFRESH_QUEUE);
        if cache.refresh.set(tx).is_ok() {
            let (store, weak_cache) = (Arc::downgrade(&inner), Arc::downgrade(&cache));
            tokio::spawn(async move {
                while let Some(key_id) = changed.recv().await {
                    let (Some(store), Some(cache)) = (store.upgrade(), weak_cache.upgrade()) else {
                        break;
                    };
                    if let Some(cached) = cache.entries.get(key_id.as_str()) {
                        let _ = revalidate(&*store, &cache, &key_id, Some(cached)).await;
                    }
                }
            });
        }
        Self { inner, cache }
    }
}

/// Asks `store` for `key_id`, of which the cache holds `cached` (or nothing), and updates the
/// cache with the answer; while the store is unreachable, a cached entry within
/// `stale_if_error` answers instead.
async fn revalidate(
    store: &dyn SessionStore,
    cache: &SessionCache,
    key_id: &str,
    cached: Option<Cached>,
) -> Result<Option<Credential>, StoreError> {
    let known = cached.as_ref().and_then(|c| c.digest);
    let start = cache.begin_read();
    match store.lookup(key_id, known).await {
        Ok(Lookup::Found { credential, digest }) => {
            let credential = cache.shared(credential);
            cache.insert(key_id, credential.clone(), digest, start);
            Ok(Some(credential))
        }
        Ok(Lookup::Unchanged) => match cached {
            Some(c) => {
                cache.confirm(key_id, c.digest, start);
                Ok(Some(c.credential))
            }
            // The store answers Unchanged only to a digest it was given, which came from
            // `cached`; should one break that contract, read the record afresh.
            None => store.access(key_id).await,
        },
        Ok(Lookup::Missing) => {
            // Not counted as an invalidation: unknown keys are what a client can send at
            // will, and counting them would keep concurrent reads from being cached.
            cache.remember_missing(key_id, start);
            Ok(None)
        }
        Err(StoreError::Unavailable(reason)) => match cached {
            Some(c) if cache.age(&c) < cache.stale_for => {
                cache.stale_serves.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("key store unavailable ({reason}); serving a cached session");
                Ok(Some(c.credential))
            }
            _ => Err(StoreError::Unavailable(reason)),
        },
        Err(e) => Err(e),
    }
}

#[async_trait]
impl SessionStore for CachedStore {
    /// The whole record, from the store: the cache holds only what requests need.
    async fn get(&self, key_id: &str) -> Result<Option<Arc<SessionState>>, StoreError> {
        self.inner.get(key_id).await
    }

    async fn access(&self, key_id: &str) -> Result<Option<Credential>, StoreError> {
        let cache = &self.cache;
        let cached = cache.entries.get(key_id);
        match &cached {
            Some(c) if cache.is_fresh(c) => {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(cached.map(|c| c.credential));
            }
            None if cache.known_missing(key_id) => {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            _ => {}
        }
        cache.misses.fetch_add(1, Ordering::Relaxed);
        revalidate(&*self.inner, cache, key_id, cached).await
    }

    async fn set(
        &self,
        key_id: &str,
        session: &SessionState,
        ttl: Option<Duration>,
    ) -> Result<Option<RecordDigest>, StoreError> {
        self.cache.forget(key_id);
        let start = self.cache.begin_read();
        let digest = self.inner.set(key_id, session, ttl).await?;
        // Confirmed by the store (with its replicas, where it waits for them): the node keeps
        // what it wrote, so the key stays known should the store become unreachable next.
        // With the stored text's digest, reading the record back confirms it.
        let credential = self.cache.shared(Credential::from(session));
        self.cache.insert(key_id, credential, digest, start);
        Ok(digest)
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        self.cache.forget(key_id);
        self.inner.delete(key_id).await
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list().await
    }

    async fn health(&self) -> StoreHealth {
        self.inner.health().await
    }

    async fn append_analytics(
        &self,
        key: &str,
        records: Vec<Vec<u8>>,
        ttl: Option<u64>,
    ) -> Result<(), StoreError> {
        self.inner.append_analytics(key, records, ttl).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            cache: Some(self.cache.stats()),
            ..self.inner.stats()
        }
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

    async fn announce_reload(&self) {
        self.inner.announce_reload().await
    }

    fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.reloads()
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
        ) -> Result<Option<RecordDigest>, StoreError> {
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

    fn some_access() -> Credential {
        Credential::from(&SessionState::default())
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
        store.access("k").await.unwrap();
        flaky.down.store(true, Ordering::Relaxed);
        assert!(
            store.access("k").await.unwrap().is_some(),
            "stale entry served"
        );
        assert!(matches!(
            store.access("other").await,
            Err(StoreError::Unavailable(_))
        ));

        let cache = Arc::new(SessionCache::new(&config(0, 0)));
        let store = CachedStore::new(flaky.clone(), cache);
        flaky.down.store(false, Ordering::Relaxed);
        store.access("k").await.unwrap();
        flaky.down.store(true, Ordering::Relaxed);
        assert!(store.access("k").await.is_err(), "past the stale bound");
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_max_entries() {
        let cache = Arc::new(SessionCache::new(&LocalSessionCache {
            max_entries: 8,
            ..config(60, 120)
        }));
        let store = CachedStore::new(Arc::new(crate::store::MemoryStore::new()), cache.clone());
        for i in 0..100 {
            let key = format!("k{i}");
            store
                .set(&key, &SessionState::default(), None)
                .await
                .unwrap();
            assert!(store.access(&key).await.unwrap().is_some());
        }
        assert!(cache.entries.len() <= 8, "{} entries", cache.entries.len());
    }

    #[tokio::test]
    async fn keys_with_the_same_access_share_one_copy() {
        let store = CachedStore::new(
            Arc::new(crate::store::MemoryStore::new()),
            Arc::new(SessionCache::new(&config(60, 120))),
        );
        let mut session = SessionState::default();
        session.access_rights.insert("1".into(), Default::default());
        for key in ["a", "b"] {
            store.set(key, &session, None).await.unwrap();
        }
        session.rate = 5.0;
        store.set("c", &session, None).await.unwrap();
        let access = |key| {
            let store = &store;
            async move { store.access(key).await.unwrap().unwrap().access }
        };
        let (a, b, c) = (access("a").await, access("b").await, access("c").await);
        assert!(Arc::ptr_eq(&a, &b), "same access, one copy");
        assert!(!Arc::ptr_eq(&a, &c) && c.limits.rate == 5.0 && a.limits.rate == 0.0);
        assert!(Arc::ptr_eq(&b, &access("b").await));
    }

    #[test]
    fn confirming_never_revives_an_entry_nor_refreshes_another_record() {
        let cache = SessionCache::new(&config(60, 120));
        cache.confirm("gone", Some(1), cache.begin_read());
        assert!(cache.entries.get("gone").is_none(), "not brought back");

        cache.insert("k", some_access(), Some(2), cache.begin_read());
        cache.new_epoch();
        cache.confirm("k", Some(1), cache.begin_read());
        assert!(
            !cache.is_fresh(&cache.entries.get("k").unwrap()),
            "another record's confirmation"
        );
        cache.confirm("k", Some(2), cache.begin_read());
        assert!(cache.is_fresh(&cache.entries.get("k").unwrap()));
    }

    fn fresh_until(cache: &SessionCache, key: &str) -> u64 {
        cache.entries.get(key).unwrap().fresh_until
    }

    #[test]
    fn a_record_read_while_changes_are_followed_stays_fresh_until_invalidated() {
        let cache = SessionCache::new(&config(10, 120));
        let session = some_access();
        cache.insert("timed", session.clone(), None, cache.begin_read());
        assert!(fresh_until(&cache, "timed") <= cache.now_ms() + 10_000);

        cache.set_followed(true);
        assert!(
            !cache.is_fresh(&cache.entries.get("timed").unwrap()),
            "read before following"
        );
        cache.insert("followed", session.clone(), None, cache.begin_read());
        assert_eq!(fresh_until(&cache, "followed"), u64::MAX);
        cache.confirm("timed", None, cache.begin_read());
        assert_eq!(
            fresh_until(&cache, "timed"),
            u64::MAX,
            "confirmed while followed"
        );

        cache.set_followed(false);
        assert!(
            !cache.is_fresh(&cache.entries.get("followed").unwrap()),
            "no longer followed"
        );

        let cache = SessionCache::new(&config(0, 120));
        cache.set_followed(true);
        cache.insert("k", session, None, cache.begin_read());
        assert!(
            !cache.is_fresh(&cache.entries.get("k").unwrap()),
            "a timeout of 0 asks every time"
        );
    }

    #[test]
    fn stale_if_error_counts_from_when_changes_were_last_followed() {
        let mut cache = SessionCache::new(&config(10, 120));
        cache.started -= Duration::from_secs(3600);
        cache.set_followed(true);
        cache.insert("k", some_access(), None, cache.begin_read());
        // Read an hour ago and never asked again: followed changes vouch for it until now.
        let mut entry = cache.entries.get("k").unwrap();
        entry.fetched = 0;
        cache.entries.insert("k".into(), entry);
        cache.set_followed(false);
        let entry = cache.entries.get("k").unwrap();
        assert!(!cache.is_fresh(&entry));
        assert!(cache.age(&entry) < Duration::from_secs(1));

        cache.set_followed(true);
        assert!(
            cache.age(&entry) >= Duration::from_secs(3600),
            "from an earlier stretch"
        );
    }

    #[test]
    fn a_record_read_across_an_invalidation_is_asked_for_again() {
        let cache = SessionCache::new(&config(10, 120));
        cache.set_followed(true);
        let start = cache.begin_read();
        // The invalidation may have been for this record, applied before the read's answer.
        cache.invalidate("k");
        cache.insert("k", some_access(), None, start);
        assert!(
            !cache.is_fresh(&cache.entries.get("k").unwrap()),
            "asked for again"
        );

        let start = cache.begin_read();
        cache.insert("k", some_access(), None, start);
        assert_eq!(fresh_until(&cache, "k"), u64::MAX);
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
        store.access("k").await.unwrap();
        flaky.inner.delete("k").await.unwrap();
        assert!(
            store.access("k").await.unwrap().is_some(),
            "fresh cache answers"
        );
        cache.new_epoch();
        assert!(
            store.access("k").await.unwrap().is_none(),
            "revalidated after a new epoch"
        );
    }
}
