//! One client connection from accept to close: served by hyper while requests come, parked
//! while it is idle.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and its connection state for as
//! long as a connection lives: about 12 KiB resident for every idle keep-alive connection.
//! A connection that has been quiet at two [`TICK`]s in a row is *parked* instead:
//! hyper is shown end-of-stream at a point where it is waiting for the next request, so it
//! ends the connection cleanly without closing the socket, and hands the socket back. The
//! task then holds only the socket until it turns readable (a fresh hyper connection takes
//! over) or [`KEEP_ALIVE_TIMEOUT`] passes (it is closed). A new connection starts parked, so
//! one that never sends anything costs no buffers either. nginx frees the buffers of idle
//! keep-alive connections the same way.
//!
//! An HTTP/2 connection (ALPN `h2`, or a plain one opening with the HTTP/2 preface) is served
//! by hyper's HTTP/2 server with the bounds of [`http2_server`] instead; it is not parked, and
//! is closed (GOAWAY) once it has had no open stream for [`KEEP_ALIVE_TIMEOUT`].

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The client end of a connection, its address rendered once for `X-Forwarded-For`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip, tls }
    }
}

/// A parked connection (a new one, or a keep-alive one 1-2 s after its last response) is closed
/// after waiting this long for a request.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The period of a connection's tick. A connection idle at two ticks in a row, with no
/// request in between, is parked: 1-2 s after its last response. Short enough that idle
/// connections cost little, long enough that a client sending its next request right away
/// never pays for a new hyper connection.
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks a connection keeps serving after shutdown begins, each response saying
/// `Connection: close`: a client that sends its next request meanwhile gets an answer and
/// reconnects (to the process taking over) instead of finding the connection closed under it.
const DRAIN_TICKS: u32 = 2;

/// How long a request may take on an HTTP/1.1 connection, in ticks (seconds). Past either,
/// the connection is closed (without an answer if none began), as Go closes Tyk's at its
/// deadlines; these cost no timer per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From a request head's first bytes to its end (`read_timeout`), against slow-drip
    /// clients.
    pub head: u32,
    /// From a request handed to the gateway to the end of its response (`write_timeout`).
    pub response: u32,
}

impl Deadlines {
    /// A head within 30 s; a response within 120 s, Tyk's `write_timeout` default.
    pub const DEFAULT: Self = Self {
        head: 30,
        response: 120,
    };

    /// `read_timeout` and `write_timeout` in seconds, 0 meaning the default.
    pub fn from_seconds(read_timeout: u32, write_timeout: u32) -> Self {
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        Self {
            head: or(read_timeout, Self::DEFAULT.head),
            response: or(write_timeout, Self::DEFAULT.response),
        }
    }
}

/// How HTTP/1.1 connections are served: hyper's settings, and the deadlines `run` keeps.
pub struct Http1Server {
    pub builder: http1::Builder,
    pub deadlines: Deadlines,
    pub parked: Arc<ParkedConnections>,
}

/// HTTP/1.1 connections parked at the moment (shown in `/metrics`).
#[derive(Debug, Default)]
pub struct ParkedConnections(AtomicI64);

impl ParkedConnections {
    pub fn count(&self) -> i64 {
        self.0.load(Relaxed)
    }

    /// Counts one connection parked until the mark is dropped.
    fn park(&self) -> Parked<'_> {
        self.0.fetch_add(1, Relaxed);
        Parked(self)
    }
}

struct Parked<'a>(&'a ParkedConnections);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Relaxed);
    }
}

/// Ticks a client may go without accepting a byte of its response while one is waiting to be
/// written: 30 s. Then the connection is closed, and with it the upstream response it held,
/// so that clients that never read cannot pile up connections and buffers.
const WRITE_STALL_TICKS: u32 = 30;

