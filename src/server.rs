//! The listener and the request pipeline: `path → api match → API limit → auth → limits → proxy`.
//!
//! Owns the [`Gateway`] (the shared state of one node), the accept loop, per-connection
//! HTTP/1.1 settings, the panic guard, and how a rejection becomes a JSON response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::admin;
use crate::api::{ApiTable, LoadError};
use crate::auth::{self, AuthContext, KeyHasher};
use crate::config::GatewayConfig;
use crate::connection;
use crate::guard::KeyGuard;
use crate::limits::{self, Limiter};
use crate::path;
use crate::policy::{PolicyLoadError, PolicyTable};
use crate::proxy::{UpstreamBody, UpstreamClient};
use crate::session::unix_now;
use crate::store::SessionStore;

/// Every response body: a streamed upstream body or a small buffered one.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// Largest request head (request line + headers) accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The client end of a connection, its address rendered once for `X-Forwarded-For`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip }
    }
}

/// The state one gateway node shares across connections.
pub struct Gateway {
    pub config: GatewayConfig,
    pub sessions: Arc<dyn SessionStore>,
    pub hasher: KeyHasher,
    pub limiter: Arc<Limiter>,
    pub guard: KeyGuard,
    /// Memory for admin request bodies being received.
    pub admin_bodies: admin::BodyBudget,
    apis: ArcSwap<ApiTable>,
    policies: ArcSwap<PolicyTable>,
    load_errors: ArcSwap<Vec<String>>,
    /// How long to wait for an upstream's response headers.
    proxy_timeout: Duration,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    /// Builds a node and loads the API definitions in `config.app_path`.
    pub fn new(config: GatewayConfig, sessions: Arc<dyn SessionStore>) -> Arc<Self> {
        let timeout = Duration::from_secs_f64(config.proxy_default_timeout);
        let limiter = Arc::new(Limiter::new(sessions.clone()));
        limiter.spawn_flusher(Duration::from_millis(500));
        let gateway = Arc::new(Self {
            limiter,
            hasher: KeyHasher::new(config.hash_keys, &config.hash_key_function),
            guard: KeyGuard::new(&config.auth_failure_limit),
            admin_bodies: admin::BodyBudget::default(),
            sessions,
            apis: ArcSwap::from_pointee(ApiTable::default()),
            policies: ArcSwap::from_pointee(PolicyTable::default()),
            load_errors: ArcSwap::from_pointee(Vec::new()),
            proxy_timeout: timeout,
            reload_lock: tokio::sync::Mutex::new(()),
            config,
        });
        let loaded = load_all(&gateway.app_path(), &gateway.config.policies);
        gateway.install(loaded);
        if let Some(mut asked) = gateway.sessions.reloads() {
            let node = Arc::downgrade(&gateway);
            tokio::spawn(async move {
                while asked.changed().await.is_ok() {
                    let Some(gateway) = node.upgrade() else { break };
                    tracing::info!("group reload asked for by another node");
                    gateway.reload().await;
                }
            });
        }
        gateway
    }

    pub fn app_path(&self) -> PathBuf {
        PathBuf::from(&self.config.app_path)
    }

    /// The routing table in force.
    pub fn apis(&self) -> arc_swap::Guard<Arc<ApiTable>> {
        self.apis.load()
    }

    /// The security policies in force.
    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicyTable>> {
        self.policies.load()
    }

    /// Definition and policy files that failed at the last load, as `path: reason`.
    pub fn load_errors(&self) -> Arc<Vec<String>> {
        self.load_errors.load_full()
    }

    /// Reloads the API definitions and policies and swaps each table whole: requests in
    /// flight keep the tables they started with.
    pub async fn reload(&self) {
        let _serial = self.reload_lock.lock().await;
        let (dir, policies) = (self.app_path(), self.config.policies.clone());
        let loaded = tokio::task::spawn_blocking(move || load_all(&dir, &policies)).await;
        match loaded {
            Ok(loaded) => self.install(loaded),
            Err(e) => tracing::error!("API reload failed: {e}"),
        }
    }

