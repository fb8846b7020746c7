//! The Redis session store: one endpoint (a plain Redis, or HAProxy in front of one) or native
//! Sentinel, in Tyk's key layout (`apikey-<id>` holding the session JSON).
//!
//! Owns master discovery and failover handling on top of redis-rs, which follows neither by
//! itself: it asks the sentinels for the master, confirms it with `ROLE`, follows
//! `+switch-master`, treats `READONLY`/`LOADING`/`MASTERDOWN`/connection errors as "find the
//! master again", reads from replicas while the master is away, acknowledges a write only
//! once `WAIT` confirms it on enough replicas, and follows changes to session records (Tyk's
//! cluster notifications and Redis key tracking) into the node's [`SessionCache`].
//!
//! This file holds the store and its state (`Shared`); the parts: `discovery` (finding and
//! keeping the master), `link` (the connections to one server), `conn` (reads, writes,
//! notifications and scripts on them), `follow` (changes as they happen), `tls`, and `error`
//! (what each of them reports, typed).

mod conn;
mod discovery;
mod error;
mod follow;
mod link;
mod tls;

use crate::breaker::now_ms;
use discovery::{follow_sentinels, maintain};
use error::{Fault, within};
use follow::follow_changes;
use link::{Approach, Link, MAX_POOL, run_id};
use tls::RedisTls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisConnectionInfo, RedisError, ServerErrorKind, TlsCertificates, Value,
};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::cache::SessionCache;
use super::{
    Lookup, RecordDigest, SessionStore, StoreError, StoreHealth, StoreStats, record_digest,
};
use crate::config::{ConfigError, StorageConfig};
use crate::counting::{Policy, Usage};
use crate::session::{Credential, SessionState};

/// Tyk's prefix for session records.
pub const KEY_PREFIX: &str = "apikey-";
/// Tyk's prefix for quota counters.
pub const QUOTA_PREFIX: &str = "quota-";
/// tollgate's GCRA state (Tyk's `rate-limit-` keys hold a different structure).
pub const RATE_PREFIX: &str = "tollgate-rate-";

/// One round trip: admits up to ARGV[5] requests, as many as GCRA on KEYS[1] (µs, Redis's
/// clock) and the quota counter on KEYS[2] both allow; a refusal changes neither.
/// ARGV: interval µs (0: no rate), per µs, quota max (<= 0: none), renewal s, wanted.
/// Returns {rate ok, rate left, rate reset µs, quota ok, quota left, quota ttl, now, granted}.
const CONSUME_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local qmax, renewal = tonumber(ARGV[3]), tonumber(ARGV[4])
local grant = tonumber(ARGV[5])
local tat = now
if interval > 0 then
  tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local free = math.floor((per - (tat - now)) / interval)
  if free < 1 then
    return {0, 0, tat + interval - per - now, 1, -1, 0, now, 0}
  end
  if free < grant then grant = free end
end
local quota_left, quota_ttl = -1, 0
if qmax > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if qmax - used < 1 then
    return {1, 0, 0, 0, 0, redis.call('TTL', KEYS[2]), now, 0}
  end
  if qmax - used < grant then grant = qmax - used end
  used = redis.call('INCRBY', KEYS[2], grant)
  if used == grant and renewal > 0 then redis.call('EXPIRE', KEYS[2], renewal) end
  quota_left = qmax - used
  quota_ttl = redis.call('TTL', KEYS[2])
end
local rate_left, rate_reset = 0, 0
if interval > 0 then
  local new_tat = tat + grant * interval
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
  rate_left = math.floor((per - (new_tat - now)) / interval)
  rate_reset = new_tat - now
end
return {1, rate_left, rate_reset, 1, quota_left, quota_ttl, now, grant}
"#;

/// Adds usage counted elsewhere: ARGV count, renewal s.
const ADD_QUOTA_SCRIPT: &str = r#"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return used
"#;

