//! Authentication: reading the key from a request, Tyk's key hashing, and the checks that
//! decide whether a session may call an API.
//!
//! Owns the auth error statuses and bodies. It reads sessions through the
//! [`SessionStore`] trait and never writes them.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use http::StatusCode;
use http::request::Parts;
use sha2::Digest;

use crate::api::{ApiSpec, KeySource};
use crate::guard::KeyGuard;
use crate::policy::PolicyTable;
use crate::rights;
use crate::session::{ApiAccess, KeyAccess, unix_now};
use crate::store::{SessionStore, StoreError};
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

/// Tyk's key hash algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Murmur32,
    Murmur64,
    Murmur128,
    Sha256,
}

impl HashAlgorithm {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "murmur32" => Some(Self::Murmur32),
            "murmur64" => Some(Self::Murmur64),
            "murmur128" => Some(Self::Murmur128),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Murmur32 => "murmur32",
            Self::Murmur64 => "murmur64",
            Self::Murmur128 => "murmur128",
            Self::Sha256 => "sha256",
        }
    }

    /// Hex digest, byte for byte what Tyk's Go hashers produce (big-endian sums).
    fn hex(self, input: &str) -> String {
        let mut reader = input.as_bytes();
        match self {
            Self::Murmur32 => {
                let h = murmur3::murmur3_32(&mut reader, 0).expect("reading a slice");
                // `hex` over the big-endian bytes: the same text as `{:08x}` without `fmt`'s
                // machinery, which was 2% of a keyed request.
                hex::encode(h.to_be_bytes())
            }
            Self::Murmur64 | Self::Murmur128 => {
                let h = murmur3::murmur3_x64_128(&mut reader, 0).expect("reading a slice");
                let (h1, h2) = (h as u64, (h >> 64) as u64);
                if self == Self::Murmur64 {
                    hex::encode(h1.to_be_bytes())
                } else {
                    hex::encode([h1.to_be_bytes(), h2.to_be_bytes()].concat())
                }
            }
            Self::Sha256 => hex::encode(sha2::Sha256::digest(input.as_bytes())),
        }
    }
}

/// Turns keys into storage ids and makes new keys, the way Tyk does.
#[derive(Debug, Clone)]
pub struct KeyHasher {
    enabled: bool,
    /// Algorithm for generated keys; `None` makes legacy keys (`org_id` + uuid).
    generate_with: Option<HashAlgorithm>,
}

impl KeyHasher {
    /// `function` is `hash_key_function`; an empty name means legacy keys.
    pub fn new(enabled: bool, function: &str) -> Self {
        Self {
            enabled,
            generate_with: HashAlgorithm::from_name(function),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The id a key is stored under: the key itself, or its hash when hashing is on. The
    /// algorithm comes from the key (generated keys name it; custom keys use murmur32).
    pub fn storage_id<'a>(&self, key: &'a str) -> Cow<'a, str> {
        if !self.enabled {
            return Cow::Borrowed(key);
        }
        Cow::Owned(algorithm_of(key).hex(key))
    }

    /// A new key for `org_id` (Tyk's `GenerateAuthKey`): a [`token`](Self::token) for a
    /// fresh 32-hex-digit id.
    pub fn generate(&self, org_id: &str) -> String {
        self.token(org_id, &uuid::Uuid::new_v4().simple().to_string())
    }

    /// Tyk's `generateToken(org, id)`: with a `hash_key_function`, base64 of
    /// `{"org":…,"id":…,"h":…}` (written as Tyk writes it, values unescaped, so that the hash
    /// of the text is the one Tyk's nodes compute); without one (Tyk's default), `org` + `id`.
    /// An `id` that already begins with `org` loses that prefix first.
    pub fn token(&self, org_id: &str, id: &str) -> String {
        let id = id.strip_prefix(org_id).unwrap_or(id);
        match self.generate_with {
            Some(alg) => {
                let json = [
                    "{\"org\":\"",
                    org_id,
                    "\",\"id\":\"",
                    id,
                    "\",\"h\":\"",
                    alg.name(),
                    "\"}",
                ]
                .concat();
                base64::engine::general_purpose::STANDARD.encode(json)
            }
            None => [org_id, id].concat(),
        }
    }

    /// The texts a key may be stored as, in the order Tyk looks for them (`SessionDetail`):
    /// a key that is already a token of `org_id` as it is; any other first as the token made
    /// from it, then as it is (a key stored under its own name, as Tyk's older versions and
    /// earlier tollgate stored custom keys).
    pub fn candidates<'a>(&self, org_id: &str, key: &'a str) -> (Cow<'a, str>, Option<&'a str>) {
        if token_org(key).is_some_and(|org| org == org_id) {
            return (Cow::Borrowed(key), None);
        }
        let token = self.token(org_id, key);
        if token == key {
            (Cow::Borrowed(key), None)
        } else {
            (Cow::Owned(token), Some(key))
        }
    }
}

