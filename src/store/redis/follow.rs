//! Following changes to session records as they happen: Tyk's cluster notifications and
//! Redis key tracking on one RESP3 connection, applied to the node's session cache.

use super::*;

impl Shared {
    /// Opens the connection that follows changes on `link`: a RESP3 connection subscribed to
    /// Tyk's cluster notifications and, when `track` and the server allow, tracking every key
    /// under [`KEY_PREFIX`] (`CLIENT TRACKING ON BCAST`), so that Redis reports each write to a
    /// session record, whoever makes it. Both arrive on `pushes`. Returns the connection
    /// (dropping it ends both) and whether keys are tracked.
    pub(super) async fn follow(
        &self,
        link: &Link,
        pushes: mpsc::UnboundedSender<PushInfo>,
        track: bool,
    ) -> Result<(MultiplexedConnection, bool), Fault> {
        let settings = self.settings.clone().set_protocol(ProtocolVersion::RESP3);
        let config = AsyncConnectionConfig::new().set_push_sender(pushes);
        let mut conn = self
            .open_with(&link.host, link.port, &settings, config)
            .await
            .map_err(|e| Fault::connect(&link.host, link.port, e))?;
        let subscribe = conn.subscribe(NOTIFICATION_CHANNEL);
        within(|| link.addr(), "SUBSCRIBE", self.timeout, subscribe).await?;
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
            Err(_) => Err(Fault::TimedOut {
                addr: link.addr(),
                step: "CLIENT TRACKING",
            }),
        }
    }
}

/// Follows changes on the current master (see [`Shared::follow`]) into the session cache, and
/// starts again whenever the master changes or the connection drops. Anything written while
/// not followed could be missed, so each new start begins a new cache epoch.
pub(super) async fn follow_changes(shared: Arc<Shared>) {
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
                shared.record_error(&e);
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
                    let answer = ping.query_async::<Value>(&mut conn);
                    if let Err(e) = within(|| link.addr(), "PING", READ_TIMEOUT, answer).await {
                        shared.record_error(&e);
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
pub(super) fn apply_push(cache: &SessionCache, shared: &Shared, push: PushInfo) {
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
pub(super) fn apply_notification(cache: &SessionCache, shared: &Shared, payload: &[u8]) {
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
