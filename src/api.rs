//! API definitions (Tyk's JSON files) and routing by listen path.
//!
//! Owns the definition's shape, its validation into an [`ApiSpec`], loading a directory of
//! definitions, writing one atomically, and the [`ApiTable`] that finds the API for a request
//! path (longest `listen_path` prefix wins). It does not authenticate or proxy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::analytics::ApiAnalytics;
use crate::auth::{AuthChain, AuthMethod, ForApi, KeySource};
use crate::batch;
use crate::cors::Cors;
use crate::counting::{Disabled, Policy, Rate};
use crate::domain::HostPattern;
use crate::endpoints::{EndpointTable, EntryContext};
use crate::files;
use crate::headers;
use crate::honoured;
use crate::ip_access::IpAccess;
use crate::metrics::{ApiMetrics, Metrics};
use crate::path_pattern::PathMatching;
use crate::pipeline::{EndpointStage, Features, Pipeline, VersionStage};
use crate::target::{self, Forwarding, Target};
use crate::tls::{self, client::UpstreamTls};
use crate::variables::Secrets;
use crate::version::Versioning;

/// Tyk's API definition. Unmodelled fields are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiDefinition {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub api_id: String,
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub slug: String,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub use_keyless: bool,
    #[serde(default)]
    pub use_standard_auth: bool,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth_configs: BTreeMap<String, AuthConfig>,
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub version_data: VersionData,
    #[serde(default)]
    pub disable_rate_limit: bool,
    #[serde(default)]
    pub disable_quota: bool,
    /// Seconds a key's record lives in the store after it is written (0: as long as the key).
    #[serde(default)]
    pub session_lifetime: i64,
    /// Tyk's API-wide rate limit, counted across every node (0 rate: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rate_limit: Option<GlobalRateLimit>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `global_rate_limit`: `rate` requests per `per` seconds for the whole API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GlobalRateLimit {
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub per: f64,
    #[serde(default)]
    pub disabled: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// Where the key is read from: a header, and optionally a query parameter or a cookie.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuthConfig {
    #[serde(default)]
    pub auth_header_name: String,
    #[serde(default)]
    pub use_param: bool,
    #[serde(default)]
    pub param_name: String,
    #[serde(default)]
    pub use_cookie: bool,
    #[serde(default)]
    pub cookie_name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyConfig {
    pub listen_path: String,
    pub target_url: String,
    #[serde(default)]
    pub strip_listen_path: bool,
    #[serde(default)]
    pub preserve_host_header: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionData {
    #[serde(default = "yes")]
    pub not_versioned: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for VersionData {
    fn default() -> Self {
        Self {
            not_versioned: true,
            extra: Map::new(),
        }
    }
}

/// Why a definition cannot be served, naming the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DefinitionError {
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> DefinitionError {
    DefinitionError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A validated definition, ready to route and proxy.
#[derive(Debug)]
pub struct ApiSpec {
    pub definition: ApiDefinition,
    pub target: Target,
    pub forwarding: Forwarding,
    /// Fields the definition uses that tollgate does not honour (see `honoured`).
    pub unhonoured: Vec<String>,
    pub pipeline: Pipeline,
    /// `domain`, unless `domain_disabled` (routed by only with `enable_custom_domains`).
    pub domain: Option<HostPattern>,
    /// The batch endpoint's path, with `enable_batch_request_support`.
    pub batch: Option<String>,
    /// The API's counters (see `metrics`), kept across reloads.
    pub metrics: Arc<ApiMetrics>,
    /// What its analytics records carry; `None` with `do_not_track`.
    pub analytics: Option<Arc<ApiAnalytics>>,
}

impl ApiSpec {
    /// Validates and compiles `definition` with what the gateway's `tyk.conf` brings to it.
    pub fn from_definition(
        definition: ApiDefinition,
        gateway: &GatewayDefaults,
    ) -> Result<Self, DefinitionError> {
        if definition.api_id.trim().is_empty() {
            return Err(invalid("api_id", "must not be empty"));
        }
        let whole = match serde_json::to_value(&definition) {
            Ok(Value::Object(whole)) => whole,
            _ => Map::new(),
        };
        if let Some((flag, method)) = honoured::unsupported_auth(&whole) {
            return Err(invalid(
                flag,
                format!(
                    "{method} authentication is not supported by tollgate yet; the API is not \
                     served rather than served without it"
                ),
            ));
        }
        let mut unhonoured = honoured::unhonoured(&whole);
        let tls = upstream_tls(&definition, &gateway.tls)?;
        for cipher in tls::lacking_ciphers(&tls.ciphers) {
            unhonoured.push(format!(
                "proxy.transport.ssl_ciphers: {cipher} (not a suite tollgate offers)"
            ));
        }
        let versioning = Versioning::compile(
            definition.version_data.not_versioned,
            whole.get("definition"),
            &definition.version_data.extra,
            &tls,
        )
        .map_err(|e| invalid(&e.field, e.reason))?;
        let listen_path = &definition.proxy.listen_path;
        if !listen_path.starts_with('/') {
            return Err(invalid("proxy.listen_path", "must start with '/'"));
        }
        if listen_path.starts_with("/tyk/") || listen_path == "/tyk" {
            return Err(invalid(
                "proxy.listen_path",
                "'/tyk/' is reserved for the Gateway API",
            ));
        }
        let target = target::parse(&definition.proxy.target_url, &tls)
            .map_err(|reason| invalid("proxy.target_url", reason))?;
        // The key's source, for `strip_auth_data`.
        let mut token_source = None;
        let auth = if definition.use_keyless {
            None
        } else {
            // Tyk prefers the `authToken` entry of `auth_configs` over the legacy `auth` object.
            let auth = definition
                .auth_configs
                .get("authToken")
                .unwrap_or(&definition.auth);
            let name = if auth.auth_header_name.is_empty() {
                "Authorization"
            } else {
                &auth.auth_header_name
            };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    "auth.auth_header_name",
                    format!("{name:?} is not a header name"),
                )
            })?;
            let param = auth.use_param.then(|| non_empty_or(&auth.param_name, name));
            let cookie = auth
                .use_cookie
                .then(|| non_empty_or(&auth.cookie_name, name));
            let api = ForApi {
                api_id: definition.api_id.as_str().into(),
                org_id: definition.org_id.as_str().into(),
                listen_path: listen_path.as_str().into(),
            };
            let source = KeySource {
                header,
                param,
                cookie,
            };
            let cookie_name = non_empty_or(&auth.cookie_name, name);
            token_source = Some((source.clone(), cookie_name));
            AuthChain::new(api, vec![AuthMethod::Token(source)], 0)
        };
        let api_limit = definition
            .global_rate_limit
            .as_ref()
            .filter(|l| !l.disabled && l.rate > 0.0 && l.per > 0.0)
            .map(|l| Policy {
                // Tyk's name for the API's counter: `apilimiter-<org_id><api_id>`.
                counter: format!("apilimiter-{}{}", definition.org_id, definition.api_id),
                rate: Some(Rate {
                    limit: l.rate,
                    per: l.per,
                }),
                quota: None,
            });
        let forwarding = Forwarding {
            strip: definition
                .proxy
                .strip_listen_path
                .then(|| listen_path.trim_end_matches('/').into()),
            preserve_host: definition.proxy.preserve_host_header,
            disable_strip_slash: definition
                .proxy
                .extra
                .get("disable_strip_slash")
                .and_then(Value::as_bool)
                == Some(true),
        };
        let (response_injector, left_out) = headers::response_injector(
            definition.extra.get("response_processors"),
            &gateway.secrets,
        )
        .map_err(|e| invalid(&e.field, e.reason))?;
        unhonoured.extend(left_out);
        let mut endpoints = EndpointTable::compile(
            definition.version_data.not_versioned,
            &definition.version_data.extra,
            EntryContext {
                tls: &tls,
                matching: gateway.endpoint_matching,
                secrets: &gateway.secrets,
                response_injector: &response_injector,
            },
        )
        .map_err(|e| invalid(&e.field, e.reason))?
        .map(|(table, unfilled)| {
            unhonoured.extend(
                unfilled
                    .into_iter()
                    .map(|v| format!("{v} (a variable tollgate leaves empty)")),
            );
            EndpointStage {
                table,
                listen_path: listen_path.as_str().into(),
                preflights_pass: false,
            }
        });
        let flag = |name: &str| definition.extra.get(name).and_then(Value::as_bool) == Some(true);
        let context_vars = flag("enable_context_vars");
        let cors =
            Cors::compile(definition.extra.get("CORS")).map_err(|e| invalid(&e.field, e.reason))?;
        let ip_access =
            IpAccess::compile(&definition.extra).map_err(|e| invalid(&e.field, e.reason))?;
        if let (Some(stage), Some(cors)) = (&mut endpoints, &cors) {
            stage.preflights_pass = !cors.options_passthrough;
        }
        let strip_auth = match (&token_source, flag("strip_auth_data")) {
            (Some((source, cookie)), true) => Some((source.clone(), cookie.as_str().into())),
            _ => None,
        };
        let pipeline = Pipeline::compile(Features {
            api_limit,
            endpoints,
            versioning: versioning.map(|rules| VersionStage {
                rules,
                listen_path: listen_path.as_str().into(),
                slug: definition.slug.as_str().into(),
            }),
            context_vars,
            cors,
            ip_access,
            strip_auth,
            auth,
            disabled_limits: Disabled {
                rate: definition.disable_rate_limit,
                quota: definition.disable_quota,
            },
            api_id: definition.api_id.as_str().into(),
        });
        let domain = match definition.extra.get("domain") {
            _ if flag("domain_disabled") => None,
            Some(Value::String(domain)) if !domain.is_empty() => {
                Some(HostPattern::compile(domain).map_err(|reason| invalid("domain", reason))?)
            }
            None | Some(Value::Null) | Some(Value::String(_)) => None,
            Some(_) => return Err(invalid("domain", "must be a string")),
        };
        let batch = flag("enable_batch_request_support").then(|| batch::endpoint(listen_path));
        let metrics = gateway.metrics.for_api(&definition.api_id);
        let analytics = (!flag("do_not_track")).then(|| {
            let extra = &definition.extra;
            Arc::new(ApiAnalytics {
                tags: extra
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|tags| {
                        tags.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                expire_after: extra
                    .get("expire_analytics_after")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                detailed: flag("enable_detailed_recording"),
            })
        });
        Ok(Self {
            definition,
            target,
            forwarding,
            unhonoured,
            pipeline,
            domain,
            batch,
            metrics,
            analytics,
        })
    }

    pub fn api_id(&self) -> &str {
        &self.definition.api_id
    }

    pub fn listen_path(&self) -> &str {
        &self.definition.proxy.listen_path
    }

    /// The `domain` as written, for clashes.
    fn domain_text(&self) -> &str {
        match &self.domain {
            Some(_) => self
                .definition
                .extra
                .get("domain")
                .and_then(Value::as_str)
                .unwrap_or(""),
            None => "",
        }
    }

    fn matches(&self, path: &str) -> bool {
        let lp = self.listen_path();
        path.starts_with(lp) || (lp.len() > 1 && lp.ends_with('/') && path == &lp[..lp.len() - 1])
    }
}

/// Tyk's `proxy.transport` fields read for HTTPS upstreams.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Transport {
    ssl_insecure_skip_verify: bool,
    ssl_min_version: u16,
    ssl_max_version: u16,
    ssl_ciphers: Vec<String>,
}

