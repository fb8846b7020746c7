//! Gateway configuration: Tyk's `tyk.conf` field names, from JSON or TOML, with Tyk's
//! `TYK_GW_*` environment overrides.
//!
//! One pipeline: file → JSON value → environment overrides → typed [`GatewayConfig`] →
//! [`GatewayConfig::validate`]. Precedence: environment over file over defaults. Every error
//! names the field the user must fix; fields tollgate does not support are returned so the
//! caller can warn once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access_log;
use crate::path_pattern::PathMatching;
use crate::tls::TlsError;
use crate::tls::client::UpstreamTls;
use crate::tls::server::{CertificateFiles, ListenerTlsSettings, listener_config};

/// The subset of `tyk.conf` tollgate honours, plus tollgate's own additions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GatewayConfig {
    pub listen_address: String,
    pub listen_port: u16,
    /// A port of its own for the Gateway API, `/hello` and the readiness check (0, or
    /// `listen_port`: the public port serves them).
    pub control_api_port: u16,
    pub secret: String,
    pub app_path: String,
    pub hash_keys: bool,
    pub hash_key_function: String,
    /// Whether `GET /tyk/keys` lists key ids while keys are hashed.
    pub enable_hashed_keys_listing: bool,
    /// Whether a key may be written without access rights (a key to every API).
    pub allow_master_keys: bool,
    pub min_token_length: usize,
    pub storage: StorageConfig,
    pub health_check_endpoint_name: String,
    pub readiness_check_endpoint_name: String,
    pub local_session_cache: LocalSessionCache,
    /// Seconds to wait for an upstream's response headers.
    pub proxy_default_timeout: f64,
    pub enable_analytics: bool,
    /// tollgate: refuse a client address that keeps sending wrong keys.
    pub auth_failure_limit: AuthFailureLimit,
    pub policies: PoliciesConfig,
    /// Seconds a key's record lives when `force_global_session_lifetime` is on.
    pub global_session_lifetime: i64,
    /// Every record lives `global_session_lifetime`, whatever the key and API say.
    pub force_global_session_lifetime: bool,
    /// HTTPS upstreams: take any certificate (an API's `proxy.transport` may also ask).
    pub proxy_ssl_insecure_skip_verify: bool,
    /// Tyk's TLS version numbers (771: 1.2, 772: 1.3); 0: no bound.
    pub proxy_ssl_min_version: u16,
    pub proxy_ssl_max_version: u16,
    /// TLS 1.2 cipher suites for HTTPS upstreams, by Go's names.
    pub proxy_ssl_ciphers: Vec<String>,
    /// HTTPS upstreams are offered HTTP/2 (ALPN `h2`, then `http/1.1`); `h2c://` targets
    /// speak HTTP/2 whatever this says.
    pub proxy_enable_http2: bool,
    /// APIs' `domain` is routed by (Tyk's default: off, and domains are then ignored).
    pub enable_custom_domains: bool,
    /// Endpoint paths in every API's lists and middleware match whatever their case (listen
    /// paths still match exactly).
    pub ignore_endpoint_case: bool,
    /// Values API definitions name as `$secret_conf.<name>`.
    pub secrets: std::collections::BTreeMap<String, String>,
    pub access_logs: AccessLogsConfig,
    pub analytics_config: AnalyticsConfig,
    pub opentelemetry: OpenTelemetryConfig,
    /// `debug`, `info` (the default), `warn` or `error`; `RUST_LOG` overrides it.
    pub log_level: String,
    pub security: SecurityConfig,
    pub http_server_options: HttpServerOptions,
}

