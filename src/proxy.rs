//! The upstream side: a per-worker pool of HTTP/1.1 keep-alive connections (and one shared
//! HTTP/2 connection per upstream that speaks it), and the forwarding of one request that
//! streams both bodies, rewriting only what a reverse proxy must (URI, Host, hop-by-hop,
//! X-Forwarded-*).
//!
//! The pool is ours rather than hyper-util's legacy client because a worker's connections
//! never leave its thread: no hashing of scheme and authority, waiter lists or background
//! task per request (that client's pool was about 15% of a keyless request's instructions).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::config::GatewayConfig;
use crate::connection::Peer;
use crate::target::{Forwarding, Target, Wire};

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Upstream unreachable")]
    Unreachable(#[source] std::io::Error),
    /// The TLS handshake with an HTTPS upstream failed: a certificate that does not verify,
    /// no common version or suite, a client certificate refused.
    #[error("Upstream TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("Upstream service reached hard timeout.")]
    Timeout,
    #[error("Upstream request failed")]
    Failed(#[source] hyper::Error),
    #[error("Upstream address invalid")]
    BadUri(#[from] http::Error),
    /// The client's request body could not be read (malformed chunked coding, or cut off):
    /// the client's fault, not the upstream's.
    #[error("Request body malformed")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The client's request body ran past `http_server_options.max_request_body_size`.
    #[error("Request Entity Too Large")]
    TooLarge,
}

/// What went wrong with the upstream, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    Unreachable,
    Tls,
    Timeout,
    Failed,
    BadUri,
}

impl UpstreamFault {
    pub const ALL: [UpstreamFault; 5] = [
        Self::Unreachable,
        Self::Tls,
        Self::Timeout,
        Self::Failed,
        Self::BadUri,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::BadUri => "bad_uri",
        }
    }
}

impl ProxyError {
    /// The upstream's part in the error; `None` where the client is at fault.
    pub fn fault(&self) -> Option<UpstreamFault> {
        match self {
            Self::Unreachable(_) => Some(UpstreamFault::Unreachable),
            Self::Tls(_) => Some(UpstreamFault::Tls),
            Self::Timeout => Some(UpstreamFault::Timeout),
            Self::Failed(_) => Some(UpstreamFault::Failed),
            Self::BadUri(_) => Some(UpstreamFault::BadUri),
            Self::ClientBody(_) | Self::TooLarge => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Whether a comma-separated list header `name` (`Connection`, `TE`) names `token`.
fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The protocol an upgrade request asks for (`Connection: upgrade` and an `Upgrade`), as Tyk's
/// `IsUpgrade` reads it.
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = lists_token(headers, &header::CONNECTION, "upgrade");
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|v| !v.is_empty())
}

/// Puts back the two hop-by-hop headers an upgrade needs on its next hop.
fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Idle connections kept per upstream address.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;
/// How often idle connections are swept; one idle through three sweeps (60-90 s) is closed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEPS_TO_EXPIRE: u64 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker's upstream client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Mutex<IdlePool>>,
    timeout: Duration,
    /// `http_server_options.enable_websockets`: upgrade requests are passed on as upgrades.
    websockets: bool,
    /// `http_server_options.max_request_body_size` (`u64::MAX`: no limit).
    max_body: u64,
}

#[derive(Default)]
struct IdlePool {
    /// foldhash rather than SipHash: looked up twice per request, by addresses that come
    /// from API definitions, not from clients (SipHash was 1.7% of a proxied request).
    by_address: HashMap<Arc<str>, Vec<IdleConnection>, foldhash::fast::RandomState>,
    /// The HTTP/2 connection to each upstream that speaks it, shared by its requests.
    multiplexed: HashMap<Arc<str>, http2::SendRequest<RequestBody>, foldhash::fast::RandomState>,
    /// Sweeps so far; an idle connection remembers the count it was parked at.
    sweeps: u64,
}

/// An HTTP/1.1 connection's sending half, and its task (which runs hyper's state machine
/// for it).
struct Connection {
    sender: http1::SendRequest<RequestBody>,
    task: AbortHandle,
}

/// A new upstream connection, as the upstream took it.
enum Connected {
    Http1(Connection),
    Http2(http2::SendRequest<RequestBody>),
}

