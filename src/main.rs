//! The `tollgate` command: `serve`, `demo` and `upstream`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::net::TcpListener;

use tollgate::config::{GatewayConfig, Loaded};
use tollgate::gateway::Gateway;
use tollgate::server::{Serves, serve_gateway};
use tollgate::session::SessionState;
use tollgate::store;

// jemalloc keeps each size class on its own pages and, from a background thread, returns
// pages left unused for about a second: the buffers of a connection that parks (see
// `tollgate::connection`) go back to the system instead of staying resident between live
// objects, as they do with glibc's allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(version, about = "A Tyk-compatible API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway from a tyk.conf (JSON) or .toml file.
    Serve {
        #[arg(long, default_value = "tyk.conf")]
        conf: PathBuf,
        #[command(flatten)]
        workers: Workers,
    },
    /// Run a self-contained gateway: embedded store, built-in upstream, Tyk's sample API and
    /// the key `testkey`.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Print the effective configuration and exit.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        workers: Workers,
    },
    /// Run only the built-in httpbin-like upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
    },
    /// The seed's failover drill against a running layout: keyed traffic and key creation
    /// while the Redis master is frozen with DEBUG SLEEP; prints one line of figures.
    Drill {
        /// A gateway node's base URL; give it again for more nodes (traffic and key creation
        /// go to each in turn, and every acknowledged key is checked on every node).
        #[arg(long = "gateway", default_value = "http://127.0.0.1:8080")]
        gateways: Vec<String>,
        /// The gateway's admin secret.
        #[arg(long, env = "TYK_GW_SECRET")]
        secret: String,
        /// A sentinel (host:port) to find the master to freeze.
        #[arg(long, value_parser = parse_host_port)]
        sentinel: Option<(String, u16)>,
        #[arg(long, default_value = "mymaster")]
        master_name: String,
        /// The master (host:port) to freeze, when there is no sentinel to ask.
        #[arg(long, value_parser = parse_host_port)]
        redis: Option<(String, u16)>,
        #[arg(long, default_value_t = 30)]
        freeze_secs: u32,
        /// A shell command that makes the disruption instead of the freeze (a partition,
        /// a killed container); `--heal` undoes it `--freeze-secs` later.
        #[arg(long)]
        fault: Option<String>,
        /// A shell command run `--freeze-secs` after `--fault`.
        #[arg(long, requires = "fault")]
        heal: Option<String>,
        /// Keyed requests per second.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(5..=100_000))]
        keys: u64,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 45)]
        duration: u64,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Print the figures as a table, a row each, instead of one line.
        #[arg(long)]
        table: bool,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct Workers {
    /// Worker threads, each with its own runtime and SO_REUSEPORT listener (default: one
    /// per available CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

impl Workers {
    fn count(self) -> usize {
        self.workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

fn parse_host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port"))?;
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// Exit code for bad configuration or arguments, as clap uses for usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read before logging starts: tyk.conf's `log_level` sets the level.
    let mut preloaded = match &cli.command {
        Command::Serve { conf, .. } => Some(GatewayConfig::load(conf)),
        _ => None,
    };
    let level = match &preloaded {
        Some(Ok(loaded)) if !loaded.config.log_level.is_empty() => loaded.config.log_level.clone(),
        _ => "info".to_owned(),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        // Colour codes only for a terminal: a file or a pipe gets plain lines.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { conf, workers } => {
                let loaded = match preloaded.take() {
                    Some(loaded) => loaded,
                    None => GatewayConfig::load(&conf),
                }
                .map_err(Failure::Config)?;
                run_gateway(loaded, workers.count()).await
            }
            Command::Demo {
                listen,
                print_config,
                workers,
            } => demo(listen, print_config, workers.count()).await,
            Command::Drill {
                gateways,
                secret,
                sentinel,
                master_name,
                redis,
                freeze_secs,
                fault,
                heal,
                rate,
                keys,
                duration,
                json,
                table,
            } => {
                let config = tollgate::drill::DrillConfig {
                    gateways: gateways
                        .iter()
                        .map(|g| g.trim_end_matches('/').to_owned())
                        .collect(),
                    secret,
                    rate,
                    keys: keys as usize,
                    duration: std::time::Duration::from_secs(duration),
                    ..Default::default()
                };
                let report = match fault {
                    Some(fault) => {
                        let heal_after = std::time::Duration::from_secs(u64::from(freeze_secs));
                        let disruption = tollgate::drill::run_fault(fault, heal, heal_after);
                        tollgate::drill::run(config, disruption).await
                    }
                    None => {
                        let disruption = tollgate::drill::freeze_master(
                            sentinel,
                            redis,
                            master_name,
                            freeze_secs,
                        );
                        tollgate::drill::run(config, disruption).await
                    }
                }
                .map_err(anyhow::Error::from)?;
                if table {
                    print!("{}", report.table());
                } else {
                    println!("{report}");
                }
                if let Some(path) = json {
                    let text =
                        serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?;
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                Ok(())
            }
            Command::Upstream { listen } => {
                let listener = bind(listen).await?;
                tracing::info!(
                    "upstream listening on http://{}",
                    listener.local_addr().map_err(anyhow::Error::from)?
                );
                tollgate::upstream::serve(listener, shutdown_signal()).await;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("tollgate: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(tollgate::config::ConfigError),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

async fn bind(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
) -> Result<TcpListener, Failure> {
    let text = addr.to_string();
    Ok(TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {text}"))?)
}

/// Opens the store, loads the APIs, binds, and serves until SIGINT/SIGTERM; SIGHUP reloads.
async fn run_gateway(loaded: Loaded, workers: usize) -> Result<(), Failure> {
    let gateway = start_gateway(loaded).await?;
    let addr = gateway.config.listen_addr();
    serve_workers(gateway, &addr, workers, |addr| {
        tracing::info!("gateway listening on http://{addr}");
    })
    .await
}

/// Binds `workers` SO_REUSEPORT sockets on `addr` (all before serving, so a bind error stops
/// start-up), then runs one current-thread runtime per worker: a request, its upstream
/// connection and its wake-ups stay on one thread. Worker 0 runs on the calling runtime,
/// which also keeps the store's background tasks.
async fn serve_workers(
    gateway: Arc<Gateway>,
    addr: &str,
    workers: usize,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), Failure> {
    let mut addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("cannot resolve {addr}"))?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = reuseport_socket(addr).with_context(|| format!("cannot listen on {addr}"))?;
        // An ephemeral port is fixed by the first socket; the others join it.
        addr = socket.local_addr().map_err(anyhow::Error::from)?;
        sockets.push(socket);
    }
    on_bound(addr);
    let per_worker = gateway
        .config
        .http_server_options
        .connections_per_worker(workers);
    let control = match gateway.config.control_addr() {
        Some(control) => Some(bind(control).await?),
        None => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    let first = sockets.remove(0);
    for (i, socket) in sockets.into_iter().enumerate() {
        let (gateway, rx) = (gateway.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{}", i + 1))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = socket.listen(1024)?;
                    let until = until_stopped(rx);
                    serve_gateway(gateway, listener, Serves::Public, per_worker, until).await;
                    Ok::<_, std::io::Error>(())
                })
            })
            .map_err(anyhow::Error::from)?;
        threads.push(thread);
    }
    let listener = first.listen(1024).map_err(anyhow::Error::from)?;
    let control_worker = async {
        if let Some(listener) = control {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("Gateway API listening on http://{addr}");
            }
            let until = until_stopped(stopped.clone());
            let max = gateway.config.http_server_options.max_connections;
            serve_gateway(gateway.clone(), listener, Serves::Control, max, until).await;
        }
    };
    let until = until_stopped(stopped.clone());
    let main_worker = serve_gateway(gateway.clone(), listener, Serves::Public, per_worker, until);
    let signal = async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    };
    tokio::join!(main_worker, control_worker, signal);
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("worker failed: {e}"),
            Err(_) => tracing::error!("worker panicked"),
        }
    }
    Ok(())
}

