//! The Redis session store: one endpoint (a plain Redis, or HAProxy in front of one) or native
//! Sentinel, in Tyk's key layout (`apikey-<id>` holding the session JSON).
//!
//! Owns master discovery and failover handling on top of redis-rs, which follows neither by
//! itself: it asks the sentinels for the master, confirms it with `ROLE`, follows
//! `+switch-master`, treats `READONLY`/`LOADING`/`MASTERDOWN`/connection errors as "find the
//! master again", reads from replicas while the master is away, acknowledges a write only
//! once `WAIT` confirms it on enough replicas, and follows changes to session records (Tyk's
//! cluster notifications and Redis key tracking) into the node's [`SessionCache`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use super::{Lookup, RecordDigest, SessionStore, StoreError, StoreHealth, record_digest};
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

/// What one sentinel says about the monitored master.
struct SentinelView {
    master: (String, u16),
    /// Replicas not flagged down or disconnected.
    replicas: Vec<(String, u16)>,
    /// Every replica the sentinel knows of.
    known_replicas: usize,
}

/// Connections to one server. A master gets `optimisation_max_active` of them (at most
/// [`MAX_POOL`]); a replica one.
struct Link {
    host: String,
    port: u16,
    /// Session reads and limit counters, which Redis answers at once. One connection for all
    /// of them, because the commands of concurrent requests then share each socket write
    /// and read (at a million keys, 0.33 reads per request: 0.401 CPU seconds per 10,000
    /// requests against 0.505 with 16 connections in turn).
    request_path: MultiplexedConnection,
    /// Everything else in turn, the writes that `WAIT` for replicas among them: a command
    /// that blocks its connection never holds up a request.
    others: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    /// Connected replicas the server reported (masters only).
    replicas: usize,
}

/// Most multiplexed connections kept to one master; each already pipelines many requests.
const MAX_POOL: usize = 32;

impl Link {
    fn new(
        host: String,
        port: u16,
        request_path: MultiplexedConnection,
        others: Vec<MultiplexedConnection>,
        replicas: usize,
    ) -> Self {
        Self {
            host,
            port,
            request_path,
            others,
            next: AtomicUsize::new(0),
            replicas,
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn request_path(&self) -> MultiplexedConnection {
        self.request_path.clone()
    }

    /// A `PING` on every connection at once; the first failure, if any.
    async fn keep_alive(&self) -> Result<(), String> {
        let pings = std::iter::once(&self.request_path)
            .chain(&self.others)
            .map(|conn| {
                let mut conn = conn.clone();
                async move {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<Value>(&mut conn);
                    match tokio::time::timeout(READ_TIMEOUT, answer).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("PING failed: {e}")),
                        Err(_) => Err("PING timed out".to_owned()),
                    }
                }
            });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .collect()
    }

