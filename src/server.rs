//! The listener and a request's way through the node (`Gateway::handle`): `path → route →
//! the API's pipeline on the request → proxy → the pipeline on the response`.
//!
//! Owns the accept loop, per-connection HTTP/1.1 settings, the pipeline's order and the panic
//! guard; the node's state is `gateway`'s, and how a refusal is answered is `rejection`'s.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::access_log;
use crate::admin;
use crate::analytics::{self, Queued};
use crate::api::ApiSpec;
use crate::auth::AuthContext;
use crate::batch::{Batch, BatchError, MAX_BATCH_BODY};
use crate::connection::{self, Deadlines, Http1Server, Peer};
use crate::endpoints::MockReply;
use crate::gateway::Gateway;
use crate::json_validation::MAX_VALIDATED_BODY;
use crate::metrics::Metrics;
use crate::path;
use crate::pipeline::{Exchange, Flow, Services};
use crate::proxy::{ClientBody, ProxyError, UpstreamClient};
use crate::rejection::Rejection;
use crate::request_record::RequestRecord;
use crate::response::{Body, buffered_response, error_response};

/// Largest request head (request line + headers) accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// The APIs, and the Gateway API too unless `control_api_port` gives it its own.
    Public,
    /// The Gateway API, `/hello` and the readiness check only (`control_api_port`).
    Control,
}