struct IdleConnection {
    connection: Connection,
    parked_at: u64,
}

impl UpstreamClient {
    /// A client for `config`: `proxy_default_timeout` bounds the wait for the upstream's
    /// response headers (zero: none), `enable_websockets` passes upgrade requests on (see
    /// `tunnel`), `max_request_body_size` bounds what a request body may send. Must be called
    /// within a Tokio runtime: a task sweeps the idle connections.
    pub fn new(config: &GatewayConfig) -> Self {
        let timeout = Duration::from_secs_f64(config.proxy_default_timeout);
        let options = &config.http_server_options;
        let websockets = options.enable_websockets;
        let max_body = options.max_body();
        let pool = Arc::new(Mutex::new(IdlePool::default()));
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(pool) = weak.upgrade() else { break };
                pool.lock().unwrap_or_else(PoisonError::into_inner).sweep();
            }
        });
        Self {
            pool,
            timeout,
            websockets,
            max_body,
        }
    }

    /// Sends `req` (rewritten as `forwarding` says) to `target` (the API's, its version's or
    /// a rewrite's) and returns the streaming response; `timeout` (an endpoint's
    /// `hard_timeouts`) replaces `proxy_default_timeout`.
    pub async fn forward(
        &self,
        forwarding: &Forwarding,
        target: &Target,
        req: Request<ClientBody>,
        peer: &Peer,
        timeout: Option<Duration>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let upgrade = self
            .websockets
            .then(|| upgrade_asked(&parts.headers))
            .flatten();
        let client_upgrade = upgrade
            .is_some()
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let (body, progress) = RequestBody::new(body, self.max_body);
        let mut req = Request::from_parts(parts, body);
        let path = forwarding.upstream_path(target, req.uri().path());
        let path_and_query = match req.uri().query() {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path.into_owned()),
        };
        // Origin form: the connection already names the upstream.
        *req.uri_mut() = Uri::from(path_and_query.map_err(http::Error::from)?);
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(protocol) = &upgrade {
            keep_upgrade(headers, protocol.clone());
        }
        append_forwarded_for(headers, peer);
        let proto = if peer.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        if !forwarding.preserve_host || !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, target.host.clone());
        }

        // Pinned in place and awaited by reference: awaiting it by value in two branches gave
        // each branch its own copy, doubling the size of every request's future.
        let sent = std::pin::pin!(self.send(target, req));
        let timeout = timeout.unwrap_or(self.timeout);
        let sent = if timeout.is_zero() {
            sent.await
        } else {
            tokio::time::timeout(timeout, sent)
                .await
                .map_err(|_| ProxyError::Timeout)?
        };
        // `connection` is `None` for HTTP/2: nothing goes back to a pool.
        let (mut response, connection) = match sent {
            Ok(sent) => sent,
            Err(ProxyError::Failed(_)) if progress.as_ref().is_some_and(|p| p.too_large()) => {
                return Err(ProxyError::TooLarge);
            }
            Err(ProxyError::Failed(e)) if progress.as_ref().is_some_and(|p| p.broken()) => {
                return Err(ProxyError::ClientBody(e.into()));
            }
            Err(e) => return Err(e),
        };
        if let Some(client) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let protocol = response.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(response.headers_mut());
            if let Some(protocol) = protocol {
                keep_upgrade(response.headers_mut(), protocol);
            }
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(crate::tunnel::run(client, upstream));
            // The connection is the tunnel's: it never goes back to the pool.
            return Ok(response.map(|body| UpstreamBody::new(body, None)));
        }
        strip_hop_by_hop(response.headers_mut());
        let checkin = connection.map(|connection| Checkin {
            pool: self.pool.clone(),
            address: target.pool_key.clone(),
            connection,
            request_body: progress,
        });
        Ok(response.map(|body| UpstreamBody::new(body, checkin)))
    }

    /// Sends on an idle connection to `address`, or on a new one. A request that an idle
    /// connection closed under before it was written (the upstream's keep-alive timeout) is
    /// sent again on a new connection; one that was written is not, as it may not be
    /// idempotent.
    async fn send(
        &self,
        target: &Target,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Connection>), ProxyError> {
        if !matches!(target.wire, Wire::Plain)
            && let Some(mut shared) = self.multiplexed(&target.pool_key)
        {
            let request = as_http2(req, &target.wire)?;
            match shared.try_send_request(request).await {
                Ok(response) => return Ok((response, None)),
                Err(mut e) => match e.take_message() {
                    // The connection went away (GOAWAY, closed) before taking it.
                    Some(unsent) => req = as_http1(unsent),
                    None => return Err(ProxyError::Failed(e.into_error())),
                },
            }
        }
        while let Some(mut connection) = self.checkout(&target.pool_key) {
            if connection.sender.ready().await.is_err() {
                continue;
            }
            match connection.sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Some(connection))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(ProxyError::Failed(e.into_error())),
                },
            }
        }
        // Boxed: a new connection is the rare path, and its futures would otherwise widen
        // every request's.
        Box::pin(self.send_on_new_connection(target, req)).await
    }

    async fn send_on_new_connection(
        &self,
        target: &Target,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Connection>), ProxyError> {
        match connect(target).await? {
            Connected::Http1(mut connection) => match connection.sender.send_request(req).await {
                Ok(response) => Ok((response, Some(connection))),
                Err(e) => Err(ProxyError::Failed(e)),
            },
            Connected::Http2(mut shared) => {
                self.pool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .multiplexed
                    .insert(target.pool_key.clone(), shared.clone());
                let request = as_http2(req, &target.wire)?;
                match shared.send_request(request).await {
                    Ok(response) => Ok((response, None)),
                    Err(e) => Err(ProxyError::Failed(e)),
                }
            }
        }
    }

    /// The open HTTP/2 connection to `address`, if there is one.
    fn multiplexed(&self, address: &str) -> Option<http2::SendRequest<RequestBody>> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = pool.multiplexed.get(address)?;
        if shared.is_closed() {
            pool.multiplexed.remove(address);
            return None;
        }
        Some(shared.clone())
    }

    fn checkout(&self, address: &str) -> Option<Connection> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = pool.by_address.get_mut(address)?;
        while let Some(idle) = idle.pop() {
            if !idle.connection.sender.is_closed() {
                return Some(idle.connection);
            }
        }
        None
    }
}