async fn until_stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

async fn start_gateway(loaded: Loaded) -> Result<Arc<Gateway>, Failure> {
    if !loaded.unsupported.is_empty() {
        tracing::warn!(
            "configuration fields not supported by tollgate (ignored): {}",
            loaded.unsupported.join(", ")
        );
    }
    let sessions = store::open(&loaded.config).await.map_err(Failure::Config)?;
    let gateway = Gateway::new(loaded.config, sessions).map_err(Failure::Config)?;
    let reloader = gateway.clone();
    tokio::spawn(async move { reload_on_sighup(reloader).await });
    Ok(gateway)
}

#[cfg(unix)]
async fn reload_on_sighup(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading API definitions");
        gateway.reload().await;
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_gateway: Arc<Gateway>) {}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// Tyk's sample API definition (`apps/app_sample.json`), keyed, pointed at `target`.
fn sample_api(target: &str) -> serde_json::Value {
    json!({
        "name": "Tyk Test API",
        "api_id": "1",
        "org_id": "default",
        "definition": {"location": "header", "key": "version"},
        "use_keyless": false,
        "auth": {"auth_header_name": "authorization"},
        "version_data": {
            "not_versioned": true,
            "versions": {"Default": {"name": "Default", "expires": "3000-01-02 15:04", "use_extended_paths": true,
                "extended_paths": {"ignored": [], "white_list": [], "black_list": []}}}
        },
        "proxy": {"listen_path": "/tyk-api-test/", "target_url": target, "strip_listen_path": true},
        "do_not_track": true
    })
}