/// The API's upstream TLS as Tyk resolves it: its own `proxy.transport` values where set,
/// else the gateway's; either `ssl_insecure_skip_verify` is enough; its
/// `upstream_certificates` before the gateway's (none of its own with
/// `upstream_certificates_disabled`).
fn upstream_tls(
    definition: &ApiDefinition,
    gateway: &UpstreamTls,
) -> Result<UpstreamTls, DefinitionError> {
    fn field(name: &'static str) -> impl Fn(serde_json::Error) -> DefinitionError {
        move |e| invalid(name, e.to_string())
    }
    let transport: Transport = match definition.proxy.extra.get("transport") {
        Some(value) => serde_json::from_value(value.clone()).map_err(field("proxy.transport"))?,
        None => Transport::default(),
    };
    let disabled = definition
        .extra
        .get("upstream_certificates_disabled")
        .and_then(Value::as_bool)
        == Some(true);
    let own: BTreeMap<String, String> = match definition.extra.get("upstream_certificates") {
        Some(value) if !disabled && !value.is_null() => {
            serde_json::from_value(value.clone()).map_err(field("upstream_certificates"))?
        }
        _ => BTreeMap::new(),
    };
    let or = |own: u16, gateway: u16| if own != 0 { own } else { gateway };
    Ok(UpstreamTls {
        insecure_skip_verify: transport.ssl_insecure_skip_verify || gateway.insecure_skip_verify,
        min_version: or(transport.ssl_min_version, gateway.min_version),
        max_version: or(transport.ssl_max_version, gateway.max_version),
        ciphers: if transport.ssl_ciphers.is_empty() {
            gateway.ciphers.clone()
        } else {
            transport.ssl_ciphers
        },
        http2: gateway.http2,
        certificates: own
            .into_iter()
            .chain(gateway.certificates.iter().cloned())
            .collect(),
    })
}

