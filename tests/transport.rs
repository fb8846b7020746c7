//! The transport: HTTPS upstreams (verification, pooling, client certificates).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use support::tls::{TestCa, TlsFront};
use support::{Client, Process, free_port, gateway, run, sample_api, upstream, wait_for_port};

/// A keyless API on `listen_path` proxying to `target`.
fn api(id: &str, listen_path: &str, target: &str) -> Value {
    let mut api = sample_api(target);
    api["api_id"] = json!(id);
    api["use_keyless"] = json!(true);
    api["proxy"]["listen_path"] = json!(listen_path);
    api
}

/// An HTTPS upstream in front of `backend`, its certificate (for localhost) from a new test
/// CA; asking for a client certificate from that CA when `client_auth`.
async fn https_upstream(backend: SocketAddr, client_auth: bool) -> (TestCa, TlsFront) {
    let ca = TestCa::new();
    ca.issue_server("upstream");
    let client_ca = client_auth.then(|| ca.file("ca.crt"));
    let front = TlsFront::start(
        &ca.file("upstream.crt"),
        &ca.file("upstream.key"),
        client_ca.as_deref(),
        backend,
    )
    .await;
    (ca, front)
}

#[tokio::test]
async fn an_https_upstream_is_verified_and_its_connections_reused() {
    let up = upstream().await;
    let (_ca, front) = https_upstream(up.addr, false).await;
    let target = front.url("");
    let mut lax = api("lax", "/lax/", &target);
    lax["proxy"]["transport"] = json!({"ssl_insecure_skip_verify": true});
    let gw = gateway()
        .api(api("strict", "/strict/", &target))
        .api(lax)
        .start()
        .await;

    // The test CA is not among the system's roots: the certificate does not verify.
    let r = gw.get_with_key("/strict/get", None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json(), json!({"error": "Upstream TLS handshake failed"}));
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 0);

    for _ in 0..3 {
        let r = gw.get_with_key("/lax/get", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["headers"]["Host"],
            format!("localhost:{}", front.addr.port())
        );
    }
    assert_eq!(
        front.handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection, kept alive and reused"
    );
    // The strict API never borrows the lax API's unverified connection.
    assert_eq!(gw.get_with_key("/strict/get", None).await.status, 502);

    // The gateway-wide settings serve every API: skip verification, TLS 1.3 only, and a
    // cipher list (TLS 1.3 suites are always offered).
    let gw = gateway()
        .api(api("strict", "/strict/", &target))
        .config(
            json!({"proxy_ssl_insecure_skip_verify": true, "proxy_ssl_min_version": 772,
            "proxy_ssl_ciphers": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]}),
        )
        .start()
        .await;
    let r = gw.get_with_key("/strict/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn an_upstream_asking_for_a_client_certificate_gets_the_configured_one() {
    let up = upstream().await;
    let (ca, front) = https_upstream(up.addr, true).await;
    ca.issue_client("gateway");
    let target = front.url("");
    let skip = json!({"ssl_insecure_skip_verify": true});
    let mut without = api("without", "/without/", &target);
    without["proxy"]["transport"] = skip.clone();
    let mut own = api("own", "/own/", &target);
    own["proxy"]["transport"] = skip.clone();
    own["upstream_certificates"] = json!({"localhost": ca.file("gateway.pem")});
    let mut disabled = api("disabled", "/disabled/", &target);
    disabled["proxy"]["transport"] = skip;
    disabled["upstream_certificates"] = json!({"*": ca.file("gateway.pem")});
    disabled["upstream_certificates_disabled"] = json!(true);
    let gw = gateway()
        .api(without.clone())
        .api(own)
        .api(disabled)
        .start()
        .await;
    assert_eq!(gw.get_with_key("/without/get", None).await.status, 502);
    assert_eq!(gw.get_with_key("/disabled/get", None).await.status, 502);
    let r = gw.get_with_key("/own/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The gateway-wide map, `security.certificates.upstream`, serves every API.
    let gw = gateway()
        .api(without)
        .config(json!({"security": {"certificates": {"upstream": {"*": ca.file("gateway.pem")}}}}))
        .start()
        .await;
    let r = gw.get_with_key("/without/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn bad_upstream_tls_settings_are_load_errors_naming_the_field() {
    let up = upstream().await;
    let ca = TestCa::new();
    let target = "https://localhost:1";
    let mut old = api("old", "/old/", target);
    old["proxy"]["transport"] = json!({"ssl_max_version": 770});
    let mut ciphers = api("ciphers", "/ciphers/", target);
    ciphers["proxy"]["transport"] = json!({"ssl_ciphers": ["TLS_RSA_WITH_RC4_128_SHA"]});
    let mut missing = api("missing", "/missing/", target);
    missing["upstream_certificates"] = json!({"*": ca.file("nothing.pem")});
    let mut some = api("some", "/some/", target);
    some["proxy"]["transport"] = json!({"ssl_ciphers": [
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"]});
    let gw = gateway()
        .api(old)
        .api(ciphers)
        .api(missing)
        .api(some)
        .api(api("fine", "/fine/", &up.url("")))
        .start()
        .await;
    let hello = gw.hello().await;
    let report = hello.to_string();
    for field in [
        "proxy.transport.ssl_max_version",
        "proxy.transport.ssl_ciphers",
        "upstream_certificates.*",
    ] {
        assert!(report.contains(field), "{field} named: {hello}");
    }
    // A suite rustls lacks beside one it has: loaded, the lacking one reported.
    assert!(
        report.contains("TLS_RSA_WITH_AES_128_CBC_SHA (not a suite tollgate offers)"),
        "{hello}"
    );
    assert_eq!(gw.get_with_key("/fine/get", None).await.status, 200);

    // The gateway-wide `proxy_ssl_max_version` is every HTTPS API's unless it sets its own.
    let gw = gateway()
        .api(api("inherits", "/inherits/", target))
        .config(json!({"proxy_ssl_max_version": 770}))
        .start()
        .await;
    let hello = gw.hello().await;
    assert!(
        hello
            .to_string()
            .contains("ssl_max_version: 770 asks for TLS 1.1"),
        "{hello}"
    );
    assert_eq!(gw.get_with_key("/inherits/get", None).await.status, 404);
}

#[tokio::test]
async fn the_systems_roots_from_ssl_cert_file_verify_an_https_upstream() {
    let up = upstream().await;
    let (ca, front) = https_upstream(up.addr, false).await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    let mut tls13 = api("tls13", "/tls13/", &front.url(""));
    tls13["proxy"]["transport"] = json!({"ssl_min_version": 772});
    std::fs::write(
        apps.join("a.json"),
        api("a", "/a/", &front.url("")).to_string(),
    )
    .unwrap();
    std::fs::write(apps.join("b.json"), tls13.to_string()).unwrap();
    let port = free_port();
    let conf = dir.path().join("tyk.conf");
    let config = json!({"listen_address": "127.0.0.1", "listen_port": port, "secret": "s",
        "app_path": "apps", "storage": {"type": "memory"}});
    std::fs::write(&conf, config.to_string()).unwrap();
    let _gw = Process {
        child: Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--conf"])
            .arg(&conf)
            // As Go does for Tyk, the system's roots are read from SSL_CERT_FILE when set.
            .env("SSL_CERT_FILE", ca.file("ca.crt"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    for path in ["/a/get", "/tls13/get"] {
        let r = Client::new()
            .request("GET", &format!("http://{addr}{path}"), &[], None)
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

/// `openssl s_client` to the gateway with `sni`; its output, which names the certificate
/// served (`subject=`) and the protocol agreed.
async fn handshake(port: u16, sni: &str, extra: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect, "-servername", sni];
    args.extend_from_slice(extra);
    let (_, stdout, stderr) = run("openssl", &args).await;
    format!("{stdout}{stderr}")
}

/// A GET over TLS with curl: status and body.
async fn curl(port: u16, host: &str, ca: &str, path: &str, key: &str) -> (u16, String) {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let auth = format!("authorization: {key}");
    let (_, out, err) = run(
        "curl",
        &[
            "-sS",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-H",
            &auth,
            "-w",
            "\n%{http_code}",
            &url,
        ],
    )
    .await;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), format!("{body}{err}"))
}

/// Creates the seed's key as `name` through the Gateway API, over TLS.
async fn add_key_over_tls(port: u16, host: &str, ca: &TestCa, name: &str) {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/tyk/keys/{name}");
    let secret = format!("x-tyk-authorization: {}", support::SECRET);
    let body = support::seed_key().to_string();
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "-f",
            "--cacert",
            &ca.file("ca.crt"),
            "--resolve",
            &resolve,
            "-H",
            &secret,
            "-X",
            "POST",
            "-d",
            &body,
            &url,
        ],
    )
    .await;
    assert!(ok, "key {name} created: {out}{err}");
}

#[tokio::test]
async fn the_tls_listener_picks_certificates_by_sni_and_keeps_its_versions() {
    let up = upstream().await;
    let ca = TestCa::new();
    ca.issue(
        "a",
        "subjectAltName=DNS:a.example\nextendedKeyUsage=serverAuth\n",
    );
    ca.issue(
        "wild",
        "subjectAltName=DNS:*.wild.example\nextendedKeyUsage=serverAuth\n",
    );
    ca.issue(
        "own",
        "subjectAltName=DNS:own.example\nextendedKeyUsage=serverAuth\n",
    );
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"http_server_options": {
            "use_ssl": true,
            "certificates": [
                {"domain_name": "a.example", "cert_file": ca.file("a.crt"), "key_file": ca.file("a.key")},
                {"domain_name": "*.wild.example", "cert_file": ca.file("wild.crt"), "key_file": ca.file("wild.key")},
            ],
            "ssl_certificates": [ca.file("own.pem")],
            "min_version": 772,
        }}))
        .start()
        .await;
    let port = gw.addr().port();
    add_key_over_tls(port, "a.example", &ca, "tlskey").await;
    for (sni, served) in [
        ("a.example", "tollgate test a"),
        ("b.wild.example", "tollgate test wild"),
        ("own.example", "tollgate test own"),
        ("unknown.example", "tollgate test a"),
    ] {
        let out = handshake(port, sni, &["-CAfile", &ca.file("ca.crt")]).await;
        assert!(out.contains(served), "{sni}: {out}");
        assert!(out.contains("TLSv1.3"), "{sni}: {out}");
    }
    let refused = handshake(port, "a.example", &["-tls1_2"]).await;
    assert!(
        !refused.contains("Server certificate"),
        "TLS 1.2 refused: {refused}"
    );

    let (status, body) = curl(
        port,
        "a.example",
        &ca.file("ca.crt"),
        "/tyk-api-test/get",
        "tlskey",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["X-Forwarded-Proto"], "https");
    let (status, _) = curl(
        port,
        "a.example",
        &ca.file("ca.crt"),
        "/tyk-api-test/get",
        "wrong",
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_disturb_no_other_client() {
    use tokio::io::AsyncWriteExt;
    let up = upstream().await;
    let ca = TestCa::new();
    ca.issue_server("gw");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"http_server_options": {"use_ssl": true, "certificates": [
            {"domain_name": "localhost", "cert_file": ca.file("gw.crt"), "key_file": ca.file("gw.key")}]}}))
        .start()
        .await;
    let port = gw.addr().port();
    let mut garbage = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x16\x03garbage")
        .await
        .unwrap();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        // A ClientHello's first bytes, then nothing.
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        stalled.push(s);
    }
    add_key_over_tls(port, "localhost", &ca, "calm").await;
    let started = std::time::Instant::now();
    let (status, body) = curl(
        port,
        "localhost",
        &ca.file("ca.crt"),
        "/tyk-api-test/get",
        "calm",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_reload_serves_new_certificates_to_new_connections() {
    let up = upstream().await;
    let ca = TestCa::new();
    ca.issue_server("first");
    ca.issue_server("second");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    std::fs::copy(ca.file("first.crt"), &cert).unwrap();
    std::fs::copy(ca.file("first.key"), &key).unwrap();
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(
            json!({"http_server_options": {"use_ssl": true, "certificates": [
            {"domain_name": "localhost", "cert_file": cert, "key_file": key}]}}),
        )
        .start()
        .await;
    let port = gw.addr().port();
    assert!(
        handshake(port, "localhost", &[])
            .await
            .contains("tollgate test first")
    );
    std::fs::copy(ca.file("second.crt"), &cert).unwrap();
    std::fs::copy(ca.file("second.key"), &key).unwrap();
    gw.gateway.reload().await;
    assert!(
        handshake(port, "localhost", &[])
            .await
            .contains("tollgate test second")
    );
    // A file that cannot be used keeps the certificate in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    gw.gateway.reload().await;
    assert!(
        handshake(port, "localhost", &[])
            .await
            .contains("tollgate test second")
    );
}

/// A WebSocket client (Python's `websockets`): sends a text and a binary message through
/// `url` with the key and prints the echoes, or the handshake's refusal status.
const WS_CLIENT: &str = r#"
import asyncio, sys
import websockets

async def main(url, key):
    headers = {"authorization": key} if key else {}
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send("hello")
            print(await ws.recv())
            await ws.send(b"\x00\x01")
            print((await ws.recv()).hex())
    except websockets.exceptions.InvalidStatus as refused:
        print("status", refused.response.status_code)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

async fn websocket(url: &str, key: &str) -> String {
    let (ok, out, err) = run("python3", &["-c", WS_CLIENT, url, key]).await;
    assert!(
        ok,
        "the client ran (run scripts/test to install websockets): {err}"
    );
    out
}

#[tokio::test]
async fn a_websocket_is_authenticated_then_tunnelled_both_ways() {
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(json!({"http_server_options": {"enable_websockets": true}}))
        .start()
        .await;
    gw.add_key("wskey", support::seed_key()).await;
    let url = format!("ws://{}/tyk-api-test/ws", gw.addr());
    assert_eq!(websocket(&url, "wskey").await, "hello\n0001\n");
    // The upgrade goes through auth like any request.
    assert_eq!(websocket(&url, "").await, "status 401\n");
    assert_eq!(websocket(&url, "wrong").await, "status 403\n");

    // Off (Tyk's default), the upgrade headers are hop-by-hop: the upstream sees a plain GET.
    let plain = gateway().api(sample_api(&up.url(""))).start().await;
    plain.add_key("wskey", support::seed_key()).await;
    let url = format!("ws://{}/tyk-api-test/ws", plain.addr());
    assert_eq!(websocket(&url, "wskey").await, "status 400\n");
}

#[tokio::test]
async fn max_request_body_size_refuses_larger_bodies_declared_or_streamed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream().await;
    let mut keyless = sample_api(&up.url(""));
    keyless["use_keyless"] = json!(true);
    let gw = gateway()
        .api(keyless)
        .config(json!({"http_server_options": {"max_request_body_size": 10}}))
        .start()
        .await;
    let post = |body: &'static str| {
        let url = gw.url("/tyk-api-test/post");
        let client = gw.client.clone();
        async move {
            client
                .request("POST", &url, &[], Some(body.as_bytes().to_vec()))
                .await
        }
    };
    assert_eq!(post("0123456789").await.status, 200, "at the limit");
    let r = post("0123456789a").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (413, "Request Entity Too Large")
    );

    // A chunked body declares no length: it is cut off once past the limit.
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /tyk-api-test/post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn at_max_connections_no_more_are_taken_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream().await;
    let mut keyless = sample_api(&up.url(""));
    keyless["use_keyless"] = json!(true);
    let gw = gateway()
        .api(keyless)
        .config(json!({"http_server_options": {"max_connections": 2}}))
        .start()
        .await;
    let first = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let _second = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    third
        .write_all(b"GET /tyk-api-test/get HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut answer)).await;
    assert!(
        waited.is_err(),
        "the third connection waits while two are open"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("served once one closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn read_timeout_and_write_timeout_bound_a_request_and_its_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream().await;
    let gw = gateway()
        .api(api("open", "/open/", &up.url("")))
        .config(json!({"http_server_options": {"read_timeout": 2, "write_timeout": 3}}))
        .start()
        .await;
    // Reads until the gateway closes: what it sent, and after how long.
    async fn closed(mut client: tokio::net::TcpStream) -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut all))
            .await
            .expect("closed within 20 s")
            .unwrap();
        (
            String::from_utf8_lossy(&all).into_owned(),
            started.elapsed(),
        )
    }

    let mut slow_head = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    slow_head
        .write_all(b"GET /open/get HTTP/1.1\r\n")
        .await
        .unwrap();
    let (sent, after) = closed(slow_head).await;
    assert!(sent.is_empty(), "{sent}");
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(4),
        "{after:?}"
    );

    let mut slow_answer = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    slow_answer
        .write_all(b"GET /open/delay/6 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (sent, after) = closed(slow_answer).await;
    assert!(sent.is_empty(), "{sent}");
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(5),
        "{after:?}"
    );

    // Within both, a request is answered as ever.
    assert_eq!(gw.get_with_key("/open/delay/1", None).await.status, 200);
}
