//! Tyk's security policies: loaded from files, applied when a request is checked, written
//! through `/tyk/policies`, and reloaded on every node by a group reload.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::redis::RedisServer;
use support::{TestGateway, gateway, sample_api, seed_key, upstream};

fn second_api(target: &str) -> Value {
    let mut api = sample_api(target);
    api["api_id"] = json!("2");
    api["proxy"]["listen_path"] = json!("/second/");
    api
}

fn policy(id: &str, api: &str) -> Value {
    json!({"id": id, "name": id, "org_id": "default", "rate": 100, "per": 1, "quota_max": -1,
           "active": true, "access_rights": {api: {"api_id": api, "versions": ["Default"]}}})
}

/// A key made only of policies: no access rights of its own.
fn policy_key(policies: &[&str]) -> Value {
    let mut key = seed_key();
    key["access_rights"] = json!({});
    key["apply_policies"] = json!(policies);
    key
}

async fn status(gw: &TestGateway, path: &str, key: &str) -> u16 {
    gw.get_with_key(path, Some(key)).await.status
}

#[tokio::test]
async fn a_policy_gives_keys_their_rights_and_a_change_reaches_every_key_at_once() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gold.json"),
        policy("gold", "1").to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.json"),
        r#"{"id": "broken", "rate": "fast"}"#,
    )
    .unwrap();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(second_api(&up.url("")))
        .config(json!({"policies": {"policy_source": "file", "policy_path": dir.path()}}))
        .start()
        .await;

    // The malformed file is reported by path and field; the other loads.
    let hello = gw.hello().await;
    let errors = hello["details"]["apis"]["output"].to_string();
    assert!(
        errors.contains("broken.json") && errors.contains("rate"),
        "{hello}"
    );
    let r = gw.admin("GET", "/tyk/policies", None).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.text());

    gw.add_key("goldkey", policy_key(&["gold"])).await;
    assert_eq!(status(&gw, "/tyk-api-test/get", "goldkey").await, 200);
    assert_eq!(status(&gw, "/second/get", "goldkey").await, 403);

    // A key naming a policy that is not loaded is refused, and nothing is stored.
    let r = gw
        .admin("POST", "/tyk/keys/nokey", Some(policy_key(&["missing"])))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("\\\"missing\\\""), "{}", r.text());
    assert_eq!(gw.admin("GET", "/tyk/keys/nokey", None).await.status, 404);

    // The policy now grants the second API instead: the key follows without being rewritten.
    let r = gw
        .admin("PUT", "/tyk/policies/gold", Some(policy("gold", "2")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"key": "gold", "status": "ok", "action": "modified"})
    );
    gw.admin("GET", "/tyk/reload?block=true", None).await;
    assert_eq!(status(&gw, "/tyk-api-test/get", "goldkey").await, 403);
    assert_eq!(status(&gw, "/second/get", "goldkey").await, 200);

    // A key whose only policy is gone is refused, as Tyk refuses it.
    let r = gw.admin("DELETE", "/tyk/policies/gold", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.admin("GET", "/tyk/reload?block=true", None).await;
    assert_eq!(
        gw.admin("GET", "/tyk/policies/gold", None).await.status,
        404
    );
    let r = gw.get_with_key("/second/get", Some("goldkey")).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "Access to this API has been disallowed"})
    );
}

#[tokio::test]
async fn a_group_reload_carries_a_policy_change_to_every_node() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shared.json"),
        policy("shared", "1").to_string(),
    )
    .unwrap();
    let config = json!({
        "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port, "timeout": 2},
        "policies": {"policy_source": "file", "policy_path": dir.path()},
    });
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            gateway()
                .api(sample_api(&up.url("")))
                .api(second_api(&up.url("")))
                .config(config.clone())
                .start()
                .await,
        );
    }
    nodes[0].add_key("sharedkey", policy_key(&["shared"])).await;
    for node in &nodes {
        assert_eq!(status(node, "/tyk-api-test/get", "sharedkey").await, 200);
    }
    let r = nodes[0]
        .admin("PUT", "/tyk/policies/shared", Some(policy("shared", "2")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = nodes[0].admin("GET", "/tyk/reload/group", None).await;
    assert_eq!(r.status, 200);
    let started = Instant::now();
    for node in &nodes {
        loop {
            if status(node, "/second/get", "sharedkey").await == 200
                && status(node, "/tyk-api-test/get", "sharedkey").await == 403
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "within a second on every node"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_policy_of_another_organisation_grants_nothing() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut foreign = policy("foreign", "1");
    foreign["org_id"] = json!("another-org");
    std::fs::write(dir.path().join("foreign.json"), foreign.to_string()).unwrap();
    std::fs::write(dir.path().join("own.json"), policy("own", "1").to_string()).unwrap();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"policies": {"policy_source": "file", "policy_path": dir.path()}}))
        .start()
        .await;
    gw.add_key("ownkey", policy_key(&["own"])).await;
    assert_eq!(status(&gw, "/tyk-api-test/get", "ownkey").await, 200);
    // As Tyk: a policy whose org_id is not the API's is refused, alone or beside another.
    for (name, policies) in [
        ("foreignkey", &["foreign"][..]),
        ("mixedkey", &["own", "foreign"]),
    ] {
        gw.add_key(name, policy_key(policies)).await;
        let r = gw.get_with_key("/tyk-api-test/get", Some(name)).await;
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "Access to this API has been disallowed"})
        );
    }
}

#[tokio::test]
async fn a_new_key_takes_its_policys_key_expires_in() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut short = policy("short", "1");
    short["key_expires_in"] = json!(3600);
    std::fs::write(dir.path().join("short.json"), short.to_string()).unwrap();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"policies": {"policy_source": "file", "policy_path": dir.path()}}))
        .start()
        .await;
    let created = gw
        .admin("POST", "/tyk/keys/create", Some(policy_key(&["short"])))
        .await
        .json();
    let key = created["key"].as_str().unwrap().to_owned();
    let read = gw
        .admin("GET", &format!("/tyk/keys/{key}"), None)
        .await
        .json();
    let expires = read["expires"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 3590..=now + 3600).contains(&expires),
        "{expires} vs {now}"
    );
    assert_eq!(status(&gw, "/tyk-api-test/get", &key).await, 200);
}

#[tokio::test]
async fn a_policys_meta_data_is_merged_over_the_keys_for_tyk_meta_variables() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gold = policy("gold", "1");
    gold["meta_data"] = json!({"tier": "gold", "plan": "annual"});
    std::fs::write(dir.path().join("gold.json"), gold.to_string()).unwrap();
    let mut api = sample_api(&up.url(""));
    let version = &mut api["version_data"]["versions"]["Default"];
    version["use_extended_paths"] = json!(true);
    version["global_headers"] =
        json!({"x-tier": "$tyk_meta.tier", "x-plan": "$tyk_meta.plan", "x-user": "$tyk_meta.user"});
    let gw = gateway()
        .api(api)
        .config(json!({"policies": {"policy_source": "file", "policy_path": dir.path()}}))
        .start()
        .await;
    let hello = gw.hello().await.to_string();
    assert!(
        !hello.contains("meta_data"),
        "merged, so not reported: {hello}"
    );
    let mut key = policy_key(&["gold"]);
    key["meta_data"] = json!({"tier": "bronze", "user": "u7"});
    gw.add_key("metakey", key).await;
    let r = gw.get_with_key("/tyk-api-test/get", Some("metakey")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["X-Tier"], "gold", "the policy's value wins: {seen}");
    assert_eq!(seen["X-Plan"], "annual");
    assert_eq!(seen["X-User"], "u7", "the key's own members stay");
}
