//! Tyk's per-endpoint and API-wide middleware through the gateway to the built-in upstream,
//! whose echo shows what arrived: header transforms with Tyk's variables, URL rewrites with
//! triggers, method transforms, hard timeouts, body size limits, circuit breakers, CORS (in a
//! real browser too), IP lists, `strip_auth_data` and batch requests.

mod support;

use serde_json::{Value, json};

use support::{gateway, sample_api, seed_key, upstream};

/// The seed's API (keyed, not versioned) with `settings` merged into its one version.
fn api_with(target: &str, settings: Value) -> Value {
    let mut api = sample_api(target);
    let version = &mut api["version_data"]["versions"]["Default"];
    for (k, v) in settings.as_object().unwrap() {
        version[k] = v.clone();
    }
    version["use_extended_paths"] = json!(true);
    api
}

fn key_with_meta() -> Value {
    let mut key = seed_key();
    key["meta_data"] = json!({"tier": "gold", "user_id": 42});
    key
}

#[tokio::test]
async fn header_transforms_edit_requests_and_responses_with_tyks_variables() {
    let up = upstream().await;
    let mut api = api_with(
        &up.url(""),
        json!({
            "global_headers": {"x-global": "on", "x-tier": "$tyk_meta.tier"},
            "global_headers_remove": ["x-drop-everywhere"],
            "global_response_headers": {"x-served-by": "tollgate", "x-user": "$tyk_meta.user_id"},
            "global_response_headers_remove": ["x-upstream-secret"],
            "extended_paths": {
                "transform_headers": [{"path": "/anything/edited", "method": "GET",
                    "delete_headers": ["x-drop-here"],
                    "add_headers": {"x-path": "$tyk_context.path", "x-global": "endpoint",
                        "x-agent": "$tyk_context.headers_User_Agent"}}],
                "transform_response_headers": [{"path": "/response-headers", "method": "GET",
                    "delete_headers": ["x-remove-me"],
                    "add_headers": {"x-added": "yes"}}],
            },
        }),
    );
    api["enable_context_vars"] = json!(true);
    let gw = gateway().api(api).start().await;
    gw.add_key("metakey", key_with_meta()).await;
    let headers = [
        ("authorization", "metakey"),
        ("x-drop-everywhere", "1"),
        ("x-drop-here", "1"),
        ("user-agent", "tester/1"),
    ];

    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/anything/edited"),
            &headers,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["X-Tier"], "gold", "{seen}");
    assert_eq!(
        seen["X-Global"], "endpoint",
        "the endpoint's edit comes last"
    );
    assert_eq!(seen["X-Path"], "/tyk-api-test/anything/edited");
    assert_eq!(seen["X-Agent"], "tester/1");
    assert!(seen.get("X-Drop-Everywhere").is_none(), "{seen}");
    assert!(seen.get("X-Drop-Here").is_none(), "{seen}");
    assert_eq!(r.header("x-served-by"), Some("tollgate"));
    assert_eq!(r.header("x-user"), Some("42"));

    // Elsewhere only the version's edits apply.
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/anything/other"),
            &headers,
            None,
        )
        .await;
    let seen = &r.json()["headers"];
    assert_eq!(seen["X-Global"], "on");
    assert_eq!(seen["X-Drop-Here"], "1");
    assert!(seen.get("X-Path").is_none());

    // The response's edits: the endpoint's, then the version's, over what the upstream sent.
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/response-headers?x-remove-me=1&x-upstream-secret=s&x-kept=1"),
            &headers,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-kept"), Some("1"));
    assert_eq!(r.header("x-remove-me"), None);
    assert_eq!(r.header("x-upstream-secret"), None);
    assert_eq!(r.header("x-added"), Some("yes"));
    assert_eq!(r.header("x-served-by"), Some("tollgate"));
}

