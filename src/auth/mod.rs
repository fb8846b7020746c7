//! Authentication: the [`Authenticate`] trait each of Tyk's auth methods implements, the
//! chain an API's methods form, and the checks that decide whether a session may call an API.
//!
//! Owns the auth error statuses and bodies. It reads sessions through the
//! [`SessionStore`] trait and never writes them.

mod hashing;
mod token;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::StatusCode;
use http::request::Parts;

pub use hashing::KeyHasher;
pub use token::{KeySource, extract_key};

use crate::guard::KeyGuard;
use crate::path_pattern::PathMatching;
use crate::policy::PolicyTable;
use crate::session::KeyAccess;
use crate::store::SessionStore;
use crate::version::Selected;

/// Longest key accepted from a request.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a request was not let through, with Tyk's status and message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("Authorization field missing")]
    Missing,
    #[error("Authorization field malformed")]
    Malformed,
    #[error("Access to this API has been disallowed")]
    Disallowed,
    /// The key's `allowed_urls` do not include this path and method.
    #[error("Access to this resource has been disallowed")]
    ResourceDisallowed,
    #[error("Key has expired, please renew")]
    Expired,
    #[error("Key is inactive, please renew")]
    Inactive,
    #[error("Key store unavailable")]
    StoreUnavailable,
    /// The client's address sent too many refused keys (`auth_failure_limit`).
    #[error("Too many failed authentication attempts")]
    TooManyFailures,
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Expired => StatusCode::UNAUTHORIZED,
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Disallowed | Self::ResourceDisallowed | Self::Inactive => StatusCode::FORBIDDEN,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// A request's key, by storage id, and what its session allows.
#[derive(Debug)]
pub struct Authenticated {
    pub key_id: String,
    pub access: Arc<KeyAccess>,
}

/// What authentication reads and counts besides the request itself.
pub struct AuthContext<'a> {
    pub hasher: &'a KeyHasher,
    pub sessions: &'a dyn SessionStore,
    pub guard: &'a KeyGuard,
    /// The client's address, for `auth_failure_limit`.
    pub client: IpAddr,
    /// The policies keys may name (loaded only where a key is checked, never held across a
    /// store read).
    pub policies: &'a ArcSwap<PolicyTable>,
    /// The gateway's prefix and suffix matching, which keys' `allowed_urls` follow.
    pub path_matching: PathMatching,
}

/// The API a request is authenticated for.
#[derive(Debug, Clone)]
pub struct ForApi {
    pub api_id: Box<str>,
    pub org_id: Box<str>,
    /// Keys' `allowed_urls` are also tried on the path after it (with prefix matching).
    pub listen_path: Box<str>,
}

/// One of Tyk's ways to authenticate a request for an API, run by [`AuthChain`] after the
/// address check and before the failure count. Token auth is the first; JWT, basic auth, HMAC
/// and mutual TLS are to follow as more implementations.
pub trait Authenticate {
    /// The caller of `parts`, checked for `api` (and, on a versioned API, `version`).
    fn authenticate(
        &self,
        api: &ForApi,
        version: Option<&Selected<'_>>,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> impl std::future::Future<Output = Result<Authenticated, AuthError>> + Send;
}

/// An auth method as one API configures it.
#[derive(Debug)]
pub enum AuthMethod {
    /// `auth_configs.authToken` (or the legacy `auth`).
    Token(KeySource),
}

impl Authenticate for AuthMethod {
    async fn authenticate(
        &self,
        api: &ForApi,
        version: Option<&Selected<'_>>,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> Result<Authenticated, AuthError> {
        match self {
            Self::Token(source) => source.authenticate(api, version, parts, cx).await,
        }
    }
}

/// An API's auth methods in Tyk's order. As in Tyk's multi-auth, every method must accept
/// the request; the session is the one the base identity's method found
/// (`base_identity_provided_by`).
#[derive(Debug)]
pub struct AuthChain {
    api: ForApi,
    methods: Box<[AuthMethod]>,
    /// Index in `methods` of the method whose session the request carries on.
    base: usize,
}

impl AuthChain {
    /// `None` when `methods` is empty (a keyless API) or `base` names no method.
    pub fn new(api: ForApi, methods: Vec<AuthMethod>, base: usize) -> Option<Self> {
        (base < methods.len()).then(|| Self {
            api,
            methods: methods.into(),
            base,
        })
    }

    /// The caller of `parts`: refused before any lookup when its address has failed too
    /// often (`auth_failure_limit`); a refused or malformed key counts as a failure.
    pub async fn authenticate(
        &self,
        version: Option<&Selected<'_>>,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> Result<Authenticated, AuthError> {
        if !cx.guard.admits(cx.client) {
            return Err(AuthError::TooManyFailures);
        }
        let mut base = None;
        for (index, method) in self.methods.iter().enumerate() {
            let checked = method.authenticate(&self.api, version, parts, cx).await;
            if let Err(AuthError::Disallowed | AuthError::Malformed) = checked {
                cx.guard.failed(cx.client);
            }
            let caller = checked?;
            if index == self.base {
                base = Some(caller);
            }
        }
        base.ok_or(AuthError::Disallowed)
    }
}

/// Tyk's order: inactive, expired, then access rights (none at all: every API, as Tyk's
/// `AccessRightsCheck` lets master keys through; `allow_master_keys` guards their creation).
pub fn check_access(access: &KeyAccess, api_id: &str, now: i64) -> Result<(), AuthError> {
    if access.is_inactive {
        return Err(AuthError::Inactive);
    }
    if access.is_expired(now) {
        return Err(AuthError::Expired);
    }
    if !access.is_master() && access.access_to(api_id).is_none() {
        return Err(AuthError::Disallowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionState;

    #[test]
    fn session_checks_in_tyk_order() {
        let check = |s: &SessionState| check_access(&KeyAccess::from(s), "1", 10);
        let mut s = SessionState::default();
        assert_eq!(check(&s), Ok(()), "a master key");
        s.access_rights.insert("2".into(), Default::default());
        assert_eq!(check(&s), Err(AuthError::Disallowed));
        s.access_rights.insert("1".into(), Default::default());
        assert_eq!(check(&s), Ok(()));
        s.expires = 5;
        assert_eq!(check(&s), Err(AuthError::Expired));
        s.is_inactive = true;
        assert_eq!(check(&s), Err(AuthError::Inactive));
    }
}