impl Gateway {
    /// One request through the pipeline; `upstream` is the calling worker's client.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        upstream: UpstreamClient,
        serves: Serves,
    ) -> Response<Body> {
        match self.pass(req, &peer, &upstream, serves).await {
            Ok(response) => response,
            Err(rejection) => {
                let unrouted = self.metrics.unrouted();
                unrouted.refused(&rejection);
                let response = rejection.into_response();
                unrouted.counted(response.status().as_u16());
                response
            }
        }
    }

    /// Path → the Gateway API, or an API (see [`Self::serve_api`]); each step refuses with
    /// its typed [`Rejection`].
    async fn pass(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Peer,
        upstream: &UpstreamClient,
        serves: Serves,
    ) -> Result<Response<Body>, Rejection> {
        resolve_path(&mut req).map_err(Rejection::Path)?;
        // Tyk's `max_request_body_size`, checked on the declared length before anything else;
        // a body without one is counted as it streams (see `proxy`).
        if req.body().size_hint().lower() > self.config.http_server_options.max_body() {
            return Err(Rejection::Upstream(ProxyError::TooLarge));
        }
        let admin_here = serves == Serves::Control || !self.config.has_control_port();
        if admin_here && admin::owns(&self.config, req.uri().path()) {
            // Boxed: the admin future is large and rare; inline it would widen every request's.
            return Ok(Box::pin(admin::handle(self, req)).await);
        }
        if serves == Serves::Control {
            // As Tyk: the control port serves no API.
            return Err(Rejection::NoApi);
        }
        self.serve_api(
            req.map(ClientBody::Streaming),
            peer,
            upstream,
            Caller::Client,
        )
        .await
    }

    /// Route → the API's request stages (see `pipeline`) → proxy → its response stages.
    async fn serve_api(
        self: &Arc<Self>,
        req: Request<ClientBody>,
        peer: &Peer,
        upstream: &UpstreamClient,
        caller: Caller,
    ) -> Result<Response<Body>, Rejection> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let spec = self
            .apis
            .load()
            .route(host, req.uri().path())
            .cloned()
            .ok_or(Rejection::NoApi)?;
        let started = Instant::now();
        let metrics = &*spec.metrics;
        // Gathered only for the access log and analytics.
        let mut record: Option<Box<RequestRecord>> = None;
        // Only when traces are on.
        let mut trace = None;
        let mut steps = Vec::new();
        let response = 'answer: {
            if spec.batch.as_deref() == Some(req.uri().path()) {
                match self.batch(spec.clone(), req, peer, upstream, caller).await {
                    Ok(response) => break 'answer response,
                    Err(rejection) => {
                        metrics.refused(&rejection);
                        break 'answer rejection.into_response();
                    }
                }
            }
            let (mut parts, mut body) = req.into_parts();
            let mut exchange = Exchange::default();
            if let Some(tracing) = &self.tracing {
                let name = format!("{} {}", parts.method, spec.definition.name);
                trace = Some(tracing.begin(&parts.headers, parts.method.as_str(), name));
            }
            let analysed = self.analytics.is_some() && spec.analytics.is_some();
            if self.access_log.is_some() || analysed {
                let mut begun = self.request_record(&spec, &mut parts, peer);
                let id = begun.request_id.as_str();
                exchange.request_id.get_or_init(|| id.into());
                begun.trace_id = trace.as_ref().map(crate::traces::Tracing::trace_id);
                record = Some(begun);
            }
            let services = Services {
                limiter: &self.limiter,
                auth: AuthContext {
                    hasher: &self.hasher,
                    sessions: &*self.sessions,
                    guard: &self.guard,
                    client: peer.addr.ip(),
                    policies: &self.policies,
                    path_matching: self.config.path_matching(),
                },
                xff_depth: self.config.http_server_options.xff_depth,
                body_limit: self
                    .config
                    .http_server_options
                    .read_limit(MAX_VALIDATED_BODY),
                traced: trace.is_some(),
            };
            let flow = spec
                .pipeline
                .on_request(&mut parts, &mut body, &mut exchange, &services)
                .await;
            if let Some(record) = &mut record {
                record.passed_pipeline(&parts, &exchange);
            }
            steps = std::mem::take(&mut exchange.steps);
            let refused = |rejection: Rejection, exchange: &Exchange<'_>| {
                metrics.refused(&rejection);
                refused(rejection, exchange)
            };
            match flow {
                Ok(Flow::Proxy) => {}
                Ok(Flow::Reply(reply)) => break 'answer mock_response(reply),
                Ok(Flow::Preflight(headers)) => {
                    let mut response = buffered_response(StatusCode::NO_CONTENT, Bytes::new());
                    *response.headers_mut() = headers;
                    break 'answer response;
                }
                Err(rejection) => break 'answer refused(rejection, &exchange),
            }
            if exchange.breaker.is_some_and(|b| !b.ready()) {
                break 'answer refused(Rejection::CircuitOpen, &exchange);
            }
            let body = match exchange.validate_json {
                None => body,
                Some(schema) => {
                    let read = match body.read(services.body_limit).await {
                        Ok(read) => read,
                        Err(e) => break 'answer refused(Rejection::Upstream(e), &exchange),
                    };
                    if let Err(refusal) = schema.check(&read) {
                        break 'answer refused(Rejection::Json(refusal), &exchange);
                    }
                    ClientBody::Read(Some(read))
                }
            };
            let target = exchange.target(&spec.target);
            if let Some(record) = &mut record {
                let detailed = (self.analytics.as_ref())
                    .zip(spec.analytics.as_ref())
                    .is_some_and(|(node, api)| node.detailed() || api.detailed);
                record.sent_upstream(&spec.forwarding, target, &parts, detailed);
            }
            let upstream_span =
                (self.tracing.as_ref())
                    .zip(trace.as_ref())
                    .map(|(tracing, trace)| {
                        tracing.upstream_call(trace, &target.address, &mut parts.headers)
                    });
            let req = Request::from_parts(parts, body);
            let timeout = exchange.upstream_timeout;
            let sent = Instant::now();
            let response = upstream
                .forward(&spec.forwarding, target, req, peer, timeout)
                .await;
            let upstream_took = sent.elapsed();
            metrics.upstream_took(upstream_took);
            if let Some(mut span) = upstream_span {
                use opentelemetry::trace::Span as _;
                if let Ok(response) = &response {
                    let status = i64::from(response.status().as_u16());
                    span.set_attribute(opentelemetry::KeyValue::new(
                        "http.response.status_code",
                        status,
                    ));
                }
                span.end();
            }
            if let Some(record) = &mut record {
                record.upstream_latency = upstream_took.as_millis() as u64;
            }
            if let Some(breaker) = exchange.breaker {
                let failed = response
                    .as_ref()
                    .map_or(true, |r| r.status().is_server_error());
                breaker.record(failed);
            }
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    tracing::debug!(api = spec.api_id(), "upstream error: {e:?}");
                    break 'answer refused(Rejection::Upstream(e), &exchange);
                }
            };
            let mut response = response.map(Either::Left);
            spec.pipeline.on_response(&mut response, &mut exchange);
            response
        };
        let took = started.elapsed();
        metrics.answered(response.status().as_u16(), took);
        if let (Some(tracing), Some(trace)) = (&self.tracing, trace) {
            for (name, step) in steps {
                tracing.step(&trace, name, step);
            }
            tracing.end(trace, spec.api_id(), response.status().as_u16());
        }
        let mut response = response;
        if let Some(record) = record {
            self.log_answered(record, &spec, took, &mut response);
        }
        Ok(response)
    }

    /// What is known of a request before it passes the pipeline (for the access log and
    /// analytics); with the access log on, the request gets its id (see
    /// [`access_log::request_id`]) to pass upstream.
    fn request_record(
        &self,
        spec: &ApiSpec,
        parts: &mut http::request::Parts,
        peer: &Peer,
    ) -> Box<RequestRecord> {
        let client_ip = crate::client_ip::real_ip(
            &parts.headers,
            peer.addr.ip(),
            self.config.http_server_options.xff_depth,
        );
        let id = access_log::request_id(&parts.headers);
        let record = RequestRecord::begun(&spec.definition, parts, peer.addr, client_ip, &id);
        if self.access_log.is_some() {
            parts.headers.insert(access_log::REQUEST_ID, id);
        }
        Box::new(record)
    }

    /// The answered request's access log line and analytics record; the response carries the
    /// request's id when the access log is on.
    fn log_answered(
        &self,
        mut record: Box<RequestRecord>,
        spec: &ApiSpec,
        took: Duration,
        response: &mut Response<Body>,
    ) {
        record.status = response.status().as_u16();
        record.latency_total = took.as_millis() as u64;
        if let Some(log) = &self.access_log {
            if let Ok(id) = http::HeaderValue::from_str(&record.request_id) {
                response.headers_mut().insert(access_log::REQUEST_ID, id);
            }
            log.log(&record);
        }
        if let (Some(analytics), Some(api)) = (&self.analytics, &spec.analytics)
            && !record.not_tracked
            && analytics.records(record.client_ip.parse().ok())
        {
            if record.raw_request.is_some() {
                let answer = analytics::raw_response_head(response.status(), response.headers());
                record.raw_response = Some(answer);
            }
            analytics.record(Queued {
                request: record,
                api: api.clone(),
            });
        }
    }

    /// A batch request (see `batch`): each of its requests answered as [`Self::serve_api`]
    /// answers a client's, with the batch's client address. Boxed: it calls `serve_api`, which
    /// calls it.
    fn batch<'a>(
        self: &'a Arc<Self>,
        spec: Arc<ApiSpec>,
        req: Request<ClientBody>,
        peer: &'a Peer,
        upstream: &'a UpstreamClient,
        caller: Caller,
    ) -> BoxFuture<'a, Result<Response<Body>, Rejection>> {
        Box::pin(async move {
            if caller == Caller::Batch {
                return Err(Rejection::Batch(BatchError::Nested));
            }
            if req.method() != Method::POST {
                return Err(Rejection::Batch(BatchError::NotPost));
            }
            let host = req.headers().get(http::header::HOST).cloned();
            let limit = self.config.http_server_options.read_limit(MAX_BATCH_BODY);
            let body = req.into_body().read(limit).await?;
            let batch =
                Batch::parse(&body, spec.listen_path(), host.as_ref()).map_err(Rejection::Batch)?;
            let answer = |mut request: Request<ClientBody>| -> BoxFuture<'a, Response<Body>> {
                Box::pin(async move {
                    if let Err(reason) = resolve_path(&mut request) {
                        return Rejection::Path(reason).into_response();
                    }
                    self.serve_api(request, peer, upstream, Caller::Batch)
                        .await
                        .unwrap_or_else(Rejection::into_response)
                })
            };
            Ok(batch.run(answer).await)
        })
    }
}