#[tokio::test]
async fn url_rewrites_change_what_the_upstream_gets_with_groups_and_triggers() {
    let up = upstream().await;
    let other = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({"extended_paths": {"url_rewrites": [
                {"path": "/old/{id}", "method": "GET",
                 "match_pattern": "/old/(\\w+)", "rewrite_to": "/anything/new/$1?from=old",
                 "triggers": [{"on": "all",
                    "options": {"header_matches": {"x-tier": {"match_rx": "^(gold)$"}},
                                "query_val_matches": {"region": {"match_rx": "eu"}}},
                    "rewrite_to": "/anything/$tyk_context.trigger-0-X-Tier-0-0/$1"}]},
                {"path": "/elsewhere", "method": "GET",
                 "match_pattern": "/elsewhere", "rewrite_to": format!("{}/anything/moved", other.url(""))},
                {"path": "/escape", "method": "GET",
                 "match_pattern": "/escape\\?to=(.*)", "rewrite_to": "/anything/$1"},
            ]}}),
        ))
        .start()
        .await;
    gw.add_key("rewritekey", seed_key()).await;
    let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let gw = &gw;
        async move {
            let mut all = vec![("authorization", "rewritekey")];
            all.extend(headers);
            gw.client.request("GET", &gw.url(path), &all, None).await
        }
    };
    let url = |r: &support::http::TestResponse| r.json()["url"].as_str().unwrap_or("").to_owned();

    let r = get("/tyk-api-test/old/ann?region=us", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        url(&r).ends_with("/anything/new/ann?from=old"),
        "{}",
        url(&r)
    );
    let r = get("/tyk-api-test/old/ann?region=eu", vec![("x-tier", "gold")]).await;
    assert!(url(&r).ends_with("/anything/gold/ann"), "{}", url(&r));
    // A rewrite to another host goes there.
    let r = get("/tyk-api-test/elsewhere", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(url(&r), other.url("/anything/moved"));
    // What a rewrite makes has its dot segments resolved, as a client's path has.
    let r = get("/tyk-api-test/escape?to=a/../b", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(url(&r).ends_with("/anything/b"), "{}", url(&r));
}

#[tokio::test]
async fn method_transforms_hard_timeouts_and_size_limits() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({
                "global_size_limit": 1000,
                "extended_paths": {
                    "method_transforms": [{"path": "/anything/as-put", "method": "POST",
                        "to_method": "PUT"}],
                    "hard_timeouts": [{"path": "/delay/{n}", "method": "GET", "timeout": 1}],
                    "size_limits": [{"path": "/anything/small", "method": "POST",
                        "size_limit": 10}],
                }
            }),
        ))
        .start()
        .await;
    gw.add_key("limitkey", seed_key()).await;
    let auth = [("authorization", "limitkey")];
    let post = |path: &'static str, body: Vec<u8>| {
        let gw = &gw;
        async move {
            gw.client
                .request("POST", &gw.url(path), &auth, Some(body))
                .await
        }
    };

    let r = post("/tyk-api-test/anything/as-put", b"x".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "PUT");

    let started = std::time::Instant::now();
    let r = gw
        .get_with_key("/tyk-api-test/delay/3", Some("limitkey"))
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "Upstream service reached hard timeout."})
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    assert_eq!(
        post("/tyk-api-test/anything/small", vec![b'a'; 10])
            .await
            .status,
        200
    );
    let r = post("/tyk-api-test/anything/small", vec![b'a'; 11]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "Request is too large"}));
    let r = post("/tyk-api-test/anything/big", vec![b'a'; 1001]).await;
    assert_eq!(r.status, 400, "global_size_limit");
    assert_eq!(
        post("/tyk-api-test/anything/big", vec![b'a'; 1000])
            .await
            .status,
        200
    );
    // Refused before auth, as Tyk's size check runs first.
    let r = gw
        .client
        .request(
            "POST",
            &gw.url("/tyk-api-test/anything/big"),
            &[],
            Some(vec![b'a'; 1001]),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_bad_transform_is_a_load_error_naming_it() {
    let up = upstream().await;
    let cases = [
        (
            json!({"extended_paths": {"url_rewrites": [{"path": "/a", "method": "GET",
                "match_pattern": "(", "rewrite_to": "/b"}]}}),
            "version_data.versions.Default.extended_paths.url_rewrites[0].match_pattern",
        ),
        (
            json!({"global_headers": {"bad header": "x"}}),
            "version_data.versions.Default.global_headers.bad header",
        ),
        (
            json!({"extended_paths": {"method_transforms": [{"path": "/a", "method": "GET",
                "to_method": "NOT A METHOD"}]}}),
            "version_data.versions.Default.extended_paths.method_transforms[0].to_method",
        ),
    ];
    for (settings, field) in cases {
        let gw = gateway().api(api_with(&up.url(""), settings)).start().await;
        let hello = gw.hello().await.to_string();
        assert!(hello.contains(field), "{field}: {hello}");
        assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 404);
    }
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_responses_refusals_included() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["CORS"] = json!({"enable": true, "allowed_origins": ["https://*.example.com"],
        "allowed_methods": ["GET", "POST"], "allowed_headers": ["Authorization", "Content-Type"],
        "exposed_headers": ["X-Ratelimit-Remaining"], "max_age": 300});
    let gw = gateway().api(api).start().await;
    gw.add_key("corskey", seed_key()).await;
    let origin = ("origin", "https://app.example.com");

    // A preflight needs no key: the gateway answers it.
    let r = gw
        .client
        .request(
            "OPTIONS",
            &gw.url("/tyk-api-test/get"),
            &[
                origin,
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    // From an origin not listed: 204 without the allow headers, and nothing proxied.
    let r = gw
        .client
        .request(
            "OPTIONS",
            &gw.url("/tyk-api-test/get"),
            &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "GET"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The actual request, and a refused one, carry the allow headers.
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/get"),
            &[origin, ("authorization", "corskey")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Ratelimit-Remaining")
    );
    let r = gw
        .client
        .request("GET", &gw.url("/tyk-api-test/get"), &[origin], None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn ip_lists_admit_and_refuse_by_address_and_range() {
    let up = upstream().await;
    let with_lists = |id: &str, path: &str, lists: Value| {
        let mut api = sample_api(&up.url(""));
        api["api_id"] = json!(id);
        api["use_keyless"] = json!(true);
        api["proxy"]["listen_path"] = json!(path);
        for (k, v) in lists.as_object().unwrap() {
            api[k] = v.clone();
        }
        api
    };
    let gw = gateway()
        .api(with_lists(
            "allowed",
            "/allowed/",
            json!({"enable_ip_whitelisting": true, "allowed_ips": ["127.0.0.0/8", "::1"]}),
        ))
        .api(with_lists(
            "elsewhere",
            "/elsewhere/",
            json!({"enable_ip_whitelisting": true, "allowed_ips": ["10.0.0.0/8"]}),
        ))
        .api(with_lists(
            "blocked",
            "/blocked/",
            json!({"enable_ip_blacklisting": true, "blacklisted_ips": ["127.0.0.1"]}),
        ))
        .start()
        .await;
    assert_eq!(gw.get_with_key("/allowed/get", None).await.status, 200);
    let r = gw.get_with_key("/elsewhere/get", None).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "access from this IP has been disallowed"})
    );
    assert_eq!(gw.get_with_key("/blocked/get", None).await.status, 403);
    // As Tyk, the address X-Forwarded-For (or X-Real-IP) names is the one checked: lists only
    // hold behind a proxy that sets it.
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/elsewhere/get"),
            &[("x-forwarded-for", "10.1.2.3, 127.0.0.1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn strip_auth_data_keeps_the_key_from_the_upstream() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["strip_auth_data"] = json!(true);
    api["auth"]["use_param"] = json!(true);
    api["auth"]["param_name"] = json!("api_key");
    api["proxy"]["disable_strip_slash"] = json!(true);
    let gw = gateway().api(api).start().await;
    gw.add_key("stripkey", seed_key()).await;
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/anything/x?api_key=stripkey&keep=1"),
            &[("cookie", "authorization=stripkey; other=1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert!(
        seen["url"]
            .as_str()
            .unwrap()
            .ends_with("/anything/x?keep=1"),
        "{seen}"
    );
    assert_eq!(seen["headers"]["Cookie"], "other=1");
    let r = gw
        .get_with_key("/tyk-api-test/anything/y", Some("stripkey"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("Authorization").is_none());
}

const BROWSER_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/cors_browser.py"
);

/// Headless Chromium on a page of another origin fetches through the gateway with a key
/// (so it sends a preflight first): what CORS allows, the page can read; what it does not,
/// the browser refuses.
#[tokio::test]
async fn a_real_browser_on_another_origin_is_let_through_by_cors() {
    let up = upstream().await;
    let api = |id: &str, path: &str, cors: Value| {
        let mut api = sample_api(&up.url(""));
        api["api_id"] = json!(id);
        api["proxy"]["listen_path"] = json!(path);
        api["CORS"] = cors;
        api
    };
    let gw = gateway()
        .api(api(
            "1",
            "/tyk-api-test/",
            json!({"enable": true, "allowed_origins": ["http://127.0.0.1:*"],
                "allowed_headers": ["Authorization"]}),
        ))
        .api(api("2", "/no-cors/", json!({"enable": false})))
        .api(api(
            "3",
            "/other-origin/",
            json!({"enable": true, "allowed_origins": ["https://app.example.com"],
                "allowed_headers": ["Authorization"]}),
        ))
        .start()
        .await;
    let mut key = seed_key();
    for id in ["2", "3"] {
        let mut access = key["access_rights"]["1"].clone();
        access["api_id"] = json!(id);
        key["access_rights"][id] = access;
    }
    gw.add_key("browserkey", key).await;
    let (allowed, no_cors, other) = (
        gw.url("/tyk-api-test/get"),
        gw.url("/no-cors/get"),
        gw.url("/other-origin/get"),
    );
    let out = tokio::process::Command::new("python3")
        .args([BROWSER_FIXTURE, "browserkey", &allowed, &no_cors, &other])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .expect("the browser finished")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the fixture's JSON");
    let results = &report["results"];
    assert_eq!(results[&allowed]["status"], 200, "{report}");
    let body: Value = serde_json::from_str(results[&allowed]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["headers"]["Authorization"], "browserkey", "{body}");
    for refused in [&no_cors, &other] {
        let error = results[refused]["error"].as_str().unwrap_or_default();
        assert!(error.contains("Failed to fetch"), "{refused}: {report}");
    }
}

#[tokio::test]
async fn a_circuit_breaker_opens_on_failures_and_returns_to_service() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({"extended_paths": {"circuit_breakers": [{"path": "/status/{code}",
                "method": "GET", "threshold_percent": 0.5, "samples": 4,
                "return_to_service_after": 2, "disable_half_open_state": true}]}}),
        ))
        .start()
        .await;
    gw.add_key("breakerkey", seed_key()).await;
    let key = Some("breakerkey");
    for _ in 0..4 {
        let r = gw.get_with_key("/tyk-api-test/status/500", key).await;
        assert_eq!(r.status, 500, "the upstream's own answer while closed");
    }
    // Open: refused without reaching the upstream, whatever it would say.
    let r = gw.get_with_key("/tyk-api-test/status/200", key).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "Service temporarily unavailable."})
    );
    // Other endpoints are not behind it.
    assert_eq!(gw.get_with_key("/tyk-api-test/get", key).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        gw.get_with_key("/tyk-api-test/status/200", key)
            .await
            .status,
        200,
        "back in service after return_to_service_after"
    );
}

