//! The Redis store on real Redis, Sentinel and HAProxy: Tyk's key layout, durability,
//! restarts, shared keys between nodes, and reads that survive the master.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::redis::{RedisServer, SeedLayout, TlsRedisServer};
use support::{TestGateway, gateway, sample_api, seed_key, upstream};

fn direct(port: u16) -> Value {
    json!({"storage": {"type": "redis", "host": "127.0.0.1", "port": port, "timeout": 2}})
}

/// `direct`, with the session cache off: every request reads its session from Redis.
fn uncached(port: u16) -> Value {
    let mut config = direct(port);
    config["local_session_cache"] = json!({"disable_cached_session_state": true});
    config
}

fn sentinel(layout: &SeedLayout) -> Value {
    json!({"storage": {"type": "redis", "addrs": layout.sentinel_addrs(), "master_name": "mymaster", "timeout": 2}})
}

async fn node(target: &str, config: Value) -> TestGateway {
    gateway()
        .api(sample_api(target))
        .config(config)
        .start()
        .await
}

/// Polls `path` with `key` until it answers `status`, for at most `within`.
async fn eventually_status(gw: &TestGateway, key: &str, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {} ({}) after {within:?}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn key_crud_lands_in_redis_in_tyk_layout() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["enable_hashed_keys_listing"] = json!(true);
    let gw = node(&up.url(""), config).await;
    let hash = gw.add_key("testkey", seed_key()).await.json()["key_hash"]
        .as_str()
        .unwrap()
        .to_owned();

    let stored: Value = serde_json::from_str(
        &redis
            .get(&format!("apikey-{hash}"))
            .await
            .expect("record in Redis"),
    )
    .unwrap();
    assert_eq!(stored["rate"], 1000.0);
    assert_eq!(stored["org_id"], "default");
    assert_eq!(stored["access_rights"]["1"]["api_id"], "1");
    assert!(
        redis.get("apikey-testkey").await.is_none(),
        "the raw key is never stored"
    );

    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("testkey"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.admin("GET", "/tyk/keys", None).await.json(),
        json!({"keys": [hash]})
    );
    let hello = gw
        .client
        .request("GET", &gw.url("/hello"), &[], None)
        .await
        .json();
    assert_eq!(hello["status"], "pass");
    assert_eq!(hello["details"]["redis"]["mode"], "redis");
    assert_eq!(
        hello["details"]["redis"]["master"],
        format!("127.0.0.1:{}", redis.port)
    );

    assert_eq!(
        gw.admin("DELETE", "/tyk/keys/testkey", None).await.status,
        200
    );
    assert!(redis.get(&format!("apikey-{hash}")).await.is_none());
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("testkey"))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn a_redis_restart_loses_no_key() {
    let mut redis = RedisServer::start().await;
    let up = upstream().await;
    let gw = node(&up.url(""), uncached(redis.port)).await;
    for i in 0..20 {
        gw.add_key(&format!("key-{i}"), seed_key()).await;
    }
    redis.restart().await;
    eventually_status(&gw, "key-0", 200, Duration::from_secs(10)).await;
    for i in 0..20 {
        let r = gw
            .get_with_key("/tyk-api-test/get", Some(&format!("key-{i}")))
            .await;
        assert_eq!(r.status, 200, "key-{i}: {}", r.text());
    }
}

#[tokio::test]
async fn an_outage_is_503_never_an_auth_error_and_cached_keys_keep_working() {
    let mut redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["local_session_cache"] = json!({"cached_session_timeout": 1, "stale_if_error": 120});
    let gw = node(&up.url(""), config).await;
    gw.add_key("known", seed_key()).await;
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("known"))
            .await
            .status,
        200
    );

    redis.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = gw.get_with_key("/tyk-api-test/get", Some("known")).await;
    assert_eq!(r.status, 200, "a cached key stays usable: {}", r.text());
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("never-seen"))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"error": "Key store unavailable"}));
    let r = gw.client.request("GET", &gw.url("/ready"), &[], None).await;
    assert_eq!(r.status, 503);
    let r = gw.admin("POST", "/tyk/keys/newkey", Some(seed_key())).await;
    assert_eq!(r.status, 503, "a write is not acknowledged: {}", r.text());
    assert_eq!(r.json()["status"], "error");

    redis.restart().await;
    let start = Instant::now();
    while gw
        .client
        .request("GET", &gw.url("/ready"), &[], None)
        .await
        .status
        != 200
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "ready again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.add_key("newkey", seed_key()).await;
}