fn non_empty_or(value: &str, fallback: &str) -> String {
    if value.is_empty() {
        fallback.to_owned()
    } else {
        value.to_owned()
    }
}

/// Reads and validates one definition file.
pub fn read_definition(path: &Path, gateway: &GatewayDefaults) -> Result<ApiSpec, LoadError> {
    let fail = |reason: String| LoadError {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let definition = parse_definition(text.as_bytes()).map_err(|e| fail(e.to_string()))?;
    ApiSpec::from_definition(definition, gateway).map_err(|e| fail(e.to_string()))
}

/// Parses definition JSON, naming the field at fault on a type error.
pub fn parse_definition(bytes: &[u8]) -> Result<ApiDefinition, DefinitionError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        invalid(&field, e.into_inner().to_string())
    })
}

/// A definition file that could not be loaded; the others still are.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// What the gateway's `tyk.conf` brings to every definition it loads.
#[derive(Debug, Clone, Default)]
pub struct GatewayDefaults {
    /// `proxy_ssl_*` and `security.certificates.upstream`, which a definition's own settings
    /// override.
    pub tls: UpstreamTls,
    /// `enable_custom_domains`: APIs' `domain` is routed by.
    pub custom_domains: bool,
    /// `ignore_endpoint_case` and `http_server_options.enable_path_{prefix,suffix}_matching`.
    pub endpoint_matching: PathMatching,
    /// `secrets` and the environment's `TYK_SECRET_*`, for `$secret_conf.` and `$secret_env.`.
    pub secrets: Secrets,
    /// The node's counters, where each API's are kept.
    pub metrics: Arc<Metrics>,
}

