//! API versions as Tyk's classic definitions declare them (`definition` and `version_data`):
//! which version a request asks for, whether it exists and is still current, where it is
//! proxied to (`override_target`), and how its marker is taken off the request. Compiled once
//! per API when definitions load; Tyk's `VersionCheck`.

use std::collections::HashMap;

use http::HeaderName;
use http::request::Parts;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::target::{self, Target};
use crate::tls::client::UpstreamTls;

/// A field of a definition that makes it unusable, and why.
#[derive(Debug)]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Why a request's version is refused, with Tyk's messages (all 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("Version information not found")]
    Missing,
    #[error("This API version does not seem to exist")]
    Unknown,
    #[error("Api Version has expired, please check documentation or contact administrator")]
    Expired,
}

/// Where a request names its version.
#[derive(Debug)]
enum Location {
    Header(HeaderName),
    UrlParam(String),
    /// The first path segment after the listen path (and the slug).
    Url,
}

#[derive(Debug)]
struct Version {
    /// Unix seconds after which the version is refused; `None`: never.
    expires: Option<i64>,
    /// `override_target`: this version's own upstream.
    target: Option<Target>,
}

/// A versioned API's rules (`version_data.not_versioned: false`).
#[derive(Debug)]
pub struct Versioning {
    location: Location,
    /// `strip_versioning_data` (or the older `strip_path` for URL versions): the marker is
    /// taken off before the request goes on.
    strip: bool,
    /// `url_versioning_pattern`: only a URL segment it matches is stripped.
    strip_pattern: Option<Regex>,
    default: Option<String>,
    fallback_to_default: bool,
    versions: HashMap<String, Version>,
}