/// The JSON object inside a base64 JSON token (`ey...`), as Tyk's `TokenOrg` and
/// `TokenHashAlgo` read it; `None` for any other key.
fn token_json(key: &str) -> Option<serde_json::Value> {
    if !key.starts_with("ey") {
        return None;
    }
    let json = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Tyk's `TokenOrg`: the `org` of a base64 JSON token, else the first 24 characters of a
/// longer key when they are hex (a Dashboard's organisation id), else none.
fn token_org(key: &str) -> Option<Cow<'_, str>> {
    if let Some(org) = token_json(key)
        .as_ref()
        .and_then(|t| t.get("org")?.as_str())
    {
        return Some(Cow::Owned(org.to_owned()));
    }
    let prefix = key.get(..24).filter(|_| key.len() > 24)?;
    prefix
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(Cow::Borrowed(prefix))
}

/// Tyk's `TokenHashAlgo`: generated keys are base64 JSON (`ey...`) with an `h` field.
fn algorithm_of(key: &str) -> HashAlgorithm {
    token_json(key)
        .as_ref()
        .and_then(|t| t.get("h")?.as_str())
        .and_then(HashAlgorithm::from_name)
        .unwrap_or(HashAlgorithm::Murmur32)
}

/// The key a request carries for an API: header first, then query parameter, then cookie.
pub fn extract_key<'a>(source: &KeySource, parts: &'a Parts) -> Result<&'a str, AuthError> {
    let raw = parts
        .headers
        .get(&source.header)
        .map(|v| v.as_bytes())
        .or_else(|| {
            let name = source.param.as_deref()?;
            query_param(parts.uri.query()?, name).map(str::as_bytes)
        })
        .or_else(|| {
            let name = source.cookie.as_deref()?;
            parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes()))
        })
        .ok_or(AuthError::Missing)?;
    let raw = raw
        .strip_prefix(b"Bearer ")
        .or_else(|| raw.strip_prefix(b"bearer "))
        .unwrap_or(raw);
    if raw.is_empty() {
        return Err(AuthError::Missing);
    }
    if raw.len() > MAX_KEY_LEN || !raw.iter().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Malformed);
    }
    std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
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
    /// The version the request is for, on a versioned API.
    pub version: Option<&'a Selected<'a>>,
    /// The policies keys may name (loaded only where a key is checked, never held across a
    /// store read).
    pub policies: &'a ArcSwap<PolicyTable>,
}

/// Authenticates a request for `spec`: `Ok(None)` for keyless APIs, the session otherwise.
pub async fn authenticate(
    spec: &ApiSpec,
    parts: &Parts,
    cx: AuthContext<'_>,
) -> Result<Option<Authenticated>, AuthError> {
    let Some(source) = &spec.key_source else {
        return Ok(None);
    };
    if !cx.guard.admits(cx.client) {
        return Err(AuthError::TooManyFailures);
    }
    let checked = source.authenticate(spec, parts, &cx).await;
    if let Err(AuthError::Disallowed | AuthError::Malformed) = checked {
        cx.guard.failed(cx.client);
    }
    checked.map(Some)
}