    /// The next connection in turn for work off the request path (the request-path one when
    /// there is no other).
    fn conn(&self) -> MultiplexedConnection {
        if self.others.is_empty() {
            return self.request_path();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.others.len();
        self.others[i].clone()
    }
}

/// The server's `run_id`, to tell that two connections (through HAProxy) reach one server.
async fn run_id(conn: &mut MultiplexedConnection, deadline: Duration) -> Option<String> {
    let info: String =
        tokio::time::timeout(deadline, redis::cmd("INFO").arg("server").query_async(conn))
            .await
            .ok()?
            .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// How connections to Redis and to the sentinels are secured (`use_ssl` and its files),
/// read and parsed once at start: a TLS address whose host and port each connection replaces
/// (redis-rs does not export the type of its parsed certificates, only addresses holding them).
struct RedisTls {
    template: ConnectionAddr,
}

impl RedisTls {
    /// `None` without `use_ssl`. An unreadable file, or one with no PEM block of the kind
    /// expected, is an error naming its field.
    fn load(config: &StorageConfig) -> Result<Option<Self>, ConfigError> {
        if !config.use_ssl {
            return Ok(None);
        }
        let read = |field: &str, path: &str, block: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            if path.is_empty() {
                return Ok(None);
            }
            let invalid = |reason: String| ConfigError::InvalidField {
                field: field.to_owned(),
                reason,
            };
            let pem =
                std::fs::read(path).map_err(|e| invalid(format!("cannot read {path:?}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains(block) {
                return Err(invalid(format!("{path:?} holds no PEM {block}")));
            }
            Ok(Some(pem))
        };
        let root_cert = read("storage.ca_file", &config.ca_file, "CERTIFICATE-----")?;
        let client_cert = read("storage.cert_file", &config.cert_file, "CERTIFICATE-----")?;
        let client_key = read("storage.key_file", &config.key_file, "PRIVATE KEY-----")?;
        let client_tls = client_cert
            .zip(client_key)
            .map(|(client_cert, client_key)| ClientTlsConfig {
                client_cert,
                client_key,
            });
        let template = ConnectionAddr::TcpTls {
            host: String::new(),
            port: 0,
            insecure: config.ssl_insecure_skip_verify,
            tls_params: None,
        };
        // redis-rs parses certificates only while building a client. With both, the CA file is
        // parsed alone first, so that an error names the right field.
        let parse = |field: &str, certs: TlsCertificates| {
            template
                .clone()
                .into_connection_info()
                .and_then(|info| redis::Client::build_with_tls(info, certs))
                .map(|client| client.get_connection_info().addr().clone())
                .map_err(|e| ConfigError::InvalidField {
                    field: field.to_owned(),
                    reason: e.to_string(),
                })
        };
        const CLIENT_PAIR: &str = "storage.cert_file, storage.key_file";
        let certs = TlsCertificates {
            client_tls,
            root_cert,
        };
        let template = match &certs {
            TlsCertificates {
                client_tls: None,
                root_cert: None,
            } => template,
            TlsCertificates {
                client_tls: None, ..
            } => parse("storage.ca_file", certs)?,
            TlsCertificates {
                root_cert: None, ..
            } => parse(CLIENT_PAIR, certs)?,
            TlsCertificates {
                root_cert: Some(ca),
                ..
            } => {
                let root_cert = Some(ca.clone());
                let ca_alone = TlsCertificates {
                    client_tls: None,
                    root_cert,
                };
                parse("storage.ca_file", ca_alone)?;
                parse(CLIENT_PAIR, certs)?
            }
        };
        Ok(Some(Self { template }))
    }

    /// The address of `host:port` with these settings.
    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        match self.template.clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => unreachable!("RedisTls holds a TLS address"),
        }
    }
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
}

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

/// `SENTINEL <subcommand> <name>` within `deadline`.
async fn sentinel_query<T: redis::FromRedisValue>(
    sentinel: &mut MultiplexedConnection,
    subcommand: &str,
    name: &str,
    deadline: Duration,
) -> Result<T, String> {
    let mut command = redis::cmd("SENTINEL");
    command.arg(subcommand).arg(name);
    tokio::time::timeout(deadline, command.query_async(sentinel))
        .await
        .map_err(|_| format!("SENTINEL {subcommand} timed out"))?
        .map_err(|e| e.to_string())
}

/// Errors after which the node must find the master again.
fn means_find_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
            )
        )
}

impl Shared {
    /// Deadline for each step of finding a master: short, so that a frozen server costs
    /// little before the next candidate is tried.
    fn discovery_timeout(&self) -> Duration {
        self.timeout.min(Duration::from_secs(1))
    }

    async fn open(
        &self,
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
    ) -> Result<MultiplexedConnection, RedisError> {
        self.open_with(host, port, settings, AsyncConnectionConfig::new())
            .await
    }