/// The version a request is for.
#[derive(Debug)]
pub struct Selected<'a> {
    pub name: &'a str,
    /// The version's own upstream, if it has one.
    pub target: Option<&'a Target>,
    /// Whether the key's rights for the API's default version stand in for this one
    /// (`fallback_to_default`).
    pub fallback: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DefinitionFields {
    location: String,
    key: String,
    strip_path: bool,
    strip_versioning_data: bool,
    url_versioning_pattern: String,
    fallback_to_default: bool,
    enabled: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionFields {
    expires: String,
    override_target: String,
}

impl Versioning {
    /// The rules of a definition: `None` when it is not versioned. `definition` and
    /// `version_data` are the definition's objects of those names; `tls` is how the API
    /// reaches an `https` `override_target`.
    pub fn compile(
        not_versioned: bool,
        definition: Option<&Value>,
        version_data: &Map<String, Value>,
        tls: &UpstreamTls,
    ) -> Result<Option<Self>, InvalidField> {
        let fields: DefinitionFields = match definition {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|e| invalid("definition", e.to_string()))?,
            None => DefinitionFields::default(),
        };
        if fields.enabled {
            return Err(invalid(
                "definition.enabled",
                "versions as separate APIs (Tyk's new versioning) are not supported by \
                 tollgate yet; the API is not served rather than served without them",
            ));
        }
        if not_versioned {
            return Ok(None);
        }
        let location = match fields.location.as_str() {
            "" | "header" => {
                let name = if fields.key.is_empty() {
                    "x-api-version"
                } else {
                    &fields.key
                };
                Location::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid("definition.key", format!("{name:?} is not a header name"))
                })?)
            }
            "url-param" => Location::UrlParam(fields.key.clone()),
            "url" => Location::Url,
            other => {
                return Err(invalid(
                    "definition.location",
                    format!("{other:?} is not one of header, url-param, url"),
                ));
            }
        };
        let strip_pattern = match fields.url_versioning_pattern.as_str() {
            "" => None,
            pattern => Some(
                Regex::new(pattern)
                    .map_err(|e| invalid("definition.url_versioning_pattern", e.to_string()))?,
            ),
        };
        let mut versions = HashMap::new();
        if let Some(Value::Object(declared)) = version_data.get("versions") {
            for (name, value) in declared {
                let field = |f: &str| format!("version_data.versions.{name}.{f}");
                let v: VersionFields = serde_json::from_value(value.clone()).map_err(|e| {
                    invalid(&format!("version_data.versions.{name}"), e.to_string())
                })?;
                let target = match v.override_target.as_str() {
                    "" => None,
                    url => Some(
                        target::parse(url, tls)
                            .map_err(|reason| invalid(&field("override_target"), reason))?,
                    ),
                };
                versions.insert(
                    name.clone(),
                    Version {
                        expires: expiry(&v.expires),
                        target,
                    },
                );
            }
        }
        let default = version_data
            .get("default_version")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(str::to_owned);
        Ok(Some(Self {
            strip: fields.strip_versioning_data
                || (fields.strip_path && matches!(location, Location::Url)),
            location,
            strip_pattern,
            default,
            fallback_to_default: fields.fallback_to_default,
            versions,
        }))
    }

    /// The version `parts` asks for (after `listen_path` and `slug` for URL versions), checked
    /// as Tyk checks it; its marker is stripped from `parts` where the definition says so.
    pub fn select(
        &self,
        parts: &mut Parts,
        listen_path: &str,
        slug: &str,
        now: i64,
    ) -> Result<Selected<'_>, VersionError> {
        let asked = self.read(parts, listen_path, slug);
        let name = asked
            .as_deref()
            .or(self.default.as_deref())
            .ok_or(VersionError::Missing)?;
        // With `fallback_to_default`, the default answers for an unknown version, and the
        // key's rights for it stand in.
        let fallback = self.default.as_deref().filter(|_| self.fallback_to_default);
        let (name, version) = self
            .versions
            .get_key_value(name)
            .or_else(|| fallback.and_then(|d| self.versions.get_key_value(d)))
            .ok_or(VersionError::Unknown)?;
        if version.expires.is_some_and(|at| at < now) {
            return Err(VersionError::Expired);
        }
        Ok(Selected {
            name,
            target: version.target.as_ref(),
            fallback,
        })
    }

    /// Reads the version name, stripping its marker if asked to.
    fn read(&self, parts: &mut Parts, listen_path: &str, slug: &str) -> Option<String> {
        match &self.location {
            Location::Header(name) => {
                let value = parts.headers.get(name)?.to_str().ok()?.to_owned();
                if self.strip {
                    parts.headers.remove(name);
                }
                Some(value).filter(|v| !v.is_empty())
            }
            Location::UrlParam(key) => {
                let query = parts.uri.query()?;
                let value = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == key.as_str())
                    .map(|(_, v)| v.into_owned())?;
                if self.strip {
                    let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                        .filter(|(k, _)| k != key.as_str())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    let query = form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(kept)
                        .finish();
                    set_path_and_query(parts, parts.uri.path().to_owned(), &query);
                }
                Some(value).filter(|v| !v.is_empty())
            }
            Location::Url => {
                let path = parts.uri.path();
                let lp = listen_path.trim_end_matches('/');
                let rest = path.strip_prefix(lp).unwrap_or(path);
                let rest = match slug {
                    "" => rest,
                    slug => rest
                        .strip_prefix('/')
                        .and_then(|r| r.strip_prefix(slug))
                        .unwrap_or(rest),
                };
                let segment = rest.split('/').find(|s| !s.is_empty())?.to_owned();
                let strip = self.strip
                    && self
                        .strip_pattern
                        .as_ref()
                        .is_none_or(|p| p.is_match(&segment));
                if strip {
                    // As Tyk: the first `<segment>/` in the path goes.
                    let stripped = path.replacen(&format!("{segment}/"), "", 1);
                    let query = parts.uri.query().unwrap_or_default().to_owned();
                    set_path_and_query(parts, stripped, &query);
                }
                Some(segment)
            }
        }
    }
}

/// Puts `path` and `query` (empty: none) in place of the request's own.
fn set_path_and_query(parts: &mut Parts, path: String, query: &str) {
    let query = Some(query).filter(|q| !q.is_empty());
    if let Some(uri) = crate::path::with_path_and_query(&parts.uri, path, query) {
        parts.uri = uri;
    }
}

