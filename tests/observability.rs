//! What the node shows of itself: `/metrics` in Prometheus's text format, read by
//! Prometheus's own parser, counting real requests through the gateway.

mod support;

use serde_json::json;

use support::redis::RedisServer;
use support::{free_port, gateway, sample_api, scrape, seed_key, upstream};

#[tokio::test]
async fn metrics_count_responses_refusals_latency_and_upstream_errors_by_api() {
    let up = upstream().await;
    let mut dead = sample_api(&format!("http://127.0.0.1:{}", free_port()));
    dead["api_id"] = json!("dead");
    dead["proxy"]["listen_path"] = json!("/dead/");
    dead["use_keyless"] = json!(true);
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(dead)
        .start()
        .await;
    gw.add_key("metricskey", seed_key()).await;
    for _ in 0..3 {
        let r = gw
            .get_with_key("/tyk-api-test/get", Some("metricskey"))
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("nokey"))
            .await
            .status,
        403
    );
    assert_eq!(gw.get_with_key("/nowhere", None).await.status, 404);
    assert_eq!(gw.get_with_key("/dead/get", None).await.status, 502);

    let m = scrape(&gw.url("/metrics")).await;
    let requests = |api: &str, code: &str| {
        m.value(
            "tollgate_requests_total",
            &[("api_id", api), ("code", code)],
        )
    };
    assert_eq!(requests("1", "200"), Some(3.0), "{}", m.text);
    assert_eq!(requests("1", "401"), Some(1.0));
    assert_eq!(requests("1", "403"), Some(1.0));
    assert_eq!(requests("", "404"), Some(1.0), "an unrouted request");
    assert_eq!(requests("dead", "502"), Some(1.0));
    assert_eq!(
        m.value(
            "tollgate_requests_total",
            &[("api_id", "1"), ("class", "4xx")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "tollgate_refusals_total",
            &[("api_id", "1"), ("reason", "auth")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "tollgate_refusals_total",
            &[("api_id", ""), ("reason", "no_api")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "tollgate_upstream_errors_total",
            &[("api_id", "dead"), ("kind", "unreachable")]
        ),
        Some(1.0)
    );
    assert_eq!(m.families["tollgate_request_duration_seconds"], "histogram");
    assert_eq!(
        m.value(
            "tollgate_request_duration_seconds_count",
            &[("api_id", "1")]
        ),
        Some(5.0)
    );
    assert_eq!(
        m.value(
            "tollgate_request_duration_seconds_bucket",
            &[("api_id", "1"), ("le", "+Inf")]
        ),
        Some(5.0)
    );
    assert_eq!(
        m.value(
            "tollgate_upstream_duration_seconds_count",
            &[("api_id", "1")]
        ),
        Some(3.0),
        "only requests sent upstream"
    );
    assert_eq!(m.value("tollgate_apis_loaded", &[]), Some(2.0));
    assert!(m.value("tollgate_connections_open", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        m.labels("tollgate_store_info")
            .and_then(|l| l["mode"].as_str()),
        Some("memory")
    );
    assert!(m.value("tollgate_build_info", &[]).is_some());
    // Labels never carry a path or a key.
    assert!(!m.text.contains("metricskey") && !m.text.contains("nowhere"));
}

#[tokio::test]
async fn metrics_show_the_redis_store_and_the_session_cache() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port}}))
        .start()
        .await;
    gw.add_key("cachedkey", seed_key()).await;
    for _ in 0..4 {
        let r = gw
            .get_with_key("/tyk-api-test/get", Some("cachedkey"))
            .await;
        assert_eq!(r.status, 200);
    }
    let m = scrape(&gw.url("/metrics")).await;
    let info = m.labels("tollgate_store_info").expect("store info");
    assert_eq!(info["mode"], "redis", "{}", m.text);
    assert_eq!(info["master"], format!("127.0.0.1:{}", redis.port));
    assert_eq!(m.value("tollgate_store_reachable", &[]), Some(1.0));
    let hits = m.value("tollgate_session_cache_hits_total", &[]).unwrap();
    let misses = m.value("tollgate_session_cache_misses_total", &[]).unwrap();
    assert_eq!(hits + misses, 4.0, "{}", m.text);
    assert!(hits >= 3.0, "the key is read once, then cached: {}", m.text);
    assert_eq!(m.value("tollgate_session_cache_entries", &[]), Some(1.0));
    assert!(m.value("tollgate_store_round_trips_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        m.value("tollgate_store_master_changes_total", &[]),
        Some(0.0)
    );
}
