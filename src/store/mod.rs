//! Where key records live: one async trait, [`SessionStore`], and its backends.
//!
//! Keys are addressed by their storage id (the hashed key when `hash_keys` is on; see
//! `auth::KeyHasher`). A backend stores and returns whole records; it knows nothing about
//! APIs, auth decisions or HTTP.

pub mod cache;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::counting::{Policy, Usage};
use crate::session::{Credential, SessionState};

pub use memory::MemoryStore;

/// A failure of the store itself, never a statement about a key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The write reached the store but was not confirmed as durable.
    #[error("key write not confirmed: {0}")]
    NotDurable(String),
    /// A stored record could not be decoded.
    #[error("stored record for {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What the store says about itself, for `/hello` and `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    /// `memory`, `redis` or `sentinel`.
    pub mode: &'static str,
    /// Whether the store answers right now.
    pub reachable: bool,
    /// Extra details (master address, replicas, last error...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What the store counted since it started, for `/metrics` (zero where a store has no such
/// thing, as the memory store has no replicas).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreStats {
    /// Commands sent to Redis on behalf of requests and the Gateway API.
    pub round_trips: u64,
    /// Records read from a replica while the master was away.
    pub replica_reads: u64,
    /// Writes refused because `WAIT` confirmed them on too few replicas.
    pub unconfirmed_writes: u64,
    /// Masters installed at another address than the one before (a failover seen).
    pub failovers: u64,
    /// Unix seconds of the last of them.
    pub last_failover: Option<f64>,
    pub cache: Option<CacheStats>,
}

/// The session cache's figures (see `cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    /// Lookups answered from a fresh entry (or a key known to be missing).
    pub hits: u64,
    /// Lookups that asked the store.
    pub misses: u64,
    /// Lookups answered by a stale entry while the store was unreachable (stale-if-error).
    pub stale_serves: u64,
    pub entries: u64,
}

/// The session store every gateway component talks to.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The record stored under `key_id`, or `None` when there is none.
    async fn get(&self, key_id: &str) -> Result<Option<Arc<SessionState>>, StoreError>;
    /// What the request path needs of the record under `key_id` (see [`Credential`]).
    async fn access(&self, key_id: &str) -> Result<Option<Credential>, StoreError> {
        Ok(self
            .get(key_id)
            .await?
            .map(|session| Credential::from(&*session)))
    }
    /// Reads what requests need of a record unless it is still the one whose digest is
    /// `known`: a cache revalidating an entry then skips decoding it again. Stores without a
    /// stored form always answer `Found`.
    async fn lookup(
        &self,
        key_id: &str,
        _known: Option<RecordDigest>,
    ) -> Result<Lookup, StoreError> {
        Ok(match self.access(key_id).await? {
            Some(credential) => Lookup::Found {
                credential,
                digest: None,
            },
            None => Lookup::Missing,
        })
    }
    /// Stores `session` under `key_id`; `ttl` of `None` keeps it until deleted. Answers the
    /// digest of the record as stored, where the store keeps a stored form (see
    /// [`SessionStore::lookup`]).
    async fn set(
        &self,
        key_id: &str,
        session: &SessionState,
        ttl: Option<Duration>,
    ) -> Result<Option<RecordDigest>, StoreError>;
    /// Removes the record; `true` when one existed.
    async fn delete(&self, key_id: &str) -> Result<bool, StoreError>;
    /// Every stored key id.
    async fn list(&self) -> Result<Vec<String>, StoreError>;
    /// Checks the store now and reports its state.
    async fn health(&self) -> StoreHealth;
    /// Appends analytics records to the list `key` (Tyk Pump drains it), setting the list's
    /// expiry to `ttl` seconds when it has none. Only Redis holds them.
    async fn append_analytics(
        &self,
        _key: &str,
        _records: Vec<Vec<u8>>,
        _ttl: Option<u64>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "analytics records need a Redis store for Tyk Pump to read".into(),
        ))
    }
    /// What the store counted (see [`StoreStats`]).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Admits up to `want` requests against `policy`'s rate and quota counters (as many as
    /// both allow, atomically for every node sharing the store) and reports the outcome.
    async fn consume(&self, policy: &Policy, want: u32) -> Result<Usage, StoreError>;
    /// Adds `count` requests to a quota counter, starting a `renewal`-second period if none
    /// is running (usage counted by a node while the store was unreachable).
    async fn add_quota_usage(
        &self,
        counter: &str,
        count: i64,
        renewal: i64,
    ) -> Result<(), StoreError>;
    /// Requests counted against a quota and the Unix second it renews (0: never), if a
    /// period is running.
    async fn quota_used(&self, counter: &str) -> Result<Option<(i64, i64)>, StoreError>;
    /// Starts a quota afresh.
    async fn reset_quota(&self, counter: &str) -> Result<(), StoreError>;

    /// Tells every other node sharing the store to reload (Tyk's `GroupReload`).
    async fn announce_reload(&self) {}
    /// Reloads other nodes asked for: the count moves with each. `None` for a store that no
    /// other node shares.
    fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A fingerprint of a record as stored (128-bit murmur3 of its JSON).
pub type RecordDigest = u128;

/// The [`RecordDigest`] of a record's JSON text.
pub fn record_digest(json: &str) -> RecordDigest {
    murmur3::murmur3_x64_128(&mut json.as_bytes(), 0).unwrap_or_default()
}

/// What [`SessionStore::lookup`] found.
pub enum Lookup {
    Missing,
    /// The stored record still has the digest the caller already holds.
    Unchanged,
    Found {
        credential: Credential,
        /// `None` where the store keeps no stored form to fingerprint.
        digest: Option<RecordDigest>,
    },
}

/// Opens the store `config.storage` names.
pub async fn open(
    config: &crate::config::GatewayConfig,
) -> Result<Arc<dyn SessionStore>, crate::config::ConfigError> {
    match config.storage.kind.as_str() {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        "redis" => {
            let cache_config = &config.local_session_cache;
            let cache = (!cache_config.disable_cached_session_state)
                .then(|| Arc::new(cache::SessionCache::new(cache_config)));
            let redis: Arc<dyn SessionStore> =
                Arc::new(redis::RedisStore::connect(&config.storage, cache.clone()).await?);
            Ok(match cache {
                Some(cache) => Arc::new(cache::CachedStore::new(redis, cache)),
                None => redis,
            })
        }
        other => Err(crate::config::ConfigError::InvalidField {
            field: "storage.type".into(),
            reason: format!("{other:?} is not one of redis, memory"),
        }),
    }
}
