//! Real Redis, Sentinel and HAProxy processes on free loopback ports, each in its own temp
//! dir, killed on drop (also when the test panics). Tests fail when a binary is missing;
//! `scripts/test` installs them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use redis::Value;

use super::{Process, free_port};

fn spawn(program: &str, args: &[String], dir: &std::path::Path) -> Process {
    let log = std::fs::File::create(dir.join(format!("{program}.log"))).unwrap();
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (run scripts/test to install it): {e}"));
    Process { child }
}

/// Runs one command against `port` and returns the reply.
pub async fn cmd(port: u16, args: &[&str]) -> redis::RedisResult<Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(&mut conn).await
}

/// The reply as text (bulk or simple string), or "" for anything else.
pub fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        other => format!("{other:?}"),
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One `redis-server` that speaks only TLS, with certificates from a test CA made for it by
/// `openssl`: the server's (for 127.0.0.1) and a client's. `tls-auth-clients` as asked.
pub struct TlsRedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _process: Process,
}

impl TlsRedisServer {
    pub async fn start(require_client_certificate: bool) -> Self {
        let ca = super::tls::TestCa::new();
        ca.issue_server("server");
        ca.issue_client("client");
        let dir = ca.dir;
        let port = free_port();
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            if require_client_certificate {
                "yes"
            } else {
                "no"
            },
            "--dir",
            ".",
            "--save",
            "",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let process = spawn("redis-server", &args, dir.path());
        assert!(
            super::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await,
            "redis-server (TLS) did not listen"
        );
        Self {
            port,
            dir,
            _process: process,
        }
    }

    /// The path of one of the PEM files: `ca.crt`, `client.crt`, `client.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A `redis-sentinel` that speaks only TLS (this server's certificates) and monitors this
    /// server as `mymaster` over TLS.
    pub async fn sentinel(&self) -> TlsSentinel {
        let port = free_port();
        let conf = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file server.crt\ntls-key-file server.key\n\
             tls-ca-cert-file ca.crt\ntls-auth-clients no\ntls-replication yes\ndir .\n\
             sentinel monitor mymaster 127.0.0.1 {} 1\n",
            self.port
        );
        let path = self.dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let process = spawn(
            "redis-sentinel",
            &[path.display().to_string()],
            self.dir.path(),
        );
        assert!(
            super::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await,
            "redis-sentinel (TLS) did not listen"
        );
        TlsSentinel {
            port,
            _process: process,
        }
    }
}

/// A TLS-only sentinel; see [`TlsRedisServer::sentinel`].
pub struct TlsSentinel {
    pub port: u16,
    _process: Process,
}

impl TlsSentinel {
    /// A command to the sentinel over TLS (its certificate not checked).
    pub async fn cmd(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let client = redis::Client::open(format!("rediss://127.0.0.1:{}/#insecure", self.port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut conn).await
    }
}

/// One `redis-server`, with AOF on (fsync always) so that a restart keeps every write.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Option<Process>,
    replica_of: Option<u16>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    pub async fn replica_of(master: u16) -> Self {
        Self::start_inner(Some(master)).await
    }

    async fn start_inner(replica_of: Option<u16>) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            process: None,
            replica_of,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            ".",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--enable-debug-command",
            "yes",
            "--protected-mode",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(master) = self.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        self.process = Some(spawn("redis-server", &args, self.dir.path()));
        let port = self.port;
        wait_until(
            "redis-server to answer",
            Duration::from_secs(10),
            || async move { matches!(cmd(port, &["PING"]).await, Ok(v) if text(&v) == "PONG") },
        )
        .await;
        if self.replica_of.is_some() {
            wait_until("the replica to sync", Duration::from_secs(20), || async move {
                matches!(cmd(port, &["INFO", "replication"]).await, Ok(v) if text(&v).contains("master_link_status:up"))
            })
            .await;
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        self.process.take();
    }

    /// Starts again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Freezes the server for `secs` (`DEBUG SLEEP`), returning at once.
    pub fn freeze(&self, secs: u32) {
        let port = self.port;
        tokio::spawn(async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let _: redis::RedisResult<Value> = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(secs)
                    .query_async(&mut conn)
                    .await;
            }
        });
    }

    pub async fn role(&self) -> String {
        match cmd(self.port, &["ROLE"]).await {
            Ok(Value::Array(items)) => items.first().map(text).unwrap_or_default(),
            _ => String::new(),
        }
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        match cmd(self.port, &["GET", key]).await.ok()? {
            Value::Nil => None,
            v => Some(text(&v)),
        }
    }
}

