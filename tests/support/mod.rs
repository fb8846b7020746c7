//! Shared test harness: real servers on free loopback ports, each stopped on drop (also when
//! a test panics), and a small HTTP client.
#![allow(dead_code)]

pub mod http;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::config::GatewayConfig;
use tollgate::gateway::Gateway;
use tollgate::server::{Serves, serve_gateway};
use tollgate::store::{MemoryStore, SessionStore};

pub use self::http::{Client, TestResponse};

pub const SECRET: &str = "test-secret";

/// A loopback port for a server a test is about to start: free a moment ago (bound, then
/// released), never handed out twice by one test binary, and below the kernel's ephemeral
/// range (32768 and up), so that no outgoing connection, such as a replica's to its master,
/// can take it before the server binds it. Port 0's answer risked both.
pub fn free_port() -> u16 {
    const FIRST: u32 = 12_000;
    const COUNT: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Binaries run one after another; starting each at its own place keeps a port that a
    // stray server of an earlier one still holds out of the way as well.
    let start = std::process::id() % 100 * 200;
    for _ in 0..COUNT {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let port = u16::try_from(port).expect("ports stay below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    )
}

/// A task-backed server that stops when dropped and re-raises its panic on `stop`.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and waits for it; a panic inside it fails the caller.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The built-in httpbin-like upstream, in process.
pub async fn upstream() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(tollgate::upstream::serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// Tyk's sample API definition pointed at `target`.
pub fn sample_api(target: &str) -> Value {
    let mut api: Value =
        serde_json::from_str(include_str!("../fixtures/app_sample.json")).expect("fixture");
    api["proxy"]["target_url"] = json!(target);
    api
}

/// The seed's key body, as its bootstrap script sends it.
pub fn seed_key() -> Value {
    serde_json::from_str(include_str!("../fixtures/seed_key.json")).expect("fixture")
}

/// Builds an in-process gateway with its own app directory.
pub struct GatewayBuilder {
    apis: Vec<Value>,
    config: Value,
    store: Option<Arc<dyn SessionStore>>,
}

pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        apis: Vec::new(),
        config: json!({"secret": SECRET, "storage": {"type": "memory"}}),
        store: None,
    }
}

impl GatewayBuilder {
    pub fn api(mut self, definition: Value) -> Self {
        self.apis.push(definition);
        self
    }

    /// Merges `patch` into the tyk.conf (one level deep for objects).
    pub fn config(mut self, patch: Value) -> Self {
        merge(&mut self.config, patch);
        self
    }

    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    pub async fn start(self) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let app_path = dir.path().join("apps");
        std::fs::create_dir_all(&app_path).unwrap();
        for (i, api) in self.apis.iter().enumerate() {
            std::fs::write(
                app_path.join(format!("api{i}.json")),
                serde_json::to_vec_pretty(api).unwrap(),
            )
            .unwrap();
        }
        let mut config = self.config;
        config["app_path"] = json!(app_path);
        config["listen_address"] = json!("127.0.0.1");
        let loaded = GatewayConfig::from_value(config, |_| None).expect("test config");
        loaded.config.validate().expect("valid test config");
        let store = match self.store {
            Some(store) => store,
            None => tollgate::store::open(&loaded.config).await.expect("store"),
        };
        let gateway = Gateway::new(loaded.config, store).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let max = gateway.config.http_server_options.max_connections;
        let task = tokio::spawn(serve_gateway(
            gateway.clone(),
            listener,
            Serves::Public,
            max,
            async {
                let _ = rx.await;
            },
        ));
        TestGateway {
            server: Running {
                addr,
                shutdown: Some(tx),
                task: Some(task),
            },
            gateway,
            app_path,
            _dir: dir,
            client: Client::new(),
        }
    }
}

/// Merges `patch` into `base`: objects field by field, anything else replaced.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                match base.get_mut(&k) {
                    Some(existing @ Value::Object(_)) if v.is_object() => merge(existing, v),
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

pub fn memory_store() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

/// An in-process gateway node and a client for it.
pub struct TestGateway {
    pub server: Running,
    pub gateway: Arc<Gateway>,
    pub app_path: PathBuf,
    _dir: tempfile::TempDir,
    pub client: Client,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// GET `path` with an `authorization` key (or none).
    pub async fn get_with_key(&self, path: &str, key: Option<&str>) -> TestResponse {
        let headers: Vec<(&str, &str)> =
            key.map(|k| vec![("authorization", k)]).unwrap_or_default();
        self.client
            .request("GET", &self.url(path), &headers, None)
            .await
    }

    /// `/hello`: the node's health, with the definitions and fields it could not load.
    pub async fn hello(&self) -> Value {
        self.client
            .request("GET", &self.url("/hello"), &[], None)
            .await
            .json()
    }

    /// An admin request with the right secret.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> TestResponse {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.client
            .request(
                method,
                &self.url(path),
                &[("x-tyk-authorization", SECRET)],
                body,
            )
            .await
    }

    /// Creates `key` through the admin API with the seed's body (access to api "1").
    pub async fn add_key(&self, key: &str, body: Value) -> TestResponse {
        let response = self
            .admin("POST", &format!("/tyk/keys/{key}"), Some(body))
            .await;
        assert_eq!(response.status, 200, "creating {key}: {}", response.text());
        response
    }

    pub fn app_path(&self) -> &Path {
        &self.app_path
    }

    /// The storage id of the custom key `name` written for the seed's org (`default`).
    pub fn key_id(&self, name: &str) -> String {
        let hasher = &self.gateway.hasher;
        hasher
            .storage_id(&hasher.token("default", name))
            .into_owned()
    }
}

/// A child process killed on drop.
pub struct Process {
    pub child: std::process::Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `addr` until it accepts a TCP connection.
pub async fn wait_for_port(addr: SocketAddr, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Runs `program` with `args` (without blocking the runtime the gateway runs on) and returns
/// its status, stdout and stderr.
pub async fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), out)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/test to install it): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `/metrics` scrape as Prometheus's own text parser (Python's `prometheus_client`) reads
/// it: the test fails if the parser refuses the text.
pub struct Scrape {
    pub families: serde_json::Map<String, Value>,
    samples: Vec<(String, serde_json::Map<String, Value>, f64)>,
    pub text: String,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels`; `None` if none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// The labels of the first sample named `name`.
    pub fn labels(&self, name: &str) -> Option<&serde_json::Map<String, Value>> {
        self.samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
    }
}

/// Scrapes `url` (a node's `/metrics`) and parses it with `tests/fixtures/parse_metrics.py`.
pub async fn scrape(url: &str) -> Scrape {
    let r = Client::new().request("GET", url, &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let out = run_fixture("parse_metrics.py", text.as_bytes()).await;
    assert!(
        out.status.success(),
        "Prometheus's parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    let samples = parsed["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            let value = match &s[2] {
                Value::String(inf) if inf == "+Inf" => f64::INFINITY,
                v => v.as_f64().expect("a number"),
            };
            (
                s[0].as_str().expect("name").to_owned(),
                s[1].as_object().expect("labels").clone(),
                value,
            )
        })
        .collect();
    Scrape {
        families: parsed["families"].as_object().expect("families").clone(),
        samples,
        text,
    }
}

/// Runs the Python script `tests/fixtures/<script>` with `input` on its standard input.
pub async fn run_fixture(script: &str, input: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let path = format!("{}/tests/fixtures/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new("python3")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write to the script");
    drop(stdin);
    child.wait_with_output().await.expect("the script ran")
}
