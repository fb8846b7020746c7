//! HTTP/2: to clients (ALPN on the TLS listener, h2c with prior knowledge on a plain one),
//! to upstreams (`h2c://` targets, ALPN with `proxy_enable_http2`), gRPC end to end with
//! grpcio, and the bounds on HTTP/2 abuse.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use support::tls::{TestCa, TlsFront};
use support::{gateway, run, sample_api, seed_key, upstream};

/// A keyless API on `listen_path` proxying to `target`.
fn open_api(id: &str, listen_path: &str, target: &str) -> Value {
    let mut api = sample_api(target);
    api["api_id"] = json!(id);
    api["use_keyless"] = json!(true);
    api["proxy"]["listen_path"] = json!(listen_path);
    api
}

/// curl with `args`: the HTTP version it spoke, the status and the body (0 and curl's
/// complaint when it got no response).
async fn curl(args: &[&str]) -> (String, u16, String) {
    let mut all = vec!["-sS", "-w", "\n%{http_version} %{http_code}"];
    all.extend_from_slice(args);
    let (_, out, err) = run("curl", &all).await;
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", "0 0"));
    let (version, code) = tail.split_once(' ').unwrap_or(("0", "0"));
    (
        version.to_owned(),
        code.trim().parse().unwrap_or(0),
        format!("{body}{err}"),
    )
}

/// A gateway config serving TLS for localhost with a certificate from `ca`.
fn tls_listener(ca: &TestCa, http2: bool) -> Value {
    json!({"http_server_options": {
        "use_ssl": true,
        "enable_http2": http2,
        "certificates": [{"domain_name": "localhost", "cert_file": ca.file("gw.crt"),
            "key_file": ca.file("gw.key")}],
    }})
}

#[tokio::test]
async fn clients_speak_http2_by_alpn_over_tls_and_with_prior_knowledge_in_the_clear() {
    let up = upstream().await;
    let ca = TestCa::new();
    ca.issue_server("gw");
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(tls_listener(&ca, true))
        .start()
        .await;
    let port = gw.addr().port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let base = format!("https://localhost:{port}");
    let cacert = ca.file("ca.crt");
    let tls = ["--http2", "--cacert", &cacert, "--resolve", &resolve];
    // The Gateway API over HTTP/2 too.
    let secret = format!("x-tyk-authorization: {}", support::SECRET);
    let key_body = seed_key().to_string();
    let create = format!("{base}/tyk/keys/h2key");
    let args = [&tls[..], &["-H", &secret, "-d", &key_body, &create]].concat();
    let (version, status, body) = curl(&args).await;
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");

    let get = format!("{base}/tyk-api-test/get");
    let args = [&tls[..], &["-H", "authorization: h2key", &get]].concat();
    let (version, status, body) = curl(&args).await;
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["X-Forwarded-Proto"], "https");
    let args = [&tls[..], &["-H", "authorization: wrong", &get]].concat();
    let (version, status, body) = curl(&args).await;
    assert_eq!((version.as_str(), status), ("2", 403), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "Access to this API has been disallowed"})
    );

    // h2c with prior knowledge beside HTTP/1.1 on one plain port.
    let mut preserving = open_api("open", "/open/", &up.url(""));
    preserving["proxy"]["preserve_host_header"] = json!(true);
    let plain = gateway()
        .api(preserving)
        .config(json!({"http_server_options": {"enable_http2": true}}))
        .start()
        .await;
    let url = plain.url("/open/get");
    let (version, status, body) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed["headers"]["Host"],
        format!("127.0.0.1:{}", plain.addr().port()),
        ":authority is the Host passed on"
    );
    let (version, status, _) = curl(&["--http1.1", &url]).await;
    assert_eq!((version.as_str(), status), ("1.1", 200));

    // Off (Tyk's default): ALPN offers HTTP/1.1 alone, and a plain port speaks nothing else.
    let off = gateway()
        .api(sample_api(&up.url("")))
        .config(tls_listener(&ca, false))
        .start()
        .await;
    let resolve = format!("localhost:{}:127.0.0.1", off.addr().port());
    let get = format!("https://localhost:{}/tyk-api-test/get", off.addr().port());
    let (version, status, body) = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-H",
        "authorization: wrong",
        &get,
    ])
    .await;
    assert_eq!((version.as_str(), status), ("1.1", 403), "{body}");
    let h1_only = gateway()
        .api(open_api("open", "/open/", &up.url("")))
        .start()
        .await;
    let (_, status, _) = curl(&["--http2-prior-knowledge", &h1_only.url("/open/get")]).await;
    assert_eq!(status, 0, "no HTTP/2 answer from an HTTP/1.1-only port");
}