    /// Opens a connection with `config` plus this store's TLS and deadlines.
    async fn open_with(
        &self,
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
        config: AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let info = self
            .addr(host, port)
            .into_connection_info()?
            .set_redis_settings(settings.clone());
        let client = redis::Client::open(info)?;
        // Every call has its own, tighter deadline; this backstop only has to outlast `WAIT`.
        let config = config
            .set_connection_timeout(Some(self.discovery_timeout()))
            .set_response_timeout(Some(self.timeout * 3));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Opens the connection that follows changes on `link`: a RESP3 connection subscribed to
    /// Tyk's cluster notifications and, when `track` and the server allow, tracking every key
    /// under [`KEY_PREFIX`] (`CLIENT TRACKING ON BCAST`), so that Redis reports each write to a
    /// session record, whoever makes it. Both arrive on `pushes`. Returns the connection
    /// (dropping it ends both) and whether keys are tracked.
    async fn follow(
        &self,
        link: &Link,
        pushes: mpsc::UnboundedSender<PushInfo>,
        track: bool,
    ) -> Result<(MultiplexedConnection, bool), String> {
        let settings = self.settings.clone().set_protocol(ProtocolVersion::RESP3);
        let config = AsyncConnectionConfig::new().set_push_sender(pushes);
        let mut conn = self
            .open_with(&link.host, link.port, &settings, config)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(self.timeout, conn.subscribe(NOTIFICATION_CHANNEL))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if !track {
            return Ok((conn, false));
        }
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg(&["TRACKING", "ON", "BCAST", "PREFIX", KEY_PREFIX]);
        match tokio::time::timeout(self.timeout, tracking.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok((conn, true)),
            Ok(Err(e)) => {
                tracing::warn!(
                    "redis {}: key tracking refused ({e}); cached sessions are revalidated after cached_session_timeout",
                    link.addr()
                );
                Ok((conn, false))
            }
            Err(_) => Err("CLIENT TRACKING timed out".into()),
        }
    }

    /// `host:port`, over TLS when the store is configured for it.
    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        match &self.tls {
            Some(tls) => tls.addr(host, port),
            None => ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }

    async fn open_pubsub(
        &self,
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
    ) -> Result<redis::aio::PubSub, String> {
        // With TLS like every other connection: a sentinel that speaks only TLS must still
        // report `+switch-master`.
        let info = self
            .addr(host, port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings.clone());
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out connecting to {host}:{port}")),
        }
    }

