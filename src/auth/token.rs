//! Tyk's auth token (`auth_configs.authToken`): where a request carries its key, reading
//! it, and checking the stored session it names.

use http::header::HeaderName;
use http::request::Parts;

use super::{
    AuthContext, AuthError, Authenticate, Authenticated, ForApi, MAX_KEY_LEN, check_access,
};
use crate::path_pattern::PathMatching;
use crate::rights::{self, RequestPath};
use crate::session::{ApiAccess, unix_now};
use crate::store::StoreError;
use crate::version::Selected;

/// Where a request carries its key for one API.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub header: HeaderName,
    pub param: Option<String>,
    pub cookie: Option<String>,
}

impl KeySource {
    /// Removes the key from everywhere Tyk's `StripAuth` does: the header, the query
    /// parameter when one is read, and the cookie (named as the header unless
    /// `cookie_name` says otherwise).
    pub fn strip(&self, parts: &mut Parts, cookie_name: &str) {
        parts.headers.remove(&self.header);
        if let Some(param) = &self.param
            && let Some(query) = parts.uri.query()
        {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let name = pair.split('=').next().unwrap_or("");
                    form_urlencoded::parse(name.as_bytes())
                        .next()
                        .is_none_or(|(name, _)| name != param.as_str())
                })
                .collect();
            let path = parts.uri.path().to_owned();
            let query = (!kept.is_empty()).then(|| kept.join("&"));
            if let Some(uri) = crate::path::with_path_and_query(&parts.uri, path, query.as_deref())
            {
                parts.uri = uri;
            }
        }
        let cookies: Vec<String> = parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|c| !c.is_empty() && c.split('=').next() != Some(cookie_name))
            .map(str::to_owned)
            .collect();
        if parts.headers.contains_key(http::header::COOKIE) {
            parts.headers.remove(http::header::COOKIE);
            if let Ok(value) = http::HeaderValue::from_str(&cookies.join("; "))
                && !cookies.is_empty()
            {
                parts.headers.insert(http::header::COOKIE, value);
            }
        }
    }
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

/// Tyk's auth token: a key in a header, query parameter or cookie, looked up in the store,
/// bound by its verifier, then its policies applied and its rights checked.
impl Authenticate for KeySource {
    async fn authenticate(
        &self,
        api: &ForApi,
        version: Option<&Selected<'_>>,
        parts: &Parts,
        cx: &AuthContext<'_>,
    ) -> Result<Authenticated, AuthError> {
        let key = extract_key(self, parts)?;
        let (first, fallback) = cx.hasher.candidates(&api.org_id, key);
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
                .apply(&credential.access, &api.org_id)
                .map_err(|_| AuthError::Disallowed)?;
            check_access(&access, &api.api_id, unix_now())?;
            if let Some(rights) = access.access_to(&api.api_id) {
                check_rights(rights, version, parts, api, cx.path_matching)?;
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
    route: &ForApi,
    matching: PathMatching,
) -> Result<(), AuthError> {
    if let Some(version) = version {
        let granted = |name: &str| api.versions.iter().any(|v| &**v == name);
        if !granted(version.name) && !version.fallback.is_some_and(granted) {
            return Err(AuthError::Disallowed);
        }
    }
    let path = RequestPath {
        whole: parts.uri.path(),
        listen_path: &route.listen_path,
    };
    if !rights::allowed(&api.allowed_urls, parts.method.as_str(), path, matching) {
        return Err(AuthError::ResourceDisallowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
