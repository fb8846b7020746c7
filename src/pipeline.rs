//! An API's pipeline: the stages its requests pass between routing and the proxy, and those
//! its responses pass after, compiled once when the definition loads.
//!
//! Each stage owns one Tyk feature and refuses with a typed [`Rejection`]; what a stage learns
//! (the version, the caller, the counted usage) is carried to later stages in an [`Exchange`].
//! Stages are an enum, not boxed trait objects: a request costs one match per stage its API
//! uses, and an API that uses none of a stage never runs it.

use std::cell::OnceCell;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response};

use crate::auth::{AuthChain, AuthContext, Authenticated, KeySource};
use crate::breaker::Breaker;
use crate::client_ip;
use crate::cors::Cors;
use crate::counting::{Disabled, LimitError, Policy, Usage, now_secs};
use crate::endpoints::{EndpointTable, Matched, MockReply, Verdict};
use crate::headers::{HeaderEdit, RenderedEdit};
use crate::ip_access::IpAccess;
use crate::json_validation::JsonValidation;
use crate::limits::{self, Limiter};
use crate::proxy::ClientBody;
use crate::rejection::{BodySizeError, Rejection};
use crate::rewrite::RewriteError;
use crate::session::unix_now;
use crate::target::Target;
use crate::traces::Step;
use crate::variables::{Scope, is_form};
use crate::version::{Selected, Versioning};

/// What a definition asks of its requests, resolved; [`Pipeline::compile`] puts it in order.
pub struct Features {
    /// `global_rate_limit`.
    pub api_limit: Option<Policy>,
    pub versioning: Option<VersionStage>,
    /// The versions' endpoint tables.
    pub endpoints: Option<EndpointStage>,
    /// `enable_context_vars`.
    pub context_vars: bool,
    /// `CORS`, when enabled.
    pub cors: Option<Cors>,
    /// `allowed_ips` and `blacklisted_ips`, when in force.
    pub ip_access: Option<IpAccess>,
    /// `strip_auth_data`: where the key is removed from, and its cookie's name.
    pub strip_auth: Option<(KeySource, Box<str>)>,
    /// `None` for a keyless API.
    pub auth: Option<AuthChain>,
    /// The key limits the API switches off (`disable_rate_limit`, `disable_quota`).
    pub disabled_limits: Disabled,
    pub api_id: Box<str>,
}

/// Tyk's version check: which version a request is for, and whether it may be served.
#[derive(Debug)]
pub struct VersionStage {
    pub rules: Versioning,
    /// Where URL versions are read after (`proxy.listen_path`, then `slug`).
    pub listen_path: Box<str>,
    pub slug: Box<str>,
}

/// The endpoint table of the version the request is for: matched once, read by the stages
/// of each kind (the lists are part of Tyk's `VersionCheck`).
#[derive(Debug)]
pub struct EndpointStage {
    pub table: EndpointTable,
    pub listen_path: Box<str>,
    /// `CORS` answers preflights: the lists do not judge them (as in Tyk).
    pub preflights_pass: bool,
}

/// One step between routing and the proxy.
#[derive(Debug)]
pub enum RequestStage {
    /// Tyk's `RateLimitForAPI`: the API's own limit, first, so that it shields the key store.
    ApiLimit(Policy),
    /// Tyk's `VersionCheck`.
    Version(VersionStage),
    /// The endpoint table is matched; the lists may refuse a request, answer it with a mock,
    /// or spare it auth; `hard_timeouts` set the upstream's time.
    Endpoints(EndpointStage),
    /// Tyk's `CORS`: a preflight is answered here; an actual request's headers are chosen.
    Cors(Cors),
    /// Tyk's `IPWhiteList` and `IPBlackList`.
    IpAccess(IpAccess),
    /// Tyk's `RequestSizeLimit`: `global_size_limit`, then `size_limits`.
    BodySize,
    /// The API's auth methods, then the key's policies and rights.
    Authenticate(AuthChain),
    /// Tyk's `RateLimitAndQuotaCheck`: the key's rate limit and quota for this API.
    KeyLimits {
        api_id: Box<str>,
        disabled: Disabled,
    },
    /// Tyk's `StripAuth`: the key is not passed on.
    StripAuth(KeySource, Box<str>),
    /// Tyk's `TransformHeaders`: `global_headers(_remove)`, then `transform_headers`; the
    /// response's edits are chosen and rendered here too, while the request is at hand.
    Headers { context_vars: bool },
    /// Tyk's `URLRewrite`.
    UrlRewrite { context_vars: bool },
    /// Tyk's `TransformMethod`.
    MethodTransform,
}

