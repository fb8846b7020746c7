//! An upstream as a definition names it (`proxy.target_url`, a version's `override_target`),
//! parsed once when definitions load.

use std::sync::Arc;

use http::uri::Scheme;

/// The upstream an API proxies to, parsed once at load time.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as `target_url` names it (port 80 when absent); also the key of the
    /// upstream connection pool.
    pub address: Arc<str>,
    /// The `Host` header sent upstream, built once.
    pub host: http::HeaderValue,
    /// Path prefix of `target_url` without a trailing slash (`""` for the root).
    pub base_path: String,
}

/// Parses `target_url`; `Err` says why it cannot be used.
pub fn parse(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no scheme"))?;
    if scheme != Scheme::HTTP {
        return Err(format!("scheme {scheme} is not supported (http only)"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let host = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{url:?} has no usable host"))?;
    let port = authority.port_u16().unwrap_or(80);
    Ok(Target {
        address: format!("{}:{port}", authority.host()).into(),
        host,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}