#[tokio::test]
async fn validate_json_refuses_bodies_against_the_schema_before_the_upstream() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({"extended_paths": {"validate_json": [{"path": "/anything/people",
                "method": "POST", "schema": {"type": "object",
                    "properties": {"name": {"type": "string"}}, "required": ["name"]}}]}}),
        ))
        .start()
        .await;
    gw.add_key("jsonkey", seed_key()).await;
    let post = |body: &'static [u8]| {
        let gw = &gw;
        async move {
            gw.client
                .request(
                    "POST",
                    &gw.url("/tyk-api-test/anything/people"),
                    &[
                        ("authorization", "jsonkey"),
                        ("content-type", "application/json"),
                    ],
                    Some(body.to_vec()),
                )
                .await
        }
    };
    let r = post(br#"{"name": "ann"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["json"]["name"], "ann", "the body arrives whole");
    let r = post(br#"{"name": 5}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.starts_with("name: "), "{error}");
    let r = post(b"{}").await;
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("(root): ")
    );
    let r = post(b"not json").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("JSON parsing error: ")
    );
}

#[tokio::test]
async fn batch_requests_answer_each_request_as_a_client_sending_it_alone() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["enable_batch_request_support"] = json!(true);
    let mut unbatched = sample_api(&up.url(""));
    unbatched["api_id"] = json!("2");
    unbatched["proxy"]["listen_path"] = json!("/unbatched/");
    let gw = gateway().api(api).api(unbatched).start().await;
    let mut key = seed_key();
    key["rate"] = json!(2);
    key["allowance"] = json!(2);
    gw.add_key("batchkey", key).await;
    let batch = json!({"requests": [
        {"method": "GET", "relative_url": "get?n=1", "headers": {"authorization": "batchkey"}},
        {"method": "POST", "relative_url": "post", "body": "hello",
            "headers": {"authorization": "batchkey", "content-type": "text/plain"}},
        {"method": "GET", "relative_url": "get?n=3", "headers": {"authorization": "batchkey"}},
        {"method": "GET", "relative_url": "get", "headers": {}},
        {"method": "POST", "relative_url": "tyk/batch/", "body": "{}",
            "headers": {"authorization": "batchkey"}},
    ], "suppress_parallel_execution": true});
    let batch_url = gw.url("/tyk-api-test/tyk/batch/");
    let post_batch = |body: Vec<u8>| gw.client.request("POST", &batch_url, &[], Some(body));
    let body = batch.to_string();
    let r = gw
        .client
        .request(
            "POST",
            &gw.url("/tyk-api-test/tyk/batch/"),
            &[("content-type", "application/json")],
            Some(body.clone().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let replies = r.json();
    let replies = replies.as_array().expect("an array of replies");
    assert_eq!(replies.len(), 5, "{replies:?}");
    let codes: Vec<_> = replies
        .iter()
        .map(|r| r["code"].as_u64().unwrap())
        .collect();
    // The key's rate (2 a minute) counts each request; the unkeyed one and the nested batch
    // are refused on their own.
    assert_eq!(codes, [200, 200, 429, 401, 400], "{replies:?}");
    assert_eq!(replies[0]["relative_url"], "get?n=1");
    assert_eq!(
        replies[0]["headers"]["Content-Type"],
        json!(["application/json"])
    );
    let echoed: Value = serde_json::from_str(replies[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["args"]["n"], "1");
    assert_eq!(echoed["headers"]["Authorization"], "batchkey");
    let posted: Value = serde_json::from_str(replies[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(posted["data"], "hello");
    assert_eq!(posted["headers"]["Content-Length"], "5");
    let unkeyed: Value = serde_json::from_str(replies[3]["body"].as_str().unwrap()).unwrap();
    assert_eq!(unkeyed["error"], "Authorization field missing");
    let nested: Value = serde_json::from_str(replies[4]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        nested["message"],
        "Batch requests cannot hold batch requests"
    );

    // Run together (the default), the answers still come in the order of the requests.
    gw.add_key("batchkey2", seed_key()).await;
    let together = json!({"requests": (0..10).map(|n| json!({
        "method": "GET", "relative_url": format!("get?n={n}"),
        "headers": {"authorization": "batchkey2"}})).collect::<Vec<_>>()});
    let r = post_batch(together.to_string().into_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (n, reply) in r.json().as_array().unwrap().iter().enumerate() {
        assert_eq!(reply["code"], 200, "{reply}");
        assert_eq!(reply["relative_url"], format!("get?n={n}"));
    }

    // Refusals, in Tyk's Gateway API shape.
    let r = post_batch(b"{not json".to_vec()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"status": "error", "message": "Batch request malformed"})
    );
    let bad_url = json!({"requests": [{"method": "GET", "relative_url": "a b"}]}).to_string();
    let r = post_batch(bad_url.into_bytes()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "Batch request creation failed , request structure malformed"
    );
    let too_many = json!({"requests": vec![json!({"relative_url": "get"}); 65]}).to_string();
    let r = post_batch(too_many.into_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = gw
        .client
        .request("GET", &gw.url("/tyk-api-test/tyk/batch/"), &[], None)
        .await;
    assert_eq!(r.status, 405, "{}", r.text());
    let huge = vec![b' '; 2 * 1024 * 1024];
    let r = post_batch(huge).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // Without `enable_batch_request_support` the path is the API's like any other.
    let r = gw
        .client
        .request(
            "POST",
            &gw.url("/unbatched/tyk/batch/"),
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn the_disabled_switches_turn_their_settings_off() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({
                "global_headers": {"x-global": "on"}, "global_headers_disabled": true,
                "global_response_headers": {"x-served-by": "tollgate"},
                "global_response_headers_disabled": true,
                "global_size_limit": 4, "global_size_limit_disabled": true,
                "extended_paths": {
                    "transform_headers": [{"path": "/anything/a", "method": "POST",
                        "add_headers": {"x-endpoint": "1"}, "disabled": true}],
                    "url_rewrites": [{"path": "/anything/a", "method": "POST",
                        "match_pattern": ".*", "rewrite_to": "/anything/rewritten",
                        "disabled": true}],
                },
            }),
        ))
        .start()
        .await;
    gw.add_key("offkey", seed_key()).await;
    let r = gw
        .client
        .request(
            "POST",
            &gw.url("/tyk-api-test/anything/a"),
            &[("authorization", "offkey")],
            Some(b"longer than four".to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "no size limit: {}", r.text());
    let seen = r.json();
    assert!(seen["headers"].get("X-Global").is_none(), "{seen}");
    assert!(seen["headers"].get("X-Endpoint").is_none(), "{seen}");
    assert!(
        seen["url"].as_str().unwrap().ends_with("/anything/a"),
        "{seen}"
    );
    assert_eq!(r.header("x-served-by"), None);
}

#[tokio::test]
async fn with_options_passthrough_a_preflight_goes_through_the_pipeline_to_the_upstream() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["CORS"] = json!({"enable": true, "options_passthrough": true});
    let gw = gateway().api(api).start().await;
    gw.add_key("passkey", seed_key()).await;
    let preflight = |key: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut headers = vec![
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ];
            headers.extend(key.map(|k| ("authorization", k)));
            gw.client
                .request(
                    "OPTIONS",
                    &gw.url("/tyk-api-test/anything/x"),
                    &headers,
                    None,
                )
                .await
        }
    };
    // Not answered by CORS: auth applies, then the upstream answers.
    assert_eq!(preflight(None).await.status, 401);
    let r = preflight(Some("passkey")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(r.header("access-control-allow-methods"), None);
}

#[tokio::test]
async fn xff_depth_picks_which_forwarded_address_the_ip_lists_check() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    api["enable_ip_whitelisting"] = json!(true);
    api["allowed_ips"] = json!(["10.0.0.1"]);
    let first = gateway().api(api.clone()).start().await;
    let last = gateway()
        .api(api)
        .config(json!({"http_server_options": {"xff_depth": 1}}))
        .start()
        .await;
    async fn call(gw: &support::TestGateway, forwarded: &str) -> u16 {
        let headers = [("x-forwarded-for", forwarded)];
        let url = gw.url("/tyk-api-test/get");
        gw.client.request("GET", &url, &headers, None).await.status
    }
    assert_eq!(call(&first, "10.0.0.1, 10.0.0.2").await, 200);
    assert_eq!(call(&first, "10.0.0.2, 10.0.0.1").await, 403);
    assert_eq!(call(&last, "10.0.0.1, 10.0.0.2").await, 403);
    assert_eq!(call(&last, "10.0.0.2, 10.0.0.1").await, 200);
}

#[tokio::test]
async fn the_header_injector_processor_edits_responses_after_the_versions_headers() {
    let up = upstream().await;
    let mut api = api_with(
        &up.url(""),
        json!({"global_response_headers": {"x-layer": "version", "x-version-only": "1"}}),
    );
    api["response_processors"] = json!([
        {"name": "header_injector", "options": {
            "add_headers": {"x-layer": "injector", "x-user": "$tyk_meta.user_id"},
            "remove_headers": ["x-upstream-secret", "x-version-only"]}},
        {"name": "header_transform", "options": {"rev_proxy_header_cleanup": {"headers": ["Location"]}}}
    ]);
    let mut off = api.clone();
    off["api_id"] = json!("off");
    off["proxy"]["listen_path"] = json!("/off/");
    off["use_keyless"] = json!(true);
    off["version_data"]["versions"]["Default"]["global_response_headers_disabled"] = json!(true);
    let gw = gateway().api(api).api(off).start().await;
    gw.add_key("metakey", key_with_meta()).await;
    let call = |prefix: &'static str| {
        let gw = &gw;
        async move {
            gw.client
                .request(
                    "GET",
                    &gw.url(&format!(
                        "{prefix}/response-headers?x-upstream-secret=s&x-kept=1"
                    )),
                    &[("authorization", "metakey")],
                    None,
                )
                .await
        }
    };
    let r = call("/tyk-api-test").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-layer"),
        Some("injector"),
        "the processor comes last"
    );
    assert_eq!(r.header("x-user"), Some("42"));
    assert_eq!(r.header("x-version-only"), None, "removed by the processor");
    assert_eq!(r.header("x-upstream-secret"), None);
    assert_eq!(r.header("x-kept"), Some("1"));
    // As in Tyk, a version that turns its response headers off turns the processor off too.
    let r = call("/off").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-layer"), None);
    assert_eq!(r.header("x-version-only"), None);
    assert_eq!(r.header("x-upstream-secret"), Some("s"));
    // The processor tollgate does not run is reported, not ignored.
    let hello = gw.hello().await;
    let unhonoured = hello["details"]["apis"]["unhonoured_fields"]["1"].to_string();
    assert!(
        unhonoured.contains("response_processors[1]: header_transform"),
        "{hello}"
    );
}

