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
    /// Whether reads may go to it now (replicas: see [`Quiet`]).
    pub(super) quiet: Quiet,
}

/// A server that did not answer a read in time is left alone for [`QUIET_FOR`]: reads skip it
/// (the cache answers instead) rather than each waiting out its deadline, and once that is
/// over a `PING` off the request path, one at a time, tells when it answers again. The time
/// it is quiet until, on the breakers' clock (`breaker::now_ms`, never 0); 0 while it answers,
/// so that the usual read only loads the value.
#[derive(Debug, Default)]
pub(super) struct Quiet(AtomicU64);

/// How long a replica that did not answer is skipped.
pub(super) const QUIET_FOR: Duration = Duration::from_secs(1);

/// What a read does with a server, by its [`Quiet`].
#[derive(Debug, PartialEq)]
pub(super) enum Approach {
    /// It answers: read from it.
    Read,
    /// It is quiet: skip it.
    Skip,
    /// Its quiet time is over and this read claimed the next try: skip it, and `PING` it.
    Probe,
}

impl Quiet {
    /// What a read at `now` does with the server.
    pub(super) fn approach(&self, now: u64) -> Approach {
        let until = self.0.load(Ordering::Relaxed);
        if until == 0 {
            return Approach::Read;
        }
        let claimed = now >= until
            && self
                .0
                .compare_exchange(
                    until,
                    now + READ_TIMEOUT.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if claimed {
            Approach::Probe
        } else {
            Approach::Skip
        }
    }

    pub(super) fn answered(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn unanswered(&self, now: u64) {
        self.0
            .store(now + QUIET_FOR.as_millis() as u64, Ordering::Relaxed);
    }
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
            quiet: Quiet::default(),
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

    /// A `PING` on every connection at once; the first failure, if any. The request path's
    /// must be answered within [`READ_TIMEOUT`]; another may be behind a write's `WAIT`, so
    /// its `PING` has `wait` more.
    pub(super) async fn keep_alive(&self, wait: Duration) -> Result<(), Fault> {
        let deadlines = std::iter::once(READ_TIMEOUT).chain(std::iter::repeat(READ_TIMEOUT + wait));
        let pings = std::iter::once(&self.request_path)
            .chain(&self.others)
            .zip(deadlines)
            .map(|(conn, deadline)| self.ping(conn, deadline));
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .collect()
    }

    /// A `PING` on `conn`, one of this server's connections, answered within `deadline`.
    pub(super) async fn ping(
        &self,
        conn: &MultiplexedConnection,
        deadline: Duration,
    ) -> Result<(), Fault> {
        let mut conn = conn.clone();
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<Value>(&mut conn);
        within(|| self.addr(), "PING", deadline, answer)
            .await
            .map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_server_is_skipped_then_probed_once_at_a_time() {
        use Approach::*;
        let quiet = Quiet::default();
        assert_eq!(quiet.approach(1_000), Read, "answering: every read");
        quiet.unanswered(1_000);
        let over = 1_000 + QUIET_FOR.as_millis() as u64;
        assert_eq!(quiet.approach(1_500), Skip, "skipped while quiet");
        assert_eq!(
            quiet.approach(over),
            Probe,
            "the first read after it probes"
        );
        assert_eq!(
            quiet.approach(over + 1),
            Skip,
            "the others skip it meanwhile"
        );
        quiet.answered();
        assert_eq!(quiet.approach(over + 2), Read);
        quiet.unanswered(over);
        let retry = over + QUIET_FOR.as_millis() as u64;
        assert_eq!(quiet.approach(retry), Probe);
        assert_eq!(
            quiet.approach(retry + READ_TIMEOUT.as_millis() as u64),
            Probe,
            "a probe that never reports back frees the next after its deadline"
        );
    }
}