impl IdlePool {
    fn checkin(&mut self, address: Arc<str>, connection: Connection) {
        let idle = self.by_address.entry(address).or_default();
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(IdleConnection {
                connection,
                parked_at: self.sweeps,
            });
        }
    }

    /// Closes connections idle through three sweeps and those the upstream closed.
    fn sweep(&mut self) {
        self.sweeps += 1;
        let sweeps = self.sweeps;
        for idle in self.by_address.values_mut() {
            idle.retain(|c| {
                !c.connection.sender.is_closed() && sweeps - c.parked_at < SWEEPS_TO_EXPIRE
            });
        }
        self.by_address.retain(|_, idle| !idle.is_empty());
        self.multiplexed.retain(|_, shared| !shared.is_closed());
    }
}

/// An HTTP/1.1 request (origin form, `Host`) as HTTP/2 carries it: the absolute URI gives
/// `:scheme` and `:authority` (from the `Host` that would have been sent), and no `Host`.
fn as_http2(
    mut req: Request<RequestBody>,
    wire: &Wire,
) -> Result<Request<RequestBody>, ProxyError> {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(wire.scheme());
    parts.authority = authority;
    *req.uri_mut() = Uri::from_parts(parts).map_err(http::Error::from)?;
    *req.version_mut() = http::Version::HTTP_2;
    Ok(req)
}

/// An HTTP/2 request that was not sent, back in HTTP/1.1's form for another connection.
fn as_http1(mut req: Request<RequestBody>) -> Request<RequestBody> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(host) = parts
        .authority
        .take()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    parts.scheme = None;
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
    req
}