#[tokio::test]
async fn upstreams_get_http2_for_h2c_targets_and_https_ones_offered_it() {
    let up = upstream().await;
    let ca = TestCa::new();
    ca.issue_server("upstream");
    let front = TlsFront::start(
        &ca.file("upstream.crt"),
        &ca.file("upstream.key"),
        None,
        up.addr,
    )
    .await;
    let h2c_target = format!("h2c://127.0.0.1:{}", up.addr.port());
    let mut tls_api = open_api("tls", "/tls/", &front.url(""));
    tls_api["proxy"]["transport"] = json!({"ssl_insecure_skip_verify": true});
    let gw = gateway()
        .api(open_api("h2c", "/h2c/", &h2c_target))
        .api(tls_api.clone())
        .config(json!({"proxy_enable_http2": true}))
        .start()
        .await;

    let r = gw.get_with_key("/h2c/get?x=1", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["Host"],
        format!("127.0.0.1:{}", up.addr.port())
    );
    assert_eq!(r.json()["args"], json!({"x": "1"}));

    let r = gw.get_with_key("/tls/get", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Concurrent requests share the one HTTP/2 connection.
    let many = (0..8).map(|_| gw.get_with_key("/tls/delay/0.2", None));
    for r in futures_util::future::join_all(many).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(front.http2.load(Ordering::SeqCst), 1, "ALPN agreed on h2");

    // Without proxy_enable_http2, HTTPS upstreams are offered HTTP/1.1 alone.
    let h1 = gateway().api(tls_api).start().await;
    assert_eq!(h1.get_with_key("/tls/get", None).await.status, 200);
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(front.http2.load(Ordering::SeqCst), 1);
}

const GRPC_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_echo.py");

/// The fixture's gRPC server (grpcio, h2c), killed on drop, and its port.
async fn grpc_server() -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new("python3")
        .args([GRPC_FIXTURE, "server"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(stdout);
    let read = stdout.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the gRPC server started (run scripts/test to install grpcio)")
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a port: {line:?}"));
    (child, port)
}

/// The fixture's client calling through `target` with `key` (`-`: none), over TLS with `ca`.
async fn grpc_call(target: &str, key: &str, ca: Option<&str>) -> Value {
    let mut args = vec![GRPC_FIXTURE, "client", target, key];
    args.extend(ca);
    let (ok, out, err) = run("python3", &args).await;
    assert!(ok, "grpc client: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

/// The seed's API for the gRPC service: its listen path is the service's name, kept.
fn grpc_api(port: u16) -> Value {
    let mut api = sample_api(&format!("h2c://127.0.0.1:{port}"));
    api["proxy"]["listen_path"] = json!("/test.Echo/");
    api["proxy"]["strip_listen_path"] = json!(false);
    api
}

#[tokio::test]
async fn grpc_passes_through_with_its_trailers_statuses_and_auth() {
    let (_server, port) = grpc_server().await;
    let gw = gateway()
        .api(grpc_api(port))
        .config(json!({"http_server_options": {"enable_http2": true}}))
        .start()
        .await;
    gw.add_key("grpckey", seed_key()).await;
    let target = gw.addr().to_string();

    let out = grpc_call(&target, "grpckey", None).await;
    assert_eq!(
        out["unary"],
        json!({"code": "OK", "reply": "echo:hello", "trailers": {"x-echo-trailer": "kept"}})
    );
    assert_eq!(
        out["stream"],
        json!({"code": "NOT_FOUND", "details": "no more", "parts": ["part0", "part1", "part2"],
            "trailers": {"x-stream-trailer": "end"}})
    );
    // Refusals are HTTP statuses, which gRPC clients map to their codes.
    let out = grpc_call(&target, "-", None).await;
    assert_eq!(out["unary"]["code"], "UNAUTHENTICATED", "{out}");
    let out = grpc_call(&target, "wrong", None).await;
    assert_eq!(out["unary"]["code"], "PERMISSION_DENIED", "{out}");

    // Over TLS, as gRPC clients usually connect.
    let ca = TestCa::new();
    ca.issue_server("gw");
    let tls = gateway()
        .api(grpc_api(port))
        .config(tls_listener(&ca, true))
        .store(gw.gateway.sessions.clone())
        .start()
        .await;
    let out = grpc_call(&tls.addr().to_string(), "grpckey", Some(&ca.file("ca.crt"))).await;
    assert_eq!(out["unary"]["reply"], "echo:hello", "{out}");
    assert_eq!(
        out["stream"]["trailers"],
        json!({"x-stream-trailer": "end"})
    );
}

/// An HTTP/2 connection to `addr` with a raw client, its connection driven in a task.
async fn raw_http2(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

async fn raw_get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    url: &str,
    header: Option<(&str, String)>,
) -> Result<u16, h2::Error> {
    let mut request = http::Request::get(url);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let (response, _) = client
        .clone()
        .ready()
        .await?
        .send_request(request.body(()).unwrap(), true)?;
    Ok(response.await?.status().as_u16())
}

/// Streams the rapid-reset client opens at most.
const FLOOD_STREAMS: u32 = 200_000;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The rapid-reset attack (CVE-2023-44487) in raw frames, as no client library sends it:
/// streams opened and reset in batches of 100, each batch's RST_STREAMs right after its
/// HEADERS or `pause` later (when the gateway has taken the streams and begun their work),
/// until the gateway closes the connection or [`FLOOD_STREAMS`] are sent. Returns the
/// streams sent and whether the gateway had closed the connection 10 s after the last.
async fn rapid_reset(addr: SocketAddr, path: &str, pause: Option<Duration>) -> (u32, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = addr.to_string();
    // HPACK: :method GET, :scheme http (static table), :path and :authority as literals.
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, u8::try_from(authority.len()).unwrap()]);
    block.extend_from_slice(authority.as_bytes());
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let closed = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    writer.write_all(&opening).await.unwrap();
    let mut sent = 0;
    while sent < FLOOD_STREAMS && !closed.is_finished() {
        let (mut opened, mut reset) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let stream = 2 * sent + 1;
            opened.extend(frame(0x1, 0x1 | 0x4, stream, &block));
            reset.extend(frame(0x3, 0, stream, &0x8u32.to_be_bytes()));
            sent += 1;
        }
        if let Some(pause) = pause {
            if writer.write_all(&opened).await.is_err() {
                break;
            }
            tokio::time::sleep(pause).await;
        } else {
            reset = [opened, reset].concat();
        }
        if writer.write_all(&reset).await.is_err() {
            break;
        }
    }
    let closed_by_gateway = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .is_ok();
    (sent, closed_by_gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_is_bounded_and_disturbs_no_other_client() {
    let up = upstream().await;
    let gw = gateway()
        .api(open_api("open", "/open/", &up.url("")))
        .config(json!({"http_server_options": {"enable_http2": true}}))
        .start()
        .await;
    let url = gw.url("/open/get");
    let addr = gw.addr();
    let (mut client, _connection) = raw_http2(addr).await;
    assert_eq!(raw_get(&mut client, &url, None).await.unwrap(), 200);
    assert_eq!(client.current_max_send_streams(), 250, "streams at once");

    // A header block past the 16 KiB bound: 431 for that stream, the connection stays.
    let big = Some(("x-big", "a".repeat(20 * 1024)));
    assert_eq!(raw_get(&mut client, &url, big).await.unwrap(), 431);
    assert_eq!(raw_get(&mut client, &url, None).await.unwrap(), 200);

    // Rapid reset, while other clients are served: streams reset before the gateway takes
    // them (h2's bound of 20 pending), and streams reset once their upstream requests are
    // under way (the bound on cancellations).
    let flood = tokio::spawn(async move {
        let before_taken = rapid_reset(addr, "/open/get", None).await;
        let pause = Some(Duration::from_millis(30));
        let once_taken = rapid_reset(addr, "/open/delay/5", pause).await;
        (before_taken, once_taken)
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r = gw.get_with_key("/open/get", None).await;
        assert_eq!(r.status, 200);
        assert_eq!(raw_get(&mut client, &url, None).await.unwrap(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let (before_taken, once_taken) = tokio::time::timeout(Duration::from_secs(150), flood)
        .await
        .expect("the floods ended")
        .unwrap();
    // Whichever bound trips first (h2's 20 pending, or 1000 cancelled beyond those answered),
    // the gateway closes the connection; without the bounds it would serve the flood to its
    // end and keep the connection. How many streams were sent by then says little: loopback's
    // receive buffers grow to tens of megabytes, so most of the flood can be in them. The
    // bounds themselves are unit-tested in `connection`.
    for (flood, (sent, closed)) in [("before taken", before_taken), ("once taken", once_taken)] {
        assert!(
            closed,
            "{flood}: the connection stayed open after {sent} of {FLOOD_STREAMS} streams"
        );
    }
    assert!(
        slowest < Duration::from_secs(2),
        "other clients served throughout: slowest {slowest:?}"
    );
}
