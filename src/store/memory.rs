//! The embedded in-memory session store: the zero set-up default for one gateway node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{RecordDigest, SessionStore, StoreError, StoreHealth};
use crate::counting::{LocalCounters, Policy, Usage, now_secs};
use crate::session::{Credential, SessionState};

struct Entry {
    session: Arc<SessionState>,
    /// Derived once per write, so that requests do not build it.
    credential: Credential,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// Sessions in a map guarded by a std lock that is never held across an `.await`.
#[derive(Default)]
pub struct MemoryStore {
    entries: RwLock<HashMap<String, Entry>>,
    writes: AtomicU64,
    counters: LocalCounters,
}

/// Expired entries are swept once per this many writes, so a write stays O(1) on average.
const SWEEP_EVERY: u64 = 4096;

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `pick` of the entry under `key_id`, unless there is none or it has expired.
    fn live<T>(&self, key_id: &str, pick: impl FnOnce(&Entry) -> T) -> Option<T> {
        let now = Instant::now();
        self.read().get(key_id).filter(|e| e.live(now)).map(pick)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, key_id: &str) -> Result<Option<Arc<SessionState>>, StoreError> {
        Ok(self.live(key_id, |e| e.session.clone()))
    }

    async fn access(&self, key_id: &str) -> Result<Option<Credential>, StoreError> {
        Ok(self.live(key_id, |e| e.credential.clone()))
    }

    async fn set(
        &self,
        key_id: &str,
        session: &SessionState,
        ttl: Option<Duration>,
    ) -> Result<Option<RecordDigest>, StoreError> {
        let entry = Entry {
            session: Arc::new(session.clone()),
            credential: Credential::from(session),
            expires_at: ttl.map(|t| Instant::now() + t),
        };
        let sweep = self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        let mut map = self.write();
        if sweep {
            let now = Instant::now();
            map.retain(|_, e| e.live(now));
        }
        map.insert(key_id.to_owned(), entry);
        Ok(None)
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self.write().remove(key_id).is_some_and(|e| e.live(now)))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let mut keys: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, e)| e.live(now))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth {
            mode: "memory",
            reachable: true,
            details: Default::default(),
        }
    }

    async fn consume(&self, policy: &Policy, want: u32) -> Result<Usage, StoreError> {
        Ok(self.counters.consume(policy, now_secs(), want))
    }

    async fn add_quota_usage(
        &self,
        counter: &str,
        count: i64,
        renewal: i64,
    ) -> Result<(), StoreError> {
        self.counters.add_quota(counter, count, renewal, now_secs());
        Ok(())
    }

    async fn quota_used(&self, counter: &str) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(self.counters.quota_used(counter, now_secs()))
    }

    async fn reset_quota(&self, counter: &str) -> Result<(), StoreError> {
        self.counters.reset_quota(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_delete_list() {
        let store = MemoryStore::new();
        let s = SessionState {
            rate: 5.0,
            ..Default::default()
        };
        store.set("a", &s, None).await.unwrap();
        store
            .set("b", &s, Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.get("a").await.unwrap().unwrap().rate, 5.0);
        assert!(store.get("b").await.unwrap().is_none());
        assert_eq!(store.list().await.unwrap(), vec!["a".to_string()]);
        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
    }
}