/// Who sent a request to an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Client,
    /// A request of a batch request, which may not be one itself.
    Batch,
}

/// A refusal once the pipeline began, with the CORS headers the request earned (a browser
/// can then read why it was refused).
fn refused(rejection: Rejection, exchange: &Exchange<'_>) -> Response<Body> {
    let mut response = rejection.into_response();
    exchange.write_cors(response.headers_mut());
    response
}

/// A mock reply as the client gets it: its status, headers and body, nothing added.
fn mock_response(reply: &MockReply) -> Response<Body> {
    let mut response = buffered_response(reply.status, reply.body.clone());
    *response.headers_mut() = reply.headers.clone();
    response
}

/// Resolves the request's dot segments in place (see [`path`]): what is routed and
/// authorised below is then exactly the path the upstream receives. `Err`: why the path is
/// refused.
fn resolve_path<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let resolved = match path::normalize(req.uri().path()) {
        Ok(None) => return Ok(()),
        Ok(Some(resolved)) => resolved,
        Err(e) => return Err(e.message()),
    };
    let uri = path::with_path_and_query(req.uri(), resolved, req.uri().query())
        .ok_or("Request path malformed")?;
    *req.uri_mut() = uri;
    Ok(())
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

/// How long a TLS client has to complete its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener takes connections.
#[derive(Clone, Copy)]
pub struct Accepting<'a> {
    /// Read at each accept, so new certificates serve new connections; `None`: plain HTTP.
    pub tls: Option<&'a ArcSwap<ServerConfig>>,
    /// Open connections held at most: at the cap no more are accepted (they wait in the
    /// kernel's backlog) until one closes.
    pub max_connections: usize,
    /// HTTP/2 too (`http_server_options.enable_http2`): by ALPN with TLS, else for a
    /// connection that opens with the HTTP/2 preface (h2c with prior knowledge).
    pub http2: bool,
    /// HTTP/1.1 requests' deadlines (`read_timeout`, `write_timeout`).
    pub deadlines: Deadlines,
    /// Where open connections are counted.
    pub metrics: Option<&'a Arc<Metrics>>,
}