/// `http_server_options`: of Tyk's, the TLS listener's settings, WebSockets and the body
/// limit; and tollgate's connection cap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpServerOptions {
    pub use_ssl: bool,
    pub certificates: Vec<CertificateFiles>,
    /// PEM files each holding a certificate and its key, serving the names in it.
    pub ssl_certificates: Vec<String>,
    /// Tyk's TLS version numbers (771: 1.2, 772: 1.3); 0: no bound.
    pub min_version: u16,
    pub max_version: u16,
    pub ssl_ciphers: Vec<String>,
    /// HTTP/2 for clients: offered by ALPN on the TLS listener, and with prior knowledge
    /// (h2c) on a plain one.
    pub enable_http2: bool,
    /// Upgrade requests (WebSockets) are passed on and tunnelled (Tyk's default: off).
    pub enable_websockets: bool,
    /// Bytes a request body may have (0: no limit); more is a 413.
    pub max_request_body_size: u64,
    /// Seconds a request head may take from its first bytes (0: 30).
    pub read_timeout: u32,
    /// Seconds from a request to the end of its response over HTTP/1.1 (0: Tyk's 120).
    pub write_timeout: u32,
    /// tollgate: client connections held open at most (parked ones too), shared among the
    /// workers; at the cap new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Which `X-Forwarded-For` entry is the client's address: 0 the first, N the Nth from
    /// the end (see `client_ip`).
    pub xff_depth: usize,
    /// Endpoint paths are anchored at their start (`/users` matches `/users/1`, not
    /// `/admin/users`).
    pub enable_path_prefix_matching: bool,
    /// Endpoint paths are anchored at their end (`/users` no longer matches `/users/1`).
    pub enable_path_suffix_matching: bool,
}

impl Default for HttpServerOptions {
    fn default() -> Self {
        Self {
            use_ssl: false,
            certificates: Vec::new(),
            ssl_certificates: Vec::new(),
            min_version: 0,
            max_version: 0,
            ssl_ciphers: Vec::new(),
            enable_http2: false,
            enable_websockets: false,
            max_request_body_size: 0,
            read_timeout: 0,
            write_timeout: 0,
            max_connections: 65_536,
            xff_depth: 0,
            enable_path_prefix_matching: false,
            enable_path_suffix_matching: false,
        }
    }
}

impl HttpServerOptions {
    /// Each of `workers` listeners' share of `max_connections`.
    pub fn connections_per_worker(&self, workers: usize) -> usize {
        self.max_connections.div_ceil(workers.max(1))
    }

    /// `read_timeout` and `write_timeout` as the deadlines an HTTP/1.1 connection keeps.
    pub fn deadlines(&self) -> crate::connection::Deadlines {
        crate::connection::Deadlines::from_seconds(self.read_timeout, self.write_timeout)
    }

    /// `max_request_body_size` as a bound (`u64::MAX` when there is none).
    pub fn max_body(&self) -> u64 {
        match self.max_request_body_size {
            0 => u64::MAX,
            size => size,
        }
    }

    /// The most of a body the gateway reads whole (`validate_json`, batch requests): `cap`,
    /// or `max_request_body_size` when that is smaller.
    pub fn read_limit(&self, cap: u64) -> usize {
        usize::try_from(self.max_body().min(cap)).unwrap_or(usize::MAX)
    }
}

/// `security`: of Tyk's settings, the client certificates for upstream mutual TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SecurityConfig {
    pub certificates: SecurityCertificates,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SecurityCertificates {
    /// Host pattern (`host:port`, `host`, `*.domain`, `*`) → PEM file with a certificate and
    /// its private key.
    pub upstream: std::collections::BTreeMap<String, String>,
}

/// `policies`: where security policies come from. Only Tyk's `file` source: a directory of
/// policy files (`policy_path`) or one file mapping ids to policies (`policy_record_name`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PoliciesConfig {
    pub policy_source: String,
    pub policy_record_name: String,
    pub policy_path: String,
}

/// `auth_failure_limit` (tollgate's): after `max_failures` failed keys from one client
/// address within `window` seconds, that address's keyed requests are refused with 429 until
/// the window ends. Off (`max_failures: 0`) by default: clients behind one proxy or NAT share
/// an address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthFailureLimit {
    pub max_failures: u32,
    pub window: u64,
}

impl Default for AuthFailureLimit {
    fn default() -> Self {
        Self {
            max_failures: 0,
            window: 60,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen_address: String::new(),
            control_api_port: 0,
            listen_port: 8080,
            secret: String::new(),
            app_path: "./apps/".into(),
            hash_keys: true,
            // Tyk's default: legacy keys (org id + hex), stored under their murmur32 hash.
            hash_key_function: String::new(),
            enable_hashed_keys_listing: false,
            allow_master_keys: false,
            min_token_length: 3,
            storage: StorageConfig::default(),
            health_check_endpoint_name: "hello".into(),
            readiness_check_endpoint_name: "ready".into(),
            local_session_cache: LocalSessionCache::default(),
            proxy_default_timeout: 30.0,
            enable_analytics: false,
            auth_failure_limit: AuthFailureLimit::default(),
            policies: PoliciesConfig::default(),
            global_session_lifetime: 0,
            force_global_session_lifetime: false,
            proxy_ssl_insecure_skip_verify: false,
            proxy_ssl_min_version: 0,
            proxy_ssl_max_version: 0,
            proxy_ssl_ciphers: Vec::new(),
            proxy_enable_http2: false,
            enable_custom_domains: false,
            ignore_endpoint_case: false,
            secrets: Default::default(),
            access_logs: AccessLogsConfig::default(),
            analytics_config: AnalyticsConfig::default(),
            opentelemetry: OpenTelemetryConfig::default(),
            log_level: String::new(),
            security: SecurityConfig::default(),
            http_server_options: HttpServerOptions::default(),
        }
    }
}