    fn install(&self, (table, errors, policies, policy_errors): Loaded) {
        for e in &policy_errors {
            tracing::warn!("policy skipped: {e}");
        }
        tracing::info!(policies = policies.all().len(), "policies loaded");
        self.policies.store(Arc::new(policies));
        let errors: Vec<String> = errors
            .iter()
            .map(ToString::to_string)
            .chain(policy_errors.iter().map(ToString::to_string))
            .collect();
        for e in errors.iter().take(errors.len() - policy_errors.len()) {
            tracing::warn!("API definition skipped: {e}");
        }
        for spec in table.specs() {
            if !spec.unhonoured.is_empty() {
                tracing::warn!(
                    api = spec.api_id(),
                    "API definition fields not honoured by tollgate (ignored): {}",
                    spec.unhonoured.join(", ")
                );
            }
        }
        tracing::info!(apis = table.len(), "API definitions loaded");
        self.apis.store(Arc::new(table));
        self.load_errors.store(Arc::new(errors));
    }

    /// One request through the pipeline; `upstream` is the calling worker's client.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: Peer,
        upstream: UpstreamClient,
    ) -> Response<Body> {
        if let Err(reason) = resolve_path(&mut req) {
            return error_response(StatusCode::BAD_REQUEST, reason);
        }
        if admin::owns(&self.config, req.uri().path()) {
            // Boxed: the admin future is large and rare; inline it would widen every request's.
            return Box::pin(admin::handle(&self, req)).await;
        }
        let apis = self.apis.load();
        let Some(spec) = apis.route(req.uri().path()).cloned() else {
            return not_found();
        };
        drop(apis);
        // The API's own limit first, as Tyk's RateLimitForAPI: it shields the key store too.
        // Boxed: the wait would otherwise widen every request's future, limited or not.
        if let Some(api_limit) = &spec.api_limit
            && Box::pin(self.limiter.admit(api_limit))
                .await
                .verdict()
                .is_err()
        {
            let e = limits::LimitError::ApiRateExceeded;
            return error_response(e.status(), &e.to_string());
        }
        let (mut parts, body) = req.into_parts();
        let version = match &spec.versioning {
            Some(rules) => {
                let slug = &spec.definition.slug;
                match rules.select(&mut parts, spec.listen_path(), slug, unix_now()) {
                    Ok(selected) => Some(selected),
                    Err(e) => return error_response(StatusCode::FORBIDDEN, &e.to_string()),
                }
            }
            None => None,
        };
        let cx = AuthContext {
            hasher: &self.hasher,
            sessions: &*self.sessions,
            guard: &self.guard,
            client: peer.addr.ip(),
            version: version.as_ref(),
            policies: &self.policies,
        };
        let caller = match auth::authenticate(&spec, &parts, cx).await {
            Ok(caller) => caller,
            Err(e) => return error_response(e.status(), &e.to_string()),
        };
        let policy = caller.as_ref().and_then(|c| {
            limits::policy_for(spec.api_id(), spec.disabled_limits(), &c.access, &c.key_id)
        });
        let limited = match policy {
            Some(policy) => {
                let usage = self.limiter.admit(&policy).await;
                if let Err(e) = usage.verdict() {
                    let mut response = error_response(e.status(), &e.to_string());
                    usage.write_headers(&policy, response.headers_mut(), limits::now_secs());
                    return response;
                }
                Some((policy, usage))
            }
            None => None,
        };
        let req = Request::from_parts(parts, body);
        let target = version
            .as_ref()
            .and_then(|v| v.target)
            .unwrap_or(&spec.target);
        match upstream.forward(&spec, target, req, &peer).await {
            Ok(response) => {
                let mut response = response.map(Either::Left);
                if let Some((policy, usage)) = &limited {
                    usage.write_headers(policy, response.headers_mut(), limits::now_secs());
                }
                response
            }
            Err(e) => {
                tracing::debug!(api = spec.api_id(), "upstream error: {e:?}");
                error_response(e.status(), &e.to_string())
            }
        }
    }
}