/// The routing table: served APIs by listen path, longest first (with
/// `enable_custom_domains`, those with a `domain` before those without).
#[derive(Debug, Default)]
pub struct ApiTable {
    by_path: Vec<Arc<ApiSpec>>,
    by_id: HashMap<String, Arc<ApiSpec>>,
    /// `enable_custom_domains`: APIs' domains are routed by.
    custom_domains: bool,
}

impl ApiTable {
    /// Builds a table; inactive APIs and listen-path (on one domain) or id clashes are
    /// reported, not served. `custom_domains` is the gateway's `enable_custom_domains`.
    pub fn new(specs: Vec<(PathBuf, ApiSpec)>, custom_domains: bool) -> (Self, Vec<LoadError>) {
        let mut errors = Vec::new();
        let mut table = Self {
            custom_domains,
            ..Self::default()
        };
        for (path, spec) in specs {
            if !spec.definition.active {
                continue;
            }
            let clash = table
                .by_id
                .contains_key(spec.api_id())
                .then_some("api_id")
                .or_else(|| {
                    table
                        .by_path
                        .iter()
                        .any(|s| {
                            s.listen_path() == spec.listen_path()
                                && (!custom_domains || s.domain_text() == spec.domain_text())
                        })
                        .then_some("proxy.listen_path")
                });
            if let Some(field) = clash {
                errors.push(LoadError {
                    path,
                    reason: format!("{field}: already used by another loaded API"),
                });
                continue;
            }
            let spec = Arc::new(spec);
            table.by_id.insert(spec.api_id().to_owned(), spec.clone());
            table.by_path.push(spec);
        }
        table.by_path.sort_by_key(|s| {
            let domainless = !custom_domains || s.domain.is_none();
            (domainless, std::cmp::Reverse(s.listen_path().len()))
        });
        (table, errors)
    }

    /// Loads every `*.json` in `dir`, in file-name order.
    pub fn load_dir(dir: &Path, gateway: &GatewayDefaults) -> (Self, Vec<LoadError>) {
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        for path in definition_files(dir, &mut errors) {
            match read_definition(&path, gateway) {
                Ok(spec) => specs.push((path, spec)),
                Err(e) => errors.push(e),
            }
        }
        let (table, mut clashes) = Self::new(specs, gateway.custom_domains);
        errors.append(&mut clashes);
        (table, errors)
    }

