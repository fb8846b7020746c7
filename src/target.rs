//! An upstream as a definition names it (`proxy.target_url`, a version's `override_target`),
//! parsed once when definitions load, and how a routed request's path and `Host` are rewritten
//! for it.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::Scheme;

use crate::tls::client::{ClientTls, UpstreamTls};

/// The upstream an API proxies to, parsed once at load time.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as `target_url` names it (port 80, or 443 for `https`, when absent).
    pub address: Arc<str>,
    /// The key of the upstream connection pool: the address, and for HTTPS the TLS settings
    /// too, so that a connection is only reused under the settings it was made with.
    pub pool_key: Arc<str>,
    /// The protocol the upstream speaks.
    pub wire: Wire,
    /// The `Host` header sent upstream, built once.
    pub host: http::HeaderValue,
    /// Path prefix of `target_url` without a trailing slash (`""` for the root).
    pub base_path: String,
    /// `target_url`'s path ends with a slash (kept for `proxy.disable_strip_slash`).
    pub base_slash: bool,
}

/// How a target's connections carry requests, from its scheme.
#[derive(Debug, Clone)]
pub enum Wire {
    /// `http://`: HTTP/1.1.
    Plain,
    /// `h2c://` (Tyk's): HTTP/2 without TLS, with prior knowledge, as gRPC servers take it.
    H2c,
    /// `https://`: TLS, then what ALPN picks (HTTP/2 only if `proxy_enable_http2` offered it).
    Tls(Arc<ClientTls>),
}

impl Wire {
    /// The scheme of the URI an HTTP/2 request carries (`:scheme`).
    pub fn scheme(&self) -> Scheme {
        match self {
            Self::Tls(_) => Scheme::HTTPS,
            Self::Plain | Self::H2c => Scheme::HTTP,
        }
    }
}

/// Parses `target_url`, with `tls` for an `https` one; `Err` says why it cannot be used.
pub fn parse(url: &str, tls: &UpstreamTls) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{url:?} has no scheme"))?;
    let secure = scheme == "https";
    if !secure && scheme != "http" && scheme != "h2c" {
        return Err(format!(
            "scheme {scheme} is not supported (http, https or h2c)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let host = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{url:?} has no usable host"))?;
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let address: Arc<str> = format!("{}:{port}", authority.host()).into();
    let (pool_key, wire) = match scheme {
        "https" => {
            let client = tls
                .connect_to(authority.host(), port)
                .map_err(|e| e.to_string())?;
            let key = format!("https://{address} {}", tls.fingerprint());
            (key.into(), Wire::Tls(Arc::new(client)))
        }
        "h2c" => (format!("h2c://{address}").into(), Wire::H2c),
        _ => (address.clone(), Wire::Plain),
    };
    Ok(Target {
        address,
        pool_key,
        wire,
        host,
        base_path: uri.path().trim_end_matches('/').to_owned(),
        base_slash: uri.path().len() > 1 && uri.path().ends_with('/'),
    })
}

/// How a routed request is rewritten for its upstream: `proxy.strip_listen_path`,
/// `proxy.preserve_host_header` and `proxy.disable_strip_slash`, resolved once.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The listen path without its trailing slash, when `strip_listen_path` is on.
    pub strip: Option<Box<str>>,
    pub preserve_host: bool,
    pub disable_strip_slash: bool,
}

impl Forwarding {
    /// The upstream path for a request path that matched the API's listen path: the
    /// target's path and the request's joined by one slash, as Tyk's `singleJoiningSlash`
    /// joins them (a request for the root alone gets the target's path without its trailing
    /// slash, unless `disable_strip_slash` keeps it).
    pub fn upstream_path<'a>(&self, target: &Target, path: &'a str) -> Cow<'a, str> {
        let rest = match &self.strip {
            Some(listen_path) => path.strip_prefix(&**listen_path).unwrap_or(path),
            None => path,
        };
        let base = &target.base_path;
        let sub = rest.trim_start_matches('/');
        if sub.is_empty() {
            let keep_slash = self.disable_strip_slash && target.base_slash && rest.len() <= 1;
            return match (base.is_empty(), keep_slash) {
                (true, _) => Cow::Borrowed("/"),
                (false, true) => Cow::Owned(format!("{base}/")),
                (false, false) => Cow::Owned(base.clone()),
            };
        }
        if base.is_empty() && rest.len() == sub.len() + 1 {
            return Cow::Borrowed(rest);
        }
        Cow::Owned(format!("{base}/{sub}"))
    }
}
