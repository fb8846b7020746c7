//! A WebSocket (any HTTP/1.1 upgrade the upstream agrees to, with
//! `http_server_options.enable_websockets`): once the upstream has answered 101, the client's
//! and the upstream's connections are copied both ways until either side closes, both have
//! been quiet for [`IDLE`], or [`TOTAL`] has passed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A tunnel in which neither side sent anything for this long is closed.
pub const IDLE: Duration = Duration::from_secs(300);
/// No tunnel lives longer.
pub const TOTAL: Duration = Duration::from_secs(24 * 3600);

/// Runs the tunnel between the two upgraded connections.
pub async fn run(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade not completed: {e}");
            return;
        }
    };
    let started = Instant::now();
    let last_read = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        io: TokioIo::new(client),
        started,
        last_read: last_read.clone(),
    };
    let mut upstream = Watched {
        io: TokioIo::new(upstream),
        started,
        last_read: last_read.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let mut check = tokio::time::interval(IDLE / 10);
    let ended = tokio::time::sleep(TOTAL);
    tokio::pin!(ended);
    loop {
        tokio::select! {
            copied = &mut copy => {
                if let Err(e) = copied {
                    tracing::debug!("tunnel ended: {e}");
                }
                return;
            }
            () = &mut ended => {
                tracing::debug!("tunnel closed after {TOTAL:?}");
                return;
            }
            _ = check.tick() => {
                let quiet = started.elapsed().as_millis() as u64 - last_read.load(Relaxed);
                if quiet >= IDLE.as_millis() as u64 {
                    tracing::debug!("tunnel closed after {IDLE:?} without a byte");
                    return;
                }
            }
        }
    }
}

/// One side of a tunnel, noting when it last delivered bytes.
struct Watched<T> {
    io: T,
    started: Instant,
    /// Milliseconds after `started` of the last read, on either side.
    last_read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = this.started.elapsed().as_millis() as u64;
            this.last_read.store(now, Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