/// One step between the upstream's response and the client.
#[derive(Debug)]
pub enum ResponseStage {
    /// Tyk's `X-RateLimit-*` headers from the key's counted usage.
    RateLimitHeaders,
    /// Tyk's `HeaderInjector`: `transform_response_headers`, then
    /// `global_response_headers(_remove)`.
    Headers,
    /// An actual cross-origin request's CORS headers, over the upstream's.
    Cors,
}

/// An API's stages, in Tyk's order.
#[derive(Debug)]
pub struct Pipeline {
    request: Box<[RequestStage]>,
    response: Box<[ResponseStage]>,
}

/// What the request stages learned, read by later stages, the proxy and the response stages.
#[derive(Default)]
pub struct Exchange<'p> {
    pub version: Option<Selected<'p>>,
    pub caller: Option<Authenticated>,
    pub limited: Option<(Policy, Usage)>,
    /// An `ignored` endpoint: no auth, key rate limit or quota.
    pub ignored: bool,
    /// The request matched against its version's endpoint table.
    pub endpoints: Option<Matched<'p>>,
    /// `hard_timeouts`: the upstream's time to answer, in place of `proxy_default_timeout`.
    pub upstream_timeout: Option<Duration>,
    /// `circuit_breakers`: the endpoint's breaker, asked before the upstream is and told of
    /// its answer.
    pub breaker: Option<&'p Breaker>,
    /// `validate_json`: the schema the body must meet (it is then read before it goes on).
    pub validate_json: Option<&'p JsonValidation>,
    /// A URL rewrite to another host.
    pub rewritten_to: Option<&'p Target>,
    /// The response's header edits (the endpoint's, then the version's), their values
    /// rendered from the request.
    pub response_edits: [Option<RenderedEdit<'p>>; 2],
    /// `$tyk_context.request_id`.
    pub request_id: OnceCell<Box<str>>,
    /// The steps traced (see `traces`), when the node traces requests.
    pub steps: Vec<(&'static str, Step)>,
    /// The request's body, when a stage had to read it whole (a form's `request_data_`
    /// variables, a trigger's `payload_matches`); it then goes upstream as read.
    pub body: Option<Bytes>,
    /// The API's CORS settings once the request passed them, and the
    /// `Access-Control-Allow-Origin` it earned: written on whatever answers it.
    pub cors: Option<(&'p Cors, Option<HeaderValue>)>,
}

/// Where a request goes once the request stages pass it.
#[derive(Debug)]
pub enum Flow<'p> {
    Proxy,
    /// A mock response, answered as it is (no response stages run, as in Tyk).
    Reply(&'p MockReply),
    /// A CORS preflight, answered 204 with these headers.
    Preflight(HeaderMap),
}

impl Exchange<'_> {
    /// Where the request goes: a URL rewrite's host, else its version's upstream, else the
    /// API's.
    pub fn target<'t>(&'t self, api_target: &'t Target) -> &'t Target {
        self.rewritten_to
            .or(self.version.as_ref().and_then(|v| v.target))
            .unwrap_or(api_target)
    }

    /// Writes the CORS headers the request earned on a response that is not the upstream's
    /// (a refusal, an upstream error), as Tyk's are written before anything answers.
    pub fn write_cors(&self, headers: &mut HeaderMap) {
        if let Some((cors, origin)) = &self.cors {
            cors.write(origin.clone(), headers);
        }
    }

    /// A traced step that began at `began` and ends now (nothing when not traced).
    fn note(&mut self, step: &'static str, began: Option<SystemTime>) {
        if let Some(began) = began {
            let ended = SystemTime::now();
            self.steps.push((step, Step { began, ended }));
        }
    }

    /// What Tyk's variables read for the request in `parts`.
    fn scope<'a>(
        &'a self,
        parts: &'a Parts,
        services: &Services<'_>,
        context_vars: bool,
    ) -> Scope<'a> {
        Scope {
            request: parts,
            peer: services.auth.client,
            xff_depth: services.xff_depth,
            request_id: &self.request_id,
            meta: self.caller.as_ref().map(|c| &*c.access.meta),
            context_vars,
            captures: &[],
            body: self.body.as_deref(),
        }
    }
}