/// The most replicas any node has seen its master report, kept in Redis itself so that a node
/// that has never seen the replicas (a fresh process, a new connection through HAProxy that
/// lands on a returning old master) still knows they exist and waits for one.
pub const REPLICAS_SEEN_KEY: &str = "tollgate-replicas-seen";

/// Tyk's cluster notification channel.
pub const NOTIFICATION_CHANNEL: &str = "tyk.cluster.notifications";

/// How long a read on the request path may wait for Redis before the node falls back to a
/// replica or the cache.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between failed discovery attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Asks of one sentinel pending at once while finding the master: one a [`RETRY_PAUSE`]
/// over the discovery deadline of a second.
const ASKS_IN_FLIGHT: usize = 5;
/// Least time between two refreshes of the replica links while the master reports more
/// replicas than a node has links to.
const REPLICAS_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How often the current master is re-checked with `ROLE`.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often every connection to the master is sent a `PING`, so that none sits idle long
/// enough for a proxy in between to close it (the seed's HAProxy closes connections idle for
/// 6 s, which would otherwise surface as a lost master on the connection's next command).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(2);
/// How long a master without replicas is distrusted when replicas were seen before (a
/// returning old master that Sentinel has not demoted yet looks like that).
const LONELY_MASTER_DISTRUST: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Topology {
    Direct {
        host: String,
        port: u16,
    },
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master_name: String,
    },
}

struct Shared {
    topology: Topology,
    settings: RedisConnectionInfo,
    sentinel_settings: RedisConnectionInfo,
    tls: Option<RedisTls>,
    timeout: Duration,
    pool_size: usize,
    min_replicas_ack: Option<usize>,
    master: ArcSwapOption<Link>,
    replicas: ArcSwap<Vec<Arc<Link>>>,
    healthy: AtomicBool,
    wake: Notify,
    master_changed: watch::Sender<u64>,
    replica_high_water: AtomicUsize,
    lonely_since: Mutex<Option<Instant>>,
    next_replica: AtomicUsize,
    last_error: Mutex<Option<String>>,
    cache: Option<Arc<SessionCache>>,
    /// Marks this node's own notifications, which it skips: its cache is already current.
    node_id: String,
    /// Counts Tyk's `GroupReload` notifications from other nodes.
    reloads: watch::Sender<u64>,
    consume_script: redis::Script,
    add_quota_script: redis::Script,
    counts: Counts,
}

/// What the store counts for `/metrics` (see [`StoreStats`]).
#[derive(Default)]
struct Counts {
    round_trips: AtomicU64,
    replica_reads: AtomicU64,
    unconfirmed_writes: AtomicU64,
    /// Masters installed at another address than the one before.
    failovers: AtomicU64,
    /// Unix milliseconds of the last of them (0: none yet).
    last_failover_ms: AtomicU64,
    /// The last masters installed, with when (for the status page), oldest first.
    history: Mutex<std::collections::VecDeque<(f64, String)>>,
}

/// Master changes remembered for the status page.
const HISTORY: usize = 16;

