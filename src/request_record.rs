//! What is known of one request an API answered, gathered as it passes the node (only when
//! the access log or analytics ask for it): the access log writes it as a line, analytics
//! as Tyk Pump's record.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use http::request::Parts;

use crate::api::ApiDefinition;
use crate::pipeline::Exchange;
use crate::target::{Forwarding, Target};

/// One request, answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub at: SystemTime,
    pub api_id: String,
    pub api_name: String,
    pub org_id: String,
    pub listen_path: String,
    /// The key's storage id (its hash with `hash_keys`, else the key); empty when keyless or
    /// refused before auth.
    pub key_id: String,
    /// The key's `tags` and `alias`, for analytics.
    pub key_tags: Vec<String>,
    pub alias: String,
    pub client_ip: String,
    pub host: String,
    pub method: String,
    /// The path the client sent, when a rewrite changed it.
    pub original_path: Option<String>,
    pub path: String,
    pub protocol: &'static str,
    pub remote_addr: String,
    pub request_id: String,
    /// The request's declared body length (-1: none declared, as Go has it).
    pub content_length: i64,
    /// The version the request was for (`Non Versioned` for an API without versions).
    pub api_version: String,
    pub status: u16,
    /// Scheme, host and path sent upstream; empty when the request never left the node.
    pub upstream_addr: String,
    /// The upstream's `host:port`.
    pub upstream_host: String,
    /// Milliseconds, as Tyk's `analytics.Latency`.
    pub latency_total: u64,
    pub upstream_latency: u64,
    pub user_agent: String,
    /// `track_endpoints`: the entry's path, which analytics record instead of the request's.
    pub tracked_path: Option<String>,
    /// `do_not_track_endpoints`: no analytics record.
    pub not_tracked: bool,
    /// The request's and response's heads in HTTP/1.1 wire format, for analytics' detailed
    /// recording (bodies stream through and are not kept).
    pub raw_request: Option<String>,
    pub raw_response: Option<String>,
    /// The request's trace (32 hex digits), when traces are on.
    pub trace_id: Option<String>,
}

impl Default for RequestRecord {
    fn default() -> Self {
        Self {
            at: SystemTime::now(),
            api_id: String::new(),
            api_name: String::new(),
            org_id: String::new(),
            listen_path: String::new(),
            key_id: String::new(),
            key_tags: Vec::new(),
            alias: String::new(),
            client_ip: String::new(),
            host: String::new(),
            method: String::new(),
            original_path: None,
            path: String::new(),
            protocol: "HTTP/1.1",
            remote_addr: String::new(),
            request_id: String::new(),
            content_length: -1,
            api_version: String::new(),
            status: 0,
            upstream_addr: String::new(),
            upstream_host: String::new(),
            latency_total: 0,
            upstream_latency: 0,
            user_agent: String::new(),
            tracked_path: None,
            not_tracked: false,
            raw_request: None,
            raw_response: None,
            trace_id: None,
        }
    }
}

impl RequestRecord {
    /// What is known as the request is routed to `definition`'s API.
    pub fn begun(
        definition: &ApiDefinition,
        parts: &Parts,
        peer: SocketAddr,
        client_ip: Option<IpAddr>,
        request_id: &http::HeaderValue,
    ) -> Self {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .unwrap_or(-1);
        Self {
            api_id: definition.api_id.clone(),
            api_name: definition.name.clone(),
            org_id: definition.org_id.clone(),
            listen_path: definition.proxy.listen_path.clone(),
            client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host: header(http::header::HOST),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            protocol: match parts.version {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            remote_addr: peer.to_string(),
            request_id: request_id.to_str().unwrap_or("-").to_owned(),
            content_length,
            api_version: "Non Versioned".into(),
            user_agent: header(http::header::USER_AGENT),
            ..Self::default()
        }
    }

    /// What the pipeline learned: the key, the version, a rewritten path.
    pub fn passed_pipeline(&mut self, parts: &Parts, exchange: &Exchange<'_>) {
        if let Some(caller) = &exchange.caller {
            self.key_id.clone_from(&caller.key_id);
            self.key_tags = caller.access.tags.iter().map(|t| t.to_string()).collect();
            self.alias = caller.access.alias.to_string();
        }
        if let Some(version) = &exchange.version {
            self.api_version = version.name.to_owned();
        }
        if let Some(matched) = &exchange.endpoints {
            self.tracked_path = matched.tracked_path().map(str::to_owned);
            self.not_tracked = matched.not_tracked();
        }
        if parts.uri.path() != self.path {
            self.original_path = Some(std::mem::take(&mut self.path));
            self.path = parts.uri.path().to_owned();
        }
    }

    /// Where the request goes upstream; with `detailed`, its head as sent.
    pub fn sent_upstream(
        &mut self,
        forwarding: &Forwarding,
        target: &Target,
        parts: &Parts,
        detailed: bool,
    ) {
        let path = forwarding.upstream_path(target, parts.uri.path());
        let scheme = target.wire.scheme();
        self.upstream_addr = format!("{scheme}://{}{path}", target.address);
        self.upstream_host = target.address.to_string();
        if detailed {
            self.raw_request = Some(crate::analytics::raw_request_head(parts));
        }
    }

    /// Milliseconds the gateway itself took.
    pub fn latency_gateway(&self) -> u64 {
        self.latency_total.saturating_sub(self.upstream_latency)
    }
}