/// Streams one HTTP/2 connection may have open at once: Go's default, which Tyk has.
pub const HTTP2_MAX_STREAMS: u32 = 250;
/// Streams a client may open and reset before the server has taken them, then the
/// connection is closed with `ENHANCE_YOUR_CALM`: the bound on "rapid reset" (CVE-2023-44487).
pub const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before it closes the connection.
pub const HTTP2_MAX_ERROR_RESETS: usize = 1024;
/// Streams a client may cancel (reset before their response began) beyond those it let finish
/// before its connection is closed: rapid reset with streams the server had already taken,
/// which the bound above does not see. Four times the streams at once, as Go's server allows.
pub const HTTP2_MAX_CANCELLED_EXCESS: u64 = 4 * HTTP2_MAX_STREAMS as u64;
/// Bytes of flow-control window: per stream, and in all per connection (what a client can
/// make the gateway buffer).
pub const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// A ping after this much silence; a client that does not answer within the same time is
/// closed, so one that stops reading cannot hold its streams.
pub const HTTP2_PING_EVERY: Duration = Duration::from_secs(30);

/// The HTTP/2 server settings every listener uses; `max_header_list_size` bounds a request's
/// headers (decoded) as the HTTP/1 head limit does.
pub fn http2_server(max_header_bytes: u32) -> http2::Builder<TokioExecutor> {
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .max_header_list_size(max_header_bytes)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(HTTP2_MAX_ERROR_RESETS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .keep_alive_interval(HTTP2_PING_EVERY)
        .keep_alive_timeout(HTTP2_PING_EVERY);
    http
}

/// As much of HTTP/2's connection preface (RFC 9113 §3.4) as tells it from any HTTP/1 request.
const PREFACE_START: &[u8] = b"PRI *";

/// Whether a plain connection opens with HTTP/2's preface (h2c with prior knowledge), read
/// without consuming it; `None` if the client closed or sent nothing for
/// [`KEEP_ALIVE_TIMEOUT`].
pub async fn opens_with_http2_preface(stream: &TcpStream) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + KEEP_ALIVE_TIMEOUT;
    let mut head = [0u8; PREFACE_START.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut head))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if !PREFACE_START.starts_with(&head[..n]) {
            return Some(false);
        }
        if n == head.len() {
            return Some(true);
        }
        // The start of the preface so far; a peek returns at once on bytes already seen, so
        // wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts of one HTTP/2 connection's streams, touched by the tasks its streams run in.
#[derive(Default)]
struct Streams {
    started: AtomicU64,
    open: AtomicUsize,
    answered: AtomicU64,
    cancelled: AtomicU64,
    /// Woken when cancellations pass [`HTTP2_MAX_CANCELLED_EXCESS`].
    abusive: tokio::sync::Notify,
}

/// Marks a stream open until dropped (with its response body).
struct StreamOpen {
    streams: Arc<Streams>,
    answered: bool,
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let streams = &self.streams;
        streams.open.fetch_sub(1, Relaxed);
        if self.answered {
            return;
        }
        let cancelled = streams.cancelled.fetch_add(1, Relaxed) + 1;
        if cancelled > streams.answered.load(Relaxed) + HTTP2_MAX_CANCELLED_EXCESS {
            streams.abusive.notify_one();
        }
    }
}

impl Counts for Arc<Streams> {
    type Mark = StreamOpen;

    /// Also gives the request the `Host` its `:authority` names.
    fn begin(&self, req: &mut Request<Incoming>) -> StreamOpen {
        host_from_authority(req);
        self.started.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        StreamOpen {
            streams: self.clone(),
            answered: false,
        }
    }
}

/// An HTTP/2 request names its host in `:authority`: it becomes the `Host` header that
/// HTTP/1.1 requests carry, so that both are routed and forwarded alike.
fn host_from_authority(req: &mut Request<Incoming>) {
    if req.headers().contains_key(http::header::HOST) {
        return;
    }
    if let Some(host) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
}

/// Serves an accepted connection until it closes: over HTTP/2 when the listener offers it
/// (`http2`) and the client chose it (by ALPN, or the preface), else over HTTP/1.1.
pub async fn serve_accepted<T, S, B>(
    stream: T,
    chose_http2: bool,
    http: Arc<Http1Server>,
    http2: Option<Arc<http2::Builder<TokioExecutor>>>,
    service: S,
    shutdown: watch::Receiver<bool>,
) where
    T: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http2 {
        Some(http2) if chose_http2 => run_http2(stream, http2, service, shutdown).await,
        _ => run(stream, http, service, shutdown).await,
    }
}

