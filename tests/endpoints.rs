//! Tyk's endpoint lists (`extended_paths`: `ignored`, `black_list`, `white_list`, and
//! `method_actions` replies) and routing by `domain` beside listen paths, through the
//! gateway to the built-in upstream.

mod support;

use serde_json::{Value, json};

use support::{gateway, sample_api, seed_key, upstream};

/// The seed's API (keyed, not versioned) with `extended_paths` on its one version.
fn api_with(target: &str, extended_paths: Value) -> Value {
    let mut api = sample_api(target);
    api["version_data"]["versions"]["Default"]["extended_paths"] = extended_paths;
    api
}

#[tokio::test]
async fn ignored_black_listed_and_mocked_endpoints_are_answered_as_tyk_does() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({
                "ignored": [{"path": "/anything/open", "method": "GET"}],
                "black_list": [{"path": "/anything/secret", "method": "", "ignore_case": true}],
                "white_list": [],
            }),
        ))
        .start()
        .await;
    gw.add_key("listkey", seed_key()).await;

    // Ignored: no key needed, and the request reaches the upstream as it was.
    let r = gw
        .get_with_key("/tyk-api-test/anything/open?x=1", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap_or_default().to_owned();
    assert!(url.ends_with("/anything/open?x=1"), "{url}");
    assert_eq!(r.header("x-ratelimit-limit"), None, "no key limits");
    // Only for its method.
    let r = gw
        .client
        .request("POST", &gw.url("/tyk-api-test/anything/open"), &[], None)
        .await;
    assert_eq!(r.status, 401);

    // Black-listed, whatever the key and the case; refused before auth.
    for key in [Some("listkey"), None] {
        let r = gw
            .get_with_key("/tyk-api-test/anything/SECRET/x", key)
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "Requested endpoint is forbidden"})
        );
    }
    // Everything else as before.
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("listkey"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_reply_action_answers_with_its_mock_before_auth() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({"black_list": [{"path": "/users/{id}/card", "method_actions": {
                "GET": {"action": "reply", "code": 202, "data": "{\"mock\": true}",
                    "headers": {"content-type": "application/json", "x-mock": "yes"}},
                "DELETE": {"action": "no_action"},
            }}]}),
        ))
        .start()
        .await;
    let r = gw.get_with_key("/tyk-api-test/users/42/card", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"mock": true}));
    assert_eq!(r.header("x-mock"), Some("yes"));
    // no_action: the black list's refusal; an unnamed method: the entry does not apply.
    let delete = gw
        .client
        .request("DELETE", &gw.url("/tyk-api-test/users/42/card"), &[], None)
        .await;
    assert_eq!(delete.status, 403);
    let put = gw
        .client
        .request("PUT", &gw.url("/tyk-api-test/users/42/card"), &[], None)
        .await;
    assert_eq!(put.status, 401, "on to auth");
}

#[tokio::test]
async fn a_white_list_refuses_everything_it_does_not_name() {
    let up = upstream().await;
    let gw = gateway()
        .api(api_with(
            &up.url(""),
            json!({"white_list": [{"path": "/get", "method": "GET"}]}),
        ))
        .start()
        .await;
    gw.add_key("whitekey", seed_key()).await;
    let key = Some("whitekey");
    assert_eq!(gw.get_with_key("/tyk-api-test/get", key).await.status, 200);
    let r = gw.get_with_key("/tyk-api-test/headers", key).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "Requested endpoint is forbidden"})
    );
    let post = gw
        .client
        .request(
            "POST",
            &gw.url("/tyk-api-test/get"),
            &[("authorization", "whitekey")],
            None,
        )
        .await;
    assert_eq!(post.status, 403);
}

