//! What can go wrong talking to one Redis server or sentinel, typed, each naming the server.
//! Discovery, links and the change follower return these; the store's health shows the last
//! one, and the session-store trait reports it as [`StoreError::Unavailable`].

use std::future::Future;
use std::time::Duration;

use redis::RedisError;

/// A failed step against the server at `addr` (`host:port`).
#[derive(Debug, thiserror::Error)]
pub(super) enum Fault {
    #[error("{addr}: {step} timed out")]
    TimedOut { addr: String, step: &'static str },
    #[error("{addr}: {step}: {source}")]
    Failed {
        addr: String,
        step: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("{addr}: unexpected ROLE reply")]
    RoleReply { addr: String },
    #[error("{addr} is a {role}, not the master")]
    NotMaster { addr: String, role: String },
    #[error("sentinel {addr} knows no master named {name:?}")]
    NoSuchMaster { addr: String, name: String },
    /// Through HAProxy, a returning old master that Sentinel has not demoted yet looks so.
    #[error("{addr} reports no replicas where replicas were seen; waiting for Sentinel")]
    Lonely { addr: String },
    #[error("{addr}: {confirmed} of {required} replicas confirmed a write")]
    Unconfirmed {
        addr: String,
        confirmed: usize,
        required: usize,
    },
    /// Every sentinel, and every master they named, failed.
    #[error("{}", list(.0))]
    Every(Vec<Fault>),
}

fn list(faults: &[Fault]) -> String {
    let texts: Vec<String> = faults.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl Fault {
    /// Whether the master must be found again: the server is gone, demoted or unsure of its
    /// data, rather than refusing one command.
    pub(super) fn means_find_master(&self) -> bool {
        match self {
            Self::Failed { source, .. } => super::conn::means_find_master(source),
            _ => true,
        }
    }

    /// A connection to `host:port` that could not be opened.
    pub(super) fn connect(host: &str, port: u16, source: RedisError) -> Self {
        Self::Failed {
            addr: format!("{host}:{port}"),
            step: "connect",
            source,
        }
    }
}

/// `command`, one `step` against `addr`, within `deadline`.
pub(super) async fn within<T>(
    addr: impl FnOnce() -> String,
    step: &'static str,
    deadline: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Fault> {
    match tokio::time::timeout(deadline, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Fault::Failed {
            addr: addr(),
            step,
            source,
        }),
        Err(_) => Err(Fault::TimedOut { addr: addr(), step }),
    }
}