/// Serves one HTTP/2 connection until it closes. Idle (no open stream, none started) for
/// [`KEEP_ALIVE_TIMEOUT`], or at shutdown, it is sent GOAWAY and ends once its open streams
/// are done. One that cancels too many streams (see [`HTTP2_MAX_CANCELLED_EXCESS`]) is closed
/// at once.
async fn run_http2<T, S, B>(
    stream: T,
    http: Arc<http2::Builder<TokioExecutor>>,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let streams = Arc::new(Streams::default());
    let service = TrackedService {
        inner: service,
        counts: streams.clone(),
    };
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle_ticks = KEEP_ALIVE_TIMEOUT.as_secs() / TICK.as_secs();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    let (mut quiet, mut started) = (0, 0);
    let mut closing = false;
    loop {
        let begin_close = tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!("HTTP/2 connection ended: {e}");
                }
                return;
            }
            () = streams.abusive.notified() => {
                tracing::debug!("HTTP/2 client cancelled too many streams; closing");
                return;
            }
            _ = shutdown.changed(), if !closing => true,
            _ = tick.tick(), if !closing => {
                let now = streams.started.load(Relaxed);
                let idle = streams.open.load(Relaxed) == 0 && now == started;
                started = now;
                quiet = if idle { quiet + 1 } else { 0 };
                quiet >= idle_ticks
            }
        };
        if begin_close || (!closing && *shutdown.borrow()) {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// What the connection task needs to know of hyper's progress to tell that it is idle,
/// observed through the socket and the service rather than hyper's internals. Only the
/// connection's own task touches it (hyper, the service and the bodies all run inside it),
/// so relaxed loads and stores are exact; atomics only make it `Send`.
#[derive(Default)]
struct Activity {
    /// Requests handed to the service so far (wrapping).
    requests: AtomicU32,
    /// Requests whose response hyper has not finished with.
    open: AtomicU32,
    /// Bytes were read since the last request began or ended: a request head may be
    /// arriving. One case escapes it: the start of a pipelined request read while the one
    /// before was open, whose rest then stalls for two ticks; hyper, shown end-of-stream
    /// mid-head, answers 400. Clients rarely pipeline, and such a one is stalled anyway.
    unparsed: AtomicBool,
    /// The socket refused a write: hyper still holds response bytes.
    write_blocked: AtomicBool,
    /// Writes the socket took so far (wrapping): progress while `write_blocked` comes and goes.
    writes: AtomicU32,
    /// Set by the task: the next read that would wait reports end-of-stream instead.
    park: AtomicBool,
    /// Shutdown has begun: responses say `Connection: close`.
    draining: AtomicBool,
}

impl Activity {
    fn is_reading_head(&self) -> bool {
        self.open.load(Relaxed) == 0 && self.unparsed.load(Relaxed)
    }

    fn is_idle(&self) -> bool {
        self.open.load(Relaxed) == 0
            && !self.unparsed.load(Relaxed)
            && !self.write_blocked.load(Relaxed)
    }
}

/// A client connection's bytes: plain TCP, or TLS over it.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits until the client has sent something not yet read (or closed: `false`), without
    /// reading it.
    fn wait_for_bytes(&mut self) -> impl Future<Output = bool> + Send;
}