pub struct Sentinel {
    pub port: u16,
    _dir: tempfile::TempDir,
    _process: Process,
}

pub struct HaProxy {
    pub port: u16,
    _dir: tempfile::TempDir,
    _process: Process,
}

/// The seed's layout: 1 master + 2 replicas, 3 sentinels (quorum 2), HAProxy with the seed's
/// `role:master` check.
pub struct SeedLayout {
    pub redis: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
    pub haproxy: HaProxy,
}

pub struct SeedLayoutBuilder {
    down_after_ms: u64,
}

impl SeedLayout {
    pub fn builder() -> SeedLayoutBuilder {
        SeedLayoutBuilder {
            down_after_ms: 5000,
        }
    }

    /// `host:port` of every sentinel, for `storage.addrs`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The instance that is master right now, by asking each.
    pub async fn master_index(&self) -> Option<usize> {
        for (i, r) in self.redis.iter().enumerate() {
            if r.role().await == "master" {
                return Some(i);
            }
        }
        None
    }

    /// The master according to the sentinels.
    pub async fn sentinel_master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            if let Ok(Value::Array(items)) =
                cmd(s.port, &["SENTINEL", "get-master-addr-by-name", "mymaster"]).await
            {
                return items.get(1).and_then(|p| text(p).parse().ok());
            }
        }
        None
    }
}

impl SeedLayoutBuilder {
    pub fn down_after(mut self, ms: u64) -> Self {
        self.down_after_ms = ms;
        self
    }

    pub async fn start(self) -> SeedLayout {
        let master = RedisServer::start().await;
        let a = RedisServer::replica_of(master.port).await;
        let b = RedisServer::replica_of(master.port).await;
        let redis = vec![master, a, b];
        let mport = redis[0].port;
        wait_until(
            "both replicas in sync",
            Duration::from_secs(20),
            || async move {
                match cmd(mport, &["INFO", "replication"]).await {
                    Ok(v) => text(&v).contains("connected_slaves:2"),
                    Err(_) => false,
                }
            },
        )
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor mymaster 127.0.0.1 {mport} 2\n\
                 sentinel down-after-milliseconds mymaster {down}\nsentinel failover-timeout mymaster 30000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = dir.path().display(),
                down = self.down_after_ms,
            );
            let path: PathBuf = dir.path().join("sentinel.conf");
            std::fs::write(&path, conf).unwrap();
            let process = spawn("redis-sentinel", &[path.display().to_string()], dir.path());
            sentinels.push(Sentinel {
                port,
                _dir: dir,
                _process: process,
            });
        }
        for s in &sentinels {
            let port = s.port;
            wait_until("each sentinel to see both replicas and its peers", Duration::from_secs(30), || async move {
                let replicas = matches!(cmd(port, &["SENTINEL", "replicas", "mymaster"]).await, Ok(Value::Array(l)) if l.len() == 2);
                let peers = matches!(cmd(port, &["SENTINEL", "sentinels", "mymaster"]).await, Ok(Value::Array(l)) if l.len() == 2);
                replicas && peers
            })
            .await;
        }
        let haproxy = haproxy_in_front(&redis).await;
        SeedLayout {
            redis,
            sentinels,
            haproxy,
        }
    }
}

/// HAProxy routing to whichever of `redis` answers `role:master`, with the seed's
/// `haproxy.cfg` settings: its health check and its 6 s idle timeouts.
pub async fn haproxy_in_front(redis: &[RedisServer]) -> HaProxy {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = format!(
        "global\n  maxconn 1024\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 6s\n  timeout server 6s\n\
         frontend redis_front\n  bind 127.0.0.1:{port}\n  default_backend redis_back\n\
         backend redis_back\n  option tcp-check\n  tcp-check connect\n  tcp-check send PING\\r\\n\n  tcp-check expect string +PONG\n\
           tcp-check send info\\ replication\\r\\n\n  tcp-check expect string role:master\n  tcp-check send QUIT\\r\\n\n  tcp-check expect string +OK\n"
    );
    for (i, r) in redis.iter().enumerate() {
        conf.push_str(&format!(
            "  server redis-{i} 127.0.0.1:{} check inter 1s\n",
            r.port
        ));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let process = spawn(
        "haproxy",
        &["-db".into(), "-f".into(), path.display().to_string()],
        dir.path(),
    );
    wait_until("HAProxy to route to the master", Duration::from_secs(15), || async move {
        matches!(cmd(port, &["ROLE"]).await, Ok(Value::Array(items)) if items.first().map(text).as_deref() == Some("master"))
    })
    .await;
    HaProxy {
        port,
        _dir: dir,
        _process: process,
    }
}