#[tokio::test]
async fn two_nodes_share_keys_and_invalidations() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    // Tyk's notifications alone: key tracking would report the same changes.
    config["local_session_cache"] = json!({"cached_session_timeout": 60, "follow_changes": false});
    let a = node(&up.url(""), config.clone()).await;
    let b = node(&up.url(""), config).await;

    a.add_key("shared", seed_key()).await;
    eventually_status(&b, "shared", 200, Duration::from_secs(1)).await;

    let mut inactive = seed_key();
    inactive["is_inactive"] = json!(true);
    assert_eq!(
        a.admin("PUT", "/tyk/keys/shared", Some(inactive))
            .await
            .status,
        200
    );
    eventually_status(&b, "shared", 403, Duration::from_secs(1)).await;

    assert_eq!(
        a.admin("PUT", "/tyk/keys/shared", Some(seed_key()))
            .await
            .status,
        200
    );
    eventually_status(&b, "shared", 200, Duration::from_secs(1)).await;
    assert_eq!(
        a.admin("DELETE", "/tyk/keys/shared", None).await.status,
        200
    );
    eventually_status(&b, "shared", 403, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn writes_wait_for_the_required_replicas() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["storage"]["min_replicas_ack"] = json!(1);
    let gw = node(&up.url(""), config).await;
    let r = gw.admin("POST", "/tyk/keys/lonely", Some(seed_key())).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["message"].as_str().unwrap().contains("replicas"),
        "{}",
        r.text()
    );

    let replica = RedisServer::replica_of(redis.port).await;
    let start = Instant::now();
    loop {
        let r = gw.admin("POST", "/tyk/keys/lonely", Some(seed_key())).await;
        if r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "acknowledged once a replica confirms: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        replica
            .get(&format!("apikey-{}", gw.key_id("lonely")))
            .await
            .is_some()
    );
}

/// A key write waiting for a replica that never comes (`WAIT` for up to `timeout`) holds only
/// its own connection: keyed requests, whose sessions are read on the request-path
/// connection, are answered meanwhile.
#[tokio::test]
async fn a_write_waiting_for_replicas_never_holds_up_requests() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = uncached(redis.port);
    config["storage"]["min_replicas_ack"] = json!(1);
    let gw = node(&up.url(""), config).await;
    let id = gw.key_id("reader");
    let record = seed_key().to_string();
    support::redis::cmd(redis.port, &["SET", &format!("apikey-{id}"), &record])
        .await
        .unwrap();

    let write = async {
        let r = gw.admin("POST", "/tyk/keys/lonely", Some(seed_key())).await;
        (r, Instant::now())
    };
    let reads = async {
        // Let the write reach its WAIT first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        for _ in 0..5 {
            let r = gw.get_with_key("/tyk-api-test/get", Some("reader")).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        (start.elapsed(), Instant::now())
    };
    let ((written, write_done), (took, reads_done)) = tokio::join!(write, reads);
    assert_eq!(
        written.status,
        503,
        "no replica confirmed: {}",
        written.text()
    );
    assert!(
        reads_done < write_done,
        "the reads ran while the write waited"
    );
    assert!(
        took < Duration::from_millis(500),
        "5 keyed requests took {took:?} behind a waiting write"
    );
}

