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
    // A connection that has sent nothing holds only its socket: it is counted parked.
    let silent = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();

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
    assert!(m.value("tollgate_connections_open", &[]).unwrap_or(0.0) >= 2.0);
    assert!(m.value("tollgate_connections_parked", &[]).unwrap_or(0.0) >= 1.0);
    drop(silent);
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

/// The lines of the access log at `path`, once `count` of them are written.
async fn access_lines(path: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{} of {count} access log lines: {text}",
            lines.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn access_logs_write_a_json_line_per_request_with_its_id_and_never_the_key() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut api = sample_api(&up.url(""));
    let version = &mut api["version_data"]["versions"]["Default"];
    version["use_extended_paths"] = json!(true);
    version["extended_paths"] = json!({"url_rewrites": [{"path": "/old", "method": "GET",
        "match_pattern": "/old", "rewrite_to": "/anything/new"}]});
    let gw = gateway()
        .api(api)
        .config(json!({"access_logs": {"enabled": true, "path": path}}))
        .start()
        .await;
    gw.add_key("loggedkey", seed_key()).await;
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/get"),
            &[
                ("authorization", "loggedkey"),
                ("x-request-id", "client-chosen-1"),
                ("user-agent", "probe/2"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("client-chosen-1"));
    assert_eq!(
        r.json()["headers"]["X-Request-Id"],
        "client-chosen-1",
        "passed upstream"
    );
    let r = gw
        .get_with_key("/tyk-api-test/old", Some("loggedkey"))
        .await;
    let generated = r.header("x-request-id").expect("an id").to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    assert_eq!(r.json()["headers"]["X-Request-Id"], generated.as_str());
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);

    let lines = access_lines(&path, 3).await;
    let first = &lines[0];
    assert_eq!(first["prefix"], "access-log");
    assert_eq!(first["api_id"], "1");
    assert_eq!(first["api_name"], "Tyk Test API");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/tyk-api-test/get");
    assert_eq!(first["request_id"], "client-chosen-1");
    assert_eq!(first["user_agent"], "probe/2");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["api_key"], gw.key_id("loggedkey"), "the key's hash");
    assert!(
        first["upstream_addr"].as_str().unwrap().ends_with("/get"),
        "{first}"
    );
    assert!(first["latency_total"].as_u64().is_some());
    let rewritten = &lines[1];
    assert_eq!(rewritten["original_path"], "/tyk-api-test/old");
    assert_eq!(rewritten["path"], "/anything/new");
    assert_eq!(rewritten["request_id"], generated.as_str());
    assert_eq!(lines[2]["status"], 401);
    assert!(lines[2].get("api_key").is_none());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("loggedkey"), "{text}");
}

#[tokio::test]
async fn an_access_log_template_picks_the_fields_and_unhashed_keys_are_obfuscated() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(
            json!({"hash_keys": false, "access_logs": {"enabled": true, "path": path,
            "template": ["api_key", "status", "path"]}}),
        )
        .start()
        .await;
    gw.add_key("plainkey9876", seed_key()).await;
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("plainkey9876"))
        .await;
    assert_eq!(r.status, 200);
    let lines = access_lines(&path, 1).await;
    let line = lines[0].as_object().unwrap();
    let mut names: Vec<&str> = line.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["api_key", "level", "path", "prefix", "status", "time"]
    );
    assert_eq!(line["api_key"], "****9876", "Tyk's obfuscation");
}