/// Accepts HTTP/1.1 (and HTTP/2, if `accepting` says so) connections until `shutdown` resolves, answers each request with
/// `handler` (panics become a 500), then lets open connections finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    accepting: Accepting<'_>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
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
    let http = Arc::new(Http1Server {
        builder: http,
        deadlines: accepting.deadlines,
        parked: accepting
            .metrics
            .map_or_else(Default::default, |m| m.parked.clone()),
    });
    let http2 = accepting
        .http2
        .then(|| Arc::new(connection::http2_server(MAX_HEAD_BYTES as u32)));
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let open = Arc::new(Semaphore::new(accepting.max_connections));
    tokio::pin!(shutdown);
    let serve_connection = |stream: tokio::net::TcpStream,
                            peer: SocketAddr,
                            permit: tokio::sync::OwnedSemaphorePermit| {
        let _ = stream.set_nodelay(true);
        let open = accepting.metrics.map(|m| m.connection_opened());
        let permit = (permit, open);
        let handler = handler.clone();
        let client = Peer::new(peer, accepting.tls.is_some());
        let service = service_fn(move |req| {
            // Boxed so that an idle connection does not carry room for a whole request future.
            Box::pin(guarded(handler(req, client.clone()))).map(Ok::<_, Infallible>)
        });
        let (http, http2, closing) = (http.clone(), http2.clone(), closing_seen.clone());
        match accepting.tls {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let chose_http2 = match http2 {
                        Some(_) => match connection::opens_with_http2_preface(&stream).await {
                            Some(chose) => chose,
                            // Closed, or silent until the keep-alive timeout.
                            None => return,
                        },
                        None => false,
                    };
                    connection::serve_accepted(stream, chose_http2, http, http2, service, closing)
                        .await;
                });
            }
            Some(config) => {
                let acceptor = TlsAcceptor::from(config.load_full());
                tokio::spawn(async move {
                    let _permit = permit;
                    // In the connection's own task: a slow or broken handshake holds up no one.
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            let chose_http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            connection::serve_accepted(
                                stream,
                                chose_http2,
                                http,
                                http2,
                                service,
                                closing,
                            )
                            .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    };
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        serve_connection(stream, peer, permit);
    }
    // Connections the kernel queued on this socket before it closes are served, not reset:
    // with `SO_REUSEPORT` a replacement process shares the port, and until this socket closes
    // the kernel still hands it a share of the new connections.
    if let Ok(queued) = listener.into_std() {
        while let Ok((stream, peer)) = queued.accept() {
            let Ok(permit) = open.clone().try_acquire_owned() else {
                break;
            };
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                serve_connection(stream, peer, permit);
            }
        }
    }
    drop(closing_seen);
    let _ = closing.send(true);
    if tokio::time::timeout(Duration::from_secs(30), closing.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing them");
    }
}

/// Serves the gateway on `listener`, answering what `serves` says, holding at most
/// `max_connections` open. Each call (one per worker thread) has its own upstream connection
/// pool, so a request and its upstream connection stay on one thread.
pub async fn serve_gateway(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    serves: Serves,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let upstream = UpstreamClient::new(&gateway.config);
    let handler = {
        let gateway = gateway.clone();
        move |req, peer| gateway.clone().handle(req, peer, upstream.clone(), serves)
    };
    let accepting = Accepting {
        tls: gateway.listener_tls.as_ref(),
        max_connections,
        http2: gateway.config.http_server_options.enable_http2,
        deadlines: gateway.config.http_server_options.deadlines(),
        metrics: Some(&gateway.metrics),
    };
    serve(listener, accepting, handler, shutdown).await
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
