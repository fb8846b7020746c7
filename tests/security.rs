//! The gateway as an attacker meets it: forged and guessed keys, dot segments, slow and
//! never-ending bodies, clients that do not read, and JSON too deep to read back.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{SECRET, gateway, memory_store, sample_api, seed_key, upstream};
use tollgate::session::SessionState;

// ---- murmur3-32, run backwards: a forged key with the same hash as a real one ----

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// The inverse of an odd number modulo 2^32 (Newton's iteration).
fn inverse(x: u32) -> u32 {
    let mut inv = x;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inv)));
    }
    inv
}

fn mix(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

fn unmix(k: u32) -> u32 {
    k.wrapping_mul(inverse(C2))
        .rotate_right(15)
        .wrapping_mul(inverse(C1))
}

fn round(h: u32, block: u32) -> u32 {
    (h ^ mix(block))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

fn unfmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(inverse(0xc2b2_ae35));
    h ^= (h >> 13) ^ (h >> 26);
    h = h.wrapping_mul(inverse(0x85eb_ca6b));
    h ^= h >> 16;
    h
}

/// An 8-character visible-ASCII string whose murmur3-32 (seed 0) is `target`.
fn murmur32_preimage(target: u32) -> String {
    let wanted = unfmix(target) ^ 8;
    let before_last = wanted
        .wrapping_sub(0xe654_6b64)
        .wrapping_mul(inverse(5))
        .rotate_right(13);
    let visible = |b: u8| (0x21..=0x7e).contains(&b);
    for first in 0u32.. {
        let first_block = u32::from_le_bytes([
            b'a' + (first % 26) as u8,
            b'a' + (first / 26 % 26) as u8,
            b'a' + (first / 676 % 26) as u8,
            b'a' + (first / 17576 % 26) as u8,
        ]);
        let h1 = round(0, first_block);
        let second = unmix(before_last ^ h1).to_le_bytes();
        if second.iter().copied().all(visible) {
            let mut key = first_block.to_le_bytes().to_vec();
            key.extend_from_slice(&second);
            return String::from_utf8(key).expect("visible ASCII");
        }
    }
    unreachable!()
}

fn murmur32(text: &str) -> u32 {
    murmur3::murmur3_32(&mut text.as_bytes(), 0).unwrap()
}

#[tokio::test]
async fn a_key_forged_from_its_hash_is_refused() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    let created = gw.add_key("mycustomkey", seed_key()).await.json();
    let hash = created["key_hash"].as_str().unwrap().to_owned();

    // Stored as Tyk's legacy token for it, `default` + name, hashed with murmur32.
    let forged = murmur32_preimage(murmur32("defaultmycustomkey"));
    assert_ne!(forged, "defaultmycustomkey");
    assert_eq!(
        format!("{:08x}", murmur32(&forged)),
        hash,
        "same storage id"
    );

    let r = gw.get_with_key("/tyk-api-test/get", Some(&forged)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "Access to this API has been disallowed"})
    );
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("mycustomkey"))
        .await;
    assert_eq!(r.status, 200);

    // The verifier is tollgate's own: not shown in Tyk's session object.
    let read = gw.admin("GET", "/tyk/keys/mycustomkey", None).await.json();
    assert!(read.get("tollgate_key_verifier").is_none(), "{read}");
    // A verifier sent in a body does not bind the key to another one.
    let mut body = seed_key();
    body["tollgate_key_verifier"] = json!("00000000000000000000000000000000");
    gw.admin("PUT", "/tyk/keys/mycustomkey", Some(body)).await;
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("mycustomkey"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_record_written_by_tyk_works_and_is_counted_as_weakly_bound() {
    let up = upstream().await;
    let store = memory_store();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .store(store.clone())
        .start()
        .await;
    // As Tyk stores it: under the murmur32 hash, with no verifier.
    let session: SessionState = serde_json::from_value(seed_key()).unwrap();
    let id = format!("{:08x}", murmur32("tykwrittenkey"));
    store.set(&id, &session, None).await.unwrap();

    let hello = gw.client.request("GET", &gw.url("/hello"), &[], None).await;
    assert_eq!(hello.json()["details"]["keys"]["weakly_bound_requests"], 0);
    let r = gw
        .get_with_key("/tyk-api-test/get", Some("tykwrittenkey"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hello = gw.client.request("GET", &gw.url("/hello"), &[], None).await;
    assert_eq!(
        hello.json()["details"]["keys"]["weakly_bound_requests"],
        1,
        "{}",
        hello.text()
    );
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_refused_with_429() {
    let up = upstream().await;
    let mut open = sample_api(&up.url(""));
    open["api_id"] = json!("open");
    open["use_keyless"] = json!(true);
    open["proxy"]["listen_path"] = json!("/open/");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .api(open)
        .config(json!({"auth_failure_limit": {"max_failures": 3, "window": 60}}))
        .start()
        .await;
    gw.add_key("testkey", seed_key()).await;
    for guess in ["guess1", "guess2", "guess3"] {
        let r = gw.get_with_key("/tyk-api-test/get", Some(guess)).await;
        assert_eq!(r.status, 403);
    }
    // Refused before the key is looked at, so a right guess cannot be told apart.
    for key in ["guess4", "testkey"] {
        let r = gw.get_with_key("/tyk-api-test/get", Some(key)).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "Too many failed authentication attempts"})
        );
    }
    assert_eq!(gw.get_with_key("/open/get", None).await.status, 200);
    let hello = gw.client.request("GET", &gw.url("/hello"), &[], None).await;
    assert_eq!(hello.json()["details"]["keys"]["refused_for_failures"], 2);
}

// ---- paths ----

/// One raw request on a new connection; the whole answer.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str, key: Option<&str>) -> String {
    let auth = key
        .map(|k| format!("authorization: {k}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}connection: close\r\n\r\n")
}

#[tokio::test]
async fn a_path_is_routed_authorised_and_forwarded_as_one() {
    let up = upstream().await;
    let mut public = sample_api(&up.url(""));
    public["api_id"] = json!("public");
    public["use_keyless"] = json!(true);
    public["proxy"]["listen_path"] = json!("/public/");
    let mut private = sample_api(&up.url(""));
    private["api_id"] = json!("1");
    private["proxy"]["listen_path"] = json!("/private/");
    let gw = gateway().api(public).api(private).start().await;
    gw.add_key("testkey", seed_key()).await;

    for path in [
        "/public/../private/anything",
        "/public/%2e%2e/private/anything",
        "/public/.%2E/private/anything",
        "/public/./../private/anything",
    ] {
        let answer = raw(gw.addr(), &get(path, None)).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
    for path in [
        "/public/..%2fprivate/anything",
        "/public/%2e%2e%5cprivate/x",
    ] {
        let answer = raw(gw.addr(), &get(path, None)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("dot segment"), "{answer}");
    }
    // The Gateway API is not reached through another API's listen path without the secret.
    let answer = raw(gw.addr(), &get("/public/../tyk/keys", None)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    // What the key was checked for is what the upstream is asked for.
    for (path, key, upstream_path) in [
        (
            "/private/x/../anything/a?z=1",
            Some("testkey"),
            "/anything/a?z=1",
        ),
        ("/private/%2e/anything", Some("testkey"), "/anything"),
        ("/public/a/./../anything/b", None, "/anything/b"),
    ] {
        let r = gw.get_with_key(path, key).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let url = r.json()["url"].as_str().unwrap().to_owned();
        assert!(url.ends_with(upstream_path), "{path} reached {url}");
    }
}

// ---- upstream connections and bodies ----

/// An upstream that answers each new connection's first request head at once with a small
/// 200 and then reads whatever comes, answering nothing more: as one still busy with a body
/// it never asked for.
async fn answers_before_the_body() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_whose_request_body_is_unsent_is_not_reused() {
    let (addr, accepted) = answers_before_the_body().await;
    let mut api = sample_api(&format!("http://{addr}"));
    api["use_keyless"] = json!(true);
    let gw = gateway()
        .api(api)
        .config(json!({"proxy_default_timeout": 3}))
        .start()
        .await;

    // A client that sends ten bytes of a 100,000-byte body, then nothing.
    let mut dripping = TcpStream::connect(gw.addr()).await.unwrap();
    dripping
        .write_all(
            b"POST /tyk-api-test/upload HTTP/1.1\r\nHost: gw\r\ncontent-length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), dripping.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    let started = Instant::now();
    let r = gw.get_with_key("/tyk-api-test/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a new connection"
    );
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let up = upstream().await;
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    let gw = gateway().api(api).start().await;
    let answer = raw(
        gw.addr(),
        "POST /tyk-api-test/post HTTP/1.1\r\nHost: gw\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Request body malformed"), "{answer}");
}

// ---- the Gateway API's bodies ----

fn admin_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nx-tyk-authorization: {SECRET}\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_slow_admin_body_is_refused_after_10_s_and_all_bodies_share_a_budget() {
    let gw = gateway().start().await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    slow.write_all(admin_head("/tyk/keys/slow", 100).as_bytes())
        .await
        .unwrap();
    slow.write_all(b"{\"rate\":").await.unwrap();

    // Four bodies just under the size limit take the whole budget; a fifth gets 503.
    let size = tollgate::admin::MAX_ADMIN_BODY;
    let mut holding = Vec::new();
    for i in 0..4 {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        stream
            .write_all(admin_head(&format!("/tyk/keys/big{i}"), size).as_bytes())
            .await
            .unwrap();
        stream.write_all(&vec![b' '; size - 8]).await.unwrap();
        holding.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = gw.admin("POST", "/tyk/keys/fifth", Some(seed_key())).await;
    assert_eq!(r.status, 503, "{}", r.text());

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 10 s"), "{answer}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(15));
    drop(holding);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The budget is given back.
    let r = gw.admin("POST", "/tyk/keys/after", Some(seed_key())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.admin("GET", "/tyk/keys/slow", None).await;
    assert_eq!(r.status, 404, "nothing stored");
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn json_too_deep_to_read_back_is_refused_at_write_time() {
    // An API of the keys' org, so that keys are found by name (see `stored_forms`).
    let gw = gateway()
        .api(sample_api("http://127.0.0.1:9"))
        .start()
        .await;
    let mut body = seed_key().to_string();
    body.pop();
    let deep = format!("{body},\"deep\":{}}}", nested(100_000));
    let r = gw
        .client
        .request(
            "POST",
            &gw.url("/tyk/keys/deepkey"),
            &[("x-tyk-authorization", SECRET)],
            Some(deep.into_bytes()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("Request malformed: deep"), "{message}");
    assert!(message.contains("recursion limit"), "{message}");
    assert_eq!(gw.admin("GET", "/tyk/keys/deepkey", None).await.status, 404);

    // Nesting within the bound is stored and read back whole.
    let fine: Value = serde_json::from_str(&format!("{body},\"deep\":{}}}", nested(100))).unwrap();
    gw.add_key("deepkey", fine).await;
    let r = gw.admin("GET", "/tyk/keys/deepkey", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&nested(100)));
}