/// Tyk 5's `opentelemetry`: traces (see `traces`). Its `traces` object, when enabled, is
/// read instead of the top-level fields, as Tyk reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OpenTelemetryConfig {
    pub enabled: bool,
    /// `grpc` (Tyk's default) or `http`.
    pub exporter: String,
    /// `host:port` (or a URL) of the OTLP receiver.
    pub endpoint: String,
    /// Headers sent with each export (HTTP exporter).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Seconds an export may take.
    pub connection_timeout: u64,
    /// The traces' `service.name`.
    pub resource_name: String,
    /// `tracecontext` (W3C) only.
    pub context_propagation: String,
    pub sampling: SamplingConfig,
    /// `batch` (the default): spans wait in a bounded queue and go in batches; `simple`: each
    /// span is sent as it ends (still off the request path, through the same queue).
    pub span_processor_type: String,
    pub span_batch_config: SpanBatchConfig,
    pub traces: Option<Box<OpenTelemetryConfig>>,
}

/// `opentelemetry.span_batch_config`: 0 (or absent) takes the OpenTelemetry SDK's default, as
/// in Tyk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SpanBatchConfig {
    /// Spans waiting for export at most (default 2048); more are dropped and counted.
    pub max_queue_size: usize,
    /// Spans per export (default 512).
    pub max_export_batch_size: usize,
    /// Seconds a span may wait for its batch (default 5).
    pub batch_timeout: u64,
}

impl Default for OpenTelemetryConfig {
    /// Tyk's defaults, with a `traces` object of the same fields (disabled), so that unknown
    /// fields inside it are reported and its environment names (`TYK_GW_OPENTELEMETRY_TRACES_*`)
    /// are read.
    fn default() -> Self {
        Self {
            traces: Some(Box::new(Self::without_traces())),
            ..Self::without_traces()
        }
    }
}

impl OpenTelemetryConfig {
    fn without_traces() -> Self {
        Self {
            enabled: false,
            exporter: "grpc".into(),
            endpoint: "localhost:4317".into(),
            headers: Default::default(),
            connection_timeout: 1,
            resource_name: "tyk-gateway".into(),
            context_propagation: "tracecontext".into(),
            sampling: SamplingConfig::default(),
            span_processor_type: "batch".into(),
            span_batch_config: SpanBatchConfig::default(),
            traces: None,
        }
    }

    /// The settings in force: `traces`, when it is enabled, else these.
    pub fn effective(&self) -> &Self {
        match &self.traces {
            Some(traces) if traces.enabled => traces,
            _ => self,
        }
    }
}

/// `opentelemetry.sampling`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SamplingConfig {
    /// `AlwaysOn` (the default), `AlwaysOff` or `TraceIDRatioBased`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The fraction sampled with `TraceIDRatioBased`.
    pub rate: f64,
    /// Follow the client's sampling decision when its `traceparent` has one.
    pub parent_based: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            kind: "AlwaysOn".into(),
            rate: 0.5,
            parent_based: false,
        }
    }
}

/// `analytics_config`: how `enable_analytics` records requests (see `analytics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AnalyticsConfig {
    /// Clients whose requests are not recorded (single addresses, as Tyk takes them).
    pub ignored_ips: Vec<String>,
    /// Records carry the request's and response's heads (`RawRequest`, `RawResponse`).
    pub enable_detailed_recording: bool,
    /// Seconds the analytics list is kept when nothing drains it (0: 60; -1: forever).
    pub storage_expiration_time: i64,
    /// Records spread over ten lists (`..._0` to `..._9`).
    pub enable_multiple_analytics_keys: bool,
    /// Records waiting to be written at most; more are dropped.
    pub records_buffer_size: u64,
    /// `msgpack` (Tyk's default) only.
    pub serializer_type: String,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            ignored_ips: Vec::new(),
            enable_detailed_recording: false,
            storage_expiration_time: 60,
            enable_multiple_analytics_keys: false,
            records_buffer_size: 1000,
            serializer_type: String::new(),
        }
    }
}