/// What stages read and count besides the request.
pub struct Services<'a> {
    pub limiter: &'a Limiter,
    pub auth: AuthContext<'a>,
    /// `http_server_options.xff_depth`, for the client's address (see `client_ip`).
    pub xff_depth: usize,
    /// Bytes of a body a stage may read whole (more is a 413).
    pub body_limit: usize,
    /// Steps are timed for their spans (`opentelemetry`).
    pub traced: bool,
}

impl Pipeline {
    /// Orders `features` as Tyk's middleware chain runs them: API limit, version, endpoint
    /// table (lists, timeouts), body size, auth, key limits, header transforms, URL rewrite,
    /// method transform; on the way back, the rate-limit headers and the header transforms.
    pub fn compile(features: Features) -> Self {
        let mut request = Vec::new();
        let mut response = Vec::new();
        if let Some(policy) = features.api_limit {
            request.push(RequestStage::ApiLimit(policy));
        }
        if let Some(version) = features.versioning {
            request.push(RequestStage::Version(version));
        }
        let uses = features
            .endpoints
            .as_ref()
            .map(|e| e.table.uses())
            .unwrap_or_default();
        if let Some(endpoints) = features.endpoints {
            request.push(RequestStage::Endpoints(endpoints));
        }
        if let Some(cors) = features.cors {
            request.push(RequestStage::Cors(cors));
            response.push(ResponseStage::Cors);
        }
        if let Some(ip_access) = features.ip_access {
            request.push(RequestStage::IpAccess(ip_access));
        }
        if uses.size_limits {
            request.push(RequestStage::BodySize);
        }
        if let Some(chain) = features.auth {
            request.push(RequestStage::Authenticate(chain));
            request.push(RequestStage::KeyLimits {
                api_id: features.api_id,
                disabled: features.disabled_limits,
            });
            response.push(ResponseStage::RateLimitHeaders);
            if let Some((source, cookie)) = features.strip_auth {
                request.push(RequestStage::StripAuth(source, cookie));
            }
        }
        let context_vars = features.context_vars;
        if uses.request_headers || uses.response_headers {
            request.push(RequestStage::Headers { context_vars });
        }
        if uses.rewrites {
            request.push(RequestStage::UrlRewrite { context_vars });
        }
        if uses.method_transforms {
            request.push(RequestStage::MethodTransform);
        }
        if uses.response_headers {
            response.push(ResponseStage::Headers);
        }
        Self {
            request: request.into(),
            response: response.into(),
        }
    }