impl ClientStream for TcpStream {
    async fn wait_for_bytes(&mut self) -> bool {
        // A peek, not `readable()`: tokio takes a new socket as readable until a read says
        // otherwise. No bytes means the client closed.
        let mut first = [0; 1];
        matches!(self.peek(&mut first).await, Ok(1))
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn wait_for_bytes(&mut self) -> bool {
        let (socket, tls) = self.get_mut();
        // Records already received may hold a request that was never read: the socket would
        // then stay quiet although there is a request to serve.
        let buffered = tls
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
        buffered || socket.wait_for_bytes().await
    }
}

/// Serves one accepted connection until it closes or `shutdown` turns true.
async fn run<T, S, B>(
    mut stream: T,
    http: Arc<Http1Server>,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    T: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::default());
    loop {
        // Parked: nothing but the socket is held. Draining, a request that comes within the
        // grace is still served (and told to close), as a client may be sending it already.
        let draining = *shutdown.borrow_and_update();
        activity.draining.store(draining, Relaxed);
        let wait = if draining {
            TICK * DRAIN_TICKS
        } else {
            KEEP_ALIVE_TIMEOUT
        };
        let parked = http.parked.park();
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !draining => continue,
            // The client closed, an error, or the timeout: close.
            sent = tokio::time::timeout(wait, stream.wait_for_bytes()) => {
                if !matches!(sent, Ok(true)) {
                    return;
                }
            }
        }
        drop(parked);
        activity.park.store(false, Relaxed);
        let io = TokioIo::new(WatchedStream {
            stream,
            activity: activity.clone(),
        });
        let tracked = TrackedService {
            inner: service.clone(),
            counts: activity.clone(),
        };
        // Boxed so that a parked connection's task does not keep room for hyper's state.
        // With upgrades: a WebSocket's 101 hands the connection to its tunnel (see `tunnel`).
        let mut conn = Box::new(http.builder.serve_connection(io, tracked).with_upgrades());
        let deadlines = http.deadlines;
        let ended = match serve_until_idle(&mut conn, &activity, &mut shutdown, deadlines).await {
            Served::Ended(ended) => ended,
            Served::SlowHead => {
                let secs = deadlines.head;
                tracing::debug!("request head not complete within {secs} s; closing");
                return;
            }
            Served::SlowResponse => {
                let secs = deadlines.response;
                tracing::debug!("response not complete within {secs} s (write_timeout); closing");
                return;
            }
            Served::StalledWrite => {
                tracing::debug!("client accepted no response bytes for 30 s; closing");
                return;
            }
        };
        let Some(parts) = conn.into_parts() else {
            // Upgraded: the connection is the tunnel's now.
            return;
        };
        let mut io = parts.io.into_inner();
        match ended {
            Ok(()) if activity.park.load(Relaxed) && parts.read_buf.is_empty() => {
                stream = io.stream;
            }
            Ok(()) => {
                // hyper ended the connection (the client closed it, asked for close, or
                // shutdown): finish it as hyper would have.
                let _ = io.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!("connection ended: {e}");
                return;
            }
        }
    }
}

/// How a spell of serving ended.
enum Served {
    /// hyper ended the connection (or parked it).
    Ended(hyper::Result<()>),
    /// A request head took longer than its deadline.
    SlowHead,
    /// A request and its response took longer than their deadline.
    SlowResponse,
    /// The client took no response bytes for [`WRITE_STALL_TICKS`].
    StalledWrite,
}

/// Drives hyper until the connection ends, parking it once idle and starting a graceful close
/// when `shutdown` turns true.
async fn serve_until_idle<T, S, B>(
    conn: &mut http1::UpgradeableConnection<
        TokioIo<WatchedStream<T>>,
        TrackedService<S, Arc<Activity>>,
    >,
    activity: &Activity,
    shutdown: &mut watch::Receiver<bool>,
    deadlines: Deadlines,
) -> Served
where
    T: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    let mut seen = Ticks::default();
    let mut draining = activity.draining.load(Relaxed);
    // Created once per active spell: each call registers with the shared channel.
    let signal = shutdown.changed();
    tokio::pin!(signal);
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    poll_fn(|cx| {
        side.task.register(cx.waker());
        if side.fired.swap(false, AcqRel) {
            let mut side_cx = Context::from_waker(&side_waker);
            if !draining && signal.as_mut().poll(&mut side_cx).is_ready() {
                draining = true;
                activity.draining.store(true, Relaxed);
            }
            while tick.poll_tick(&mut side_cx).is_ready() {
                seen.observe(activity);
                if draining {
                    seen.draining += 1;
                    if seen.draining == DRAIN_TICKS {
                        // The grace is over: finish what is in flight, then close.
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                }
                if seen.head >= deadlines.head {
                    return Poll::Ready(Served::SlowHead);
                }
                if seen.responding >= deadlines.response {
                    return Poll::Ready(Served::SlowResponse);
                }
                if seen.stalled >= WRITE_STALL_TICKS {
                    return Poll::Ready(Served::StalledWrite);
                }
                if seen.quiet >= 2 {
                    activity.park.store(true, Relaxed);
                }
            }
        }
        Pin::new(&mut *conn).poll(cx).map(Served::Ended)
    })
    .await
}

