//! The Gateway API under `/tyk/` over real HTTP, with Tyk's routes, statuses and bodies.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use support::{SECRET, gateway, sample_api, seed_key, upstream};

#[tokio::test]
async fn admin_access_needs_the_secret() {
    let gw = gateway().start().await;
    let denied = json!({"status": "error", "message": "Attempted administrative access with invalid or missing key!"});
    for headers in [
        vec![],
        vec![("x-tyk-authorization", "wrong")],
        vec![("x-tyk-authorization", "")],
    ] {
        let r = gw
            .client
            .request("GET", &gw.url("/tyk/keys"), &headers, None)
            .await;
        assert_eq!(r.status, 403);
        assert_eq!(r.json(), denied);
    }
    let r = gw
        .client
        .request(
            "GET",
            &gw.url("/tyk/apis"),
            &[("x-tyk-authorization", SECRET)],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn seed_key_create_then_curl() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    let r = gw
        .admin("POST", "/tyk/keys/testkey", Some(seed_key()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    // Tyk's legacy format (no hash_key_function): the org id, then the name, hashed with
    // murmur32; the raw name works as well.
    assert_eq!(body["key"], "defaulttestkey");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["action"], "added");
    let expected = murmur3::murmur3_32(&mut "defaulttestkey".as_bytes(), 0).unwrap();
    assert_eq!(body["key_hash"], format!("{expected:08x}"));
    for key in ["testkey", "defaulttestkey"] {
        let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
    }
}

#[tokio::test]
async fn key_crud_in_tyk_shapes() {
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"enable_hashed_keys_listing": true}))
        .start()
        .await;
    let r = gw.admin("POST", "/tyk/keys/k1", Some(seed_key())).await;
    assert_eq!(r.status, 400, "shorter than min_token_length");
    let hash = gw.add_key("key1", seed_key()).await.json()["key_hash"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = gw.admin("GET", "/tyk/keys/key1", None).await;
    assert_eq!(r.status, 200);
    let session = r.json();
    assert_eq!(session["rate"], 1000, "a whole number, as Go writes it");
    assert_eq!(session["certificate"], "");
    assert_eq!(session["quota_remaining"], 1000);
    assert_eq!(
        session["throttle_interval"], -1,
        "unmodelled fields are kept"
    );
    assert_eq!(session["access_rights"]["1"]["api_name"], "Tyk Test API");

    let r = gw
        .admin("GET", &format!("/tyk/keys/{hash}?hashed=true"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rate"], 1000);
    // Tyk takes any value of `hashed` as true.
    let r = gw
        .admin("GET", &format!("/tyk/keys/{hash}?hashed=false"), None)
        .await;
    assert_eq!(r.status, 200);

    let r = gw.admin("GET", "/tyk/keys", None).await;
    assert_eq!(
        r.json(),
        json!({"keys": [hash]}),
        "the raw key is never listed"
    );

    let mut changed = seed_key();
    changed["rate"] = json!(5);
    let r = gw
        .admin("PUT", "/tyk/keys/key1", Some(changed.clone()))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["action"], "modified");
    assert!(
        r.json().get("key_hash").is_none(),
        "Tyk names no hash on PUT"
    );
    assert_eq!(
        gw.admin("GET", "/tyk/keys/key1", None).await.json()["rate"],
        5
    );
    let r = gw.admin("PUT", "/tyk/keys/nobody", Some(changed)).await;
    assert_eq!(r.status, 404);

    let r = gw.admin("DELETE", "/tyk/keys/key1", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"key": "key1", "status": "ok", "action": "deleted"})
    );
    let r = gw.admin("GET", "/tyk/keys/key1", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"status": "error", "message": "Key not found"})
    );
    assert_eq!(gw.admin("DELETE", "/tyk/keys/key1", None).await.status, 404);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("key1"))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn generated_keys() {
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"hash_key_function": "murmur64"}))
        .start()
        .await;
    let mut no_rights = seed_key();
    no_rights["access_rights"] = json!({});
    let r = gw.admin("POST", "/tyk/keys/create", Some(no_rights)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], "error");

    let r = gw.admin("POST", "/tyk/keys/create", Some(seed_key())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("ey"),
        "a murmur64 key names its algorithm: {key}"
    );
    assert_eq!(r.json()["key_hash"].as_str().unwrap().len(), 16);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some(&key))
            .await
            .status,
        200
    );

    // Tyk's default: legacy keys, the org id and 32 hex digits, hashed with murmur32.
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    let r = gw.admin("POST", "/tyk/keys/create", Some(seed_key())).await;
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("default") && key.len() == 39, "{key}");
    assert_eq!(r.json()["key_hash"].as_str().unwrap().len(), 8);
    let r = gw.get_with_key("/tyk-api-test/get", Some(&key)).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_bodies_store_nothing() {
    let gw = gateway()
        .config(json!({"enable_hashed_keys_listing": true}))
        .start()
        .await;
    let cases = [
        b"{not json".to_vec(),
        br#"{"rate": "fast", "access_rights": {"1": {}}}"#.to_vec(),
        br#"{"access_rights": []}"#.to_vec(),
        br#"[]"#.to_vec(),
    ];
    for body in cases {
        let r = gw
            .client
            .request(
                "POST",
                &gw.url("/tyk/keys/badkey"),
                &[("x-tyk-authorization", SECRET)],
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&body));
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("Request malformed"), "{message}");
        assert_eq!(r.json()["status"], "error");
    }
    let r = gw
        .admin("POST", "/tyk/keys/badkey", Some(json!({"rate": "fast"})))
        .await;
    assert!(
        r.json()["message"].as_str().unwrap().contains("rate"),
        "names the field"
    );
    assert_eq!(
        gw.admin("GET", "/tyk/keys", None).await.json(),
        json!({"keys": []})
    );
    let r = gw
        .admin(
            "POST",
            "/tyk/apis",
            Some(json!({"proxy": {"listen_path": 3}})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("proxy.listen_path")
    );
    assert_eq!(std::fs::read_dir(gw.app_path()).unwrap().count(), 0);
}

