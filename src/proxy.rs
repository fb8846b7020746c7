//! The upstream side: a pooled HTTP/1.1 client that forwards a request and streams both
//! bodies, rewriting only what a reverse proxy must (URI, Host, hop-by-hop, X-Forwarded-*).

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::ApiSpec;

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Upstream unreachable")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("Upstream request timed out")]
    Timeout,
    #[error("Upstream request failed")]
    Failed(#[source] hyper_util::client::legacy::Error),
    #[error("Upstream address invalid")]
    BadUri(#[from] http::Error),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
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

/// The shared upstream client; cheap to clone, one connection pool for all APIs.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Incoming>,
    timeout: Duration,
}

impl UpstreamClient {
    /// `timeout` bounds the wait for the upstream's response headers (zero: none).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self { client, timeout }
    }

    /// Sends `req` (already matched to `spec`) upstream and returns the streaming response.
    pub async fn forward(
        &self,
        spec: &ApiSpec,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Incoming>, ProxyError> {
        let target = &spec.target;
        let path = spec.upstream_path(req.uri().path());
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        *req.uri_mut() = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path_and_query)
            .build()?;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        append_forwarded_for(headers, peer);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if !spec.definition.proxy.preserve_host_header {
            headers.insert(header::HOST, target.host.clone());
        }

        let sent = self.client.request(req);
        let result = if self.timeout.is_zero() {
            sent.await
        } else {
            tokio::time::timeout(self.timeout, sent)
                .await
                .map_err(|_| ProxyError::Timeout)?
        };
        let mut response = result.map_err(|e| {
            if e.is_connect() {
                ProxyError::Unreachable(e)
            } else {
                ProxyError::Failed(e)
            }
        })?;
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, without hashing, settles it.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    use std::fmt::Write;
    let mut value = String::with_capacity(48);
    if let Some(prior) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        value.push_str(prior);
        value.push_str(", ");
    }
    let _ = write!(value, "{}", peer.ip());
    // The String's buffer becomes the header value without another copy.
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        append_forwarded_for(&mut h, peer);
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.2");
    }
}