    /// Runs the request stages on `parts`, recording what they learn in `exchange`; `body`
    /// is read whole only by a stage that must see it.
    pub async fn on_request<'p>(
        &'p self,
        parts: &mut Parts,
        body: &mut ClientBody,
        exchange: &mut Exchange<'p>,
        services: &Services<'_>,
    ) -> Result<Flow<'p>, Rejection> {
        for stage in &*self.request {
            match stage {
                RequestStage::ApiLimit(policy) => {
                    let began = services.traced.then(SystemTime::now);
                    // Boxed: the wait would otherwise widen every request's future.
                    let usage = Box::pin(services.limiter.admit(policy)).await;
                    exchange.note("api limit", began);
                    if usage.verdict().is_err() {
                        let error = LimitError::ApiRateExceeded;
                        return Err(Rejection::Limit {
                            error,
                            counted: None,
                        });
                    }
                }
                RequestStage::Version(stage) => {
                    let selected =
                        stage
                            .rules
                            .select(parts, &stage.listen_path, &stage.slug, unix_now())?;
                    exchange.version = Some(selected);
                }
                RequestStage::Endpoints(stage) => {
                    let version = exchange.version.as_ref().map(|v| v.name);
                    let Some(paths) = stage.table.for_version(version) else {
                        continue;
                    };
                    let matched =
                        paths.matched(&stage.listen_path, parts.uri.path(), &parts.method);
                    let verdict = if stage.preflights_pass && is_preflight(parts) {
                        Verdict::Ignore
                    } else {
                        matched.verdict()
                    };
                    match verdict {
                        Verdict::Pass => {}
                        Verdict::Ignore => exchange.ignored = true,
                        Verdict::Forbidden => return Err(Rejection::EndpointForbidden),
                        Verdict::Reply(reply) => return Ok(Flow::Reply(reply)),
                    }
                    exchange.upstream_timeout = matched.hard_timeout();
                    exchange.breaker = matched.circuit_breaker();
                    exchange.validate_json = matched.validate_json();
                    exchange.endpoints = Some(matched);
                }
                RequestStage::Cors(cors) => {
                    if !cors.options_passthrough
                        && let Some(answer) = cors.preflight(parts)
                    {
                        return Ok(Flow::Preflight(answer));
                    }
                    exchange.cors = Some((cors, cors.actual(parts)));
                }
                RequestStage::IpAccess(lists) => {
                    let client = client_ip::real_ip(
                        &parts.headers,
                        services.auth.client,
                        services.xff_depth,
                    );
                    if !lists.admits(client) {
                        return Err(Rejection::IpDisallowed);
                    }
                }
                RequestStage::BodySize => {
                    if let Some(matched) = &exchange.endpoints {
                        check_body_size(parts, matched)?;
                    }
                }
                RequestStage::Authenticate(_) if exchange.ignored => {}
                RequestStage::Authenticate(chain) => {
                    let version = exchange.version.as_ref();
                    let began = services.traced.then(SystemTime::now);
                    let caller = chain.authenticate(version, parts, &services.auth).await;
                    exchange.note("key lookup", began);
                    exchange.caller = Some(caller?);
                }
                RequestStage::KeyLimits { api_id, disabled } => {
                    let Some(caller) = &exchange.caller else {
                        continue;
                    };
                    let Some(policy) =
                        limits::policy_for(api_id, *disabled, &caller.access, &caller.key_id)
                    else {
                        continue;
                    };
                    let began = services.traced.then(SystemTime::now);
                    let usage = services.limiter.admit(&policy).await;
                    exchange.note("rate limit and quota", began);
                    if let Err(error) = usage.verdict() {
                        let counted = Some(Box::new((policy, usage)));
                        return Err(Rejection::Limit { error, counted });
                    }
                    exchange.limited = Some((policy, usage));
                }
                RequestStage::StripAuth(source, cookie) => source.strip(parts, cookie),
                RequestStage::Headers { context_vars } => {
                    if *context_vars && is_form(parts) && reads_form(exchange) {
                        Box::pin(read_body(body, exchange, services.body_limit)).await?;
                    }
                    transform_headers(parts, exchange, services, *context_vars);
                }
                RequestStage::UrlRewrite { context_vars } => {
                    let Some(matched) = &exchange.endpoints else {
                        continue;
                    };
                    let Some(rewrite) = matched.rewrite() else {
                        continue;
                    };
                    if rewrite.reads_body(*context_vars && is_form(parts)) {
                        Box::pin(read_body(body, exchange, services.body_limit)).await?;
                    }
                    let scope = exchange.scope(parts, services, *context_vars);
                    let Some(rewritten) = rewrite.apply(&scope) else {
                        continue;
                    };
                    let rewritten = rewritten.map_err(|e| match e {
                        RewriteError::NotAUri => Rejection::RewriteInvalid,
                        RewriteError::Path(e) => Rejection::Path(e.message()),
                    })?;
                    parts.uri = rewritten.uri;
                    exchange.rewritten_to = rewritten.target;
                }
                RequestStage::MethodTransform => {
                    let to = exchange
                        .endpoints
                        .as_ref()
                        .and_then(|m| m.method_transform());
                    if let Some(to) = to {
                        parts.method = to.clone();
                    }
                }
            }
        }
        Ok(Flow::Proxy)
    }

    /// Runs the response stages on the upstream's response (what they write is taken from
    /// `exchange`).
    pub fn on_response<B>(&self, response: &mut Response<B>, exchange: &mut Exchange<'_>) {
        for stage in &*self.response {
            match stage {
                ResponseStage::RateLimitHeaders => {
                    if let Some((policy, usage)) = &exchange.limited {
                        usage.write_headers(policy, response.headers_mut(), now_secs());
                    }
                }
                ResponseStage::Headers => {
                    for edit in exchange.response_edits.iter().flatten() {
                        edit.apply(response.headers_mut());
                    }
                }
                ResponseStage::Cors => {
                    if let Some((cors, origin)) = &mut exchange.cors {
                        cors.write(origin.take(), response.headers_mut());
                    }
                }
            }
        }
    }
}