/// The demo goes through the same configuration path as `serve`: a generated tyk.conf and
/// app directory.
async fn demo(listen: SocketAddr, print_config: bool, workers: usize) -> Result<(), Failure> {
    let upstream = bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr().map_err(anyhow::Error::from)?;
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()
        .context("cannot create the demo's app directory")?;
    let app_path = dir.path().join("apps");
    write_demo_files(&app_path, &format!("http://{upstream_addr}"))?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let conf = json!({
        "listen_address": listen.ip().to_string(),
        "listen_port": listen.port(),
        "secret": secret,
        "app_path": app_path,
        "storage": {"type": "memory"},
    });
    let loaded = GatewayConfig::from_value(conf, |name| std::env::var(name).ok())
        .map_err(Failure::Config)?;
    loaded.config.validate().map_err(Failure::Config)?;
    if print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&loaded.config).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    tokio::spawn(tollgate::upstream::serve(upstream, std::future::pending()));
    let gateway = start_gateway(loaded).await?;
    let testkey: SessionState = serde_json::from_value(json!({
        "allowance": 1000, "rate": 1000, "per": 60, "expires": 0,
        "quota_max": -1, "quota_renewal_rate": 3600, "org_id": "default",
        "access_rights": {"1": {"api_id": "1", "api_name": "Tyk Test API", "versions": ["Default"]}}
    }))
    .map_err(anyhow::Error::from)?;
    // Stored as the Gateway API stores a custom key: under its token, bound by its verifier.
    let token = gateway.hasher.token("default", "testkey");
    let id = gateway.hasher.storage_id(&token).into_owned();
    let testkey = SessionState {
        tollgate_key_verifier: tollgate::session::KeyVerifier::of(&token).to_hex(),
        ..testkey
    };
    gateway
        .sessions
        .set(&id, &testkey, None)
        .await
        .map_err(anyhow::Error::from)?;
    let addr = gateway.config.listen_addr();
    serve_workers(gateway, &addr, workers, |addr| {
        println!("tollgate demo: gateway on http://{addr}, upstream on http://{upstream_addr}");
        println!("Admin secret (x-tyk-authorization): {secret}");
        println!(
            "Try:\n  curl http://localhost:{}/tyk-api-test/get -H 'authorization: testkey'",
            addr.port()
        );
    })
    .await?;
    drop(dir);
    Ok(())
}

fn write_demo_files(app_path: &Path, target: &str) -> Result<(), Failure> {
    std::fs::create_dir_all(app_path).context("cannot create the demo's app directory")?;
    let definition = serde_json::to_vec_pretty(&sample_api(target)).map_err(anyhow::Error::from)?;
    std::fs::write(app_path.join("app_sample.json"), definition)
        .context("cannot write the sample API")?;
    Ok(())
}