/// What a connection's ticks have seen: runs of ticks with no new request in between.
#[derive(Default)]
struct Ticks {
    requests: u32,
    /// Ticks in a row that found the connection idle.
    quiet: u32,
    /// Ticks in a row that found a request head begun and not complete.
    head: u32,
    /// Ticks in a row that found the same request open.
    responding: u32,
    writes: u32,
    /// Ticks in a row that found a write refused and no write taken since the tick before.
    stalled: u32,
    /// Ticks since shutdown began.
    draining: u32,
}

impl Ticks {
    fn observe(&mut self, activity: &Activity) {
        let requests = activity.requests.load(Relaxed);
        let same = requests == self.requests;
        self.requests = requests;
        let run = |count: u32, now: bool| match (now, same) {
            (false, _) => 0,
            (true, true) => count + 1,
            (true, false) => 1,
        };
        self.quiet = run(self.quiet, activity.is_idle());
        self.head = run(self.head, activity.is_reading_head());
        self.responding = run(self.responding, activity.open.load(Relaxed) > 0);
        let writes = activity.writes.load(Relaxed);
        let blocked = activity.write_blocked.load(Relaxed) && writes == self.writes;
        self.writes = writes;
        self.stalled = if blocked { self.stalled + 1 } else { 0 };
    }
}

/// The waker given to the park tick and the shutdown signal: it records that one of them
/// fired, so the task polls those two only then instead of on each of the several wake-ups
/// of every request (polling the tick alone cost 1.8% of a proxied request's instructions).
struct SideWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Default for SideWake {
    fn default() -> Self {
        // Fired at first, so that the first poll registers both.
        Self {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Release);
        self.task.wake();
    }
}

/// The socket as hyper sees it, reporting reads and refused writes to [`Activity`].
struct WatchedStream<T> {
    stream: T,
    activity: Arc<Activity>,
}

impl<T: ClientStream> AsyncRead for WatchedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.activity.unparsed.store(true, Relaxed);
                this.activity.park.store(false, Relaxed);
                Poll::Ready(Ok(()))
            }
            // hyper waits for a request that has not begun: end-of-stream ends its connection
            // cleanly, and the socket comes back through `into_parts`.
            Poll::Pending if this.activity.park.load(Relaxed) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<T> WatchedStream<T> {
    /// Notes whether the socket refused a write, and counts the ones it took.
    fn noted(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        let activity = &self.activity;
        let blocked = polled.is_pending();
        activity.write_blocked.store(blocked, Relaxed);
        if !blocked {
            activity
                .writes
                .store(activity.writes.load(Relaxed).wrapping_add(1), Relaxed);
        }
        polled
    }
}

impl<T: ClientStream> AsyncWrite for WatchedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.noted(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.noted(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Parking: hyper ends its connection on the end-of-stream it was shown, and the socket
        // must outlive it.
        if this.activity.park.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// What counts a connection's requests: an HTTP/1.1 connection's [`Activity`], or an HTTP/2
/// connection's [`Streams`].
trait Counts {
    /// What marks a request open until hyper is done with its response.
    type Mark: OpenMark + Unpin;

    /// Counts `req`, handed to the service, and marks it open.
    fn begin(&self, req: &mut Request<Incoming>) -> Self::Mark;
}

impl Counts for Arc<Activity> {
    type Mark = RequestOpen;

    fn begin(&self, _req: &mut Request<Incoming>) -> RequestOpen {
        self.requests
            .store(self.requests.load(Relaxed).wrapping_add(1), Relaxed);
        self.open.store(self.open.load(Relaxed) + 1, Relaxed);
        self.unparsed.store(false, Relaxed);
        RequestOpen(self.clone())
    }
}

/// The service as hyper sees it: counts requests and keeps each one's mark of being open in
/// its response body until hyper drops it.
#[derive(Clone)]
struct TrackedService<S, C> {
    inner: S,
    counts: C,
}

impl<S, B, C> Service<Request<Incoming>> for TrackedService<S, C>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Unpin,
    C: Counts,
{
    type Response = Response<Tracked<B, C::Mark>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future, C::Mark>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let open = self.counts.begin(&mut req);
        TrackedFuture {
            inner: self.inner.call(req),
            open: Some(open),
        }
    }
}

/// A request's future, holding what marks it open (`G`) until its response body takes it.
struct TrackedFuture<F, G = RequestOpen> {
    inner: F,
    open: Option<G>,
}

/// What a response learns from the mark of its request being open, and tells it.
trait OpenMark {
    /// The connection is draining: the response says `Connection: close`.
    fn draining(&self) -> bool;

    /// The service answered (the response's body now holds the mark).
    fn answered(&mut self) {}
}

impl OpenMark for RequestOpen {
    fn draining(&self) -> bool {
        self.0.draining.load(Relaxed)
    }
}

impl OpenMark for StreamOpen {
    /// HTTP/2 drains by GOAWAY, never by a header.
    fn draining(&self) -> bool {
        false
    }

    fn answered(&mut self) {
        self.answered = true;
        self.streams.answered.fetch_add(1, Relaxed);
    }
}

impl<F, B, E, G> Future for TrackedFuture<F, G>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
    G: OpenMark + Unpin,
{
    type Output = Result<Response<Tracked<B, G>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        let mut open = self.open.take();
        if let Some(open) = &mut open {
            open.answered();
        }
        if open.as_ref().is_some_and(OpenMark::draining) {
            static CLOSE: HeaderValue = HeaderValue::from_static("close");
            response
                .headers_mut()
                .insert(http::header::CONNECTION, CLOSE.clone());
        }
        Poll::Ready(Ok(response.map(|body| Tracked { body, _open: open })))
    }
}

