//! Every way the gateway refuses a request on its way to the upstream, typed, and the one place
//! where each becomes Tyk's status and body.

use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::batch::BatchError;
use crate::counting::{LimitError, Policy, Usage, now_secs};
use crate::json_validation::JsonRefusal;
use crate::proxy::ProxyError;
use crate::response::{Body, error_response, not_found, plain_response, status_error};
use crate::version::VersionError;

/// Why a request got no upstream response.
#[derive(Debug)]
pub enum Rejection {
    /// The path cannot be routed as it is forwarded (see `path`).
    Path(&'static str),
    /// No API listens on the path.
    NoApi,
    Version(VersionError),
    /// The version's `black_list` names the endpoint, or its `white_list` does not.
    EndpointForbidden,
    Auth(AuthError),
    /// A rate limit or quota refused it; a key's limits also fill Tyk's rate-limit headers.
    Limit {
        error: LimitError,
        counted: Option<Box<(Policy, Usage)>>,
    },
    /// The client's address is not on `allowed_ips`, or is on `blacklisted_ips`.
    IpDisallowed,
    /// Tyk's `RequestSizeLimit` refused the body.
    BodySize(BodySizeError),
    /// `validate_json` refused the body.
    Json(JsonRefusal),
    /// The endpoint's circuit breaker is open.
    CircuitOpen,
    /// A URL rewrite made something that is not a URI.
    RewriteInvalid,
    /// A batch request (`enable_batch_request_support`) that cannot be run.
    Batch(BatchError),
    Upstream(ProxyError),
}

/// Why a body is refused by the size limits, with Tyk's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodySizeError {
    #[error("Content length is required for this request")]
    LengthRequired,
    #[error("content length is not a valid Integer")]
    BadLength,
    #[error("Request is too large")]
    TooLarge,
}

impl BodySizeError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::BadLength | Self::TooLarge => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why a request was refused, as `/metrics` labels it: a fixed set, so that a label never
/// carries what a client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Path,
    NoApi,
    Version,
    Endpoint,
    /// The key: missing, malformed, unknown, expired, inactive, or without the right.
    Auth,
    /// The key store could not answer for the key.
    KeyStore,
    /// `auth_failure_limit`.
    AuthFailures,
    RateLimit,
    Quota,
    ApiRateLimit,
    Ip,
    BodySize,
    Json,
    CircuitOpen,
    Rewrite,
    Batch,
    /// Past `max_request_body_size`, or a body a stage reads whole past its bound.
    TooLarge,
    /// The client's body was malformed or cut off.
    ClientBody,
    /// The upstream gave no response (see [`ProxyError::fault`]).
    Upstream,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Self::Path,
        Self::NoApi,
        Self::Version,
        Self::Endpoint,
        Self::Auth,
        Self::KeyStore,
        Self::AuthFailures,
        Self::RateLimit,
        Self::Quota,
        Self::ApiRateLimit,
        Self::Ip,
        Self::BodySize,
        Self::Json,
        Self::CircuitOpen,
        Self::Rewrite,
        Self::Batch,
        Self::TooLarge,
        Self::ClientBody,
        Self::Upstream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::NoApi => "no_api",
            Self::Version => "version",
            Self::Endpoint => "endpoint",
            Self::Auth => "auth",
            Self::KeyStore => "key_store",
            Self::AuthFailures => "auth_failures",
            Self::RateLimit => "rate_limit",
            Self::Quota => "quota",
            Self::ApiRateLimit => "api_rate_limit",
            Self::Ip => "ip",
            Self::BodySize => "body_size",
            Self::Json => "json",
            Self::CircuitOpen => "circuit_open",
            Self::Rewrite => "rewrite",
            Self::Batch => "batch",
            Self::TooLarge => "too_large",
            Self::ClientBody => "client_body",
            Self::Upstream => "upstream",
        }
    }
}

impl Rejection {
    pub fn reason(&self) -> Reason {
        match self {
            Self::Path(_) => Reason::Path,
            Self::NoApi => Reason::NoApi,
            Self::Version(_) => Reason::Version,
            Self::EndpointForbidden => Reason::Endpoint,
            Self::Auth(AuthError::StoreUnavailable) => Reason::KeyStore,
            Self::Auth(AuthError::TooManyFailures) => Reason::AuthFailures,
            Self::Auth(_) => Reason::Auth,
            Self::Limit { error, .. } => match error {
                LimitError::RateExceeded => Reason::RateLimit,
                LimitError::QuotaExceeded => Reason::Quota,
                LimitError::ApiRateExceeded => Reason::ApiRateLimit,
            },
            Self::IpDisallowed => Reason::Ip,
            Self::BodySize(_) => Reason::BodySize,
            Self::Json(_) => Reason::Json,
            Self::CircuitOpen => Reason::CircuitOpen,
            Self::RewriteInvalid => Reason::Rewrite,
            Self::Batch(_) => Reason::Batch,
            Self::Upstream(ProxyError::TooLarge) => Reason::TooLarge,
            Self::Upstream(ProxyError::ClientBody(_)) => Reason::ClientBody,
            Self::Upstream(_) => Reason::Upstream,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        match self {
            Self::Path(reason) => error_response(StatusCode::BAD_REQUEST, reason),
            Self::NoApi => not_found(),
            Self::Version(e) => error_response(StatusCode::FORBIDDEN, &e.to_string()),
            Self::EndpointForbidden => {
                error_response(StatusCode::FORBIDDEN, "Requested endpoint is forbidden")
            }
            Self::Auth(e) => error_response(e.status(), &e.to_string()),
            Self::Limit { error, counted } => {
                let mut response = error_response(error.status(), &error.to_string());
                if let Some(counted) = counted {
                    let (policy, usage) = &*counted;
                    usage.write_headers(policy, response.headers_mut(), now_secs());
                }
                response
            }
            Self::IpDisallowed => error_response(
                StatusCode::FORBIDDEN,
                "access from this IP has been disallowed",
            ),
            Self::BodySize(e) => error_response(e.status(), &e.to_string()),
            Self::Json(JsonRefusal::Malformed(reason)) => error_response(
                StatusCode::BAD_REQUEST,
                &format!("JSON parsing error: {reason}"),
            ),
            Self::Json(JsonRefusal::Invalid(status, violations)) => {
                error_response(status, &violations)
            }
            Self::CircuitOpen => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable.",
            ),
            Self::RewriteInvalid => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "URL rewrite made an invalid URL",
            ),
            // Tyk's batch endpoint answers in its Gateway API's shape.
            Self::Batch(e) => status_error(e.status(), &e.to_string()),
            // Tyk answers it in plain text, before any middleware.
            Self::Upstream(ProxyError::TooLarge) => {
                plain_response(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
            }
            Self::Upstream(e) => error_response(e.status(), &e.to_string()),
        }
    }
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        Self::Auth(e)
    }
}

impl From<VersionError> for Rejection {
    fn from(e: VersionError) -> Self {
        Self::Version(e)
    }
}

impl From<ProxyError> for Rejection {
    fn from(e: ProxyError) -> Self {
        Self::Upstream(e)
    }
}
