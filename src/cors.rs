//! Tyk's `CORS` (the rs/cors handler Tyk wraps): a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered by the gateway with 204 and, when its origin,
//! method and headers are allowed, the `Access-Control-Allow-*` headers; an actual request
//! from an allowed origin gets `Access-Control-Allow-Origin` (and `-Expose-Headers`,
//! `-Allow-Credentials`) on its response, whatever answers it, the upstream's own CORS headers
//! replaced. With `options_passthrough`, `OPTIONS` requests go on to the upstream instead.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request::Parts};
use serde::Deserialize;
use serde_json::Value;

use crate::variables::canonical_header_name;
use crate::version::{InvalidField, invalid};

/// An API's compiled `CORS` settings.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    /// `allowed_methods` (empty: GET, POST and HEAD), compared as written.
    methods: Vec<String>,
    /// `allowed_headers`, lower-cased (`None`: `*`, every header).
    headers: Option<Vec<String>>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    pub options_passthrough: bool,
}

#[derive(Debug)]
enum Origins {
    All,
    /// Exact origins, lower-cased, and `prefix*suffix` wildcards.
    Listed {
        exact: Vec<String>,
        wildcards: Vec<(String, String)>,
    },
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CorsFields {
    enable: bool,
    allowed_origins: Vec<String>,
    allowed_methods: Vec<String>,
    allowed_headers: Vec<String>,
    exposed_headers: Vec<String>,
    allow_credentials: bool,
    max_age: i64,
    options_passthrough: bool,
}

static ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
static PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    /// The settings of a definition's `CORS`, if `enable` is on.
    pub fn compile(value: Option<&Value>) -> Result<Option<Self>, InvalidField> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let fields: CorsFields = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(&format!("CORS.{}", e.path()), e.inner().to_string()))?;
        if !fields.enable {
            return Ok(None);
        }
        let origins = if fields.allowed_origins.is_empty()
            || fields.allowed_origins.iter().any(|o| o == "*")
        {
            Origins::All
        } else {
            let (mut exact, mut wildcards) = (Vec::new(), Vec::new());
            for origin in &fields.allowed_origins {
                let origin = origin.to_ascii_lowercase();
                match origin.split_once('*') {
                    Some((prefix, suffix)) => wildcards.push((prefix.into(), suffix.into())),
                    None => exact.push(origin),
                }
            }
            Origins::Listed { exact, wildcards }
        };
        let methods = if fields.allowed_methods.is_empty() {
            vec!["GET".into(), "POST".into(), "HEAD".into()]
        } else {
            fields.allowed_methods
        };
        let headers = if fields.allowed_headers.iter().any(|h| h == "*") {
            None
        } else if fields.allowed_headers.is_empty() {
            Some(vec![
                "accept".into(),
                "content-type".into(),
                "x-requested-with".into(),
            ])
        } else {
            Some(
                fields
                    .allowed_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            )
        };
        let exposed = if fields.exposed_headers.is_empty() {
            None
        } else {
            let joined = fields
                .exposed_headers
                .iter()
                .map(|h| canonical_header_name(h))
                .collect::<Vec<_>>()
                .join(", ");
            Some(
                HeaderValue::from_str(&joined)
                    .map_err(|_| invalid("CORS.exposed_headers", "holds an invalid header name"))?,
            )
        };
        let max_age = match fields.max_age {
            0 => None,
            n if n < 0 => Some(HeaderValue::from_static("0")),
            n => Some(HeaderValue::from(n)),
        };
        Ok(Some(Self {
            origins,
            methods,
            headers,
            exposed,
            credentials: fields.allow_credentials,
            max_age,
            options_passthrough: fields.options_passthrough,
        }))
    }

    /// A preflight's answer headers (the status is 204 whatever they hold), or `None` when
    /// the request is not a preflight.
    pub fn preflight(&self, parts: &Parts) -> Option<HeaderMap> {
        if parts.method != Method::OPTIONS {
            return None;
        }
        let asked = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut answer = HeaderMap::new();
        answer.insert(header::VARY, PREFLIGHT_VARY.clone());
        let Some(origin) = self.allowed_origin(parts) else {
            return Some(answer);
        };
        if !self.allows_method(asked.as_bytes()) {
            return Some(answer);
        }
        let requested: Vec<&HeaderValue> = parts
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .collect();
        if !requested.iter().all(|v| self.allows_headers(v)) {
            return Some(answer);
        }
        answer.insert(ALLOW_ORIGIN.clone(), origin);
        answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, asked.clone());
        if let Some(first) = requested.first().filter(|v| !v.is_empty()) {
            answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, (*first).clone());
        }
        if self.credentials {
            answer.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = &self.max_age {
            answer.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        Some(answer)
    }

    /// The `Access-Control-Allow-Origin` an actual request earns (`None`: its origin or
    /// method is not allowed, or it has no origin).
    pub fn actual(&self, parts: &Parts) -> Option<HeaderValue> {
        let origin = self.allowed_origin(parts)?;
        self.allows_method(parts.method.as_str().as_bytes())
            .then_some(origin)
    }

    /// Writes an actual request's CORS headers on its response.
    pub fn write(&self, allowed_origin: Option<HeaderValue>, headers: &mut HeaderMap) {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = allowed_origin else {
            return;
        };
        // As Tyk's `copyHeader`: an upstream's CORS header gives way to one the gateway sets,
        // and passes where the gateway sets none.
        headers.insert(ALLOW_ORIGIN.clone(), origin);
        if let Some(exposed) = &self.exposed {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The request's `Origin` as `Access-Control-Allow-Origin` answers it (`*` when every
    /// origin is allowed), if it is allowed.
    fn allowed_origin(&self, parts: &Parts) -> Option<HeaderValue> {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .filter(|o| !o.is_empty())?;
        match &self.origins {
            Origins::All => Some(HeaderValue::from_static("*")),
            Origins::Listed { exact, wildcards } => {
                // The listed origins are lower-case; the request's is compared without case,
                // and without allocating (as sent, origins are lower-case: an exact compare
                // answers first).
                let text = origin.as_bytes();
                let same = |listed: &[u8], sent: &[u8]| {
                    listed == sent || listed.eq_ignore_ascii_case(sent)
                };
                let listed = exact.iter().any(|e| same(e.as_bytes(), text))
                    || wildcards.iter().any(|(prefix, suffix)| {
                        text.len() >= prefix.len() + suffix.len()
                            && same(prefix.as_bytes(), &text[..prefix.len()])
                            && same(suffix.as_bytes(), &text[text.len() - suffix.len()..])
                    });
                listed.then(|| origin.clone())
            }
        }
    }

    fn allows_method(&self, method: &[u8]) -> bool {
        method == b"OPTIONS" || self.methods.iter().any(|m| m.as_bytes() == method)
    }

    /// Whether every header named in an `Access-Control-Request-Headers` value is allowed.
    fn allows_headers(&self, requested: &HeaderValue) -> bool {
        let Some(allowed) = &self.headers else {
            return true;
        };
        let Ok(requested) = requested.to_str() else {
            return false;
        };
        requested
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .all(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use serde_json::json;

    fn cors(fields: Value) -> Cors {
        Cors::compile(Some(&fields)).unwrap().unwrap()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_the_allow_headers() {
        let c = cors(
            json!({"enable": true, "allowed_origins": ["https://*.example.com"],
            "allowed_methods": ["GET", "PUT"], "allowed_headers": ["Authorization", "X-Api"],
            "allow_credentials": true, "max_age": 600}),
        );
        let asked = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization,x-api"),
            ],
        );
        let answer = c.preflight(&asked).unwrap();
        assert_eq!(
            answer["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(answer["access-control-allow-methods"], "PUT");
        assert_eq!(
            answer["access-control-allow-headers"],
            "authorization,x-api"
        );
        assert_eq!(answer["access-control-allow-credentials"], "true");
        assert_eq!(answer["access-control-max-age"], "600");
        for refused in [
            request(
                "OPTIONS",
                &[
                    ("origin", "https://evil.com"),
                    ("access-control-request-method", "PUT"),
                ],
            ),
            request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "DELETE"),
                ],
            ),
            request(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-other"),
                ],
            ),
        ] {
            let answer = c.preflight(&refused).unwrap();
            assert!(!answer.contains_key("access-control-allow-origin"));
            assert!(answer.contains_key("vary"));
        }
        assert!(
            c.preflight(&request("OPTIONS", &[])).is_none(),
            "not a preflight"
        );
    }

    #[test]
    fn actual_requests_get_the_origin_and_defaults_are_rs_cors_defaults() {
        let c = cors(json!({"enable": true, "exposed_headers": ["x-request-id"]}));
        let get = request("GET", &[("origin", "https://any.site")]);
        let origin = c.actual(&get);
        assert_eq!(origin.as_ref().unwrap(), "*");
        let mut headers = HeaderMap::new();
        headers.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://upstream"),
        );
        c.write(origin.clone(), &mut headers);
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert_eq!(headers["access-control-expose-headers"], "X-Request-Id");
        assert_eq!(headers["vary"], "Origin");
        let put = request("PUT", &[("origin", "https://any.site")]);
        assert_eq!(c.actual(&put), None, "PUT is not among the default methods");
        assert!(
            Cors::compile(Some(&json!({"enable": false})))
                .unwrap()
                .is_none()
        );
    }
}