/// Waits until a Sentinel-mode node lists the seed layout's two replicas: it is ready once it
/// has the master, and its replica links follow right after.
async fn wait_for_replicas(gw: &TestGateway) {
    let start = Instant::now();
    loop {
        let hello = gw
            .client
            .request("GET", &gw.url("/hello"), &[], None)
            .await
            .json();
        assert_eq!(hello["details"]["redis"]["mode"], "sentinel");
        let replicas = hello["details"]["redis"]["replicas"]
            .as_array()
            .unwrap()
            .len();
        if replicas == 2 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "replicas in /hello: {hello}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replica_without_the_key_is_not_taken_for_missing_while_another_has_it() {
    // No failover: the master is frozen for less than down-after.
    let layout = SeedLayout::builder().down_after(30_000).start().await;
    let up = upstream().await;
    let writer = node(&up.url(""), sentinel(&layout)).await;
    let id = writer.add_key("lagging", seed_key()).await.json()["key_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = format!("apikey-{id}");
    for replica in &layout.redis[1..] {
        while replica.get(&record).await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // One replica behind the other: it lacks the key.
    let behind = layout.redis[1].port;
    support::redis::cmd(behind, &["CONFIG", "SET", "replica-read-only", "no"])
        .await
        .unwrap();
    support::redis::cmd(behind, &["DEL", &record])
        .await
        .unwrap();

    // A node that asks the store on every request reads the key from the replicas, each in
    // turn, while the master is away.
    let mut config = sentinel(&layout);
    config["local_session_cache"] = json!({"cached_session_timeout": 0});
    let reader = node(&up.url(""), config).await;
    wait_for_replicas(&reader).await;
    layout.redis[0].freeze(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..8 {
        let r = reader
            .get_with_key("/tyk-api-test/get", Some("lagging"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn seed_layout_survives_a_frozen_master_in_both_modes() {
    let layout = SeedLayout::builder().start().await;
    let up = upstream().await;
    let via_haproxy = node(&up.url(""), direct(layout.haproxy.port)).await;
    let via_sentinel = node(&up.url(""), sentinel(&layout)).await;
    wait_for_replicas(&via_sentinel).await;

    via_sentinel.add_key("known", seed_key()).await;
    for gw in [&via_haproxy, &via_sentinel] {
        assert_eq!(
            gw.get_with_key("/tyk-api-test/get", Some("known"))
                .await
                .status,
            200
        );
    }
    let old_master = layout.master_index().await.unwrap();
    let old_port = layout.redis[old_master].port;

    // A node that never saw the key: Sentinel mode reads it from a replica.
    let fresh = node(&up.url(""), sentinel(&layout)).await;
    layout.redis[old_master].freeze(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = fresh.get_with_key("/tyk-api-test/get", Some("known")).await;
    assert_eq!(
        r.status,
        200,
        "replica read of an uncached key: {}",
        r.text()
    );

    let start = Instant::now();
    let mut promoted_at = None;
    let mut ready_after_promotion = None;
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(14) {
        for gw in [&via_haproxy, &via_sentinel, &fresh] {
            let r = gw.get_with_key("/tyk-api-test/get", Some("known")).await;
            assert_eq!(r.status, 200, "at {:?}: {}", start.elapsed(), r.text());
            sent += 1;
        }
        if promoted_at.is_none()
            && layout
                .sentinel_master_port()
                .await
                .is_some_and(|p| p != old_port)
        {
            promoted_at = Some(Instant::now());
        }
        if let (Some(at), None) = (promoted_at, ready_after_promotion)
            && via_sentinel
                .client
                .request("GET", &via_sentinel.url("/ready"), &[], None)
                .await
                .status
                == 200
        {
            ready_after_promotion = Some(at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent > 100);
    promoted_at.expect("Sentinel promoted a replica");
    let ready = ready_after_promotion.expect("ready after the promotion");
    eprintln!("ready {ready:?} after the promotion; {sent} keyed requests, all 200");
    assert!(
        ready < Duration::from_secs(1),
        "ready {ready:?} after the promotion"
    );

    // Writes go to the new master, in both modes.
    for (name, gw) in [("haproxy", &via_haproxy), ("sentinel", &via_sentinel)] {
        let start = Instant::now();
        loop {
            let r = gw
                .admin("POST", &format!("/tyk/keys/after-{name}"), Some(seed_key()))
                .await;
            if r.status == 200 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name}: {}",
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The returning old master may still call itself master until Sentinel demotes it, so
    // ask Sentinel which one is.
    let new_port = layout.sentinel_master_port().await.unwrap();
    assert_ne!(new_port, old_port);
    let new_master = layout.redis.iter().find(|r| r.port == new_port).unwrap();
    for name in ["after-sentinel", "after-haproxy"] {
        let id = via_sentinel.key_id(name);
        assert!(
            new_master.get(&format!("apikey-{id}")).await.is_some(),
            "{name} is on the new master"
        );
    }

    // Every node follows changes on the new master: one written there by another program
    // (no Tyk notification) is honoured by all within a second, well inside the default
    // 10 s `cached_session_timeout`.
    for gw in [&via_haproxy, &via_sentinel, &fresh] {
        eventually_status(gw, "after-sentinel", 200, Duration::from_secs(1)).await;
    }
    let id = via_sentinel.key_id("after-sentinel");
    let mut inactive = seed_key();
    inactive["is_inactive"] = json!(true);
    support::redis::cmd(
        new_port,
        &["SET", &format!("apikey-{id}"), &inactive.to_string()],
    )
    .await
    .unwrap();
    for gw in [&via_haproxy, &via_sentinel, &fresh] {
        eventually_status(gw, "after-sentinel", 403, Duration::from_secs(1)).await;
    }

    // The nodes resubscribed on the new master: a delete through one is honoured by another
    // that holds the key in its cache, within a second.
    assert_eq!(
        fresh
            .get_with_key("/tyk-api-test/get", Some("known"))
            .await
            .status,
        200
    );
    assert_eq!(
        via_sentinel
            .admin("DELETE", "/tyk/keys/known", None)
            .await
            .status,
        200
    );
    eventually_status(&fresh, "known", 403, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_write_to_a_demoted_master_is_never_acknowledged() {
    let redis = RedisServer::start().await;
    let other = RedisServer::start().await;
    let up = upstream().await;
    let gw = node(&up.url(""), direct(redis.port)).await;
    gw.add_key("before", seed_key()).await;

    // The server the gateway holds a connection to becomes a read-only replica, as a
    // demoted master does behind HAProxy.
    support::redis::cmd(
        redis.port,
        &["REPLICAOF", "127.0.0.1", &other.port.to_string()],
    )
    .await
    .unwrap();
    let r = gw.admin("POST", "/tyk/keys/after", Some(seed_key())).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let hello = gw
        .client
        .request("GET", &gw.url("/hello"), &[], None)
        .await
        .json();
    let last_error = hello["details"]["redis"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last_error.to_lowercase().contains("readonly")
            || last_error.contains("slave")
            || last_error.contains("replica"),
        "{hello}"
    );
    assert!(
        other
            .get(&format!("apikey-{}", gw.key_id("after")))
            .await
            .is_none()
    );
    assert_eq!(
        gw.client
            .request("GET", &gw.url("/ready"), &[], None)
            .await
            .status,
        503,
        "no master reachable"
    );
}

#[tokio::test]
async fn revalidating_an_unchanged_record_reuses_the_cached_one() {
    let redis = RedisServer::start().await;
    let mut config = direct(redis.port);
    // Every read revalidates with Redis.
    config["local_session_cache"] = json!({"cached_session_timeout": 0});
    let config = tollgate::config::GatewayConfig::from_value(config, |_| None)
        .unwrap()
        .config;
    let store = tollgate::store::open(&config).await.unwrap();
    let session: tollgate::session::SessionState = serde_json::from_value(seed_key()).unwrap();
    store.set("k1", &session, None).await.unwrap();

    let first = store.access("k1").await.unwrap().unwrap().access;
    let again = store.access("k1").await.unwrap().unwrap().access;
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "an unchanged record is not decoded again"
    );

    // A change made behind the node's back (no notification) is read at revalidation.
    let mut changed = seed_key();
    changed["is_inactive"] = json!(true);
    support::redis::cmd(redis.port, &["SET", "apikey-k1", &changed.to_string()])
        .await
        .unwrap();
    let read = store.access("k1").await.unwrap().unwrap();
    assert!(read.access.is_inactive);
    support::redis::cmd(redis.port, &["DEL", "apikey-k1"])
        .await
        .unwrap();
    assert!(store.access("k1").await.unwrap().is_none());
}

/// GET commands the Redis server has run so far (those of scripts included).
async fn redis_gets(port: u16) -> u64 {
    let info: String = redis::from_redis_value(
        support::redis::cmd(port, &["INFO", "commandstats"])
            .await
            .unwrap(),
    )
    .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_change_made_in_redis_itself_reaches_the_cache_at_once() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["local_session_cache"] = json!({"cached_session_timeout": 3600});
    let gw = node(&up.url(""), config).await;
    let hash = gw.add_key("watched", seed_key()).await.json()["key_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = format!("apikey-{hash}");
    eventually_status(&gw, "watched", 200, Duration::from_secs(1)).await;

    // Written by another program: no Tyk notification, only Redis's own report.
    let mut inactive = seed_key();
    inactive["is_inactive"] = json!(true);
    support::redis::cmd(redis.port, &["SET", &record, &inactive.to_string()])
        .await
        .unwrap();
    eventually_status(&gw, "watched", 403, Duration::from_secs(1)).await;
    support::redis::cmd(redis.port, &["SET", &record, &seed_key().to_string()])
        .await
        .unwrap();
    eventually_status(&gw, "watched", 200, Duration::from_secs(1)).await;
    support::redis::cmd(redis.port, &["FLUSHALL"])
        .await
        .unwrap();
    eventually_status(&gw, "watched", 403, Duration::from_secs(1)).await;

    // The node's following connection (its one RESP3 client) is closed: it comes back, and
    // changes are followed again.
    support::redis::cmd(redis.port, &["SET", &record, &seed_key().to_string()])
        .await
        .unwrap();
    let clients: String = redis::from_redis_value(
        support::redis::cmd(redis.port, &["CLIENT", "LIST"])
            .await
            .unwrap(),
    )
    .unwrap();
    let follower = clients
        .lines()
        .find(|l| l.contains(" resp=3"))
        .and_then(|l| l.strip_prefix("id="))
        .and_then(|l| l.split(' ').next())
        .expect("a RESP3 client")
        .to_owned();
    support::redis::cmd(redis.port, &["CLIENT", "KILL", "ID", &follower])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually_status(&gw, "watched", 200, Duration::from_secs(1)).await;
    support::redis::cmd(redis.port, &["SET", &record, &inactive.to_string()])
        .await
        .unwrap();
    eventually_status(&gw, "watched", 403, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_followed_session_is_not_read_again_after_the_cache_timeout() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["local_session_cache"] = json!({"cached_session_timeout": 1});
    let followed = node(&up.url(""), config.clone()).await;
    config["local_session_cache"]["follow_changes"] = json!(false);
    let timed = node(&up.url(""), config).await;
    // No limits: their script's GETs would count too.
    let mut unlimited = seed_key();
    unlimited["rate"] = json!(0);
    unlimited["quota_max"] = json!(-1);
    followed.add_key("watched", unlimited).await;

    for gw in [&followed, &timed] {
        eventually_status(gw, "watched", 200, Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = redis_gets(redis.port).await;
    eventually_status(&followed, "watched", 200, Duration::ZERO).await;
    assert_eq!(
        redis_gets(redis.port).await,
        before,
        "still current: no read"
    );
    eventually_status(&timed, "watched", 200, Duration::ZERO).await;
    assert_eq!(
        redis_gets(redis.port).await,
        before + 1,
        "past cached_session_timeout without following: read again"
    );
}

#[tokio::test]
async fn a_record_that_cannot_be_read_is_refused_and_named_never_an_outage() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let gw = node(&up.url(""), uncached(redis.port)).await;
    let r = gw.admin("POST", "/tyk/keys/typed", Some(seed_key())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = format!("apikey-{}", gw.key_id("typed"));
    let overwrite = |field: &str, value: Value| {
        let mut record = seed_key();
        record[field] = value;
        let (port, id) = (redis.port, id.clone());
        async move {
            support::redis::cmd(port, &["SET", &id, &record.to_string()])
                .await
                .unwrap();
        }
    };

    // A field requests do not read: the key keeps working; the whole record is refused.
    // (`tags` is read now, for analytics records; `quota_renews` is not.)
    overwrite("quota_renews", json!("soon")).await;
    eventually_status(&gw, "typed", 200, Duration::from_secs(1)).await;
    let r = gw.admin("GET", "/tyk/keys/typed", None).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("quota_renews: invalid type"),
        "{}",
        r.text()
    );

    // A field they read: the key is refused, with 403 rather than an outage's 503.
    overwrite("rate", json!("fast")).await;
    eventually_status(&gw, "typed", 403, Duration::from_secs(1)).await;
    let r = gw.admin("GET", "/tyk/keys/typed", None).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("rate: invalid type"), "{}", r.text());
}

/// `direct` with `use_ssl` and the TLS settings in `tls` merged into `storage`.
fn over_tls(port: u16, tls: Value) -> Value {
    let mut config = direct(port);
    config["storage"]["use_ssl"] = json!(true);
    support::merge(&mut config, json!({ "storage": tls }));
    config
}

/// `gw` answers a request with `key` (which it created, when `create`) with 200.
async fn serves(gw: &TestGateway, key: &str, create: bool) {
    if create {
        gw.add_key(key, seed_key()).await;
    }
    let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `gw`'s store turned it down (credentials, certificates): requests with `key` and key writes
/// answer 503, the store's error naming `why`; never a key error.
async fn store_refused(gw: &TestGateway, key: &str, why: &str) {
    let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = gw
        .admin("POST", "/tyk/keys/other-key", Some(seed_key()))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(why), "{}", r.text());
}

#[tokio::test]
async fn a_tls_redis_with_a_private_ca_and_client_certificates_serves_keys() {
    let redis = TlsRedisServer::start(true).await;
    let up = upstream().await;
    let tls = json!({
        "ca_file": redis.file("ca.crt"),
        "cert_file": redis.file("client.crt"),
        "key_file": redis.file("client.key"),
    });
    let gw = node(&up.url(""), over_tls(redis.port, tls.clone())).await;
    serves(&gw, "tls-key", true).await;
    // A second node reads the key over its own TLS connections.
    let other = node(&up.url(""), over_tls(redis.port, tls)).await;
    serves(&other, "tls-key", false).await;
}

#[tokio::test]
async fn a_tls_redis_is_refused_unless_its_certificate_verifies_or_checks_are_skipped() {
    let redis = TlsRedisServer::start(false).await;
    let up = upstream().await;
    // Its CA is in neither the system's roots nor the configuration: no connection.
    let untrusted = node(&up.url(""), over_tls(redis.port, json!({}))).await;
    store_refused(&untrusted, "tls-key", "UnknownIssuer").await;
    let skipping = node(
        &up.url(""),
        over_tls(redis.port, json!({"ssl_insecure_skip_verify": true})),
    )
    .await;
    serves(&skipping, "tls-key", true).await;
}

#[tokio::test]
async fn unusable_tls_files_are_configuration_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    // PEM blocks whose contents are not base64.
    let bad_cert = dir.path().join("bad-cert.pem");
    std::fs::write(
        &bad_cert,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_key = dir.path().join("bad-key.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (tls, field) in [
        (json!({"ca_file": missing}), "storage.ca_file"),
        (json!({"ca_file": not_pem}), "storage.ca_file"),
        (json!({"ca_file": bad_cert}), "storage.ca_file"),
        (
            json!({"cert_file": not_pem, "key_file": not_pem}),
            "storage.cert_file",
        ),
        (
            json!({"ca_file": bad_cert, "cert_file": bad_cert, "key_file": bad_key}),
            "storage.ca_file",
        ),
        (
            json!({"cert_file": bad_cert, "key_file": bad_key}),
            "storage.cert_file, storage.key_file",
        ),
    ] {
        let mut config = over_tls(1, tls.clone());
        config["app_path"] = json!(dir.path());
        config["secret"] = json!("s");
        let loaded = tollgate::config::GatewayConfig::from_value(config, |_| None).unwrap();
        loaded.config.validate().unwrap();
        let err = tollgate::store::open(&loaded.config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{tls} was accepted"));
        assert!(err.to_string().starts_with(field), "{tls}: {err}");
    }
}

#[tokio::test]
async fn redis_acl_credentials_are_used_and_wrong_ones_are_an_outage() {
    let redis = RedisServer::start().await;
    for args in [
        &[
            "ACL", "SETUSER", "tollgate", "on", ">s3cret", "~*", "&*", "+@all",
        ][..],
        &["ACL", "SETUSER", "default", "off"],
    ] {
        support::redis::cmd(redis.port, args).await.unwrap();
    }
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["storage"]["username"] = json!("tollgate");
    config["storage"]["password"] = json!("s3cret");
    let gw = node(&up.url(""), config.clone()).await;
    serves(&gw, "acl-key", true).await;
    config["storage"]["password"] = json!("wrong");
    let refused = node(&up.url(""), config).await;
    store_refused(&refused, "acl-key", "authentication failed").await;
}

#[tokio::test]
async fn sentinel_password_is_used_to_ask_the_sentinels() {
    let layout = SeedLayout::builder().start().await;
    for s in &layout.sentinels {
        support::redis::cmd(s.port, &["ACL", "SETUSER", "default", ">sentinel-pw"])
            .await
            .unwrap();
    }
    let up = upstream().await;
    let mut config = sentinel(&layout);
    config["storage"]["sentinel_password"] = json!("sentinel-pw");
    let gw = node(&up.url(""), config.clone()).await;
    serves(&gw, "sentinel-key", true).await;
    // Without it the sentinels name no master.
    config["storage"]["sentinel_password"] = json!("");
    let refused = node(&up.url(""), config).await;
    store_refused(&refused, "sentinel-key", "NOAUTH").await;
}

#[tokio::test]
async fn an_unknown_key_is_remembered_briefly_and_forgotten_once_written() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let gw = node(&up.url(""), direct(redis.port)).await;
    let before = redis_gets(redis.port).await;
    for _ in 0..50 {
        let r = gw.get_with_key("/tyk-api-test/get", Some("notyet")).await;
        assert_eq!(r.status, 403);
    }
    // Two forms of the key are looked for (its token, then itself), each once per
    // MISSING_FOR and epoch; the node's start of following changes is a new epoch.
    let reads = redis_gets(redis.port).await - before;
    assert!(
        reads <= 4,
        "50 requests for one unknown key read Redis {reads} times"
    );

    // Written through the node: known at once.
    gw.add_key("notyet", seed_key()).await;
    let r = gw.get_with_key("/tyk-api-test/get", Some("notyet")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Written by another program (as a Tyk node would): known as soon as Redis reports it,
    // well within the time an unknown key is remembered.
    let r = gw.get_with_key("/tyk-api-test/get", Some("bytyk")).await;
    assert_eq!(r.status, 403);
    let hash = format!(
        "{:08x}",
        murmur3::murmur3_32(&mut "bytyk".as_bytes(), 0).unwrap()
    );
    support::redis::cmd(
        redis.port,
        &["SET", &format!("apikey-{hash}"), &seed_key().to_string()],
    )
    .await
    .unwrap();
    let took = eventually_status(&gw, "bytyk", 200, Duration::from_secs(1)).await;
    assert!(took < tollgate::store::cache::MISSING_FOR);
}

#[tokio::test]
async fn idle_connections_outlive_the_seeds_haproxy_timeouts() {
    let redis = RedisServer::start().await;
    let haproxy = support::redis::haproxy_in_front(std::slice::from_ref(&redis)).await;
    let up = upstream().await;
    let gw = node(&up.url(""), uncached(haproxy.port)).await;
    gw.add_key("idle", seed_key()).await;
    // Over two of HAProxy's 6 s idle timeouts with no request at all.
    tokio::time::sleep(Duration::from_secs(14)).await;
    for i in 0..20 {
        let r = gw.get_with_key("/tyk-api-test/get", Some("idle")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let hello = gw
        .client
        .request("GET", &gw.url("/hello"), &[], None)
        .await
        .json();
    assert_eq!(
        hello["details"]["redis"]["last_error"],
        Value::Null,
        "no connection was lost: {hello}"
    );
}

/// The seed's flow with a change just before the failover: `testkey` used, updated with
/// `PUT`, then the master frozen. The writing node keeps what it wrote and confirmed, and
/// another node, told of the change, reads it again at once: on both the key stays known,
/// as changed, while nothing can read it (through HAProxy, only the master answers).
#[tokio::test]
async fn a_key_updated_just_before_the_master_freezes_stays_known_on_every_node() {
    let layout = SeedLayout::builder().down_after(5000).start().await;
    let up = upstream().await;
    let writer = node(&up.url(""), direct(layout.haproxy.port)).await;
    let other = node(&up.url(""), direct(layout.haproxy.port)).await;
    writer.add_key("testkey", seed_key()).await;
    for gw in [&writer, &other] {
        eventually_status(gw, "testkey", 200, Duration::from_secs(5)).await;
    }
    let mut changed = seed_key();
    changed["quota_max"] = json!(2000);
    let r = writer
        .admin("PUT", "/tyk/keys/testkey", Some(changed))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    layout.redis[0].freeze(6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..12 {
        for (name, gw) in [("writer", &writer), ("other", &other)] {
            let r = gw.get_with_key("/tyk-api-test/get", Some("testkey")).await;
            assert_eq!(
                r.status,
                200,
                "{name}, request {i} during the freeze: {}",
                r.text()
            );
            assert_eq!(
                r.header("x-ratelimit-limit"),
                Some("2000"),
                "{name}: the changed key"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn force_global_session_lifetime_sets_every_records_ttl() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["force_global_session_lifetime"] = json!(true);
    config["global_session_lifetime"] = json!(100);
    let gw = node(&up.url(""), config).await;
    let mut key = seed_key();
    key["session_lifetime"] = json!(5000);
    gw.add_key("lifetime", key).await;
    let ttl: i64 = redis::from_redis_value(
        support::redis::cmd(
            redis.port,
            &["TTL", &format!("apikey-{}", gw.key_id("lifetime"))],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(
        (90..=100).contains(&ttl),
        "the global lifetime wins over the key's: {ttl}"
    );
}

#[tokio::test]
async fn a_keys_own_session_lifetime_sets_its_ttl_unless_forced() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["global_session_lifetime"] = json!(100);
    let gw = node(&up.url(""), config).await;
    let mut key = seed_key();
    key["session_lifetime"] = json!(5000);
    gw.add_key("ownlifetime", key).await;
    let ttl: i64 = redis::from_redis_value(
        support::redis::cmd(
            redis.port,
            &["TTL", &format!("apikey-{}", gw.key_id("ownlifetime"))],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(
        (4990..=5000).contains(&ttl),
        "not forced, the key's own lifetime wins over the global one: {ttl}"
    );
}

#[tokio::test]
async fn records_go_to_storage_database_and_live_as_long_as_the_apis_session_lifetime() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut config = direct(redis.port);
    config["storage"]["database"] = json!(3);
    let mut api = sample_api(&up.url(""));
    api["session_lifetime"] = json!(700);
    let gw = gateway().api(api).config(config).start().await;
    gw.add_key("apilifetime", seed_key()).await;
    let record = format!("apikey-{}", gw.key_id("apilifetime"));
    let ttl_in = |db: &'static str| {
        let record = record.clone();
        async move {
            let script = "redis.call('SELECT', ARGV[1]); return redis.call('TTL', KEYS[1])";
            let ttl = support::redis::cmd(redis.port, &["EVAL", script, "1", &record, db])
                .await
                .unwrap();
            redis::from_redis_value::<i64>(ttl).unwrap()
        }
    };
    assert_eq!(ttl_in("0").await, -2, "nothing in database 0");
    let ttl = ttl_in("3").await;
    assert!(
        (690..=700).contains(&ttl),
        "the key has no lifetime of its own: the API's: {ttl}"
    );
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("apilifetime"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_tls_sentinel_is_followed_over_tls() {
    let redis = TlsRedisServer::start(false).await;
    let sentinel = redis.sentinel().await;
    let up = upstream().await;
    let config = json!({"storage": {
        "type": "redis", "addrs": [format!("127.0.0.1:{}", sentinel.port)], "master_name": "mymaster",
        "timeout": 2, "use_ssl": true, "ca_file": redis.file("ca.crt"),
    }});
    let gw = node(&up.url(""), config).await;
    serves(&gw, "overtls", true).await;
    // The node listens for `+switch-master` on the sentinel: over TLS, as the sentinel
    // speaks nothing else (the subscription was made over plain TCP before, and failed).
    let started = Instant::now();
    loop {
        let reply = sentinel.cmd(&["CLIENT", "LIST"]).await.unwrap();
        let clients = support::redis::text(&reply);
        if clients.lines().any(|l| l.contains(" sub=1 ")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no subscriber: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
