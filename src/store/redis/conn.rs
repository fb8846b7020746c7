//! The master's connections in use: opening them, reading (with the replicas as fallback),
//! writing with `WAIT`, publishing notifications, scripts, and turning errors into a lost master.

use super::*;

/// Errors after which the node must find the master again.
pub(super) fn means_find_master(e: &RedisError) -> bool {
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
    pub(super) async fn open(
        &self,
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
    ) -> Result<MultiplexedConnection, RedisError> {
        self.open_with(host, port, settings, AsyncConnectionConfig::new())
            .await
    }

    /// Opens a connection with `config` plus this store's TLS and deadlines.
    pub(super) async fn open_with(
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

    /// `host:port`, over TLS when the store is configured for it.
    pub(super) fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        match &self.tls {
            Some(tls) => tls.addr(host, port),
            None => ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }

    pub(super) async fn open_pubsub(
        &self,
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
    ) -> Result<redis::aio::PubSub, Fault> {
        // With TLS like every other connection: a sentinel that speaks only TLS must still
        // report `+switch-master`.
        let connect = async {
            let info = self
                .addr(host, port)
                .into_connection_info()?
                .set_redis_settings(settings.clone());
            redis::Client::open(info)?.get_async_pubsub().await
        };
        within(
            || format!("{host}:{port}"),
            "connect",
            self.timeout,
            connect,
        )
        .await
    }

    pub(super) fn record_error(&self, fault: &Fault) {
        tracing::debug!("redis: {fault}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault.to_string());
    }

    /// Marks the master as lost and wakes the maintainer.
    pub(super) fn lose_master(&self, why: &Fault) {
        self.stop_following();
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis master lost: {why}");
            self.wake.notify_one();
        }
        self.record_error(why);
    }

    /// Sentinel announced a new master: drop the current one and restart any discovery in
    /// progress, which may be waiting on the old, unresponsive master.
    pub(super) fn master_switched(&self) {
        self.stop_following();
        self.healthy.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    /// Changes followed on a master that is lost may no longer be all there are: writes can
    /// already go to its successor.
    pub(super) fn stop_following(&self) {
        if let Some(cache) = &self.cache {
            cache.set_followed(false);
        }
    }

    pub(super) fn healthy_master(&self) -> Option<Arc<Link>> {
        if self.healthy.load(Ordering::Acquire) {
            self.master.load_full()
        } else {
            None
        }
    }

    /// Replicas needed to acknowledge a write.
    pub(super) fn required_acks(&self) -> usize {
        self.min_replicas_ack
            .unwrap_or_else(|| usize::from(self.replica_high_water.load(Ordering::Acquire) > 0))
    }

    pub(super) async fn read(&self, link: &Link, key: &str) -> Result<Option<String>, Fault> {
        self.counts.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = link.request_path();
        let mut get = redis::cmd("GET");
        let answer = get.arg(key).query_async(&mut conn);
        within(|| link.addr(), "GET", READ_TIMEOUT, answer).await
    }

    /// The stored JSON of `key_id`: from the master, or from a replica while it is away.
    pub(super) async fn read_record(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let key = record_key(key_id);
        if let Some(link) = self.healthy_master() {
            match self.read(&link, &key).await {
                Ok(found) => return Ok(found),
                Err(e) if e.means_find_master() => self.lose_master(&e),
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
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
    pub(super) async fn read_replica(&self, key: &str) -> Option<Result<Option<String>, Fault>> {
        let replicas = self.replicas.load();
        if replicas.is_empty() {
            return None;
        }
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..replicas.len() {
            let link = &replicas[(start + i) % replicas.len()];
            match link.quiet.approach(now_ms()) {
                Approach::Read => {}
                Approach::Skip => continue,
                Approach::Probe => {
                    tokio::spawn(probe(link.clone()));
                    continue;
                }
            }
            let answer = self.read(link, key).await;
            match &answer {
                Ok(_) => link.quiet.answered(),
                Err(_) => link.quiet.unanswered(now_ms()),
            }
            match answer {
                Ok(Some(found)) => {
                    self.counts.replica_reads.fetch_add(1, Ordering::Relaxed);
                    return Some(Ok(Some(found)));
                }
                Ok(None) => last = Some(Ok(None)),
                Err(e) if last.is_none() => last = Some(Err(e)),
                Err(_) => {}
            }
        }
        last
    }

    /// Runs a write followed by `WAIT`, on the master only, and checks the acknowledgement.
    pub(super) async fn write(&self, mut pipe: redis::Pipeline) -> Result<Value, StoreError> {
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
                self.counts
                    .unconfirmed_writes
                    .fetch_add(1, Ordering::Relaxed);
                // A master that cannot reach its replicas may be about to be demoted.
                self.lose_master(&Fault::Unconfirmed {
                    addr: link.addr(),
                    confirmed,
                    required: acks,
                });
                return Err(StoreError::NotDurable(format!(
                    "{confirmed} of {acks} required replicas confirmed the write within {wait_ms} ms"
                )));
            }
        }
        Ok(values.into_iter().next().unwrap_or(Value::Nil))
    }

    pub(super) async fn notify_key_change(&self, key_id: &str) {
        self.publish("KeySpaceUpdateNotification", &format!("{key_id}:hashed"))
            .await;
    }

    /// Publishes a notification in Tyk's shape on its channel, marked as this node's.
    pub(super) async fn publish(&self, command: &str, payload: &str) {
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
    pub(super) async fn run_script<T: redis::FromRedisValue>(
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
    pub(super) async fn call<T, F, Fut>(
        &self,
        link: &Link,
        conn: MultiplexedConnection,
        what: &'static str,
        deadline: Duration,
        command: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.counts.round_trips.fetch_add(1, Ordering::Relaxed);
        within(|| link.addr(), what, deadline, command(conn))
            .await
            .map_err(|fault| {
                if fault.means_find_master() {
                    self.lose_master(&fault);
                }
                StoreError::Unavailable(fault.to_string())
            })
    }

    pub(super) fn unavailable_reason(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "no Redis master reachable".into())
    }
}

/// A `PING` to a quiet server, off the request path: it answers reads again once this is
/// answered.
async fn probe(link: Arc<Link>) {
    match link.ping(&link.request_path, READ_TIMEOUT).await {
        Ok(_) => link.quiet.answered(),
        Err(_) => link.quiet.unanswered(now_ms()),
    }
}
