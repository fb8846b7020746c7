//! The request pipeline over real HTTP: statuses and bodies, streaming, upstream failures,
//! and bad input.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{gateway, sample_api, seed_key, upstream};

fn key_for(api_ids: &[&str]) -> Value {
    let mut key = seed_key();
    key["access_rights"] = json!({});
    for id in api_ids {
        key["access_rights"][id] = json!({"api_id": id, "api_name": id, "versions": ["Default"]});
    }
    key
}

#[tokio::test]
async fn seed_curl_answers_with_the_upstream_json() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("testkey", seed_key()).await;

    let r = gw
        .get_with_key("/tyk-api-test/get?x=1&y=two", Some("testkey"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(
        body["url"].as_str().unwrap().ends_with("/get?x=1&y=two"),
        "{body}"
    );
    assert_eq!(body["args"], json!({"x": "1", "y": "two"}));
    assert_eq!(body["headers"]["X-Forwarded-For"], "127.0.0.1");
    assert_eq!(body["headers"]["X-Forwarded-Proto"], "http");
    assert_eq!(body["headers"]["Host"], up.addr.to_string());

    let r = gw
        .get_with_key("/tyk-api-test/get", Some("Bearer testkey"))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tyk_statuses_and_bodies() {
    let up = upstream().await;
    let mut other = sample_api(&up.url(""));
    other["api_id"] = json!("2");
    other["proxy"]["listen_path"] = json!("/other/");
    let store = support::memory_store();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(other)
        .store(store.clone())
        .start()
        .await;
    gw.add_key("testkey", seed_key()).await;
    gw.add_key("otherkey", key_for(&["2"])).await;
    // An expiry already past when a key is created means none, as in Tyk.
    let mut expired = seed_key();
    expired["expires"] = json!(1_000_000);
    gw.add_key("oncexpired", expired.clone()).await;
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("oncexpired"))
            .await
            .status,
        200
    );
    // One that expired since: written straight to the store, as another node would.
    let expired: tollgate::session::SessionState = serde_json::from_value(expired).unwrap();
    let id = murmur3::murmur3_32(&mut "defaultexpiredkey".as_bytes(), 0).unwrap();
    store
        .set(&format!("{id:08x}"), &expired, None)
        .await
        .unwrap();
    let mut inactive = seed_key();
    inactive["is_inactive"] = json!(true);
    gw.add_key("inactivekey", inactive).await;

    let cases: [(Option<&str>, u16, &str); 5] = [
        (None, 401, "Authorization field missing"),
        (
            Some("unknown"),
            403,
            "Access to this API has been disallowed",
        ),
        (
            Some("otherkey"),
            403,
            "Access to this API has been disallowed",
        ),
        (Some("expiredkey"), 401, "Key has expired, please renew"),
        (Some("inactivekey"), 403, "Key is inactive, please renew"),
    ];
    for (key, status, message) in cases {
        let r = gw.get_with_key("/tyk-api-test/get", key).await;
        assert_eq!(r.status, status, "key {key:?}: {}", r.text());
        assert_eq!(r.json(), json!({"error": message}), "key {key:?}");
    }
    let r = gw.get_with_key("/other/get", Some("otherkey")).await;
    assert_eq!(r.status, 200);
    // Tyk's router: a plain-text Not Found.
    let r = gw.get_with_key("/nowhere/get", Some("testkey")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "Not Found");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn keyless_apis_skip_auth_and_longest_listen_path_wins() {
    let up = upstream().await;
    let mut keyless = sample_api(&up.url(""));
    keyless["api_id"] = json!("open");
    keyless["use_keyless"] = json!(true);
    keyless["proxy"]["listen_path"] = json!("/tyk-api-test/open/");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(keyless)
        .start()
        .await;
    let r = gw.get_with_key("/tyk-api-test/open/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["url"].as_str().unwrap().ends_with("/get"));
    assert_eq!(gw.get_with_key("/tyk-api-test/get", None).await.status, 401);
}

#[tokio::test]
async fn ten_mib_streamed_post_arrives_intact() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("testkey", seed_key()).await;

    let chunk: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let chunks = 160; // 10 MiB
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(chunk.clone())))
    }));
    let body = StreamBody::new(stream).boxed();
    let r = gw
        .client
        .send(
            "POST",
            &gw.url("/tyk-api-test/post"),
            &[("authorization", "testkey")],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let data = r.json()["data"].as_str().unwrap().to_owned();
    assert_eq!(data.len(), 10 * 1024 * 1024);
    assert!(
        data.as_bytes()
            .chunks(64 * 1024)
            .all(|c| c[0] == b'a' && c[25] == b'z')
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_and_refused_gives_502() {
    let up = upstream().await;
    let mut dead = sample_api(&format!("http://127.0.0.1:{}", support::free_port()));
    dead["api_id"] = json!("dead");
    dead["use_keyless"] = json!(true);
    dead["proxy"]["listen_path"] = json!("/dead/");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(dead)
        .config(json!({"proxy_default_timeout": 0.5}))
        .start()
        .await;
    gw.add_key("testkey", seed_key()).await;

    let r = gw
        .get_with_key("/tyk-api-test/delay/3", Some("testkey"))
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let r = gw.get_with_key("/dead/get", None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"].is_string());
    // The gateway is still fine afterwards.
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("testkey"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn upstream_statuses_and_bytes_pass_through() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("testkey", seed_key()).await;
    let r = gw
        .get_with_key("/tyk-api-test/status/418", Some("testkey"))
        .await;
    assert_eq!(r.status, 418);
    let r = gw
        .get_with_key("/tyk-api-test/bytes/100000", Some("testkey"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);

    // A form body comes back parsed, as httpbin answers it.
    let body = http_body_util::Full::new(Bytes::from_static(b"a=1&b=2&b=3"))
        .map_err(|never| match never {})
        .boxed();
    let r = gw
        .client
        .send(
            "POST",
            &gw.url("/tyk-api-test/post"),
            &[
                ("authorization", "testkey"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["form"], json!({"a": "1", "b": ["2", "3"]}));
    assert_eq!(r.json()["data"], "");
}

/// Sends raw bytes and returns the status line of the answer ("" when the connection closed).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the gateway answers or closes")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn bad_input_gets_4xx_and_others_are_still_served() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("testkey", seed_key()).await;

    let r = gw.get_with_key("/tyk-api-test/get", Some("bad key")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"error": "Authorization field malformed"}));
    let long = "k".repeat(2000);
    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some(&long))
            .await
            .status,
        400
    );

    let huge = format!(
        "GET /tyk-api-test/get HTTP/1.1\r\nHost: x\r\nauthorization: testkey\r\nx-big: {}\r\n\r\n",
        "v".repeat(20 * 1024)
    );
    let status = raw_exchange(gw.addr(), huge.as_bytes()).await;
    assert!(status.is_empty() || status.contains(" 431 "), "{status}");

    let status = raw_exchange(gw.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(status.is_empty() || status.contains(" 400 "), "{status}");

    let status = raw_exchange(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
    )
    .await;
    assert!(status.is_empty() || status.contains(" 400 "), "{status}");

    assert_eq!(
        gw.get_with_key("/tyk-api-test/get", Some("testkey"))
            .await
            .status,
        200
    );
}

/// A bare HTTP/1.1 upstream that counts the connections it accepts and answers every request
/// on them with a small 200; with `close_after_each`, it closes the connection after each
/// answer without saying so (as an upstream's keep-alive timeout does).
async fn counting_upstream(
    close_after_each: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() || close_after_each {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A gateway with one keyless API in front of `upstream`.
async fn keyless_gateway(upstream: std::net::SocketAddr) -> support::TestGateway {
    let mut api = sample_api(&format!("http://{upstream}"));
    api["use_keyless"] = json!(true);
    gateway().api(api).start().await
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = counting_upstream(false).await;
    let gw = keyless_gateway(addr).await;
    for _ in 0..50 {
        let r = gw.get_with_key("/tyk-api-test/x", None).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection, reused"
    );
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = counting_upstream(true).await;
    let gw = keyless_gateway(addr).await;
    for i in 0..30 {
        let r = gw.get_with_key("/tyk-api-test/x", None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_response_abandoned_half_read_does_not_spoil_the_next_one() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    gw.add_key("testkey", seed_key()).await;

    // The client reads 64 KiB of a 10 MiB response and hangs up: the upstream connection is
    // mid-body and must not serve another request.
    let mut client = TcpStream::connect(gw.addr()).await.unwrap();
    client
        .write_all(
            b"GET /tyk-api-test/bytes/10485760 HTTP/1.1\r\nHost: gw\r\nauthorization: testkey\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = vec![0u8; 64 * 1024];
    client.read_exact(&mut seen).await.unwrap();
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;

    for _ in 0..5 {
        let r = gw
            .get_with_key("/tyk-api-test/bytes/1000", Some("testkey"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1000);
        let r = gw.get_with_key("/tyk-api-test/get", Some("testkey")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["url"].as_str().unwrap().ends_with("/get"));
    }
}

#[tokio::test]
async fn the_definition_fields_that_say_where_the_key_is_and_where_it_goes() {
    let up = upstream().await;
    // The key in `auth_configs.authToken` (preferred over `auth`), a query parameter and a
    // cookie; the client's Host kept.
    let mut api = sample_api(&up.url(""));
    api["auth_configs"] = json!({"authToken": {"auth_header_name": "x-api-key",
        "use_param": true, "param_name": "k", "use_cookie": true, "cookie_name": "session"}});
    api["proxy"]["preserve_host_header"] = json!(true);
    let gw = gateway().api(api).start().await;
    gw.add_key("fieldkey", seed_key()).await;
    let ask = |headers: Vec<(&'static str, &'static str)>, path: &'static str| {
        let gw = &gw;
        async move {
            gw.client
                .request("GET", &gw.url(path), &headers, None)
                .await
        }
    };
    let r = ask(
        vec![("x-api-key", "fieldkey"), ("host", "api.example")],
        "/tyk-api-test/get",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["Host"],
        "api.example",
        "preserve_host_header"
    );
    assert_eq!(
        ask(vec![("authorization", "fieldkey")], "/tyk-api-test/get")
            .await
            .status,
        401
    );
    assert_eq!(
        ask(vec![], "/tyk-api-test/get?k=fieldkey").await.status,
        200
    );
    assert_eq!(
        ask(
            vec![("cookie", "a=1; session=fieldkey")],
            "/tyk-api-test/get"
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn url_versions_after_the_slug_and_a_disabled_api_limit() {
    let up = upstream().await;
    let mut api = sample_api(&up.url("/anything"));
    api["slug"] = json!("shop");
    api["definition"] =
        json!({"location": "url", "strip_path": true, "url_versioning_pattern": "^v[0-9]+$"});
    api["version_data"] = json!({"not_versioned": false,
        "versions": {"v1": {"name": "v1"}, "beta": {"name": "beta"}}});
    api["global_rate_limit"] = json!({"rate": 1, "per": 60, "disabled": true});
    let gw = gateway().api(api).start().await;
    let mut key = seed_key();
    key["access_rights"]["1"]["versions"] = json!(["v1", "beta"]);
    gw.add_key("slugkey", key).await;
    // The version is the first segment after `/<slug>`; `v1` matches the pattern and is
    // stripped (`strip_path`), `beta` does not and stays.
    for (path, upstream_path) in [
        ("/tyk-api-test/shop/v1/x", "/anything/shop/x"),
        ("/tyk-api-test/shop/beta/x", "/anything/shop/beta/x"),
    ] {
        // A disabled global_rate_limit of 1 a minute admits every request.
        for _ in 0..3 {
            let r = gw.get_with_key(path, Some("slugkey")).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let url = r.json()["url"].as_str().unwrap().to_owned();
            assert!(url.ends_with(upstream_path), "{path} reached {url}");
        }
    }
}