/// Opens a connection to `target` (with TLS for an `https` one) and runs its state machine on
/// this worker: HTTP/2 for an `h2c` target or when ALPN picked `h2`, else HTTP/1.1.
async fn connect(target: &Target) -> Result<Connected, ProxyError> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*target.address))
        .await
        .map_err(|_| ProxyError::Unreachable(timed_out()))?
        .map_err(ProxyError::Unreachable)?;
    let _ = stream.set_nodelay(true);
    let tls = match &target.wire {
        Wire::Plain => return start(TokioIo::new(stream)).await,
        Wire::H2c => return start_http2(TokioIo::new(stream)).await,
        Wire::Tls(tls) => tls,
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let handshake = connector.connect(tls.server_name.clone(), stream);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(upstream = &*target.address, "TLS handshake failed: {e}");
            return Err(ProxyError::Tls(e));
        }
        Err(_) => {
            tracing::warn!(upstream = &*target.address, "TLS handshake timed out");
            return Err(ProxyError::Tls(timed_out()));
        }
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return start_http2(TokioIo::new(stream)).await;
    }
    start(TokioIo::new(stream)).await
}

/// Runs an HTTP/2 client connection on `io` in a task of its own; it ends once every sender
/// is dropped and its streams are done.
async fn start_http2<T>(io: T) -> Result<Connected, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(ProxyError::Failed)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(Connected::Http2(sender))
}

/// Runs an HTTP/1.1 client connection on `io` in a task of its own.
async fn start<T>(io: T) -> Result<Connected, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await.map_err(ProxyError::Failed)?;
    let task = tokio::spawn(async move {
        // With upgrades: after a 101 the connection is handed to its tunnel.
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    })
    .abort_handle();
    Ok(Connected::Http1(Connection { sender, task }))
}

/// A connection going back to the pool once its response body has been read to the end.
struct Checkin {
    pool: Arc<Mutex<IdlePool>>,
    address: Arc<str>,
    connection: Connection,
    /// `None` for a request without a body.
    request_body: Option<Arc<BodyProgress>>,
}

impl Checkin {
    /// The response has been read whole. The connection is reused only if the request was
    /// also written whole: an upstream may answer before reading the body, and a client
    /// still sending one (slowly, say) would hold up the next request given the connection.
    /// Otherwise it is closed, and with it the rest of the request body.
    fn park(self) {
        if self.request_body.as_ref().is_some_and(|p| !p.sent()) {
            self.connection.task.abort();
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.checkin(self.address, self.connection);
    }
}

/// How far a request body has been sent upstream.
#[derive(Default)]
struct BodyProgress {
    sent: AtomicBool,
    broken: AtomicBool,
    too_large: AtomicBool,
}

impl BodyProgress {
    fn sent(&self) -> bool {
        self.sent.load(Relaxed)
    }

    fn broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    fn too_large(&self) -> bool {
        self.too_large.load(Relaxed)
    }
}

/// Why a request body stopped on its way upstream.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    Client(#[from] hyper::Error),
    #[error("request body over max_request_body_size")]
    TooLarge,
}

/// The client's request body as the proxy takes it: streamed, or already read whole by a
/// stage that had to see it (`validate_json`).
#[derive(Debug)]
pub enum ClientBody {
    Streaming(Incoming),
    Read(Option<Bytes>),
}

impl ClientBody {
    /// The whole body, refused past `limit` bytes.
    pub async fn read(self, limit: usize) -> Result<Bytes, ProxyError> {
        match self {
            Self::Read(read) => match read.unwrap_or_default() {
                read if read.len() > limit => Err(ProxyError::TooLarge),
                read => Ok(read),
            },
            Self::Streaming(body) => match Limited::new(body, limit).collect().await {
                Ok(read) => Ok(read.to_bytes()),
                Err(e) if e.is::<LengthLimitError>() => Err(ProxyError::TooLarge),
                Err(e) => Err(ProxyError::ClientBody(e)),
            },
        }
    }
}

/// The client's request body on its way upstream, noting when it ends and whether reading
/// it failed, and cut off past its allowance.
pub struct RequestBody {
    body: ClientBody,
    progress: Option<Arc<BodyProgress>>,
    /// Bytes the body may still send.
    allowance: u64,
}