#[tokio::test]
async fn api_crud_takes_effect_at_reload() {
    let up = upstream().await;
    let gw = gateway().start().await;
    let mut def = sample_api(&up.url(""));
    def["use_keyless"] = json!(true);

    let r = gw.admin("POST", "/tyk/apis", Some(def.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"key": "1", "status": "ok", "action": "added"})
    );
    assert!(gw.app_path().join("1.json").is_file());
    assert_eq!(
        gw.admin("POST", "/tyk/apis", Some(def.clone()))
            .await
            .status,
        409
    );
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", None).await.status,
        404,
        "not before reload"
    );

    let r = gw.admin("GET", "/tyk/reload?block=true", None).await;
    assert_eq!(r.json(), json!({"status": "ok", "message": ""}));
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 200);
    let r = gw.admin("GET", "/tyk/apis", None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(
        gw.admin("GET", "/tyk/apis/1", None).await.json()["name"],
        "Tyk Test API"
    );
    let r = gw.admin("GET", "/tyk/apis/nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"status": "error", "message": "API not found"})
    );

    def["proxy"]["listen_path"] = json!("/moved/");
    let r = gw.admin("PUT", "/tyk/apis/1", Some(def.clone())).await;
    assert_eq!(r.json()["action"], "modified");
    assert_eq!(
        gw.admin("PUT", "/tyk/apis/2", Some(def.clone()))
            .await
            .status,
        400,
        "id mismatch"
    );
    gw.admin("GET", "/tyk/reload/group?block=true", None).await;
    assert_eq!(gw.get_with_key("/moved/get", None).await.status, 200);
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 404);

    let r = gw.admin("DELETE", "/tyk/apis/1", None).await;
    assert_eq!(
        r.json(),
        json!({"key": "1", "status": "ok", "action": "deleted"})
    );
    gw.admin("GET", "/tyk/reload?block=true", None).await;
    assert_eq!(gw.get_with_key("/moved/get", None).await.status, 404);
    assert_eq!(gw.admin("DELETE", "/tyk/apis/1", None).await.status, 404);
}

#[tokio::test]
async fn a_bad_definition_file_is_skipped_and_reported() {
    let up = upstream().await;
    let mut broken = sample_api(&up.url(""));
    broken["api_id"] = json!("broken");
    broken["proxy"]["target_url"] = json!(42);
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(broken)
        .start()
        .await;
    assert_eq!(gw.gateway.apis().len(), 1);
    let hello = gw
        .client
        .request("GET", &gw.url("/hello"), &[], None)
        .await
        .json();
    assert_eq!(hello["status"], "warn");
    let output = hello["details"]["apis"]["output"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        output.contains("api1.json") && output.contains("proxy.target_url"),
        "{output}"
    );
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let up = upstream().await;
    let mut def = sample_api(&up.url(""));
    def["use_keyless"] = json!(true);
    let gw = Arc::new(gateway().api(def).start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = gw.get_with_key("/tyk-api-test/delay/0.01", None).await;
                assert_eq!(r.status, 200, "{}", r.text());
                sent += 1;
            }
            sent
        }));
    }
    for _ in 0..20 {
        assert_eq!(
            gw.admin("GET", "/tyk/reload?block=true", None).await.status,
            200
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 0);
}