/// The Redis-backed [`SessionStore`]. Background tasks stop when it is dropped.
pub struct RedisStore {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisStore {
    /// Starts discovery and the background tasks; waits up to `storage.timeout` for a first
    /// master. Fails only on TLS files that cannot be used; an unreachable Redis is not an
    /// error: requests get 503 until a master is found.
    pub async fn connect(
        config: &StorageConfig,
        cache: Option<Arc<SessionCache>>,
    ) -> Result<Self, ConfigError> {
        let tls = RedisTls::load(config)?;
        let topology = if config.addrs.is_empty() {
            Topology::Direct {
                host: config.host.clone(),
                port: config.port,
            }
        } else {
            Topology::Sentinel {
                sentinels: config
                    .addrs
                    .iter()
                    .filter_map(|a| {
                        let (h, p) = a.rsplit_once(':')?;
                        Some((h.to_owned(), p.parse().ok()?))
                    })
                    .collect(),
                master_name: config.master_name.clone(),
            }
        };
        let mut settings = RedisConnectionInfo::default().set_db(config.database);
        if !config.username.is_empty() {
            settings = settings.set_username(&config.username);
        }
        if !config.password.is_empty() {
            settings = settings.set_password(&config.password);
        }
        let mut sentinel_settings = RedisConnectionInfo::default();
        if !config.sentinel_password.is_empty() {
            sentinel_settings = sentinel_settings.set_password(&config.sentinel_password);
        }
        if config.optimisation_max_active as usize > MAX_POOL {
            tracing::warn!(
                "storage.optimisation_max_active: {} is used as {MAX_POOL}: commands are \
                 multiplexed over each connection (requests share one), so more connections \
                 would only hold idle sockets",
                config.optimisation_max_active
            );
        }
        let shared = Arc::new(Shared {
            topology,
            settings,
            sentinel_settings,
            tls,
            timeout: Duration::from_secs(config.timeout),
            pool_size: (config.optimisation_max_active as usize).clamp(1, MAX_POOL),
            min_replicas_ack: usize::try_from(config.min_replicas_ack).ok(),
            master: ArcSwapOption::empty(),
            replicas: ArcSwap::from_pointee(Vec::new()),
            healthy: AtomicBool::new(false),
            wake: Notify::new(),
            master_changed: watch::Sender::new(0),
            replica_high_water: AtomicUsize::new(0),
            lonely_since: Mutex::new(None),
            next_replica: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            cache,
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            reloads: watch::Sender::new(0),
            consume_script: redis::Script::new(CONSUME_SCRIPT),
            add_quota_script: redis::Script::new(ADD_QUOTA_SCRIPT),
            counts: Counts::default(),
        });
        let mut first = shared.master_changed.subscribe();
        let mut tasks = vec![
            tokio::spawn(maintain(shared.clone())),
            tokio::spawn(follow_changes(shared.clone())),
        ];
        if matches!(shared.topology, Topology::Sentinel { .. }) {
            tasks.push(tokio::spawn(follow_sentinels(shared.clone())));
        }
        let _ = tokio::time::timeout(shared.timeout, first.changed()).await;
        Ok(Self { shared, tasks })
    }

    /// Whether the store runs through Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.shared.topology, Topology::Sentinel { .. })
    }

    /// The record under `key_id`, whole or as the [`Credential`] requests need.
    async fn read_decoded<T: serde::de::DeserializeOwned>(
        &self,
        key_id: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.shared.read_record(key_id).await? {
            Some(json) => decode(key_id, &json).map(Some),
            None => Ok(None),
        }
    }
}

fn record_key(key_id: &str) -> String {
    prefixed(KEY_PREFIX, key_id)
}

/// `prefix` followed by `name`: a Redis key. Not `format!`, which costs about 900
/// instructions more on a path taken by every session read and limits call.
fn prefixed(prefix: &str, name: &str) -> String {
    [prefix, name].concat()
}