#[tokio::test]
async fn the_gateways_path_matching_settings_apply_to_every_endpoint() {
    let up = upstream().await;
    let api = api_with(
        &up.url(""),
        json!({"black_list": [{"path": "/anything/secret", "method": "GET"}]}),
    );
    let exact = gateway().api(api.clone()).start().await;
    let any_case = gateway()
        .api(api)
        .config(json!({"ignore_endpoint_case": true}))
        .start()
        .await;
    for gw in [&exact, &any_case] {
        gw.add_key("casekey", seed_key()).await;
        let r = gw
            .get_with_key("/tyk-api-test/anything/secret", Some("casekey"))
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let path = "/tyk-api-test/anything/SeCrEt";
    let r = exact.get_with_key(path, Some("casekey")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = any_case.get_with_key(path, Some("casekey")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Listen paths still match exactly.
    let r = any_case
        .get_with_key("/TYK-API-TEST/get", Some("casekey"))
        .await;
    assert_eq!(r.status, 404);

    // Unanchored, as Tyk 5's default, unless prefix and suffix matching anchor the pattern.
    let anchored = gateway()
        .api(api_with(
            &up.url(""),
            json!({"black_list": [{"path": "/anything/secret", "method": "GET"}]}),
        ))
        .config(json!({"http_server_options": {
            "enable_path_prefix_matching": true, "enable_path_suffix_matching": true}}))
        .start()
        .await;
    anchored.add_key("casekey", seed_key()).await;
    for (path, unanchored, both) in [
        ("/tyk-api-test/anything/secret", 403, 403),
        ("/tyk-api-test/anything/x/anything/secret", 403, 200),
        ("/tyk-api-test/anything/secret/more", 403, 200),
    ] {
        let r = exact.get_with_key(path, Some("casekey")).await;
        assert_eq!(r.status, unanchored, "{path}: {}", r.text());
        let r = anchored.get_with_key(path, Some("casekey")).await;
        assert_eq!(r.status, both, "{path}: {}", r.text());
    }
}

#[tokio::test]
async fn a_bad_entry_is_a_load_error_naming_it_and_the_other_apis_load() {
    let up = upstream().await;
    let mut bad = api_with(
        &up.url(""),
        json!({"black_list": [{"path": "/fine"}, {"path": "/broken(", "method": "GET"}]}),
    );
    bad["api_id"] = json!("bad");
    bad["proxy"]["listen_path"] = json!("/bad/");
    let gw = gateway()
        .api(bad)
        .api(sample_api(&up.url("")))
        .start()
        .await;
    let hello = gw.hello().await;
    let report = hello.to_string();
    assert!(
        report.contains("version_data.versions.Default.extended_paths.black_list[1].path"),
        "{hello}"
    );
    assert_eq!(gw.get_with_key("/bad/get", None).await.status, 404);
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);
}

#[tokio::test]
async fn domains_route_before_listen_paths_and_fall_back_to_apis_without_one() {
    let up = upstream().await;
    let other = upstream().await;
    let api = |id: &str, listen_path: &str, domain: &str, target: &str| {
        let mut api = sample_api(target);
        api["api_id"] = json!(id);
        api["use_keyless"] = json!(true);
        api["proxy"]["listen_path"] = json!(listen_path);
        api["domain"] = json!(domain);
        api
    };
    let gw = gateway()
        .config(json!({"enable_custom_domains": true}))
        .api(api(
            "tenants",
            "/svc/",
            "{tenant:[a-z]+}.example.com",
            &up.url("/anything/tenants"),
        ))
        .api(api("plain", "/svc/", "", &other.url("/anything/plain")))
        .api(api(
            "root",
            "/",
            "api.example.com",
            &up.url("/anything/root"),
        ))
        .api({
            let mut loose = api(
                "loose",
                "/loose/",
                "nowhere.example.com",
                &up.url("/anything/loose"),
            );
            loose["domain_disabled"] = json!(true);
            loose
        })
        .start()
        .await;
    let reached = |host: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .client
                .request("GET", &gw.url(path), &[("host", host)], None)
                .await;
            assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
            let url = r.json()["url"].as_str().unwrap_or("").to_owned();
            url.split("/anything/").nth(1).unwrap_or("").to_owned()
        }
    };
    assert_eq!(reached("acme.example.com", "/svc/x").await, "tenants/x");
    assert_eq!(
        reached("ACME.example.com:8080", "/svc/x").await,
        "tenants/x"
    );
    assert_eq!(
        reached("acme1.example.com", "/svc/x").await,
        "plain/x",
        "not the pattern"
    );
    assert_eq!(reached("elsewhere.test", "/svc/x").await, "plain/x");
    // `domain_disabled`: served on any host.
    assert_eq!(reached("elsewhere.test", "/loose/z").await, "loose/z");
    // The longest listen path among the domains that match (both do here); the APIs
    // without one only after.
    assert_eq!(reached("api.example.com", "/other").await, "root/other");
    assert_eq!(reached("api.example.com", "/svc/y").await, "tenants/y");
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/other"),
            &[("host", "elsewhere.test")],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn internal_endpoints_are_refused_and_preflights_pass_the_lists_with_cors() {
    let up = upstream().await;
    let mut api = api_with(
        &up.url(""),
        json!({"white_list": [{"path": "/get", "method": "GET"}],
            "internal": [{"path": "/get/internal", "method": "GET"}]}),
    );
    api["CORS"] = json!({"enable": true});
    let gw = gateway().api(api).start().await;
    gw.add_key("internalkey", seed_key()).await;
    let key = Some("internalkey");
    assert_eq!(gw.get_with_key("/tyk-api-test/get", key).await.status, 200);
    // Only Tyk's looping reaches an internal endpoint; tollgate does not loop.
    let r = gw.get_with_key("/tyk-api-test/get/internal", key).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "Requested endpoint is forbidden"})
    );
    // A preflight for a path the white list does not name is CORS's to answer.
    let r = gw
        .client
        .request(
            "OPTIONS",
            &gw.url("/tyk-api-test/headers"),
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}