/// One of Tyk's ways to authenticate a request for an API, run by [`authenticate`] after the
/// address check and before the failure count. Token auth is the first; JWT, basic auth, HMAC
/// and mutual TLS are to follow as more implementations.
pub trait Authenticate {
    /// The caller of `parts`, checked for `spec`.
    fn authenticate(
        &self,
        spec: &ApiSpec,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> impl std::future::Future<Output = Result<Authenticated, AuthError>> + Send;
}

/// Tyk's auth token: a key in a header, query parameter or cookie, looked up in the store,
/// bound by its verifier, then its policies applied and its rights checked.
impl Authenticate for KeySource {
    async fn authenticate(
        &self,
        spec: &ApiSpec,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> Result<Authenticated, AuthError> {
        let key = extract_key(self, parts)?;
        let (first, fallback) = cx.hasher.candidates(&spec.definition.org_id, key);
        for stored_as in std::iter::once(&*first).chain(fallback) {
            let key_id = cx.hasher.storage_id(stored_as).into_owned();
            let credential = match cx.sessions.access(&key_id).await {
                Ok(Some(credential)) => credential,
                Ok(None) => continue,
                Err(StoreError::Unavailable(_) | StoreError::NotDurable(_)) => {
                    return Err(AuthError::StoreUnavailable);
                }
                // A record we cannot read grants nothing.
                Err(StoreError::Corrupt { .. }) => return Err(AuthError::Disallowed),
            };
            // The storage id is a hash anyone can invert: the record must be this very key's.
            match &credential.verifier {
                Some(verifier) if !verifier.matches(stored_as) => {
                    return Err(AuthError::Disallowed);
                }
                Some(_) => {}
                None => cx.guard.weakly_bound(),
            }
            // A key whose policies are gone grants nothing, as in Tyk.
            let access = cx
                .policies
                .load()
                .apply(&credential.access)
                .map_err(|_| AuthError::Disallowed)?;
            check_access(&access, spec.api_id(), unix_now())?;
            if let Some(api) = access.access_to(spec.api_id()) {
                check_rights(api, cx.version, parts)?;
            }
            return Ok(Authenticated { key_id, access });
        }
        Err(AuthError::Disallowed)
    }
}

/// Tyk's `AccessRightsCheck` for versions, then its `GranularAccessMiddleware`: on a versioned
/// API the version (or, with `fallback_to_default`, the default) must be among the key's
/// `versions`; a key with `allowed_urls` may call only those paths and methods.
fn check_rights(
    api: &ApiAccess,
    version: Option<&Selected<'_>>,
    parts: &Parts,
) -> Result<(), AuthError> {
    if let Some(version) = version {
        let granted = |name: &str| api.versions.iter().any(|v| &**v == name);
        if !granted(version.name) && !version.fallback.is_some_and(granted) {
            return Err(AuthError::Disallowed);
        }
    }
    if !rights::allowed(&api.allowed_urls, parts.method.as_str(), parts.uri.path()) {
        return Err(AuthError::ResourceDisallowed);
    }
    Ok(())
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

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn header_source() -> KeySource {
        KeySource {
            header: http::header::AUTHORIZATION,
            param: Some("key".into()),
            cookie: Some("auth".into()),
        }
    }

    #[test]
    fn key_from_header_param_cookie() {
        let s = header_source();
        let p = parts(
            http::Request::get("/")
                .header("authorization", "Bearer abc")
                .body(())
                .unwrap(),
        );
        assert_eq!(extract_key(&s, &p), Ok("abc"));
        let p = parts(http::Request::get("/x?a=1&key=qk").body(()).unwrap());
        assert_eq!(extract_key(&s, &p), Ok("qk"));
        let p = parts(
            http::Request::get("/")
                .header("cookie", "x=1; auth=ck")
                .body(())
                .unwrap(),
        );
        assert_eq!(extract_key(&s, &p), Ok("ck"));
        let p = parts(http::Request::get("/").body(()).unwrap());
        assert_eq!(extract_key(&s, &p), Err(AuthError::Missing));
        let p = parts(
            http::Request::get("/")
                .header("authorization", "a b")
                .body(())
                .unwrap(),
        );
        assert_eq!(extract_key(&s, &p), Err(AuthError::Malformed));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let p = parts(
            http::Request::get("/")
                .header("authorization", long)
                .body(())
                .unwrap(),
        );
        assert_eq!(extract_key(&s, &p), Err(AuthError::Malformed));
    }

    #[test]
    fn tyk_hashes() {
        let h = KeyHasher::new(true, "murmur64");
        // murmur3 reference vectors (seed 0): x86_32("hello") = 0x248bfa47,
        // x64_128("hello") = cbd8a7b341bd9b02 5b1e906a48ae1d19.
        assert_eq!(h.storage_id("hello"), "248bfa47");
        assert_eq!(HashAlgorithm::Murmur64.hex("hello"), "cbd8a7b341bd9b02");
        assert_eq!(
            HashAlgorithm::Murmur128.hex("hello"),
            "cbd8a7b341bd9b025b1e906a48ae1d19"
        );
        let generated = h.generate("default");
        assert!(generated.starts_with("ey"));
        assert_eq!(h.storage_id(&generated).len(), 16);
        assert_eq!(KeyHasher::new(false, "").storage_id("raw"), "raw");
        let legacy = KeyHasher::new(true, "").generate("org1");
        assert!(legacy.starts_with("org1") && legacy.len() == 36);
    }

    #[test]
    fn tokens_as_tyk_makes_them() {
        let h = KeyHasher::new(true, "murmur64");
        let token = h.token("default", "mycustomkey");
        let json = base64::engine::general_purpose::STANDARD
            .decode(&token)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"org":"default","id":"mycustomkey","h":"murmur64"}"#
        );
        assert_eq!(h.storage_id(&token).len(), 16, "hashed with its own h");
        assert_eq!(h.token("default", "defaultmycustomkey"), token);
        let legacy = KeyHasher::new(true, "");
        assert_eq!(legacy.token("default", "testkey"), "defaulttestkey");
        assert_eq!(legacy.token("", "testkey"), "testkey");

        // A raw name is looked for as its token first, then as it is; a token of the API's
        // org only as it is.
        let (first, then) = h.candidates("default", "mycustomkey");
        assert_eq!((&*first, then), (token.as_str(), Some("mycustomkey")));
        assert_eq!(
            h.candidates("default", &token),
            (Cow::Borrowed(token.as_str()), None)
        );
        let generated = legacy.generate("default");
        assert_eq!(legacy.candidates("default", &generated).1, None);
        let dashboard_org = "5e9d9544a1dcd60001d0ed20";
        let key = format!("{dashboard_org}abc");
        assert_eq!(legacy.candidates(dashboard_org, &key).1, None);
    }

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
