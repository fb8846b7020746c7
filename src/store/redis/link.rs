//! Connections to one Redis server: the request path's own multiplexed connection and the
//! others taken in turn, kept alive against proxies' idle timeouts.

use super::*;

/// Connections to one server. A master gets `optimisation_max_active` of them (at most
/// [`MAX_POOL`]); a replica one.
pub(super) struct Link {
    pub(super) host: String,
    pub(super) port: u16,
    /// Session reads and limit counters, which Redis answers at once. One connection for all
    /// of them, because the commands of concurrent requests then share each socket write
    /// and read (at a million keys, 0.33 reads per request: 0.401 CPU seconds per 10,000
    /// requests against 0.505 with 16 connections in turn).
    pub(super) request_path: MultiplexedConnection,
    /// Everything else in turn, the writes that `WAIT` for replicas among them: a command
    /// that blocks its connection never holds up a request.
    pub(super) others: Vec<MultiplexedConnection>,
    pub(super) next: AtomicUsize,
    /// Connected replicas the server reported (masters only).
    pub(super) replicas: usize,
    /// The server's `run_id`, which tells another server behind the same address (HAProxy
    /// after a failover) from this one.
    pub(super) run_id: Option<String>,
}

/// Most multiplexed connections kept to one master; each already pipelines many requests.
pub(super) const MAX_POOL: usize = 32;

impl Link {
    pub(super) fn new(
        host: String,
        port: u16,
        request_path: MultiplexedConnection,
        others: Vec<MultiplexedConnection>,
        replicas: usize,
        run_id: Option<String>,
    ) -> Self {
        Self {
            host,
            port,
            request_path,
            others,
            next: AtomicUsize::new(0),
            replicas,
            run_id,
        }
    }

    /// Whether `other` is a link to the same server (by address, and by `run_id` where
    /// both are known).
    pub(super) fn same_server(&self, other: &Link) -> bool {
        (self.host.as_str(), self.port) == (other.host.as_str(), other.port)
            && (self.run_id.is_none() || other.run_id.is_none() || self.run_id == other.run_id)
    }

    pub(super) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(super) fn request_path(&self) -> MultiplexedConnection {
        self.request_path.clone()
    }

    /// A `PING` on every connection at once; the first failure, if any.
    pub(super) async fn keep_alive(&self) -> Result<(), Fault> {
        let pings = std::iter::once(&self.request_path)
            .chain(&self.others)
            .map(|conn| {
                let mut conn = conn.clone();
                async move {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<Value>(&mut conn);
                    within(|| self.addr(), "PING", READ_TIMEOUT, answer)
                        .await
                        .map(drop)
                }
            });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .collect()
    }

    /// The next connection in turn for work off the request path (the request-path one when
    /// there is no other).
    pub(super) fn conn(&self) -> MultiplexedConnection {
        if self.others.is_empty() {
            return self.request_path();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.others.len();
        self.others[i].clone()
    }
}

/// The server's `run_id`, to tell that two connections (through HAProxy) reach one server.
pub(super) async fn run_id(conn: &mut MultiplexedConnection, deadline: Duration) -> Option<String> {
    let info: String =
        tokio::time::timeout(deadline, redis::cmd("INFO").arg("server").query_async(conn))
            .await
            .ok()?
            .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}