    /// The API for a request to `host` (its `Host`, `None` if it has none) and `path`: the
    /// longest listen path that prefixes `path` among the APIs whose domain matches `host`,
    /// else among those without a domain.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<ApiSpec>> {
        self.by_path.iter().find(|s| {
            let host_matches = match (&s.domain, self.custom_domains) {
                (Some(domain), true) => host.is_some_and(|h| domain.matches(h)),
                _ => true,
            };
            host_matches && s.matches(path)
        })
    }

    pub fn get(&self, api_id: &str) -> Option<&Arc<ApiSpec>> {
        self.by_id.get(api_id)
    }

    /// Served APIs, ordered by api_id.
    pub fn specs(&self) -> Vec<&Arc<ApiSpec>> {
        let mut specs: Vec<_> = self.by_id.values().collect();
        specs.sort_by(|a, b| a.api_id().cmp(b.api_id()));
        specs
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

fn definition_files(dir: &Path, errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    files::json_files(dir).unwrap_or_else(|e| {
        errors.push(LoadError {
            path: dir.to_owned(),
            reason: e.to_string(),
        });
        Vec::new()
    })
}

/// The file in `dir` that holds the definition with `api_id`, if any.
pub fn find_definition_file(dir: &Path, api_id: &str) -> Option<PathBuf> {
    definition_files(dir, &mut Vec::new())
        .into_iter()
        .find(|path| {
            std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v.get("api_id").and_then(Value::as_str) == Some(api_id))
        })
}

/// Writes `definition` to `path` atomically: a temp file in the same directory, then rename.
pub fn write_definition(path: &Path, definition: &ApiDefinition) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(definition).map_err(std::io::Error::other)?;
    files::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(listen_path: &str, target: &str, strip: bool) -> ApiSpec {
        let def: ApiDefinition = serde_json::from_value(serde_json::json!({
            "api_id": listen_path, "proxy": {"listen_path": listen_path, "target_url": target, "strip_listen_path": strip}
        }))
        .unwrap();
        ApiSpec::from_definition(def, &GatewayDefaults::default()).unwrap()
    }

    #[test]
    fn longest_listen_path_wins() {
        let specs = vec![
            (PathBuf::from("a"), spec("/a/", "http://u", true)),
            (PathBuf::from("b"), spec("/a/b/", "http://u", true)),
        ];
        let (table, errors) = ApiTable::new(specs, false);
        assert!(errors.is_empty());
        assert_eq!(table.route(None, "/a/b/c").unwrap().listen_path(), "/a/b/");
        assert_eq!(table.route(None, "/a/x").unwrap().listen_path(), "/a/");
        assert_eq!(table.route(None, "/a").unwrap().listen_path(), "/a/");
        assert!(table.route(None, "/b").is_none());
    }

    #[test]
    fn strip_and_join_paths() {
        let joined = |lp: &str, target: &str, strip: bool, path: &str| {
            let s = spec(lp, target, strip);
            s.forwarding.upstream_path(&s.target, path).into_owned()
        };
        assert_eq!(joined("/t/", "http://u", true, "/t/get"), "/get");
        assert_eq!(joined("/t/", "http://u", true, "/t"), "/");
        assert_eq!(joined("/t/", "http://u/base/", true, "/t/get"), "/base/get");
        assert_eq!(
            joined("/t/", "http://u/base", false, "/t/get"),
            "/base/t/get"
        );
        assert_eq!(joined("/t/", "http://u", false, "/t/get"), "/t/get");
        // Tyk's singleJoiningSlash: the root alone gets the target's path, its trailing
        // slash dropped unless disable_strip_slash keeps it; extra slashes are joined as one.
        assert_eq!(joined("/t/", "http://u/base/", true, "/t/"), "/base");
        assert_eq!(joined("/t/", "http://u/base/", true, "/t//x/"), "/base/x/");
        let mut keep = spec("/t/", "http://u/base/", true);
        keep.forwarding.disable_strip_slash = true;
        assert_eq!(keep.forwarding.upstream_path(&keep.target, "/t/"), "/base/");
        assert_eq!(
            keep.forwarding.upstream_path(&keep.target, "/t/x"),
            "/base/x"
        );
    }

    #[test]
    fn target_address_defaults_the_port() {
        let address = |url: &str| spec("/t/", url, true).target.address;
        assert_eq!(&*address("http://upstream/x"), "upstream:80");
        assert_eq!(&*address("http://10.0.0.1:8000"), "10.0.0.1:8000");
        assert_eq!(&*address("http://[::1]:8000/"), "[::1]:8000");
        assert_eq!(&*address("http://[::1]"), "[::1]:80");
    }

    #[test]
    fn bad_fields_are_named() {
        let err = parse_definition(br#"{"api_id":"1","proxy":{"listen_path":5}}"#).unwrap_err();
        assert!(err.to_string().starts_with("proxy.listen_path"), "{err}");
        let def = parse_definition(
            br#"{"api_id":"1","proxy":{"listen_path":"/x/","target_url":"ftp://h"}}"#,
        )
        .unwrap();
        let err = ApiSpec::from_definition(def, &GatewayDefaults::default()).unwrap_err();
        assert!(err.to_string().starts_with("proxy.target_url"), "{err}");
    }
}
