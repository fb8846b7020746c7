//! What a key may call within an API: `allowed_urls` and versions, as Tyk enforces them.

mod support;

use serde_json::json;

use support::{gateway, sample_api, seed_key, upstream};

#[tokio::test]
async fn a_key_with_allowed_urls_calls_only_those_paths_and_methods() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    let mut key = seed_key();
    key["access_rights"]["1"]["allowed_urls"] = json!([{"url": "/anything/users/{id}$", "methods": ["GET"]}, {"url": "/get", "methods": ["GET", "HEAD"]}]);
    gw.add_key("restricted", key).await;
    let call = |method: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            gw.client
                .request(
                    method,
                    &gw.url(path),
                    &[("authorization", "restricted")],
                    None,
                )
                .await
        }
    };
    assert_eq!(
        call("GET", "/tyk-api-test/anything/users/42").await.status,
        200
    );
    assert_eq!(call("GET", "/tyk-api-test/get").await.status, 200);
    for (method, path) in [
        ("POST", "/tyk-api-test/anything/users/42"),
        ("GET", "/tyk-api-test/anything/users/42/orders"),
        ("GET", "/tyk-api-test/anything/admin"),
        ("DELETE", "/tyk-api-test/get"),
    ] {
        let r = call(method, path).await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(
            r.json(),
            json!({"error": "Access to this resource has been disallowed"})
        );
    }
    // A key without allowed_urls is not restricted.
    gw.add_key("open", seed_key()).await;
    let r = gw
        .client
        .request(
            "DELETE",
            &gw.url("/tyk-api-test/anything/x"),
            &[("authorization", "open")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_gateways_prefix_and_suffix_matching_anchor_allowed_urls() {
    let up = upstream().await;
    let mut key = seed_key();
    key["access_rights"]["1"]["allowed_urls"] = json!([{"url": "/get", "methods": ["GET"]}]);
    let matching = |prefix: bool, suffix: bool| {
        json!({"http_server_options": {
            "enable_path_prefix_matching": prefix, "enable_path_suffix_matching": suffix}})
    };
    let mut gateways = Vec::new();
    for (prefix, suffix) in [(false, false), (true, false), (false, true)] {
        let gw = gateway()
            .api(sample_api(&up.url("")))
            .config(matching(prefix, suffix))
            .start()
            .await;
        gw.add_key("anchored", key.clone()).await;
        gateways.push(gw);
    }
    // Statuses on the gateways: unanchored, prefix matching, suffix matching.
    for (path, statuses) in [
        ("/tyk-api-test/get", [200, 200, 200]),
        ("/tyk-api-test/anything/get", [200, 403, 200]),
        ("/tyk-api-test/anything/get/more", [200, 403, 403]),
    ] {
        for (gw, status) in gateways.iter().zip(statuses) {
            let r = gw.get_with_key(path, Some("anchored")).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
        }
    }
}

fn versioned_api(upstream: &str) -> serde_json::Value {
    let mut api = sample_api(upstream);
    api["definition"] =
        json!({"location": "header", "key": "x-api-version", "strip_versioning_data": true});
    api["version_data"] = json!({
        "not_versioned": false,
        "default_version": "",
        "versions": {
            "v1": {"name": "v1", "expires": "2000-01-01 00:00"},
            "v2": {"name": "v2", "expires": ""},
            "v3": {"name": "v3", "override_target": format!("{upstream}/anything")}
        }
    });
    api
}

#[tokio::test]
async fn versions_answer_as_tyk_does() {
    let up = upstream().await;
    let gw = gateway().api(versioned_api(&up.url(""))).start().await;
    let mut key = seed_key();
    key["access_rights"]["1"]["versions"] = json!(["v1", "v2"]);
    gw.add_key("v2key", key).await;
    let call = |version: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut headers = vec![("authorization", "v2key")];
            if let Some(v) = version {
                headers.push(("x-api-version", v));
            }
            gw.client
                .request("GET", &gw.url("/tyk-api-test/get"), &headers, None)
                .await
        }
    };
    let r = call(Some("v2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("X-Api-Version").is_none(),
        "stripped"
    );
    for (version, message) in [
        (None, "Version information not found"),
        (Some("v9"), "This API version does not seem to exist"),
        (
            Some("v1"),
            "Api Version has expired, please check documentation or contact administrator",
        ),
        (Some("v3"), "Access to this API has been disallowed"),
    ] {
        let r = call(version).await;
        assert_eq!(r.status, 403, "{version:?}: {}", r.text());
        assert_eq!(r.json(), json!({"error": message}), "{version:?}");
    }

    // v3 proxies to its own target.
    let mut key = seed_key();
    key["access_rights"]["1"]["versions"] = json!(["v3"]);
    gw.add_key("v3key", key).await;
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk-api-test/x"),
            &[("authorization", "v3key"), ("x-api-version", "v3")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["url"].as_str().unwrap().ends_with("/anything/x"));
}