/// Marks a request open until dropped; the request ending means hyper consumed its bytes.
struct RequestOpen(Arc<Activity>);

impl Drop for RequestOpen {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .open
            .store(activity.open.load(Relaxed) - 1, Relaxed);
        activity.unparsed.store(false, Relaxed);
    }
}

pin_project! {
    /// A response body that keeps its request open until hyper is done with it.
    struct Tracked<B, G = RequestOpen> {
        #[pin]
        body: B,
        _open: Option<G>,
    }
}

impl<B: Body, G> Body for Tracked<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";

    fn http1_server() -> Arc<Http1Server> {
        Arc::new(Http1Server {
            builder: http1::Builder::new(),
            deadlines: Deadlines::DEFAULT,
            parked: Default::default(),
        })
    }

    /// A service answering "ok" after `delay`, counting the hyper connections made with it
    /// (`run` clones it for each one).
    #[derive(Clone)]
    struct Counted {
        delay: Duration,
        connections: Arc<AtomicUsize>,
    }

    impl Service<Request<Incoming>> for Counted {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn call(&self, _req: Request<Incoming>) -> Self::Future {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        connections: Arc<AtomicUsize>,
        parked: Arc<ParkedConnections>,
        closing: watch::Sender<bool>,
    }

    async fn server(delay: Duration) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (closing, seen) = watch::channel(false);
        let http = http1_server();
        let parked = http.parked.clone();
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = Counted {
                    delay,
                    connections: counter.clone(),
                };
                let service = CountClones(service);
                tokio::spawn(run(stream, http.clone(), service, seen.clone()));
            }
        });
        Server {
            addr,
            connections,
            parked,
            closing,
        }
    }

    /// Counts clones: `run` clones the service once per hyper connection.
    struct CountClones(Counted);

    impl Clone for CountClones {
        fn clone(&self) -> Self {
            self.0.connections.fetch_add(1, Relaxed);
            Self(self.0.clone())
        }
    }

    impl Service<Request<Incoming>> for CountClones {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn call(&self, req: Request<Incoming>) -> Self::Future {
            self.0.call(req)
        }
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    const PAST_PARKING: Duration = Duration::from_millis(2 * 1000 + 500);

    #[tokio::test]
    async fn an_idle_connection_parks_and_serves_its_next_request() {
        let server = server(Duration::ZERO).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        // A new connection holds no hyper state until it sends something.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.connections.load(Relaxed), 0);
        assert_eq!(
            server.parked.count(),
            1,
            "a new connection is counted parked"
        );
        for _ in 0..3 {
            client.write_all(REQUEST).await.unwrap();
            assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(server.connections.load(Relaxed), 1, "busy: not parked");
        assert_eq!(server.parked.count(), 0);
        tokio::time::sleep(PAST_PARKING).await;
        assert_eq!(server.parked.count(), 1, "idle: parked");
        client.write_all(REQUEST).await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        assert_eq!(server.connections.load(Relaxed), 2, "parked, then resumed");
    }

    #[tokio::test]
    async fn a_slow_request_or_a_head_arriving_slowly_is_not_parked() {
        let slow = server(PAST_PARKING).await;
        let mut client = TcpStream::connect(slow.addr).await.unwrap();
        client.write_all(REQUEST).await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));

        let quick = server(Duration::ZERO).await;
        let mut client = TcpStream::connect(quick.addr).await.unwrap();
        client.write_all(&REQUEST[..10]).await.unwrap();
        tokio::time::sleep(PAST_PARKING).await;
        client.write_all(&REQUEST[10..]).await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        assert_eq!(quick.connections.load(Relaxed), 1);
    }

    /// Reads until the server closes; how long that took.
    async fn closed_after(mut client: TcpStream) -> Duration {
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(200), client.read_to_end(&mut rest))
            .await
            .expect("closed within 200 s")
            .unwrap();
        assert!(rest.is_empty(), "no answer: {rest:?}");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_or_a_stalled_head_is_closed_after_30_s() {
        let server = server(Duration::ZERO).await;
        let silent = TcpStream::connect(server.addr).await.unwrap();
        let waited = closed_after(silent).await;
        assert!(
            waited >= KEEP_ALIVE_TIMEOUT && waited < KEEP_ALIVE_TIMEOUT + TICK,
            "{waited:?}"
        );

        let mut stalled = TcpStream::connect(server.addr).await.unwrap();
        stalled.write_all(&REQUEST[..10]).await.unwrap();
        let waited = closed_after(stalled).await;
        let head = TICK * Deadlines::DEFAULT.head;
        assert!(waited >= head - TICK && waited <= head + TICK, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_closed_after_30_s() {
        const LARGE: usize = 64 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_closing, seen) = watch::channel(false);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_req: Request<Incoming>| {
                Box::pin(async {
                    let body = Full::new(Bytes::from(vec![0u8; LARGE]));
                    Ok::<_, Infallible>(Response::new(body))
                })
            });
            run(stream, http1_server(), service, seen).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(REQUEST).await.unwrap();
        // Reads nothing while the server's writes stall, then takes what was sent.
        tokio::time::sleep(Duration::from_secs(40)).await;
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => received += n,
                Err(_) => panic!("still open after {received} bytes"),
            }
        }
        assert!(received < LARGE, "closed before the whole response");
    }

    #[tokio::test]
    async fn shutdown_closes_parked_connections_and_lets_busy_ones_finish() {
        let server = server(Duration::from_millis(500)).await;
        let mut parked = TcpStream::connect(server.addr).await.unwrap();
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(REQUEST).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.closing.send(true).unwrap();
        let answer = answer(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), parked.read_to_end(&mut rest))
            .await
            .expect("closed within 5 s")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn a_request_just_after_shutdown_is_answered_and_told_to_close() {
        let server = server(Duration::ZERO).await;
        let mut parked = TcpStream::connect(server.addr).await.unwrap();
        let mut active = TcpStream::connect(server.addr).await.unwrap();
        active.write_all(REQUEST).await.unwrap();
        assert!(answer(&mut active).await.starts_with("HTTP/1.1 200"));
        server.closing.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Both a parked connection and one hyper still holds serve the request a client was
        // already sending, and close after it.
        for client in [&mut parked, &mut active] {
            client.write_all(REQUEST).await.unwrap();
            let mut whole = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut whole))
                .await
                .expect("closed after the answer")
                .unwrap();
            let whole = String::from_utf8_lossy(&whole).to_ascii_lowercase();
            assert!(whole.starts_with("http/1.1 200"), "{whole}");
            assert!(whole.contains("connection: close"), "{whole}");
        }
    }

    /// An HTTP/2 server answering "ok" after `delay`; its shutdown switch.
    async fn slow_http2_server(delay: Duration) -> (SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closing, seen) = watch::channel(false);
        let http = Arc::new(super::http2_server(16 * 1024));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = Counted {
                    delay,
                    connections: Arc::default(),
                };
                tokio::spawn(run_http2(stream, http.clone(), service, seen.clone()));
            }
        });
        (addr, closing)
    }

    type Http2Client = h2::client::SendRequest<Bytes>;

    async fn http2_client(addr: SocketAddr) -> (Http2Client, JoinHandle<Result<(), h2::Error>>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        (client, tokio::spawn(connection))
    }

    /// Opens a stream for GET /x; its response and its sending half.
    async fn open_stream(
        client: &Http2Client,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
        let request = Request::get("http://t/x").body(()).unwrap();
        client.clone().ready().await?.send_request(request, true)
    }

    #[tokio::test]
    async fn an_http2_client_cancelling_streams_the_server_took_is_closed() {
        let (addr, _closing) = slow_http2_server(Duration::from_secs(60)).await;
        let (client, connection) = http2_client(addr).await;
        let mut cancelled = 0;
        while !connection.is_finished() && cancelled < 10 * HTTP2_MAX_CANCELLED_EXCESS {
            let mut streams = Vec::new();
            for _ in 0..100 {
                match open_stream(&client).await {
                    Ok((_, stream)) => streams.push(stream),
                    Err(_) => break,
                }
            }
            // Long enough for the server to take them and start their (slow) answers.
            tokio::time::sleep(Duration::from_millis(100)).await;
            for mut stream in streams {
                stream.send_reset(h2::Reason::CANCEL);
                cancelled += 1;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("the connection was closed")
            .unwrap();
        assert!(
            cancelled > HTTP2_MAX_CANCELLED_EXCESS && cancelled < 2 * HTTP2_MAX_CANCELLED_EXCESS,
            "closed after {cancelled} cancelled streams: {ended:?}"
        );
    }

    #[tokio::test]
    async fn cancelled_streams_within_the_bound_leave_the_connection_be() {
        let (addr, _closing) = slow_http2_server(Duration::ZERO).await;
        let (client, connection) = http2_client(addr).await;
        // Answered streams give room for as many cancelled ones.
        for _ in 0..HTTP2_MAX_CANCELLED_EXCESS {
            let (response, _) = open_stream(&client).await.unwrap();
            assert_eq!(response.await.unwrap().status(), 200);
        }
        let (slow, _slow_closing) = slow_http2_server(Duration::from_secs(60)).await;
        drop((client, connection));
        let (client, connection) = http2_client(slow).await;
        let mut streams = Vec::new();
        for _ in 0..200 {
            streams.push(open_stream(&client).await.unwrap().1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for mut stream in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !connection.is_finished(),
            "200 cancelled streams are allowed: {:?}",
            connection.await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_sent_goaway_after_30_s() {
        let (addr, _closing) = slow_http2_server(Duration::ZERO).await;
        let (client, connection) = http2_client(addr).await;
        let (response, _) = open_stream(&client).await.unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let started = tokio::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(120), connection)
            .await
            .expect("closed within 120 s")
            .unwrap();
        assert!(ended.is_ok(), "a clean GOAWAY: {ended:?}");
        let waited = started.elapsed();
        assert!(
            waited >= KEEP_ALIVE_TIMEOUT && waited <= KEEP_ALIVE_TIMEOUT + 2 * TICK,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn at_shutdown_http2_streams_in_flight_finish_then_the_connection_closes() {
        let (addr, closing) = slow_http2_server(Duration::from_millis(500)).await;
        let (client, connection) = http2_client(addr).await;
        let (response, _) = open_stream(&client).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        closing.send(true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let ended = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("closed after its stream")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_past_write_timeout_closes_the_connection() {
        let server = server(Duration::from_secs(300)).await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        client.write_all(REQUEST).await.unwrap();
        let waited = closed_after(client).await;
        let deadline = TICK * Deadlines::DEFAULT.response;
        assert!(
            waited >= deadline - TICK && waited <= deadline + TICK,
            "{waited:?}"
        );
    }

    #[test]
    fn tyk_timeouts_of_zero_mean_the_defaults() {
        assert_eq!(Deadlines::from_seconds(0, 0), Deadlines::DEFAULT);
        assert_eq!(
            Deadlines::from_seconds(5, 600),
            Deadlines {
                head: 5,
                response: 600
            }
        );
    }
}