#[tokio::test]
async fn hello_and_ready() {
    let gw = gateway()
        .config(json!({"health_check_endpoint_name": "health"}))
        .start()
        .await;
    let r = gw
        .client
        .request("GET", &gw.url("/health"), &[], None)
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["status"], "pass");
    assert_eq!(body["description"], "Tyk GW");
    assert!(body["version"].is_string());
    assert_eq!(body["details"]["memory"]["status"], "pass");
    let r = gw.client.request("GET", &gw.url("/ready"), &[], None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_readiness_check_answers_under_its_configured_name() {
    let gw = gateway()
        .config(json!({"readiness_check_endpoint_name": "readyz"}))
        .start()
        .await;
    let r = gw
        .client
        .request("GET", &gw.url("/readyz"), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.client.request("GET", &gw.url("/ready"), &[], None).await;
    assert_eq!(r.status, 404, "the default name is no longer the check");
}

#[tokio::test]
async fn raw_keys_when_hashing_is_off() {
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"hash_keys": false}))
        .start()
        .await;
    let r = gw.add_key("plainkey", seed_key()).await;
    assert!(r.json().get("key_hash").is_none());
    // Listed without enable_hashed_keys_listing: the keys are not hashed.
    assert_eq!(
        gw.admin("GET", "/tyk/keys", None).await.json(),
        json!({"keys": ["defaultplainkey"]})
    );
    let r = gw
        .admin("GET", "/tyk/keys/plainkey?hashed=true", None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("plainkey"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn an_auth_method_tollgate_lacks_fails_closed_and_unhonoured_fields_are_named() {
    let up = upstream().await;
    // The shape of Tyk's own client-mtls-api.json: mutual TLS, with keyless as its base.
    let mut mtls = sample_api(&up.url(""));
    mtls["api_id"] = json!("mtls");
    mtls["use_keyless"] = json!(true);
    mtls["use_mutual_tls_auth"] = json!(true);
    mtls["proxy"]["listen_path"] = json!("/mtls/");
    let mut busy = sample_api(&up.url(""));
    busy["api_id"] = json!("busy");
    busy["proxy"]["listen_path"] = json!("/busy/");
    busy["cache_options"] = json!({"enable_cache": true, "cache_timeout": 60});
    busy["uptime_tests"] = json!({"check_list": [{"url": "http://u/health"}]});
    let gw = gateway().api(mtls.clone()).api(busy).start().await;

    let r = gw.get_with_key("/mtls/get", None).await;
    assert_eq!(r.status, 404, "not served open: {}", r.text());
    let hello = gw
        .client
        .request("GET", &gw.url("/hello"), &[], None)
        .await
        .json();
    let apis = &hello["details"]["apis"];
    let errors = apis["output"].to_string();
    assert!(
        errors.contains("api0.json") && errors.contains("use_mutual_tls_auth: mutual TLS"),
        "{hello}"
    );
    assert_eq!(
        apis["unhonoured_fields"]["busy"],
        json!(["cache_options", "uptime_tests"]),
        "{hello}"
    );
    let r = gw.admin("POST", "/tyk/apis", Some(mtls)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("use_mutual_tls_auth"), "{}", r.text());
}

/// murmur3-128's first half (Tyk's murmur64) of `text`, in hex.
fn murmur64(text: &str) -> String {
    let h = murmur3::murmur3_x64_128(&mut text.as_bytes(), 0).unwrap();
    format!("{:016x}", h as u64)
}

#[tokio::test]
async fn custom_keys_are_tyk_tokens_both_ways() {
    use base64::Engine;
    let up = upstream().await;
    let store = support::memory_store();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"hash_key_function": "murmur64"}))
        .store(store.clone())
        .start()
        .await;
    let token = base64::engine::general_purpose::STANDARD
        .encode(r#"{"org":"default","id":"mycustomkey","h":"murmur64"}"#);
    let r = gw.add_key("mycustomkey", seed_key()).await.json();
    assert_eq!(r["key"], token.as_str());
    assert_eq!(r["key_hash"], murmur64(&token));
    for key in ["mycustomkey", token.as_str()] {
        let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
    }
    assert_eq!(
        gw.admin("GET", "/tyk/keys/mycustomkey", None).await.status,
        200
    );

    // A key a Tyk node created: its record under murmur64 of its token, without a verifier.
    let tyk_token = base64::engine::general_purpose::STANDARD
        .encode(r#"{"org":"default","id":"madebytyk","h":"murmur64"}"#);
    let session: tollgate::session::SessionState = serde_json::from_value(seed_key()).unwrap();
    store
        .set(&murmur64(&tyk_token), &session, None)
        .await
        .unwrap();
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("madebytyk"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Deleting by name removes the token's record too.
    assert_eq!(
        gw.admin("DELETE", "/tyk/keys/mycustomkey", None)
            .await
            .status,
        200
    );
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("mycustomkey"))
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn gateway_api_answers_as_tyk_does() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;

    // Preview: the session it would make, nothing stored.
    let r = gw
        .admin("POST", "/tyk/keys/preview", Some(seed_key()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rate"], 1000);
    assert_eq!(gw.admin("GET", "/tyk/keys/preview", None).await.status, 404);

    // Listing hashed keys is off unless enable_hashed_keys_listing.
    let r = gw.admin("GET", "/tyk/keys", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["message"],
        "Hashed key listing is disabled in config (enable_hashed_keys_listing)"
    );

    // Bodies that cannot be read: 500 on /create, 400 on a named key.
    let bad = b"{not json".to_vec();
    for (path, status, prefix) in [
        ("/tyk/keys/create", 500, "Unmarshalling failed"),
        ("/tyk/keys/somekey", 400, "Request malformed"),
    ] {
        let r = gw
            .client
            .request(
                "POST",
                &gw.url(path),
                &[("x-tyk-authorization", SECRET)],
                Some(bad.clone()),
            )
            .await;
        assert_eq!(r.status, status, "{path}");
        assert!(
            r.json()["message"].as_str().unwrap().starts_with(prefix),
            "{}",
            r.text()
        );
    }
    // allow_master_keys is off: a named key without access rights is refused as Tyk does.
    let mut master = seed_key();
    master["access_rights"] = json!({});
    let r = gw.admin("POST", "/tyk/keys/masterkey", Some(master)).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["message"],
        "Failed to create key, ensure security settings are correct."
    );

    // A PUT with an expiry already past keeps the key's own.
    let mut later = seed_key();
    later["expires"] = json!(4_000_000_000i64);
    gw.add_key("expiring", later).await;
    let mut past = seed_key();
    past["expires"] = json!(1_000_000);
    let r = gw.admin("PUT", "/tyk/keys/expiring", Some(past)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let read = gw.admin("GET", "/tyk/keys/expiring", None).await.json();
    assert_eq!(read["expires"], 4_000_000_000i64);

    // Only the file Tyk would have written for an id is deleted.
    let r = gw.admin("DELETE", "/tyk/apis/1", None).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["message"], "Delete failed");
    assert!(
        gw.app_path().join("api0.json").exists(),
        "a hand-written file is kept"
    );
    assert_eq!(
        gw.admin("DELETE", "/tyk/apis/nosuch", None).await.status,
        404
    );
    let mut own = sample_api(&up.url(""));
    own["api_id"] = json!("own");
    own["proxy"]["listen_path"] = json!("/own/");
    assert_eq!(gw.admin("POST", "/tyk/apis", Some(own)).await.status, 200);
    gw.admin("GET", "/tyk/reload?block=true", None).await;
    let r = gw.admin("DELETE", "/tyk/apis/own", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!gw.app_path().join("own.json").exists());
}

#[tokio::test]
async fn with_allow_master_keys_a_key_without_access_rights_calls_every_api() {
    let up = upstream().await;
    let mut second = sample_api(&up.url(""));
    second["api_id"] = json!("2");
    second["proxy"]["listen_path"] = json!("/second/");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(second)
        .config(json!({"allow_master_keys": true}))
        .start()
        .await;
    let mut master = seed_key();
    master["access_rights"] = json!({});
    gw.add_key("masterkey", master).await;
    for path in ["/tyk-api-test/get", "/second/get"] {
        let r = gw.get_with_key(path, Some("masterkey")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}