/// A version's `expires` (`2006-01-02 15:04`, UTC) as Unix seconds: `""` and `"-1"` never
/// expire; one that cannot be read has expired, as Tyk disallows it.
fn expiry(text: &str) -> Option<i64> {
    if text.is_empty() || text == "-1" {
        return None;
    }
    let parsed = humantime::parse_rfc3339_weak(&format!("{text}:00"))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Some(parsed.map_or(0, |d| d.as_secs() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn versioning(definition: Value, version_data: Value) -> Versioning {
        let Value::Object(data) = version_data else {
            unreachable!()
        };
        Versioning::compile(false, Some(&definition), &data, &UpstreamTls::default())
            .unwrap()
            .unwrap()
    }

    fn parts(uri: &str, header: Option<&str>) -> Parts {
        let mut builder = http::Request::get(uri);
        if let Some(v) = header {
            builder = builder.header("x-api-version", v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn versions_are_read_checked_and_stripped_as_tyk_does() {
        let data = json!({"not_versioned": false, "versions": {
            "v1": {"name": "v1", "expires": "2000-01-02 15:04"},
            "v2": {"name": "v2", "expires": "", "override_target": "http://v2.example:8080/base"}}});
        let header = versioning(
            json!({"location": "header", "key": "x-api-version"}),
            data.clone(),
        );
        let mut p = parts("/api/get", Some("v2"));
        let selected = header.select(&mut p, "/api/", "", 1).unwrap();
        assert_eq!(selected.name, "v2");
        assert_eq!(&*selected.target.unwrap().address, "v2.example:8080");
        assert_eq!(
            header
                .select(&mut parts("/api/get", None), "/api/", "", 1)
                .unwrap_err(),
            VersionError::Missing
        );
        assert_eq!(
            header
                .select(&mut parts("/api/get", Some("v9")), "/api/", "", 1)
                .unwrap_err(),
            VersionError::Unknown
        );
        let now = 1_800_000_000;
        assert_eq!(
            header
                .select(&mut parts("/api/get", Some("v1")), "/api/", "", now)
                .unwrap_err(),
            VersionError::Expired
        );

        let url = versioning(
            json!({"location": "url", "strip_versioning_data": true}),
            data.clone(),
        );
        let mut p = parts("/api/v2/users?x=1", None);
        assert_eq!(url.select(&mut p, "/api/", "", 1).unwrap().name, "v2");
        assert_eq!(p.uri.to_string(), "/api/users?x=1");

        let param = versioning(
            json!({"location": "url-param", "key": "version", "strip_versioning_data": true}),
            data.clone(),
        );
        let mut p = parts("/api/get?version=v2&a=b", None);
        assert_eq!(param.select(&mut p, "/api/", "", 1).unwrap().name, "v2");
        assert_eq!(p.uri.query(), Some("a=b"));

        let mut with_default = data;
        with_default["default_version"] = json!("v2");
        let fallback = versioning(
            json!({"location": "header", "fallback_to_default": true}),
            with_default,
        );
        let selected = fallback
            .select(&mut parts("/api/get", Some("v9")), "/api/", "", 1)
            .unwrap();
        assert_eq!((selected.name, selected.fallback), ("v2", Some("v2")));
        let selected = fallback
            .select(&mut parts("/api/get", None), "/api/", "", 1)
            .unwrap();
        assert_eq!(selected.name, "v2");
    }

    #[test]
    fn unversioned_apis_have_no_rules_and_new_versioning_fails_closed() {
        let empty = Map::new();
        assert!(
            Versioning::compile(true, None, &empty, &UpstreamTls::default())
                .unwrap()
                .is_none()
        );
        assert!(
            Versioning::compile(
                true,
                Some(&json!({"enabled": true})),
                &empty,
                &UpstreamTls::default()
            )
            .is_err()
        );
        assert_eq!(expiry("3000-01-02 15:04"), Some(32_503_820_640));
        assert_eq!(expiry("not a date"), Some(0));
        assert_eq!(expiry("-1"), None);
    }
}