#[tokio::test]
async fn payload_triggers_and_form_request_data_read_the_body_which_still_arrives_whole() {
    let up = upstream().await;
    let mut api = api_with(
        &up.url(""),
        json!({"extended_paths": {
            "url_rewrites": [{"path": "/orders", "method": "POST",
                "match_pattern": "/orders(.*)", "rewrite_to": "/anything/orders$1",
                "triggers": [{"on": "any",
                    "options": {"payload_matches": {"match_rx": "\"priority\":\\s*\"(\\w+)\""}},
                    "rewrite_to": "/anything/fast/$tyk_context.trigger-0-payload-0-0"}]}],
            "transform_headers": [{"path": "/anything/signup", "method": "POST",
                "add_headers": {"x-user": "$tyk_context.request_data_user_name",
                    "x-plan": "$tyk_context.request_data_plan"}}]}}),
    );
    api["enable_context_vars"] = json!(true);
    let gw = gateway()
        .api(api)
        .config(json!({"http_server_options": {"max_request_body_size": 4096}}))
        .start()
        .await;
    gw.add_key("bodykey", seed_key()).await;
    let post = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let gw = &gw;
        async move {
            gw.client
                .request(
                    "POST",
                    &gw.url(path),
                    &[("authorization", "bodykey"), ("content-type", content_type)],
                    Some(body),
                )
                .await
        }
    };
    let order = br#"{"priority": "high", "items": [1, 2]}"#.to_vec();
    let r = post("/tyk-api-test/orders", "application/json", order).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert!(
        seen["url"]
            .as_str()
            .unwrap()
            .ends_with("/anything/fast/high"),
        "{seen}"
    );
    assert_eq!(
        seen["json"]["items"],
        json!([1, 2]),
        "the body arrives whole"
    );
    let plain = br#"{"items": []}"#.to_vec();
    let r = post("/tyk-api-test/orders", "application/json", plain).await;
    assert!(
        r.json()["url"]
            .as_str()
            .unwrap()
            .ends_with("/anything/orders")
    );

    // A form's fields, before the query's (Go's r.Form), with `-` read as `_`.
    let form = b"user-name=ann+lee&plan=gold".to_vec();
    let r = post(
        "/tyk-api-test/anything/signup?plan=query",
        "application/x-www-form-urlencoded",
        form,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["X-User"], "ann lee", "{seen}");
    assert_eq!(seen["headers"]["X-Plan"], "gold");
    assert_eq!(
        seen["form"]["plan"], "gold",
        "the form arrives whole: {seen}"
    );
    // Not a form: only the query is read, and the body is not.
    let r = post(
        "/tyk-api-test/anything/signup?plan=query",
        "text/plain",
        b"plan=body".to_vec(),
    )
    .await;
    assert_eq!(r.json()["headers"]["X-Plan"], "query");

    // A body read whole is bounded: past max_request_body_size, 413.
    let mut big = br#"{"priority": "high", "pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 8192));
    big.extend(br#""}"#);
    let r = post("/tyk-api-test/orders", "application/json", big).await;
    assert_eq!(r.status, 413, "{}", r.text());
}
