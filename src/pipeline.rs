//! An API's pipeline: the stages its requests pass between routing and the proxy, and those
//! its responses pass after, compiled once when the definition loads.
//!
//! Each stage owns one Tyk feature and refuses with a typed [`Rejection`]; what a stage learns
//! (the version, the caller, the counted usage) is carried to later stages in an [`Exchange`].
//! Stages are an enum, not boxed trait objects: a request costs one match per stage its API
//! uses, and an API that uses none of a stage never runs it.

use http::Response;
use http::request::Parts;

use crate::auth::{AuthChain, AuthContext, Authenticated};
use crate::counting::{Disabled, LimitError, Policy, Usage, now_secs};
use crate::endpoints::{EndpointLists, MockReply, Verdict};
use crate::limits::{self, Limiter};
use crate::rejection::Rejection;
use crate::session::unix_now;
use crate::target::Target;
use crate::version::{Selected, Versioning};

/// What a definition asks of its requests, resolved; [`Pipeline::compile`] puts it in order.
pub struct Features {
    /// `global_rate_limit`.
    pub api_limit: Option<Policy>,
    pub versioning: Option<VersionStage>,
    /// The versions' `ignored`, `black_list` and `white_list`.
    pub endpoints: Option<EndpointStage>,
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

/// Tyk's endpoint lists (part of its `VersionCheck`), for the version the request is for.
#[derive(Debug)]
pub struct EndpointStage {
    pub lists: EndpointLists,
    pub listen_path: Box<str>,
}

/// One step between routing and the proxy.
#[derive(Debug)]
pub enum RequestStage {
    /// Tyk's `RateLimitForAPI`: the API's own limit, first, so that it shields the key store.
    ApiLimit(Policy),
    /// Tyk's `VersionCheck`.
    Version(VersionStage),
    /// The endpoint lists: a request may be refused, answered with a mock, or spared auth.
    Endpoints(EndpointStage),
    /// The API's auth methods, then the key's policies and rights.
    Authenticate(AuthChain),
    /// Tyk's `RateLimitAndQuotaCheck`: the key's rate limit and quota for this API.
    KeyLimits {
        api_id: Box<str>,
        disabled: Disabled,
    },
}

/// One step between the upstream's response and the client.
#[derive(Debug)]
pub enum ResponseStage {
    /// Tyk's `X-RateLimit-*` headers from the key's counted usage.
    RateLimitHeaders,
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
}

/// Where a request goes once the request stages pass it.
#[derive(Debug)]
pub enum Flow<'p> {
    Proxy,
    /// A mock response, answered as it is (no response stages run, as in Tyk).
    Reply(&'p MockReply),
}

impl Exchange<'_> {
    /// Where the request goes: its version's upstream, else the API's.
    pub fn target<'t>(&'t self, api_target: &'t Target) -> &'t Target {
        self.version
            .as_ref()
            .and_then(|v| v.target)
            .unwrap_or(api_target)
    }
}

/// What stages read and count besides the request.
pub struct Services<'a> {
    pub limiter: &'a Limiter,
    pub auth: AuthContext<'a>,
}

impl Pipeline {
    /// Orders `features` as Tyk's middleware chain runs them: API limit, version, endpoint
    /// lists, auth, key limits; on the way back, the rate-limit headers.
    pub fn compile(features: Features) -> Self {
        let mut request = Vec::new();
        let mut response = Vec::new();
        if let Some(policy) = features.api_limit {
            request.push(RequestStage::ApiLimit(policy));
        }
        if let Some(version) = features.versioning {
            request.push(RequestStage::Version(version));
        }
        if let Some(endpoints) = features.endpoints {
            request.push(RequestStage::Endpoints(endpoints));
        }
        if let Some(chain) = features.auth {
            request.push(RequestStage::Authenticate(chain));
            request.push(RequestStage::KeyLimits {
                api_id: features.api_id,
                disabled: features.disabled_limits,
            });
            response.push(ResponseStage::RateLimitHeaders);
        }
        Self {
            request: request.into(),
            response: response.into(),
        }
    }

    /// Runs the request stages on `parts`, recording what they learn in `exchange`.
    pub async fn on_request<'p>(
        &'p self,
        parts: &mut Parts,
        exchange: &mut Exchange<'p>,
        services: &Services<'_>,
    ) -> Result<Flow<'p>, Rejection> {
        for stage in &*self.request {
            match stage {
                RequestStage::ApiLimit(policy) => {
                    // Boxed: the wait would otherwise widen every request's future.
                    let usage = Box::pin(services.limiter.admit(policy)).await;
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
                    let path = parts.uri.path();
                    match stage
                        .lists
                        .verdict(version, &stage.listen_path, path, &parts.method)
                    {
                        Verdict::Pass => {}
                        Verdict::Ignore => exchange.ignored = true,
                        Verdict::Forbidden => return Err(Rejection::EndpointForbidden),
                        Verdict::Reply(reply) => return Ok(Flow::Reply(reply)),
                    }
                }
                RequestStage::Authenticate(_) if exchange.ignored => {}
                RequestStage::Authenticate(chain) => {
                    let version = exchange.version.as_ref();
                    let caller = chain.authenticate(version, parts, &services.auth).await?;
                    exchange.caller = Some(caller);
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
                    let usage = services.limiter.admit(&policy).await;
                    if let Err(error) = usage.verdict() {
                        let counted = Some(Box::new((policy, usage)));
                        return Err(Rejection::Limit { error, counted });
                    }
                    exchange.limited = Some((policy, usage));
                }
            }
        }
        Ok(Flow::Proxy)
    }

    /// Runs the response stages on the upstream's response.
    pub fn on_response<B>(&self, response: &mut Response<B>, exchange: &Exchange<'_>) {
        for stage in &*self.response {
            match stage {
                ResponseStage::RateLimitHeaders => {
                    if let Some((policy, usage)) = &exchange.limited {
                        usage.write_headers(policy, response.headers_mut(), now_secs());
                    }
                }
            }
        }
    }
}