/// A stored record, whole or as the [`Credential`] requests need. A record that cannot be
/// read is decoded again to name the field at fault (tracking the path on every read would
/// cost each one).
fn decode<T: serde::de::DeserializeOwned>(key_id: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        let de = &mut serde_json::Deserializer::from_str(json);
        let reason = match serde_path_to_error::deserialize::<_, T>(de) {
            Err(at) if at.path().iter().next().is_some() => format!("{}: {e}", at.path()),
            _ => e.to_string(),
        };
        StoreError::Corrupt {
            key: key_id.to_owned(),
            reason,
        }
    })
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, key_id: &str) -> Result<Option<Arc<SessionState>>, StoreError> {
        Ok(self.read_decoded(key_id).await?.map(Arc::new))
    }

    async fn access(&self, key_id: &str) -> Result<Option<Credential>, StoreError> {
        self.read_decoded(key_id).await
    }

    async fn lookup(
        &self,
        key_id: &str,
        known: Option<RecordDigest>,
    ) -> Result<Lookup, StoreError> {
        let Some(json) = self.shared.read_record(key_id).await? else {
            return Ok(Lookup::Missing);
        };
        let digest = record_digest(&json);
        if known == Some(digest) {
            return Ok(Lookup::Unchanged);
        }
        Ok(Lookup::Found {
            credential: decode(key_id, &json)?,
            digest: Some(digest),
        })
    }

    async fn set(
        &self,
        key_id: &str,
        session: &SessionState,
        ttl: Option<Duration>,
    ) -> Result<Option<RecordDigest>, StoreError> {
        let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt {
            key: key_id.to_owned(),
            reason: e.to_string(),
        })?;
        let digest = record_digest(&json);
        let mut pipe = redis::pipe();
        let set = pipe.cmd("SET").arg(record_key(key_id)).arg(json);
        if let Some(ttl) = ttl {
            set.arg("EX").arg(ttl.as_secs().max(1));
        }
        let result = self.shared.write(pipe).await;
        self.shared.notify_key_change(key_id).await;
        result.map(|_| Some(digest))
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(record_key(key_id));
        let result = self.shared.write(pipe).await;
        self.shared.notify_key_change(key_id).await;
        Ok(matches!(result?, Value::Int(n) if n > 0))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let link = self
            .shared
            .healthy_master()
            .ok_or_else(|| StoreError::Unavailable(self.shared.unavailable_reason()))?;
        let mut conn = link.conn();
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let mut command = redis::cmd("SCAN");
            command
                .cursor_arg(cursor)
                .arg("MATCH")
                .arg(format!("{KEY_PREFIX}*"))
                .arg("COUNT")
                .arg(1000);
            let scan = command.query_async::<(u64, Vec<String>)>(&mut conn);
            let (next, batch) = tokio::time::timeout(self.shared.timeout, scan)
                .await
                .map_err(|_| StoreError::Unavailable("SCAN timed out".into()))?
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            keys.extend(
                batch
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(KEY_PREFIX).map(str::to_owned)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn health(&self) -> StoreHealth {
        let shared = &self.shared;
        let master = shared.healthy_master();
        let reachable = match &master {
            Some(link) => {
                let mut conn = link.conn();
                matches!(
                    tokio::time::timeout(
                        READ_TIMEOUT,
                        redis::cmd("PING").query_async::<String>(&mut conn)
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
            None => false,
        };
        let mut details = serde_json::Map::new();
        details.insert(
            "master".into(),
            master
                .map(|l| json!(l.addr()))
                .unwrap_or(serde_json::Value::Null),
        );
        let replicas: Vec<String> = shared.replicas.load().iter().map(|l| l.addr()).collect();
        details.insert("replicas".into(), json!(replicas));
        let history: Vec<serde_json::Value> = shared
            .counts
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(at, master)| json!({"at": at, "master": master}))
            .collect();
        details.insert("master_history".into(), json!(history));
        details.insert("min_replicas_ack".into(), json!(shared.required_acks()));
        details.insert(
            "last_error".into(),
            json!(*shared.last_error.lock().unwrap_or_else(|p| p.into_inner())),
        );
        StoreHealth {
            mode: if self.is_sentinel() {
                "sentinel"
            } else {
                "redis"
            },
            reachable,
            details,
        }
    }
    async fn append_analytics(
        &self,
        key: &str,
        records: Vec<Vec<u8>>,
        ttl: Option<u64>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let link = shared
            .healthy_master()
            .ok_or_else(|| StoreError::Unavailable(shared.unavailable_reason()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg(key).arg(records).ignore();
        if let Some(ttl) = ttl {
            pipe.cmd("EXPIRE").arg(key).arg(ttl).arg("NX").ignore();
        }
        shared
            .call(
                &link,
                link.conn(),
                "analytics",
                shared.timeout,
                |mut conn| async move { pipe.query_async::<()>(&mut conn).await },
            )
            .await
    }

    fn stats(&self) -> StoreStats {
        let counts = &self.shared.counts;
        let last_failover_ms = counts.last_failover_ms.load(Ordering::Relaxed);
        StoreStats {
            round_trips: counts.round_trips.load(Ordering::Relaxed),
            replica_reads: counts.replica_reads.load(Ordering::Relaxed),
            unconfirmed_writes: counts.unconfirmed_writes.load(Ordering::Relaxed),
            failovers: counts.failovers.load(Ordering::Relaxed),
            last_failover: (last_failover_ms > 0).then(|| last_failover_ms as f64 / 1000.0),
            cache: None,
        }
    }

    async fn consume(&self, policy: &Policy, want: u32) -> Result<Usage, StoreError> {
        let (interval, per) = policy
            .rate
            .map(|r| {
                (
                    (r.interval() * 1e6).round() as i64,
                    (r.per * 1e6).round() as i64,
                )
            })
            .unwrap_or((0, 0));
        let (max, renewal) = policy.quota.map(|q| (q.max, q.renewal)).unwrap_or((0, 0));
        let mut invocation = self
            .shared
            .consume_script
            .key(prefixed(RATE_PREFIX, &policy.counter));
        invocation
            .key(prefixed(QUOTA_PREFIX, &policy.counter))
            .arg(interval)
            .arg(per)
            .arg(max)
            .arg(renewal)
            .arg(want.max(1));
        let reply: Vec<i64> = self.shared.run_script(invocation).await?;
        let [
            rate_ok,
            rate_left,
            rate_reset,
            quota_ok,
            quota_left,
            quota_ttl,
            now,
            granted,
        ] = reply[..]
        else {
            return Err(StoreError::Unavailable(format!(
                "unexpected limits reply {reply:?}"
            )));
        };
        let now_secs = now / 1_000_000;
        Ok(Usage {
            granted: granted.clamp(0, i64::from(u32::MAX)) as u32,
            rate_exceeded: rate_ok == 0,
            rate_remaining: rate_left.max(0) as u64,
            rate_reset: rate_reset as f64 / 1e6,
            quota_exceeded: quota_ok == 0,
            quota_remaining: quota_left,
            quota_renews: if quota_ttl > 0 {
                now_secs + quota_ttl
            } else {
                0
            },
        })
    }

    async fn add_quota_usage(
        &self,
        counter: &str,
        count: i64,
        renewal: i64,
    ) -> Result<(), StoreError> {
        let mut invocation = self
            .shared
            .add_quota_script
            .key(prefixed(QUOTA_PREFIX, counter));
        invocation.arg(count).arg(renewal);
        self.shared.run_script::<i64>(invocation).await.map(|_| ())
    }

    async fn quota_used(&self, counter: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let link = self
            .shared
            .healthy_master()
            .ok_or_else(|| StoreError::Unavailable(self.shared.unavailable_reason()))?;
        let key = prefixed(QUOTA_PREFIX, counter);
        let mut conn = link.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("TTL").arg(&key);
        let (used, ttl): (Option<i64>, i64) =
            tokio::time::timeout(self.shared.timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::Unavailable("quota read timed out".into()))?
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let renews = if ttl > 0 {
            crate::session::unix_now() + ttl
        } else {
            0
        };
        Ok(used.map(|used| (used, renews)))
    }

    async fn announce_reload(&self) {
        self.shared.publish("GroupReload", "").await;
    }

    fn reloads(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.reloads.subscribe())
    }

    async fn reset_quota(&self, counter: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(prefixed(QUOTA_PREFIX, counter));
        self.shared.write(pipe).await.map(|_| ())
    }
}