/// The records on a Redis list, decoded as Tyk Pump decodes them (with Python's msgpack,
/// checked field by field against Pump's struct by `decode_analytics.py`).
async fn pump_records(port: u16, list: &str) -> Vec<serde_json::Value> {
    let raw = support::redis::cmd(port, &["LRANGE", list, "0", "-1"])
        .await
        .expect("LRANGE");
    let redis::Value::Array(items) = raw else {
        panic!("not a list: {raw:?}")
    };
    let hex: Vec<String> = items
        .iter()
        .map(|item| match item {
            redis::Value::BulkString(bytes) => hex::encode(bytes),
            other => panic!("not a record: {other:?}"),
        })
        .collect();
    let out = support::run_fixture("decode_analytics.py", hex.join("\n").as_bytes()).await;
    assert!(
        out.status.success(),
        "Pump could not decode a record: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[tokio::test]
async fn analytics_records_reach_redis_as_tyk_pump_decodes_them() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    // The seed's definition turns analytics off for itself.
    api["do_not_track"] = json!(false);
    api["tags"] = json!(["edge"]);
    let version = &mut api["version_data"]["versions"]["Default"];
    version["use_extended_paths"] = json!(true);
    version["extended_paths"] = json!({
        "track_endpoints": [{"path": "/anything/{id}", "method": "GET"}],
        "do_not_track_endpoints": [{"path": "/anything/private", "method": "GET"}]});
    let mut quiet = sample_api(&up.url(""));
    quiet["api_id"] = json!("quiet");
    quiet["proxy"]["listen_path"] = json!("/quiet/");
    quiet["use_keyless"] = json!(true);
    quiet["do_not_track"] = json!(true);
    let gw = gateway()
        .api(api)
        .api(quiet)
        .config(json!({"enable_analytics": true,
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port},
            "analytics_config": {"enable_detailed_recording": true, "storage_expiration_time": 120}}))
        .start()
        .await;
    let mut key = seed_key();
    key["tags"] = json!(["gold"]);
    key["alias"] = json!("ann");
    gw.add_key("pumpkey", key).await;
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/get?x=1"),
            &[("authorization", "pumpkey"), ("user-agent", "probe/3")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);
    assert_eq!(gw.get_with_key("/quiet/get", None).await.status, 200);
    let tracked = gw
        .get_with_key("/tyk-api-test/anything/42", Some("pumpkey"))
        .await;
    assert_eq!(tracked.status, 200);
    let private = gw
        .get_with_key("/tyk-api-test/anything/private", Some("pumpkey"))
        .await;
    assert_eq!(private.status, 200);

    let list = tollgate::analytics::ANALYTICS_KEY;
    let start = std::time::Instant::now();
    let records = loop {
        let records = pump_records(redis.port, list).await;
        if records.len() >= 3 {
            break records;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{records:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        records.len(),
        3,
        "do_not_track leaves the quiet API out, do_not_track_endpoints the private one: {records:?}"
    );
    let ok = &records[0];
    assert_eq!(ok["ResponseCode"], 200);
    assert_eq!(ok["Method"], "GET");
    assert_eq!(ok["Path"], "/tyk-api-test/get");
    assert_eq!(ok["APIID"], "1");
    assert_eq!(ok["APIName"], "Tyk Test API");
    assert_eq!(ok["OrgID"], "default");
    assert_eq!(ok["APIVersion"], "Non Versioned");
    assert_eq!(ok["APIKey"], gw.key_id("pumpkey"), "hashed as Tyk does");
    assert_eq!(ok["UserAgent"], "probe/3");
    assert_eq!(ok["IPAddress"], "127.0.0.1");
    assert_eq!(ok["ListenPath"], "/tyk-api-test/");
    assert_eq!(ok["Alias"], "ann");
    assert_eq!(ok["Host"], up.addr.to_string());
    let tags: Vec<&str> = ok["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let key_tag = format!("key-{}", gw.key_id("pumpkey"));
    assert_eq!(tags, ["gold", "edge", &key_tag, "org-default", "api-1"]);
    let raw = ok["RawRequest"].as_str().unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&raw).starts_with("GET /tyk-api-test/get?x=1 HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!ok["RawResponse"].as_str().unwrap().is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 60..=now).contains(&ok["TimeStamp"][0].as_i64().unwrap()));
    assert_eq!(ok["TrackPath"], false);
    assert_eq!(records[1]["ResponseCode"], 401);
    assert_eq!(records[1]["APIKey"], "");
    assert_eq!(records[2]["TrackPath"], true, "track_endpoints");
    assert_eq!(records[2]["Path"], "/anything/{id}");
    assert_eq!(records[2]["RawPath"], "/tyk-api-test/anything/42");
    // The list expires if Pump never drains it (storage_expiration_time).
    let ttl = support::redis::cmd(redis.port, &["TTL", list])
        .await
        .unwrap();
    assert!(
        matches!(ttl, redis::Value::Int(t) if t > 0 && t <= 120),
        "{ttl:?}"
    );
    let m = scrape(&gw.url("/metrics")).await;
    assert_eq!(
        m.value("tollgate_analytics_records_written_total", &[]),
        Some(3.0)
    );
}

#[tokio::test]
async fn analytics_never_hold_a_request_while_redis_is_away_and_count_what_is_dropped() {
    let mut redis = RedisServer::start().await;
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    api["do_not_track"] = json!(false);
    let gw = gateway()
        .api(api)
        .config(json!({"enable_analytics": true,
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port, "timeout": 1}}))
        .start()
        .await;
    redis.kill();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 200);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "requests waited for analytics: {:?}",
        started.elapsed()
    );
    let start = std::time::Instant::now();
    loop {
        let m = scrape(&gw.url("/metrics")).await;
        let dropped = m
            .value("tollgate_analytics_records_dropped_total", &[])
            .unwrap_or(0.0);
        if dropped >= 20.0 {
            assert_eq!(
                m.value("tollgate_analytics_records_written_total", &[]),
                Some(0.0)
            );
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            m.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A real OTLP receiver (`otlp_receiver.py`, the OpenTelemetry project's own protobuf
/// package), speaking `mode` on a free port; yields the spans it receives.
struct OtlpReceiver {
    port: u16,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl OtlpReceiver {
    async fn start(mode: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let port = free_port();
        let script = format!(
            "{}/tests/fixtures/otlp_receiver.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut child = tokio::process::Command::new("python3")
            .args([&script, mode, &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver starts")
            .unwrap();
        assert_eq!(first.as_deref(), Some("listening"));
        Self {
            port,
            lines,
            _child: child,
        }
    }

    /// The spans of `trace_id`, once `count` of them arrived.
    async fn spans(&mut self, trace_id: &str, count: usize) -> Vec<serde_json::Value> {
        let mut spans = Vec::new();
        while spans.len() < count {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(15), self.lines.next_line())
                    .await
                    .unwrap_or_else(|_| panic!("{} of {count} spans: {spans:?}", spans.len()))
                    .unwrap()
                    .expect("the receiver runs");
            let span: serde_json::Value = serde_json::from_str(&line).unwrap();
            if span["trace_id"] == trace_id {
                spans.push(span);
            }
        }
        spans
    }
}

/// One traced request through a gateway exporting with `mode`, its `opentelemetry` settings
/// made by `settings` from the basic ones, checked span by span at the receiver.
async fn traced_request(mode: &str, settings: impl FnOnce(serde_json::Value) -> serde_json::Value) {
    let mut receiver = OtlpReceiver::start(mode).await;
    let up = upstream().await;
    let otel = settings(json!({"enabled": true, "exporter": mode,
        "endpoint": format!("127.0.0.1:{}", receiver.port), "resource_name": "tollgate-test",
        "headers": {"x-tenant": "t1"}}));
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({ "opentelemetry": otel,
            "access_logs": {"enabled": true, "path": access_log, "template": ["trace_id"]}}))
        .start()
        .await;
    gw.add_key("tracedkey", seed_key()).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let parent = format!("00-{trace_id}-{client_span}-01");
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/get"),
            &[("authorization", "tracedkey"), ("traceparent", &parent)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let upstream_saw = r.json()["headers"]["Traceparent"]
        .as_str()
        .expect("a traceparent upstream")
        .to_owned();
    let parts: Vec<&str> = upstream_saw.split('-').collect();
    assert_eq!(
        parts[1], trace_id,
        "the client's trace goes on: {upstream_saw}"
    );
    assert_ne!(parts[2], client_span);
    let lines = access_lines(&access_log, 1).await;
    assert_eq!(
        lines[0]["trace_id"], trace_id,
        "the access log names the trace"
    );

    let spans = receiver.spans(trace_id, 4).await;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:?}"))
    };
    let request = named("GET Tyk Test API");
    assert_eq!(request["service"], "tollgate-test");
    assert_eq!(
        request["export_headers"]["x-tenant"], "t1",
        "opentelemetry.headers sent with the export"
    );
    assert_eq!(
        request["parent_span_id"], client_span,
        "a child of the client's span"
    );
    assert_eq!(request["kind"], 2, "SERVER");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    assert_eq!(request["attributes"]["tyk.api.id"], "1");
    let request_id = request["span_id"].as_str().unwrap();
    for step in ["key lookup", "rate limit and quota"] {
        assert_eq!(named(step)["parent_span_id"], request_id, "{step}");
    }
    let upstream_span = named("upstream");
    assert_eq!(upstream_span["kind"], 3, "CLIENT");
    assert_eq!(upstream_span["parent_span_id"], request_id);
    assert_eq!(
        upstream_span["span_id"], parts[2],
        "the upstream got the call's context"
    );
}

#[tokio::test]
async fn traces_continue_the_clients_traceparent_and_reach_an_otlp_http_receiver() {
    traced_request("http", |mut otel| {
        otel["span_batch_config"] = json!({"batch_timeout": 1});
        otel
    })
    .await;
}

#[tokio::test]
async fn traces_reach_an_otlp_grpc_receiver_span_by_span() {
    // Tyk 5.14's form: the settings inside `traces`.
    traced_request("grpc", |mut traces| {
        traces["span_processor_type"] = json!("simple");
        json!({ "enabled": false, "traces": traces })
    })
    .await;
}

#[tokio::test]
async fn sampling_follows_the_clients_decision_when_parent_based() {
    let mut receiver = OtlpReceiver::start("http").await;
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(
            json!({"opentelemetry": {"enabled": true, "exporter": "http",
            "endpoint": format!("127.0.0.1:{}", receiver.port),
            "span_batch_config": {"batch_timeout": 1},
            "sampling": {"type": "AlwaysOff", "parent_based": true}}}),
        )
        .start()
        .await;
    gw.add_key("sampledkey", seed_key()).await;
    let upstream_flags = |traceparent: Option<String>| {
        let gw = &gw;
        async move {
            let mut headers = vec![("authorization", "sampledkey".to_owned())];
            headers.extend(traceparent.map(|t| ("traceparent", t)));
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = gw
                .client
                .request("GET", &gw.url("/tyk-api-test/get"), &headers, None)
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let sent = r.json()["headers"]["Traceparent"]
                .as_str()
                .unwrap()
                .to_owned();
            sent.rsplit('-').next().unwrap().to_owned()
        }
    };
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(
        upstream_flags(Some(format!("00-{unsampled}-b7ad6b7169203331-00"))).await,
        "00",
        "the client's decision not to sample is kept"
    );
    assert_eq!(upstream_flags(None).await, "00", "a new trace: AlwaysOff");
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(
        upstream_flags(Some(format!("00-{sampled}-00f067aa0ba902b7-01"))).await,
        "01",
        "the client's decision to sample is followed"
    );
    // The sampled trace's spans arrive; the receiver's first span is of that trace, so nothing
    // of the two unsampled requests was exported before it.
    let spans = receiver.spans(sampled, 4).await;
    assert!(spans.iter().all(|s| s["trace_id"] == sampled));
}

#[tokio::test]
async fn spans_beyond_the_queue_or_not_taken_by_the_receiver_are_dropped_and_counted() {
    // A receiver that accepts connections and never answers: every export times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(
            json!({"opentelemetry": {"enabled": true, "exporter": "http",
            "endpoint": endpoint.to_string(), "connection_timeout": 1,
            "span_batch_config": {"max_queue_size": 4, "max_export_batch_size": 4,
                                  "batch_timeout": 1}}}),
        )
        .start()
        .await;
    gw.add_key("droppedkey", seed_key()).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let r = gw
            .get_with_key("/tyk-api-test/get", Some("droppedkey"))
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "requests waited for the exporter: {:?}",
        started.elapsed()
    );
    // Four spans per request (the request, key lookup, limits, upstream): 16 past the queue's
    // four places at once, then the four queued once their export times out (1 s).
    let dropped = |m: &support::Scrape| {
        m.value("tollgate_trace_spans_dropped_total", &[])
            .unwrap_or(0.0)
    };
    let m = scrape(&gw.url("/metrics")).await;
    assert!(dropped(&m) >= 16.0, "{}", m.text);
    let start = std::time::Instant::now();
    loop {
        let m = scrape(&gw.url("/metrics")).await;
        if dropped(&m) == 20.0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{}",
            m.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    held.abort();
}

#[tokio::test]
async fn multiple_analytics_keys_spread_records_over_ten_lists() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    api["do_not_track"] = json!(false);
    let gw = gateway()
        .api(api)
        .config(json!({"enable_analytics": true,
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port},
            "analytics_config": {"enable_multiple_analytics_keys": true}}))
        .start()
        .await;
    let list = tollgate::analytics::ANALYTICS_KEY;
    let mut lists = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    let mut recorded = 0;
    // Two rounds, each its own batch: each batch goes to the next of the ten lists.
    for _ in 0..2 {
        for _ in 0..3 {
            assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 200);
        }
        recorded += 3;
        loop {
            let mut total = 0;
            for n in 0..10 {
                let name = format!("{list}_{n}");
                let found = pump_records(redis.port, &name).await.len();
                if found > 0 {
                    lists.insert(name);
                }
                total += found;
            }
            if total == recorded {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{total} of {recorded}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(lists.len(), 2, "two batches, two lists: {lists:?}");
    assert!(
        pump_records(redis.port, list).await.is_empty(),
        "not the single list"
    );
}

#[tokio::test]
async fn analytics_settings_of_an_api_and_ignored_client_addresses() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut detailed = sample_api(&up.url(""));
    detailed["use_keyless"] = json!(true);
    detailed["do_not_track"] = json!(false);
    detailed["enable_detailed_recording"] = json!(true);
    detailed["expire_analytics_after"] = json!(3600);
    let mut plain = detailed.clone();
    plain["api_id"] = json!("plain");
    plain["proxy"]["listen_path"] = json!("/plain/");
    plain["enable_detailed_recording"] = json!(false);
    plain["expire_analytics_after"] = json!(0);
    let gw = gateway()
        .api(detailed)
        .api(plain)
        .config(json!({"enable_analytics": true,
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port},
            "analytics_config": {"ignored_ips": ["10.1.2.3"]}}))
        .start()
        .await;
    let from = |ip: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .client
                .request("GET", &gw.url(path), &[("x-real-ip", ip)], None)
                .await;
            assert_eq!(r.status, 200);
        }
    };
    from("10.1.2.3", "/tyk-api-test/get").await;
    from("10.9.9.9", "/tyk-api-test/get").await;
    from("10.9.9.9", "/plain/get").await;
    let list = tollgate::analytics::ANALYTICS_KEY;
    let start = std::time::Instant::now();
    let records = loop {
        let records = pump_records(redis.port, list).await;
        if records.len() >= 2 {
            break records;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{records:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), 2, "10.1.2.3 is ignored: {records:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires_in = |r: &serde_json::Value| r["ExpireAt"][0].as_i64().unwrap() - now;
    let (detailed, plain) = (&records[0], &records[1]);
    assert_eq!(detailed["IPAddress"], "10.9.9.9");
    assert_eq!(detailed["APIID"], "1");
    assert!(
        !detailed["RawRequest"].as_str().unwrap().is_empty(),
        "the API's own enable_detailed_recording"
    );
    assert!(
        (3500..=3600).contains(&expires_in(detailed)),
        "expire_analytics_after: {detailed:?}"
    );
    assert_eq!(plain["APIID"], "plain");
    assert_eq!(plain["RawRequest"], "", "not detailed");
    assert!(
        expires_in(plain) > 99 * 365 * 24 * 3600,
        "0 keeps a record 100 years, as Tyk: {plain:?}"
    );
}

#[tokio::test]
async fn records_past_records_buffer_size_are_dropped_while_the_writer_waits() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    api["do_not_track"] = json!(false);
    let gw = gateway()
        .api(api)
        .config(json!({"enable_analytics": true,
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port, "timeout": 10},
            "analytics_config": {"records_buffer_size": 2}}))
        .start()
        .await;
    let figures = |m: &support::Scrape| {
        (
            m.value("tollgate_analytics_records_written_total", &[]),
            m.value("tollgate_analytics_records_dropped_total", &[]),
        )
    };
    redis.freeze(2);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 200);
    // The writer takes that record, waits its 200 ms for more, then waits on frozen Redis.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 200);
    }
    let m = scrape(&gw.url("/metrics")).await;
    assert_eq!(
        figures(&m),
        (Some(0.0), Some(8.0)),
        "two records wait, eight are dropped"
    );
    // Once Redis answers, the first batch is written; the two waiting records are written
    // too, or dropped if the store is still marked away when the writer tries them.
    let start = std::time::Instant::now();
    loop {
        let m = scrape(&gw.url("/metrics")).await;
        if let (Some(written), Some(dropped)) = figures(&m)
            && written >= 1.0
            && written + dropped == 11.0
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            m.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A real Prometheus server (Debian's `prometheus`) scraping the node every second.
struct PrometheusServer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/test installs it)");
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    /// The value of an instant query, once it has one.
    async fn value(&self, client: &support::http::Client, query: &str) -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            query
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        );
        use http_body_util::BodyExt;
        let empty = http_body_util::Full::new(bytes::Bytes::new()).boxed();
        let r = client.try_send("GET", &url, &[], empty).await.ok()?;
        let answer = r.json();
        let first = answer["data"]["result"].get(0)?;
        first["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_server_scrapes_the_node() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("scrapedkey", seed_key()).await;
    for _ in 0..3 {
        let r = gw
            .get_with_key("/tyk-api-test/get", Some("scrapedkey"))
            .await;
        assert_eq!(r.status, 200);
    }
    let prometheus = PrometheusServer::start(gw.addr());
    let start = std::time::Instant::now();
    loop {
        let up = prometheus.value(&gw.client, "up{job=\"tollgate\"}").await;
        let served = prometheus
            .value(
                &gw.client,
                "tollgate_requests_total{api_id=\"1\",code=\"200\"}",
            )
            .await;
        if up == Some(1.0) && served == Some(3.0) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "up {up:?}, requests {served:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