impl RequestBody {
    /// A body that is already over (most requests) has nothing to track and costs no
    /// allocation.
    fn new(body: ClientBody, allowance: u64) -> (Self, Option<Arc<BodyProgress>>) {
        let streaming = matches!(&body, ClientBody::Streaming(b) if !b.is_end_stream());
        let progress = streaming.then(Arc::<BodyProgress>::default);
        let tracked = Self {
            body,
            progress: progress.clone(),
            allowance,
        };
        (tracked, progress)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let body = match &mut this.body {
            ClientBody::Streaming(body) => body,
            ClientBody::Read(read) => return Poll::Ready(read.take().map(|b| Ok(Frame::data(b)))),
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        let Some(progress) = &this.progress else {
            return polled.map_err(RequestBodyError::from);
        };
        match &polled {
            Poll::Ready(None) => progress.sent.store(true, Relaxed),
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                if size > this.allowance {
                    progress.too_large.store(true, Relaxed);
                    return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                }
                this.allowance -= size;
                if body.is_end_stream() {
                    progress.sent.store(true, Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => progress.broken.store(true, Relaxed),
            Poll::Pending => {}
        }
        polled.map_err(RequestBodyError::from)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            ClientBody::Streaming(body) => body.is_end_stream(),
            ClientBody::Read(read) => read.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            ClientBody::Streaming(body) => body.size_hint(),
            ClientBody::Read(read) => {
                SizeHint::with_exact(read.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// An upstream response body, streamed. Its connection returns to the pool when the body
/// ends; dropped before its end, the body takes the connection down with it, as HTTP/1.1
/// cannot reuse a connection with a response half read.
pub struct UpstreamBody {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl UpstreamBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        let mut body = Self { body, checkin };
        body.park_if_ended();
        body
    }

    fn park_if_ended(&mut self) {
        if self.body.is_end_stream()
            && let Some(checkin) = self.checkin.take()
        {
            checkin.park();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(checkin) = self.checkin.take() {
                    checkin.park();
                }
            }
            Poll::Ready(Some(Ok(_))) => self.park_if_ended(),
            Poll::Ready(Some(Err(e))) => {
                // The client gets a body cut short (its connection is closed): the fault is
                // the upstream's, and is logged as such.
                tracing::warn!("upstream response body broken off: {e}");
                self.checkin = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, without hashing, finds which are present; most requests carry
    // none, and most responses only `Connection: keep-alive`.
    let mut present = 0u8;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name);
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0] is `Connection`: the other names it lists go too (rarely any).
        let mut listed = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            // What nearly every peer sends: names no other header.
            let whole = value.as_bytes();
            if whole.eq_ignore_ascii_case(b"keep-alive") || whole.eq_ignore_ascii_case(b"close") {
                continue;
            }
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str()));
                if let (false, Ok(name)) = (known, HeaderName::from_bytes(token.as_bytes())) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    // `TE: trailers` says the client takes trailers, which gRPC needs end to end: it is
    // passed on, as Go's reverse proxy does for Tyk.
    let trailers = present & TE_BIT != 0 && lists_token(headers, &header::TE, "trailers");
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `hop_by_hop_bit(TE)`.
const TE_BIT: u8 = 1 << 4;

/// `1 << i` if `name` is `HOP_BY_HOP[i]`, else 0; a match on the name's text, cheaper than
/// comparing it with each `HeaderName` in turn (a custom name like `keep-alive` compares bytes).
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-authenticate" => 1 << 2,
        "proxy-authorization" => 1 << 3,
        "te" => 1 << 4,
        "trailer" => 1 << 5,
        "transfer-encoding" => 1 << 6,
        "upgrade" => 1 << 7,
        _ => 0,
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) => {
            let ip = peer.ip.as_bytes();
            let mut value = Vec::with_capacity(prior.len() + 2 + ip.len());
            value.extend_from_slice(prior);
            value.extend_from_slice(b", ");
            value.extend_from_slice(ip);
            // The Vec's buffer becomes the header value without another copy.
            match HeaderValue::from_maybe_shared(Bytes::from(value)) {
                Ok(value) => value,
                Err(_) => return,
            }
        }
        None => peer.ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_bits_follow_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit(&header::TE), TE_BIT);
        assert_eq!(hop_by_hop_bit(&header::CONTENT_LENGTH), 0);
        assert_eq!(hop_by_hop_bit(&HeaderName::from_static("x-te")), 0);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer = Peer::new("10.0.0.2:5000".parse().unwrap(), false);
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.2");
    }
}