/// Tyk 5's `access_logs`: a JSON line per request (see `access_log`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AccessLogsConfig {
    pub enabled: bool,
    /// The fields written, by Tyk's names; empty: all of them.
    pub template: Vec<String>,
    /// tollgate's: the file lines are appended to; empty: standard output.
    pub path: String,
}

/// `storage`: where keys live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    /// `redis` (Tyk's default) or `memory` (tollgate's embedded store).
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// Sentinel addresses (`host:port`), used with `master_name`.
    pub addrs: Vec<String>,
    pub master_name: String,
    pub sentinel_password: String,
    pub username: String,
    pub password: String,
    pub database: i64,
    /// Seconds for connecting and for each command.
    pub timeout: u64,
    pub use_ssl: bool,
    /// With `use_ssl`: accept any certificate Redis presents (tests and private networks only).
    pub ssl_insecure_skip_verify: bool,
    /// With `use_ssl`: PEM file of the CAs that sign Redis's certificate, trusted instead of
    /// the public roots.
    pub ca_file: String,
    /// With `use_ssl`: PEM client certificate chain and its key, for a Redis that asks for
    /// one (`tls-auth-clients`). Both or neither.
    pub cert_file: String,
    pub key_file: String,
    pub optimisation_max_active: u32,
    /// tollgate: replicas that must confirm a key write (`WAIT`); `-1` picks 1 where replicas
    /// exist and 0 otherwise.
    pub min_replicas_ack: i64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: "redis".into(),
            host: "localhost".into(),
            port: 6379,
            addrs: Vec::new(),
            master_name: String::new(),
            sentinel_password: String::new(),
            username: String::new(),
            password: String::new(),
            database: 0,
            timeout: 5,
            use_ssl: false,
            ssl_insecure_skip_verify: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            optimisation_max_active: 16,
            min_replicas_ack: -1,
        }
    }
}

/// `local_session_cache`: the per-node cache in front of the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LocalSessionCache {
    pub disable_cached_session_state: bool,
    /// Seconds a cached session is used without asking the store.
    pub cached_session_timeout: u64,
    /// tollgate: seconds a cached session stays usable while the store is unreachable.
    pub stale_if_error: u64,
    /// tollgate: most sessions held in the cache.
    pub max_entries: u64,
    /// tollgate: have Redis report every change of a session record (key tracking), so that
    /// a cached session is used until it changes instead of being read again after
    /// `cached_session_timeout`.
    pub follow_changes: bool,
}

impl Default for LocalSessionCache {
    fn default() -> Self {
        Self {
            disable_cached_session_state: false,
            cached_session_timeout: 10,
            stale_if_error: 120,
            max_entries: 300_000,
            follow_changes: true,
        }
    }
}

/// A configuration the gateway cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: not valid {format}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A loaded configuration and the fields of the input it does not support.
#[derive(Debug)]
pub struct Loaded {
    pub config: GatewayConfig,
    pub unsupported: Vec<String>,
}

impl GatewayConfig {
    /// How Tyk's path patterns match (`ignore_endpoint_case`, `http_server_options`'
    /// prefix and suffix matching).
    pub fn path_matching(&self) -> PathMatching {
        PathMatching {
            ignore_case: self.ignore_endpoint_case,
            prefix: self.http_server_options.enable_path_prefix_matching,
            suffix: self.http_server_options.enable_path_suffix_matching,
        }
    }

