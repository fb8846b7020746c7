//! Which address a request comes from, as Tyk's `request.RealIP` decides it: `X-Real-IP`,
//! else an entry of `X-Forwarded-For` (the first, or the one `http_server_options.xff_depth`
//! counts from the end), else the connection's peer. Read by the IP lists and by
//! `$tyk_context.remote_addr`.
//!
//! Both headers come from the client unless a proxy in front sets them: a gateway reachable
//! directly trusts what a caller claims, as Tyk does.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request's address; `None` when `X-Forwarded-For` is shorter than `xff_depth` (Tyk
/// then has no address rather than a wrong one).
pub fn real_ip(headers: &HeaderMap, peer: IpAddr, xff_depth: usize) -> Option<IpAddr> {
    let parsed = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    if let Some(ip) = parsed(&X_REAL_IP).and_then(|v| v.trim().parse().ok()) {
        return Some(ip);
    }
    if let Some(chain) = parsed(&X_FORWARDED_FOR) {
        let hops = chain.split(',').count();
        if xff_depth > hops {
            return None;
        }
        let index = match xff_depth {
            0 => 0,
            depth => hops - depth,
        };
        let hop = chain.split(',').nth(index).unwrap_or("");
        if let Ok(ip) = hop.trim().parse() {
            return Some(ip);
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn real_ip_then_forwarded_for_then_peer() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 3.3.3.3")]);
        assert_eq!(real_ip(&chain, peer, 0), ip("1.1.1.1"));
        assert_eq!(real_ip(&chain, peer, 1), ip("3.3.3.3"));
        assert_eq!(real_ip(&chain, peer, 3), ip("1.1.1.1"));
        assert_eq!(real_ip(&chain, peer, 4), None, "deeper than the chain");
        let both = headers(&[("x-real-ip", "::1"), ("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(real_ip(&both, peer, 0), ip("::1"));
        let junk = headers(&[("x-real-ip", "nope"), ("x-forwarded-for", "nope")]);
        assert_eq!(real_ip(&junk, peer, 0), Some(peer));
        assert_eq!(real_ip(&HeaderMap::new(), peer, 0), Some(peer));
    }
}