/// What a load reads: the routing table, the policies, and the files that failed.
type Loaded = (ApiTable, Vec<LoadError>, PolicyTable, Vec<PolicyLoadError>);

fn load_all(app_path: &std::path::Path, policies: &crate::config::PoliciesConfig) -> Loaded {
    let (table, errors) = ApiTable::load_dir(app_path);
    let (policies, policy_errors) = PolicyTable::load(policies);
    (table, errors, policies, policy_errors)
}

/// Resolves the request's dot segments in place (see [`path`]): what is routed and
/// authorised below is then exactly the path the upstream receives. `Err`: why the path is
/// refused.
fn resolve_path(req: &mut Request<Incoming>) -> Result<(), &'static str> {
    let resolved = match path::normalize(req.uri().path()) {
        Ok(None) => return Ok(()),
        Ok(Some(resolved)) => resolved,
        Err(e) => return Err(e.message()),
    };
    let with_query = match req.uri().query() {
        Some(query) => format!("{resolved}?{query}"),
        None => resolved,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(with_query).ok();
    match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            Ok(())
        }
        Err(_) => Err("Request path malformed"),
    }
}

/// A JSON response with a buffered body. Serialising writes stored JSON through as it is, so
/// it does not fail on what the store holds; should it fail, the answer is a 500 saying so.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            tracing::error!("response body could not be written as JSON: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"status":"error","message":"response could not be encoded"}"#.to_vec(),
            )
        }
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(bytes))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Tyk's answer to a path no API listens on: its router's plain `Not Found`.
fn not_found() -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(b"Not Found"))));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Tyk's gateway error body: `{"error": "..."}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Runs `handler`, turning a panic into a 500 for this request alone. Not an `async fn`: that
/// would keep `handler` and the future awaiting it in two slots, doubling the size of every
/// request's future (5.7 KB, all of it copied into its box).
pub fn guarded<F>(handler: F) -> impl Future<Output = Response<Body>>
where
    F: Future<Output = Response<Body>>,
{
    AssertUnwindSafe(handler)
        .catch_unwind()
        .map(|outcome| match outcome {
            Ok(response) => response,
            Err(_) => {
                tracing::error!("request handler panicked");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
            }
        })
}

/// Accepts HTTP/1.1 connections until `shutdown` resolves, answers each request with
/// `handler` (panics become a 500), then lets open connections finish.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // No timer and no `header_read_timeout` (hyper's default is 30 s): `connection` bounds
    // both the wait for a request and the time a head takes, without hyper's boxed timer per
    // request (4.1% of a proxied request's instructions).
    http.header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        // Head and body copied into one buffer for one write(2): 1.5% fewer instructions per
        // proxied request than queueing the body beside the head for writev(2).
        .writev(false);
    let http = Arc::new(http);
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let client = Peer::new(peer);
        let service = service_fn(move |req| {
            // Boxed so that an idle connection does not carry room for a whole request future.
            Box::pin(guarded(handler(req, client.clone()))).map(Ok::<_, Infallible>)
        });
        tokio::spawn(connection::run(
            stream,
            http.clone(),
            service,
            closing_seen.clone(),
        ));
    }
    drop(listener);
    drop(closing_seen);
    let _ = closing.send(true);
    if tokio::time::timeout(Duration::from_secs(30), closing.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing them");
    }
}

/// Serves the gateway pipeline on `listener`. Each call (one per worker thread) has its own
/// upstream connection pool, so a request and its upstream connection stay on one thread.
pub async fn serve_gateway(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let upstream = UpstreamClient::new(gateway.proxy_timeout);
    serve(
        listener,
        move |req, peer| gateway.clone().handle(req, peer, upstream.clone()),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500() {
        let response = guarded(async { panic!("boom") }).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let ok = guarded(async { error_response(StatusCode::OK, "fine") }).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