    fn record_error(&self, message: String) {
        tracing::debug!("redis: {message}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// Marks the master as lost and wakes the maintainer.
    fn lose_master(&self, why: String) {
        self.stop_following();
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis master lost: {why}");
            self.wake.notify_one();
        }
        self.record_error(why);
    }

    /// Sentinel announced a new master: drop the current one and restart any discovery in
    /// progress, which may be waiting on the old, unresponsive master.
    fn master_switched(&self, why: String) {
        tracing::info!("{why}");
        self.stop_following();
        self.healthy.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    /// Changes followed on a master that is lost may no longer be all there are: writes can
    /// already go to its successor.
    fn stop_following(&self) {
        if let Some(cache) = &self.cache {
            cache.set_followed(false);
        }
    }

    fn healthy_master(&self) -> Option<Arc<Link>> {
        if self.healthy.load(Ordering::Acquire) {
            self.master.load_full()
        } else {
            None
        }
    }

    /// `ROLE` of a connection: the role name and, for a master, its connected replicas.
    async fn role(&self, conn: &mut MultiplexedConnection) -> Result<(String, usize), String> {
        let value = tokio::time::timeout(
            self.discovery_timeout(),
            redis::cmd("ROLE").query_async::<Value>(conn),
        )
        .await
        .map_err(|_| "ROLE timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let Value::Array(items) = value else {
            return Err(format!("unexpected ROLE reply {value:?}"));
        };
        let role = match items.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            other => return Err(format!("unexpected ROLE reply {other:?}")),
        };
        let replicas = match items.get(2) {
            Some(Value::Array(list)) if role == "master" => list.len(),
            _ => 0,
        };
        Ok((role, replicas))
    }

    /// Finds and installs the master (and, with Sentinel, the replicas).
    async fn discover(&self) -> Result<(), String> {
        match &self.topology {
            Topology::Direct { host, port } => {
                let mut conn = self
                    .open(host, *port, &self.settings)
                    .await
                    .map_err(|e| format!("{host}:{port}: {e}"))?;
                let (role, replicas) = self.role(&mut conn).await?;
                if role != "master" {
                    return Err(format!("{host}:{port} is a {role}, not the master"));
                }
                self.learn_replicas_seen(&mut conn, replicas).await;
                self.check_not_lonely(replicas)?;
                self.install_master(host.clone(), *port, conn, replicas)
                    .await;
                Ok(())
            }
            Topology::Sentinel {
                sentinels,
                master_name,
            } => self.discover_via_sentinels(sentinels, master_name).await,
        }
    }

    /// Asks the sentinels every [`RETRY_PAUSE`] and probes each address they name with ROLE,
    /// in parallel: the first confirmed master wins. During a failover the sentinels may
    /// disagree and the old master may hang; re-asking while a probe is pending means the
    /// promoted replica is picked up as soon as one sentinel names it. Each answer is used as
    /// it arrives: a slow or unreachable sentinel does not hold up the others.
    async fn discover_via_sentinels(
        &self,
        sentinels: &[(String, u16)],
        name: &str,
    ) -> Result<(), String> {
        let give_up = tokio::time::Instant::now() + self.discovery_timeout() * 3;
        let ask = |index: usize| {
            let (host, port) = &sentinels[index];
            async move { (index, self.ask_sentinel(host, *port, name).await) }
        };
        let mut asks: FuturesUnordered<_> = (0..sentinels.len()).map(ask).collect();
        let mut asking = vec![true; sentinels.len()];
        let mut probes = FuturesUnordered::new();
        let mut probing: Vec<(String, u16)> = Vec::new();
        let mut errors = Vec::new();
        let next_round = tokio::time::sleep(RETRY_PAUSE);
        tokio::pin!(next_round);
        loop {
            tokio::select! {
                Some((index, answer)) = asks.next() => {
                    asking[index] = false;
                    match answer {
                        Ok(view) if !probing.contains(&view.master) => {
                            probing.push(view.master.clone());
                            probes.push(async move {
                                let confirmed =
                                    self.confirm_master(&view.master.0, view.master.1).await;
                                (view, confirmed)
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let (host, port) = &sentinels[index];
                            errors.push(format!("sentinel {host}:{port}: {e}"));
                        }
                    }
                    // Every sentinel has answered and none named a master worth probing.
                    if probes.is_empty() && !asking.contains(&true) {
                        return Err(errors.join("; "));
                    }
                }
                Some((view, confirmed)) = probes.next() => match confirmed {
                    Ok((conn, replicas)) => {
                        drop(probes);
                        self.use_sentinel_view(view, conn, replicas).await;
                        return Ok(());
                    }
                    Err(e) => {
                        errors.push(e);
                        probing.retain(|m| *m != view.master);
                    }
                },
                () = &mut next_round => {
                    if tokio::time::Instant::now() > give_up {
                        return Err(errors.join("; "));
                    }
                    for (index, busy) in asking.iter_mut().enumerate() {
                        if !*busy {
                            *busy = true;
                            asks.push(ask(index));
                        }
                    }
                    next_round.as_mut().reset(tokio::time::Instant::now() + RETRY_PAUSE);
                }
            }
        }
    }

    /// Connects to `host:port` and checks with ROLE that it is a master.
    async fn confirm_master(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(MultiplexedConnection, usize), String> {
        let mut conn = self
            .open(host, port, &self.settings)
            .await
            .map_err(|e| format!("master {host}:{port}: {e}"))?;
        let (role, replicas) = self
            .role(&mut conn)
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        if role != "master" {
            return Err(format!("{host}:{port} reports role {role}"));
        }
        Ok((conn, replicas))
    }

    async fn ask_sentinel(
        &self,
        host: &str,
        port: u16,
        name: &str,
    ) -> Result<SentinelView, String> {
        let deadline = self.discovery_timeout();
        let mut sentinel = self
            .open(host, port, &self.sentinel_settings)
            .await
            .map_err(|e| e.to_string())?;
        // get-master-addr-by-name already names the promoted replica during a failover;
        // `SENTINEL master` only does after the switch.
        let addr: Option<(String, u16)> =
            sentinel_query(&mut sentinel, "get-master-addr-by-name", name, deadline).await?;
        let (ip, mport) = addr.ok_or_else(|| format!("no master named {name:?}"))?;
        let described: Vec<HashMap<String, String>> =
            sentinel_query(&mut sentinel, "replicas", name, deadline)
                .await
                .unwrap_or_default();
        let known_replicas = described.len();
        let replicas = described
            .iter()
            .filter(|r| {
                let flags = r.get("flags").map(String::as_str).unwrap_or_default();
                !flags.contains("down") && !flags.contains("disconnected")
            })
            .filter_map(|r| Some((r.get("ip")?.clone(), r.get("port")?.parse().ok()?)))
            .collect();
        Ok(SentinelView {
            master: (ip, mport),
            replicas,
            known_replicas,
        })
    }

    async fn use_sentinel_view(
        &self,
        view: SentinelView,
        conn: MultiplexedConnection,
        replicas: usize,
    ) {
        let (mhost, mport) = view.master;
        self.replica_high_water
            .fetch_max(view.known_replicas.max(replicas), Ordering::AcqRel);
        self.install_master(mhost, mport, conn, replicas).await;
        // Replica links only after the master is in use: right after a failover the sentinels
        // list the old master as a healthy replica until it is flagged down again, and a
        // frozen one holds its connection attempt for the whole `timeout`.
        let opened = futures_util::future::join_all(
            view.replicas
                .iter()
                .map(|(host, port)| self.open(host, *port, &self.settings)),
        )
        .await;
        let links = opened
            .into_iter()
            .zip(view.replicas)
            .filter_map(|(conn, (host, port))| {
                Some(Arc::new(Link::new(host, port, conn.ok()?, Vec::new(), 0)))
            })
            .collect();
        self.replicas.store(Arc::new(links));
    }

    /// Folds the layout's recorded replica count into this node's, and records a higher one.
    async fn learn_replicas_seen(&self, conn: &mut MultiplexedConnection, replicas: usize) {
        let deadline = self.discovery_timeout();
        let recorded: Option<usize> = tokio::time::timeout(
            deadline,
            redis::cmd("GET")
                .arg(REPLICAS_SEEN_KEY)
                .query_async::<Option<usize>>(conn),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        let seen = recorded.unwrap_or(0).max(replicas);
        let known = self
            .replica_high_water
            .fetch_max(seen, Ordering::AcqRel)
            .max(seen);
        if replicas > 0 && recorded.is_none_or(|r| r < known) {
            // Best effort: a read-only server refuses it, and the next probe tries again.
            let _ = tokio::time::timeout(
                deadline,
                redis::cmd("SET")
                    .arg(REPLICAS_SEEN_KEY)
                    .arg(known)
                    .query_async::<()>(conn),
            )
            .await;
        }
    }

    /// Refuses, for a while, a master with no replicas when replicas were seen before:
    /// through HAProxy that is how a returning, not yet demoted, old master looks.
    fn check_not_lonely(&self, replicas: usize) -> Result<(), String> {
        let mut since = self.lonely_since.lock().unwrap_or_else(|p| p.into_inner());
        if replicas > 0 || self.replica_high_water.load(Ordering::Acquire) == 0 {
            *since = None;
            self.replica_high_water
                .fetch_max(replicas, Ordering::AcqRel);
            return Ok(());
        }
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() < LONELY_MASTER_DISTRUST {
            return Err(
                "master reports no replicas where replicas were seen; waiting for Sentinel".into(),
            );
        }
        Ok(())
    }

    /// Opens the rest of the master's pool and puts it in use. A connection that reaches
    /// another server (HAProxy may route it elsewhere during a failover) is dropped.
    async fn install_master(
        &self,
        host: String,
        port: u16,
        mut first: MultiplexedConnection,
        replicas: usize,
    ) {
        let deadline = self.discovery_timeout();
        let mut others = Vec::with_capacity(self.pool_size - 1);
        if self.pool_size > 1
            && let Some(id) = run_id(&mut first, deadline).await
        {
            let opened = futures_util::future::join_all(
                (1..self.pool_size).map(|_| self.open(&host, port, &self.settings)),
            )
            .await;
            for mut conn in opened.into_iter().flatten() {
                if run_id(&mut conn, deadline).await.as_ref() == Some(&id) {
                    others.push(conn);
                }
            }
        }
        let link = Link::new(host, port, first, others, replicas);
        tracing::info!(master = %link.addr(), replicas = link.replicas, connections = 1 + link.others.len(), "redis master in use");
        self.master.store(Some(Arc::new(link)));
        self.healthy.store(true, Ordering::Release);
        self.master_changed
            .send_modify(|generation| *generation += 1);
    }

    /// Replicas needed to acknowledge a write.
    fn required_acks(&self) -> usize {
        self.min_replicas_ack
            .unwrap_or_else(|| usize::from(self.replica_high_water.load(Ordering::Acquire) > 0))
    }

    async fn read(&self, link: &Link, key: &str) -> Result<Option<String>, RedisError> {
        let mut conn = link.request_path();
        match tokio::time::timeout(
            READ_TIMEOUT,
            redis::cmd("GET").arg(key).query_async(&mut conn),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("GET on {} timed out", link.addr()),
            ))),
        }
    }

    /// The stored JSON of `key_id`: from the master, or from a replica while it is away.
    async fn read_record(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let key = record_key(key_id);
        if let Some(link) = self.healthy_master() {
            match self.read(&link, &key).await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    if means_find_master(&e) {
                        self.lose_master(format!("read on {}: {e}", link.addr()));
                    } else {
                        return Err(StoreError::Unavailable(e.to_string()));
                    }
                }
            }
        }
        match self.read_replica(&key).await {
            Some(Ok(found)) => Ok(found),
            Some(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            None => Err(StoreError::Unavailable(self.unavailable_reason())),
        }
    }

    /// `key` from the replicas, starting with the next in turn. A replica without the key
    /// may only be behind (a key written just before the master went away), so "missing"
    /// is the answer only when no replica that answers has it.
    async fn read_replica(&self, key: &str) -> Option<Result<Option<String>, RedisError>> {
        let replicas = self.replicas.load();
        if replicas.is_empty() {
            return None;
        }
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..replicas.len() {
            let link = &replicas[(start + i) % replicas.len()];
            match self.read(link, key).await {
                Ok(Some(found)) => return Some(Ok(Some(found))),
                Ok(None) => last = Some(Ok(None)),
                Err(e) if last.is_none() => last = Some(Err(e)),
                Err(_) => {}
            }
        }
        last
    }

    /// Runs a write followed by `WAIT`, on the master only, and checks the acknowledgement.
    async fn write(&self, mut pipe: redis::Pipeline) -> Result<Value, StoreError> {
        let link = self
            .healthy_master()
            .ok_or_else(|| StoreError::Unavailable(self.unavailable_reason()))?;
        let acks = self.required_acks();
        let wait_ms = self.timeout.as_millis() as u64;
        if acks > 0 {
            pipe.cmd("WAIT").arg(acks).arg(wait_ms);
        }
        let values: Vec<Value> = self
            .call(
                &link,
                link.conn(),
                "write",
                self.timeout * 2,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        if acks > 0 {
            let confirmed = match values.last() {
                Some(Value::Int(n)) => *n as usize,
                _ => 0,
            };
            if confirmed < acks {
                // A master that cannot reach its replicas may be about to be demoted.
                self.lose_master(format!(
                    "{} replicas of {acks} confirmed a write",
                    confirmed
                ));
                return Err(StoreError::NotDurable(format!(
                    "{confirmed} of {acks} required replicas confirmed the write within {wait_ms} ms"
                )));
            }
        }
        Ok(values.into_iter().next().unwrap_or(Value::Nil))
    }

    async fn notify_key_change(&self, key_id: &str) {
        self.publish("KeySpaceUpdateNotification", &format!("{key_id}:hashed"))
            .await;
    }

    /// Publishes a notification in Tyk's shape on its channel, marked as this node's.
    async fn publish(&self, command: &str, payload: &str) {
        let Some(link) = self.healthy_master() else {
            return;
        };
        let message = json!({
            "command": command,
            "payload": payload,
            "signature": "",
            "origin": self.node_id,
        })
        .to_string();
        let mut conn = link.conn();
        let sent = tokio::time::timeout(
            READ_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(NOTIFICATION_CHANNEL)
                .arg(message)
                .query_async::<i64>(&mut conn),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!("could not publish a {command} notification");
        }
    }

    /// Runs a limits script on the master with the request-path deadline.
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let link = self
            .healthy_master()
            .ok_or_else(|| StoreError::Unavailable(self.unavailable_reason()))?;
        let conn = link.request_path();
        self.call(&link, conn, "limits", READ_TIMEOUT, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Runs `command` on `conn`, one of `link`'s connections, within `deadline`. A timeout,
    /// or an error that means the master is gone, drops the master so that it is found again.
    async fn call<T, F, Fut>(
        &self,
        link: &Link,
        conn: MultiplexedConnection,
        what: &str,
        deadline: Duration,
        command: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(deadline, command(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if means_find_master(&e) {
                    self.lose_master(format!("{what} on {}: {e}", link.addr()));
                }
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.lose_master(format!("{what} on {} timed out", link.addr()));
                Err(StoreError::Unavailable(format!("{what} timed out")))
            }
        }
    }

    fn unavailable_reason(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "no Redis master reachable".into())
    }
}

/// Keeps a confirmed master installed: discovers when there is none, and re-checks the one in
/// use with `ROLE` so that a demotion is noticed even without a failed request.
async fn maintain(shared: Arc<Shared>) {
    let mut kept_alive = Instant::now();
    loop {
        if shared.healthy_master().is_none() {
            let outcome = tokio::select! {
                outcome = shared.discover() => outcome,
                () = shared.wake.notified() => continue,
            };
            if let Err(e) = outcome {
                shared.record_error(e);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = shared.wake.notified() => {}
                }
            }
            continue;
        }
        tokio::select! {
            () = shared.wake.notified() => continue,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(link) = shared.healthy_master() else {
            continue;
        };
        let mut conn = link.conn();
        match tokio::time::timeout(READ_TIMEOUT, shared.role(&mut conn)).await {
            Ok(Ok((role, replicas))) if role == "master" => {
                if replicas > shared.replica_high_water.load(Ordering::Acquire) {
                    shared.learn_replicas_seen(&mut conn, replicas).await;
                }
                if kept_alive.elapsed() >= KEEPALIVE_EVERY {
                    kept_alive = Instant::now();
                    if let Err(e) = link.keep_alive().await {
                        shared.lose_master(format!("{}: {e}", link.addr()));
                    }
                }
            }
            Ok(Ok((role, _))) => shared.lose_master(format!("{} is now a {role}", link.addr())),
            Ok(Err(e)) => shared.lose_master(format!("{}: {e}", link.addr())),
            Err(_) => shared.lose_master(format!("{} did not answer ROLE", link.addr())),
        }
    }
}

/// Follows `+switch-master` on any reachable sentinel.
async fn follow_sentinels(shared: Arc<Shared>) {
    let Topology::Sentinel {
        sentinels,
        master_name,
    } = &shared.topology
    else {
        return;
    };
    loop {
        for (host, port) in sentinels {
            let Ok(mut pubsub) = shared
                .open_pubsub(host, *port, &shared.sentinel_settings)
                .await
            else {
                continue;
            };
            if pubsub.subscribe("+switch-master").await.is_err() {
                continue;
            }
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(master_name.as_str()) {
                    shared.master_switched(format!(
                        "sentinel {host}:{port}: +switch-master {payload}"
                    ));
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Follows changes on the current master (see [`Shared::follow`]) into the session cache, and
/// starts again whenever the master changes or the connection drops. Anything written while
/// not followed could be missed, so each new start begins a new cache epoch.
async fn follow_changes(shared: Arc<Shared>) {
    let Some(cache) = shared.cache.clone() else {
        return;
    };
    let mut changed = shared.master_changed.subscribe();
    loop {
        let Some(link) = shared.master.load_full() else {
            let _ = changed.changed().await;
            continue;
        };
        changed.borrow_and_update();
        let (tx, mut pushes) = mpsc::unbounded_channel();
        let (mut conn, tracking) = match shared.follow(&link, tx, cache.follows_changes()).await {
            Ok(followed) => followed,
            Err(e) => {
                shared.record_error(format!("following changes on {}: {e}", link.addr()));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if tracking {
            cache.set_followed(true);
        } else {
            cache.new_epoch();
        }
        // A connection that dies without a word, or that a proxy closes as idle, would stop
        // the invalidations unnoticed: a PING now and then proves it alive and keeps it busy.
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) if push.kind != PushKind::Disconnection => {
                        apply_push(&cache, &shared, push);
                    }
                    _ => break,
                },
                _ = changed.changed() => break,
                _ = probe.tick() => {
                    let ping = redis::cmd("PING");
                    let answer = tokio::time::timeout(READ_TIMEOUT, ping.query_async::<Value>(&mut conn));
                    if !matches!(answer.await, Ok(Ok(_))) {
                        shared.record_error(format!("following changes on {}: no answer to PING", link.addr()));
                        break;
                    }
                }
            }
        }
        cache.set_followed(false);
    }
}

/// One message from the following connection: a tracked key's invalidation (no keys: the
/// database was flushed) or a cluster notification.
fn apply_push(cache: &SessionCache, shared: &Shared, push: PushInfo) {
    match (push.kind, push.data.as_slice()) {
        (PushKind::Invalidate, [Value::Array(keys)]) => {
            for key in keys {
                if let Value::BulkString(key) = key
                    && let Some(id) = key.strip_prefix(KEY_PREFIX.as_bytes())
                {
                    cache.invalidate(&String::from_utf8_lossy(id));
                }
            }
        }
        (PushKind::Invalidate, _) => cache.new_epoch(),
        (PushKind::Message, [_, Value::BulkString(payload)]) => {
            apply_notification(cache, shared, payload);
        }
        _ => {}
    }
}

/// Tyk's `KeySpaceUpdateNotification`: a comma-separated list of keys, `:hashed` marking
/// storage ids. Tyk ignores the extra `origin` field.
fn apply_notification(cache: &SessionCache, shared: &Shared, payload: &[u8]) {
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    if message["origin"] == shared.node_id.as_str() {
        return;
    }
    if message["command"] == "GroupReload" {
        shared.reloads.send_modify(|n| *n = n.wrapping_add(1));
        return;
    }
    if message["command"] != "KeySpaceUpdateNotification" {
        return;
    }
    for key in message["payload"].as_str().unwrap_or_default().split(',') {
        let id = key.strip_suffix(":hashed").unwrap_or(key);
        if !id.is_empty() {
            cache.invalidate(id);
        }
    }
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
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt {
            key: key_id.to_owned(),
            reason: e.to_string(),
        })?;
        let mut pipe = redis::pipe();
        let set = pipe.cmd("SET").arg(record_key(key_id)).arg(json);
        if let Some(ttl) = ttl {
            set.arg("EX").arg(ttl.as_secs().max(1));
        }
        let result = self.shared.write(pipe).await;
        self.shared.notify_key_change(key_id).await;
        result.map(|_| ())
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