    /// Reads a `tyk.conf` (JSON) or a `.toml` file, applies `TYK_GW_*` overrides, validates.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let value = if is_toml {
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                format: "TOML",
                reason: e.to_string(),
            })?;
            serde_json::to_value(table).map_err(|e| invalid("(file)", e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                format: "JSON",
                reason: e.to_string(),
            })?
        };
        let mut loaded = Self::from_value(value, |name| std::env::var(name).ok())?;
        loaded
            .config
            .resolve_app_path(path.parent().unwrap_or(Path::new(".")));
        loaded.config.validate()?;
        Ok(loaded)
    }

    /// Builds a configuration from a JSON value and an environment lookup (not validated).
    pub fn from_value(
        mut value: Value,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let Value::Object(ref mut map) = value else {
            return Err(invalid("(file)", "the configuration must be a JSON object"));
        };
        let defaults = serde_json::to_value(Self::default()).expect("defaults serialize");
        let mut unsupported = Vec::new();
        collect_unsupported(
            map,
            defaults.as_object().expect("object"),
            "",
            &mut unsupported,
        );
        apply_env(
            map,
            defaults.as_object().expect("object"),
            "TYK_GW_",
            "",
            &env,
        )?;
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            invalid(&field, e.into_inner().to_string())
        })?;
        unsupported.extend(
            config
                .access_logs
                .template
                .iter()
                .filter(|f| access_log::UNFILLED.contains(&f.as_str()))
                .map(|f| format!("access_logs.template: {f}")),
        );
        Ok(Loaded {
            config,
            unsupported,
        })
    }

    /// A relative `app_path` (and policy and certificate path) is taken relative to the
    /// config file's directory.
    fn resolve_app_path(&mut self, base: &Path) {
        let options = &mut self.http_server_options;
        let certificates = options
            .certificates
            .iter_mut()
            .flat_map(|c| [&mut c.cert_file, &mut c.key_file]);
        for path in [
            &mut self.app_path,
            &mut self.policies.policy_path,
            &mut self.policies.policy_record_name,
            &mut self.access_logs.path,
        ]
        .into_iter()
        .chain(certificates)
        .chain(options.ssl_certificates.iter_mut())
        {
            if !path.is_empty() && Path::new(path.as_str()).is_relative() {
                *path = base.join(path.as_str()).to_string_lossy().into_owned();
            }
        }
    }

    /// The TLS listener's rustls config when `http_server_options.use_ssl` is on, every
    /// certificate and key read now.
    pub fn listener_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let options = &self.http_server_options;
        if !options.use_ssl {
            return Ok(None);
        }
        listener_config(&ListenerTlsSettings {
            certificates: &options.certificates,
            ssl_certificates: &options.ssl_certificates,
            min_version: options.min_version,
            max_version: options.max_version,
            ciphers: &options.ssl_ciphers,
            http2: options.enable_http2,
        })
        .map(Some)
        .map_err(|TlsError { field, reason }| ConfigError::InvalidField { field, reason })
    }

    /// The gateway's settings for HTTPS upstreams, which each API's own override.
    pub fn upstream_tls(&self) -> UpstreamTls {
        UpstreamTls {
            insecure_skip_verify: self.proxy_ssl_insecure_skip_verify,
            min_version: self.proxy_ssl_min_version,
            max_version: self.proxy_ssl_max_version,
            ciphers: self.proxy_ssl_ciphers.clone(),
            http2: self.proxy_enable_http2,
            certificates: self
                .security
                .certificates
                .upstream
                .iter()
                .map(|(pattern, pem)| (pattern.clone(), pem.clone()))
                .collect(),
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.is_empty() {
            return Err(invalid(
                "secret",
                "must be set: it guards the Gateway API under /tyk/",
            ));
        }
        if !Path::new(&self.app_path).is_dir() {
            return Err(invalid(
                "app_path",
                format!("{:?} is not a directory", self.app_path),
            ));
        }
        if !["", "murmur32", "murmur64", "murmur128", "sha256"]
            .contains(&self.hash_key_function.as_str())
        {
            return Err(invalid(
                "hash_key_function",
                format!(
                    "{:?} is not one of murmur32, murmur64, murmur128, sha256",
                    self.hash_key_function
                ),
            ));
        }
        if !(self.proxy_default_timeout.is_finite() && self.proxy_default_timeout >= 0.0) {
            return Err(invalid(
                "proxy_default_timeout",
                "must be a number of seconds >= 0",
            ));
        }
        for (field, name) in [
            (
                "health_check_endpoint_name",
                &self.health_check_endpoint_name,
            ),
            (
                "readiness_check_endpoint_name",
                &self.readiness_check_endpoint_name,
            ),
        ] {
            if name.is_empty() || name.contains('/') || name == "tyk" {
                return Err(invalid(
                    field,
                    format!("{name:?} is not a usable path segment"),
                ));
            }
        }
        if self.auth_failure_limit.max_failures > 0 && self.auth_failure_limit.window == 0 {
            return Err(invalid(
                "auth_failure_limit.window",
                "must be at least 1 second while max_failures is set",
            ));
        }
        if !matches!(self.policies.policy_source.as_str(), "" | "file") {
            return Err(invalid(
                "policies.policy_source",
                format!(
                    "{:?} is not supported: tollgate reads policies from files (\"file\")",
                    self.policies.policy_source
                ),
            ));
        }
        if self.local_session_cache.max_entries == 0 {
            return Err(invalid(
                "local_session_cache.max_entries",
                "must be at least 1",
            ));
        }
        if !matches!(
            self.analytics_config.serializer_type.as_str(),
            "" | "msgpack"
        ) {
            return Err(invalid(
                "analytics_config.serializer_type",
                format!(
                    "{:?} is not supported: tollgate writes Tyk's msgpack records",
                    self.analytics_config.serializer_type
                ),
            ));
        }
        let otel = self.opentelemetry.effective();
        if otel.enabled {
            if !matches!(otel.exporter.as_str(), "grpc" | "http") {
                return Err(invalid(
                    "opentelemetry.exporter",
                    format!("{:?} is not one of grpc, http", otel.exporter),
                ));
            }
            if otel.context_propagation != "tracecontext" {
                return Err(invalid(
                    "opentelemetry.context_propagation",
                    format!(
                        "{:?} is not supported: tollgate propagates W3C tracecontext",
                        otel.context_propagation
                    ),
                ));
            }
            for (name, value) in &otel.headers {
                if http::HeaderName::try_from(name.as_str()).is_err()
                    || http::HeaderValue::try_from(value.as_str()).is_err()
                {
                    return Err(invalid(
                        &format!("opentelemetry.headers.{name}"),
                        "is not a valid header name and value",
                    ));
                }
            }
            if !matches!(otel.span_processor_type.as_str(), "batch" | "simple") {
                return Err(invalid(
                    "opentelemetry.span_processor_type",
                    format!("{:?} is not one of batch, simple", otel.span_processor_type),
                ));
            }
            let sampling = &otel.sampling;
            if !matches!(
                sampling.kind.as_str(),
                "AlwaysOn" | "AlwaysOff" | "TraceIDRatioBased"
            ) {
                return Err(invalid(
                    "opentelemetry.sampling.type",
                    format!(
                        "{:?} is not one of AlwaysOn, AlwaysOff, TraceIDRatioBased",
                        sampling.kind
                    ),
                ));
            }
            if !(0.0..=1.0).contains(&sampling.rate) {
                return Err(invalid(
                    "opentelemetry.sampling.rate",
                    "must be between 0 and 1",
                ));
            }
        }
        for (i, ip) in self.analytics_config.ignored_ips.iter().enumerate() {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    &format!("analytics_config.ignored_ips[{i}]"),
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
        if !matches!(
            self.log_level.as_str(),
            "" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(invalid(
                "log_level",
                format!(
                    "{:?} is not one of debug, info, warn, error",
                    self.log_level
                ),
            ));
        }
        for (i, field) in self.access_logs.template.iter().enumerate() {
            let known = access_log::FIELDS.contains(&field.as_str())
                || access_log::UNFILLED.contains(&field.as_str());
            if !known {
                return Err(invalid(
                    &format!("access_logs.template[{i}]"),
                    format!("{field:?} is not a field of Tyk's access logs"),
                ));
            }
        }
        if self.http_server_options.max_connections == 0 {
            return Err(invalid(
                "http_server_options.max_connections",
                "must be at least 1",
            ));
        }
        self.listener_tls()?;
        self.storage.validate()
    }

    /// The socket address to bind.
    pub fn listen_addr(&self) -> String {
        self.addr_with_port(self.listen_port)
    }

    /// The control listener's address, when `control_api_port` gives the Gateway API a port
    /// of its own.
    pub fn control_addr(&self) -> Option<String> {
        self.has_control_port()
            .then(|| self.addr_with_port(self.control_api_port))
    }

    pub fn has_control_port(&self) -> bool {
        self.control_api_port != 0 && self.control_api_port != self.listen_port
    }

    fn addr_with_port(&self, port: u16) -> String {
        let host = if self.listen_address.is_empty() {
            "0.0.0.0"
        } else {
            &self.listen_address
        };
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.kind.as_str() {
            "memory" => Ok(()),
            "redis" => {
                if self.addrs.is_empty() {
                    if self.host.is_empty() {
                        return Err(invalid("storage.host", "must be set for Redis"));
                    }
                    if self.port == 0 {
                        return Err(invalid("storage.port", "must be 1-65535"));
                    }
                } else {
                    if self.master_name.is_empty() {
                        return Err(invalid(
                            "storage.master_name",
                            "must be set with storage.addrs (Sentinel); Redis Cluster is not supported",
                        ));
                    }
                    for addr in &self.addrs {
                        let ok = addr.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        });
                        if !ok {
                            return Err(invalid(
                                "storage.addrs",
                                format!("{addr:?} is not host:port"),
                            ));
                        }
                    }
                }
                if !(0..=15).contains(&self.database) {
                    return Err(invalid("storage.database", "must be 0-15"));
                }
                if self.timeout == 0 {
                    return Err(invalid("storage.timeout", "must be at least 1 second"));
                }
                if self.optimisation_max_active == 0 {
                    return Err(invalid(
                        "storage.optimisation_max_active",
                        "must be at least 1",
                    ));
                }
                if self.min_replicas_ack < -1 {
                    return Err(invalid(
                        "storage.min_replicas_ack",
                        "must be -1 (auto) or >= 0",
                    ));
                }
                self.validate_tls()
            }
            other => Err(invalid(
                "storage.type",
                format!("{other:?} is not one of redis, memory"),
            )),
        }
    }

    /// The TLS settings only mean something with `use_ssl`: set without it, they would leave
    /// an operator who asked for a private CA talking to Redis in plain text.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = [
            (
                "storage.ssl_insecure_skip_verify",
                self.ssl_insecure_skip_verify,
            ),
            ("storage.ca_file", !self.ca_file.is_empty()),
            ("storage.cert_file", !self.cert_file.is_empty()),
            ("storage.key_file", !self.key_file.is_empty()),
        ];
        if !self.use_ssl
            && let Some((field, _)) = set.iter().find(|(_, set)| *set)
        {
            return Err(invalid(field, "needs storage.use_ssl: true"));
        }
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (false, true) => Err(invalid(
                "storage.key_file",
                "must be set with storage.cert_file",
            )),
            (true, false) => Err(invalid(
                "storage.cert_file",
                "must be set with storage.key_file",
            )),
            _ => Ok(()),
        }
    }
}