/// A CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Methods Tyk's size limits leave alone: their bodies are not expected.
const UNSIZED_METHODS: [Method; 5] = [
    Method::GET,
    Method::DELETE,
    Method::TRACE,
    Method::OPTIONS,
    Method::HEAD,
];

/// Tyk's `RequestSizeLimit`, on the declared length: a body must declare one (`411`), within
/// the version's `global_size_limit` and then the endpoint's `size_limits` entry.
fn check_body_size(parts: &Parts, matched: &Matched<'_>) -> Result<(), Rejection> {
    if UNSIZED_METHODS.contains(&parts.method) {
        return Ok(());
    }
    let global = matched.paths().size_limit;
    let endpoint = matched.size_limit();
    if global.is_none() && endpoint.is_none() {
        return Ok(());
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .ok_or(Rejection::BodySize(BodySizeError::LengthRequired))?;
    // hyper has already refused a length that is not a number.
    let declared: u64 = declared
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Rejection::BodySize(BodySizeError::BadLength))?;
    for limit in [global, endpoint].into_iter().flatten() {
        if declared > limit {
            return Err(Rejection::BodySize(BodySizeError::TooLarge));
        }
    }
    Ok(())
}

/// Whether the header edits the request is to get have a `request_data_` variable.
fn reads_form(exchange: &Exchange<'_>) -> bool {
    let Some(matched) = &exchange.endpoints else {
        return false;
    };
    let paths = matched.paths();
    [
        Some(&paths.request_headers),
        matched.request_headers(),
        matched.response_headers(),
        Some(&paths.response_headers),
    ]
    .into_iter()
    .flatten()
    .any(HeaderEdit::reads_request_data)
}

/// Reads the request's body whole, once, for the stages that must see it; it then goes
/// upstream as read.
async fn read_body(
    body: &mut ClientBody,
    exchange: &mut Exchange<'_>,
    limit: usize,
) -> Result<(), Rejection> {
    if exchange.body.is_some() {
        return Ok(());
    }
    let streaming = std::mem::replace(body, ClientBody::Read(None));
    let read = streaming.read(limit).await.map_err(Rejection::Upstream)?;
    *body = ClientBody::Read(Some(read.clone()));
    exchange.body = Some(read);
    Ok(())
}

/// Tyk's `TransformHeaders` on the request (`global_headers`, then the endpoint's
/// `transform_headers`), and the choice (by the request's own path and method, before any
/// rewrite) and rendering of the response's edits. Every value is rendered before any edit
/// is made: Tyk's context variables are read before its header transforms run.
fn transform_headers<'p>(
    parts: &mut Parts,
    exchange: &mut Exchange<'p>,
    services: &Services<'_>,
    context_vars: bool,
) {
    let Some(matched) = &exchange.endpoints else {
        return;
    };
    let paths = matched.paths();
    let scope = exchange.scope(parts, services, context_vars);
    let render = |edit: Option<&'p HeaderEdit>| {
        edit.filter(|e| !e.is_empty())
            .map(|edit| edit.render(&scope))
    };
    let request_edits = [
        render(Some(&paths.request_headers)),
        render(matched.request_headers()),
    ];
    let response_edits = [
        render(matched.response_headers()),
        render(Some(&paths.response_headers)),
    ];
    for edit in request_edits.iter().flatten() {
        edit.apply(&mut parts.headers);
    }
    exchange.response_edits = response_edits;
}