fn collect_unsupported(
    map: &Map<String, Value>,
    known: &Map<String, Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, value) in map {
        match known.get(key) {
            None => out.push(format!("{prefix}{key}")),
            // A map (`security.certificates.upstream`): its keys are the user's, not fields.
            Some(Value::Object(inner)) if inner.is_empty() => {}
            Some(Value::Object(inner)) => {
                if let Value::Object(given) = value {
                    collect_unsupported(given, inner, &format!("{prefix}{key}."), out);
                }
            }
            Some(_) => {}
        }
    }
}

/// Tyk's environment names: `TYK_GW_` + the Go field name in capitals, which is the JSON name
/// without underscores (`listen_port` → `TYK_GW_LISTENPORT`, `storage.host` →
/// `TYK_GW_STORAGE_HOST`).
fn apply_env(
    map: &mut Map<String, Value>,
    defaults: &Map<String, Value>,
    prefix: &str,
    field_prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, default) in defaults {
        let name = format!("{prefix}{}", key.replace('_', "").to_uppercase());
        let field = format!("{field_prefix}{key}");
        if let Value::Object(inner) = default {
            let entry = map
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(section) = entry {
                apply_env(
                    section,
                    inner,
                    &format!("{name}_"),
                    &format!("{field}."),
                    env,
                )?;
            }
            continue;
        }
        let Some(raw) = env(&name) else { continue };
        let bad = |what: &str| invalid(&field, format!("environment {name}={raw:?} is not {what}"));
        let value = match default {
            Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err(bad("a boolean")),
            },
            Value::Number(n) if n.is_f64() => raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a number"))?,
            Value::Number(_) => {
                Value::Number(raw.parse::<i64>().map_err(|_| bad("an integer"))?.into())
            }
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => Value::String(raw.clone()),
        };
        map.insert(key.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn tyk_names_and_unsupported_fields() {
        let loaded = GatewayConfig::from_value(
            json!({"listen_port": 9000, "secret": "s", "storage": {"type": "redis", "host": "r", "port": 6380, "enable_cluster": false, "optimisation_max_idle": 2000},
                   "analytics_config": {"pool_size": 4}, "enable_analytics": true,
                   "opentelemetry": {"traces": {"enabled": true, "custom_trace_header": "X-Trace"}},
                   "security": {"certificates": {"upstream": {"*.example.com": "client.pem"}}}}),
            no_env,
        )
        .unwrap();
        assert_eq!(loaded.config.listen_port, 9000);
        assert_eq!(loaded.config.storage.host, "r");
        assert_eq!(
            loaded.unsupported,
            vec![
                "analytics_config.pool_size",
                "opentelemetry.traces.custom_trace_header",
                "storage.enable_cluster",
                "storage.optimisation_max_idle",
            ]
        );
    }

    #[test]
    fn only_file_policies_are_supported() {
        let dir = tempfile::tempdir().unwrap();
        let config = |source: &str| {
            GatewayConfig::from_value(
                json!({"secret": "s", "app_path": dir.path(), "storage": {"type": "memory"},
                       "policies": {"policy_source": source}}),
                no_env,
            )
            .unwrap()
            .config
        };
        assert!(config("file").validate().is_ok());
        let err = config("service").validate().unwrap_err().to_string();
        assert!(err.starts_with("policies.policy_source:"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let env = |name: &str| match name {
            "TYK_GW_LISTENPORT" => Some("7000".to_string()),
            "TYK_GW_STORAGE_HOST" => Some("envhost".to_string()),
            "TYK_GW_HASHKEYS" => Some("false".to_string()),
            "TYK_GW_STORAGE_ADDRS" => Some("a:1, b:2".to_string()),
            "TYK_GW_PROXYDEFAULTTIMEOUT" => Some("2.5".to_string()),
            _ => None,
        };
        let c = GatewayConfig::from_value(json!({"listen_port": 9000}), env)
            .unwrap()
            .config;
        assert_eq!(c.listen_port, 7000);
        assert_eq!(c.storage.host, "envhost");
        assert!(!c.hash_keys);
        assert_eq!(c.storage.addrs, vec!["a:1", "b:2"]);
        assert_eq!(c.proxy_default_timeout, 2.5);
    }

    #[test]
    fn errors_name_the_field() {
        let err = GatewayConfig::from_value(json!({"listen_port": 70000}), no_env).unwrap_err();
        assert!(err.to_string().starts_with("listen_port:"), "{err}");
        let err = GatewayConfig::from_value(json!({"storage": {"port": "x"}}), no_env).unwrap_err();
        assert!(err.to_string().starts_with("storage.port:"), "{err}");
        let env = |n: &str| (n == "TYK_GW_LISTENPORT").then(|| "abc".to_string());
        let err = GatewayConfig::from_value(json!({}), env).unwrap_err();
        assert!(err.to_string().contains("TYK_GW_LISTENPORT"), "{err}");
        let mut c = GatewayConfig {
            secret: "s".into(),
            app_path: ".".into(),
            ..Default::default()
        };
        c.storage.kind = "etcd".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("storage.type:")
        );
        c.storage.kind = "redis".into();
        c.storage.addrs = vec!["h:1".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("storage.master_name:")
        );
    }

    #[test]
    fn tls_files_need_use_ssl_and_come_in_pairs() {
        let redis = |storage: serde_json::Value| {
            let mut c = GatewayConfig::from_value(json!({"storage": storage}), no_env)
                .unwrap()
                .config;
            c.secret = "s".into();
            c.app_path = ".".into();
            c.validate().map_err(|e| e.to_string())
        };
        let err = redis(json!({"ca_file": "ca.pem"})).unwrap_err();
        assert!(
            err.starts_with("storage.ca_file: needs storage.use_ssl"),
            "{err}"
        );
        let err = redis(json!({"ssl_insecure_skip_verify": true})).unwrap_err();
        assert!(
            err.starts_with("storage.ssl_insecure_skip_verify:"),
            "{err}"
        );
        let err = redis(json!({"use_ssl": true, "cert_file": "c.pem"})).unwrap_err();
        assert!(err.starts_with("storage.key_file:"), "{err}");
        let err = redis(json!({"use_ssl": true, "key_file": "k.pem"})).unwrap_err();
        assert!(err.starts_with("storage.cert_file:"), "{err}");
        redis(json!({"use_ssl": true, "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}))
            .unwrap();
    }
}
