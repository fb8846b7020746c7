//! Tyk's variables in header values and URL rewrites: `$tyk_context.<name>`, the request's
//! context (filled when the API sets `enable_context_vars`), and `$tyk_meta.<name>`, a member
//! of the key's `meta_data`. A text is compiled once into a [`Template`]; a variable without a
//! value renders empty, as in Tyk. Tyk's secrets from the environment and from `tyk.conf`
//! (`$secret_env.<name>`, `$secret_conf.<name>`) are filled in when the text is compiled.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::IpAddr;

use http::HeaderName;
use http::request::Parts;

use crate::client_ip;

const CONTEXT: &str = "$tyk_context.";
const META: &str = "$tyk_meta.";
/// Tyk's secrets: `$secret_env.` and `$secret_conf.` are resolved (see [`Secrets`]); those
/// of a secret store (`$secret_vault.`, `$secret_consul.`, `$secret_file.`) are not, and are
/// left empty, as Tyk leaves one it cannot resolve, and reported.
const SECRET: &str = "$secret_";
/// Where Tyk looks for `$secret_env.<name>`: the environment variable `TYK_SECRET_<NAME>`.
const SECRET_ENV_PREFIX: &str = "TYK_SECRET_";

/// The values of `$secret_env.<name>` (the environment's `TYK_SECRET_<NAME>`, the name
/// upper-cased) and `$secret_conf.<name>` (tyk.conf's `secrets`), read when definitions load.
/// Printed with its names only.
#[derive(Clone, Default)]
pub struct Secrets {
    /// By the variable's name after `TYK_SECRET_`.
    env: HashMap<String, String>,
    conf: HashMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("conf", &self.conf.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// `conf` from tyk.conf; `env` the environment's variables (those not named
    /// `TYK_SECRET_*` are left out).
    pub fn new(
        conf: impl IntoIterator<Item = (String, String)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            env: env
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((name.strip_prefix(SECRET_ENV_PREFIX)?.to_owned(), value))
                })
                .collect(),
            conf: conf.into_iter().collect(),
        }
    }

    /// With this process's environment (variables whose name or value is not UTF-8 left out).
    pub fn with_process_env(conf: impl IntoIterator<Item = (String, String)>) -> Self {
        let env = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        Self::new(conf, env)
    }

    /// The value of `$secret_<name>` (`name` is `env.X` or `conf.X`), if it has one.
    fn value(&self, name: &str) -> Option<&str> {
        match name.split_once('.')? {
            ("env", key) => self.env.get(&key.to_uppercase()),
            ("conf", key) => self.conf.get(key),
            _ => None,
        }
        .map(String::as_str)
    }
}

/// A text with its variables found.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Box<[Part]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(Box<str>),
    Context(ContextVar),
    Meta(Box<str>),
}

/// The context variables tollgate fills (Tyk's `MiddlewareContextVars`).
#[derive(Debug, Clone, PartialEq)]
enum ContextVar {
    Path,
    /// The path's segments, comma-joined, without the leading comma.
    PathParts,
    /// The client's address as Tyk's `RealIP` finds it (see `client_ip`).
    RemoteAddr,
    /// A UUID made for the request when first asked for.
    RequestId,
    /// `headers_<Canonical_Name>`: the header's first value.
    Header(HeaderName),
    /// `cookies_<name>`, a `-` in the cookie's name written `_`.
    Cookie(Box<str>),
    /// `request_data_<name>`: the first value of a form body's field or, after those, a
    /// query parameter's (Go's `r.Form`), a `-` in the name written `_`.
    Query(Box<str>),
    /// `trigger-<n>-<name>…`: what a URL rewrite's trigger captured (filled whether or not
    /// `enable_context_vars` is on, as in Tyk).
    Capture(Box<str>),
    /// A name Tyk fills that tollgate does not (or one with no value anywhere): empty.
    Unfilled,
}

/// What a template reads when rendered.
pub struct Scope<'a> {
    pub request: &'a Parts,
    /// The connection's address, and `http_server_options.xff_depth`: the client's
    /// address is found from them (see `client_ip`) only when a template asks for it.
    pub peer: IpAddr,
    pub xff_depth: usize,
    /// The request's `$tyk_context.request_id`, the same wherever it is used.
    pub request_id: &'a OnceCell<Box<str>>,
    /// The key's `meta_data` as strings (`None`: keyless or not yet authenticated).
    pub meta: Option<&'a [(Box<str>, Box<str>)]>,
    /// `enable_context_vars`: without it every `$tyk_context.` variable but a trigger's
    /// captures is empty, as in Tyk.
    pub context_vars: bool,
    /// A URL rewrite's trigger captures, by their `$tyk_context.` names.
    pub captures: &'a [(String, String)],
    /// The request's body, when a stage read it (see [`is_form`]; a trigger's
    /// `payload_matches`).
    pub body: Option<&'a [u8]>,
}

/// Whether `request`'s body holds form values for `request_data_` variables: a POST, PUT or
/// PATCH declared `application/x-www-form-urlencoded`, as Go's `ParseForm` reads them.
pub fn is_form(request: &Parts) -> bool {
    use http::Method;
    [Method::POST, Method::PUT, Method::PATCH].contains(&request.method)
        && request
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| {
                media
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

impl Template {
    /// Finds the variables in `text`, and fills in its secrets from `secrets`. A variable's
    /// name runs over `[A-Za-z0-9_.-]` (Tyk's pattern). Returns the template and the
    /// variables in it that tollgate does not fill (some context variables, secrets it has
    /// no value for), so that a loader can report them.
    pub fn compile(text: &str, secrets: &Secrets) -> (Self, Vec<String>) {
        let mut parts = Vec::new();
        let mut unfilled = Vec::new();
        let mut rest = text;
        loop {
            let next = [CONTEXT, META, SECRET]
                .into_iter()
                .filter_map(|label| rest.find(label).map(|at| (at, label)))
                .min();
            let Some((at, label)) = next else { break };
            let after = &rest[at + label.len()..];
            let length = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .unwrap_or(after.len());
            if length == 0 {
                push_text(&mut parts, &rest[..at + label.len()]);
                rest = after;
                continue;
            }
            push_text(&mut parts, &rest[..at]);
            let name = &after[..length];
            if label == SECRET {
                match secrets.value(name) {
                    Some(value) => push_text(&mut parts, value),
                    None => unfilled.push(format!("{SECRET}{name}")),
                }
                rest = &after[length..];
                continue;
            }
            parts.push(if label == META {
                Part::Meta(name.into())
            } else {
                let var = ContextVar::named(name);
                if var == ContextVar::Unfilled {
                    unfilled.push(format!("{CONTEXT}{name}"));
                }
                Part::Context(var)
            });
            rest = &after[length..];
        }
        push_text(&mut parts, rest);
        (
            Self {
                parts: parts.into(),
            },
            unfilled,
        )
    }

    /// Whether the template has a `request_data_` variable, which may read a form body.
    pub fn reads_request_data(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Context(ContextVar::Query(_))))
    }

    /// The text, if it has no variables.
    pub fn as_text(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// The text with its variables' values.
    pub fn render(&self, scope: &Scope<'_>) -> String {
        self.render_with(scope, false, |text, out| out.push_str(text))
    }

    /// The text with its variables' values, query-escaped if `escape` (as Tyk's URL rewrites
    /// have them); `text` writes the template's own text (a rewrite fills its `$1` groups
    /// there, so that a value taken from the request is never read for variables).
    pub fn render_with(
        &self,
        scope: &Scope<'_>,
        escape: bool,
        text: impl Fn(&str, &mut String),
    ) -> String {
        let mut out = String::new();
        let mut value = String::new();
        for part in &*self.parts {
            value.clear();
            match part {
                Part::Text(t) => {
                    text(t, &mut out);
                    continue;
                }
                Part::Meta(name) => {
                    let found = scope
                        .meta
                        .and_then(|meta| meta.iter().find(|(k, _)| k == name))
                        .map(|(_, v)| &**v);
                    value.push_str(found.unwrap_or(""));
                }
                Part::Context(var) => var.render(scope, &mut value),
            }
            if escape {
                out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
            } else {
                out.push_str(&value);
            }
        }
        out
    }
}

/// The value of context variable `name` (a URL rewrite's `request_context_matches` reads it).
pub fn context_value(scope: &Scope<'_>, name: &str) -> String {
    let mut value = String::new();
    ContextVar::named(name).render(scope, &mut value);
    value
}

fn push_text(parts: &mut Vec<Part>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Part::Text(last)) = parts.last_mut() {
        *last = format!("{last}{text}").into();
    } else {
        parts.push(Part::Text(text.into()));
    }
}

impl ContextVar {
    fn named(name: &str) -> Self {
        match name {
            "path" => Self::Path,
            "path_parts" => Self::PathParts,
            "remote_addr" => Self::RemoteAddr,
            "request_id" => Self::RequestId,
            _ if name.starts_with("trigger-") => Self::Capture(name.into()),
            _ => {
                if let Some(header) = name.strip_prefix("headers_") {
                    // Tyk's key is the canonical header name with `-` as `_`: only that
                    // spelling has a value.
                    let header = header.replace('_', "-");
                    if canonical_header_name(&header) == header
                        && let Ok(header) = HeaderName::from_bytes(header.as_bytes())
                    {
                        return Self::Header(header);
                    }
                } else if let Some(cookie) = name.strip_prefix("cookies_") {
                    return Self::Cookie(cookie.into());
                } else if let Some(param) = name.strip_prefix("request_data_") {
                    return Self::Query(param.into());
                }
                Self::Unfilled
            }
        }
    }

    fn render(&self, scope: &Scope<'_>, out: &mut String) {
        let request = scope.request;
        if let Self::Capture(name) = self {
            if let Some((_, value)) = scope.captures.iter().find(|(k, _)| k == &**name) {
                out.push_str(value);
            }
            return;
        }
        if !scope.context_vars {
            return;
        }
        match self {
            Self::Path => out.push_str(request.uri.path()),
            Self::PathParts => {
                let path = request.uri.path();
                out.push_str(&path.strip_prefix('/').unwrap_or(path).replace('/', ","));
            }
            Self::RemoteAddr => {
                let client = client_ip::real_ip(&request.headers, scope.peer, scope.xff_depth);
                if let Some(client) = client {
                    out.push_str(&client.to_string());
                }
            }
            Self::RequestId => out.push_str(
                scope
                    .request_id
                    .get_or_init(|| uuid::Uuid::new_v4().to_string().into()),
            ),
            Self::Header(name) => {
                if let Some(value) = request.headers.get(name).and_then(|v| v.to_str().ok()) {
                    out.push_str(value);
                }
            }
            Self::Cookie(name) => {
                if let Some(value) = cookie(&request.headers, name) {
                    out.push_str(value);
                }
            }
            Self::Query(name) => {
                let form = scope.body.filter(|_| is_form(request)).unwrap_or_default();
                let query = request.uri.query().unwrap_or("");
                let value = form_urlencoded::parse(form)
                    .chain(form_urlencoded::parse(query.as_bytes()))
                    .find(|(k, _)| k.replace('-', "_") == **name);
                if let Some((_, value)) = value {
                    out.push_str(&value);
                }
            }
            Self::Capture(_) | Self::Unfilled => {}
        }
    }
}

/// Go's canonical header key: the first letter and each after a `-` upper case, the rest lower.
/// Tyk names headers so in its variables, its trigger captures and its batch replies.
pub fn canonical_header_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            c
        })
        .collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.replace('-', "_") == name)
        .map(|(_, v)| v)
}

/// A `meta_data` member as Tyk renders it in a variable (its `valToStr`): a string as it is,
/// a number in its shortest form without an exponent, a list as its members' values
/// query-escaped and comma-joined; other kinds have no value.
pub fn meta_value(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(i.to_string()),
            None => n.as_f64().map(|x| x.to_string()),
        },
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(meta_value)
                .filter(|v| !v.is_empty())
                .map(|v| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn compile(text: &str) -> (Template, Vec<String>) {
        Template::compile(text, &Secrets::default())
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn context_and_meta_variables_render_and_unknown_ones_are_empty() {
        let request = parts(
            "/api/users/7?x-y=1&z=2",
            &[("X-Api-Version", "v2"), ("cookie", "a=1; my-session=abc")],
        );
        let meta = [
            ("tier".into(), "gold".into()),
            ("user.id".into(), "42".into()),
        ];
        let request_id = OnceCell::new();
        let scope = Scope {
            request: &request,
            peer: "10.0.0.9".parse().unwrap(),
            xff_depth: 0,
            request_id: &request_id,
            meta: Some(&meta),
            context_vars: true,
            captures: &[],
            body: None,
        };
        let text = "p=$tyk_context.path;parts=$tyk_context.path_parts;ip=$tyk_context.remote_addr;\
                    h=$tyk_context.headers_X_Api_Version;lower=$tyk_context.headers_x_api_version;\
                    c=$tyk_context.cookies_my_session;q=$tyk_context.request_data_x_y;\
                    tier=$tyk_meta.tier;id=$tyk_meta.user.id;none=$tyk_meta.absent;$tyk_context.";
        let (template, unfilled) = compile(text);
        assert_eq!(
            template.render(&scope),
            "p=/api/users/7;parts=api,users,7;ip=10.0.0.9;h=v2;lower=;c=abc;q=1;tier=gold;\
             id=42;none=;$tyk_context."
        );
        assert_eq!(unfilled, ["$tyk_context.headers_x_api_version"]);
        let (id, _) = compile("$tyk_context.request_id");
        assert_eq!(id.render(&scope), id.render(&scope), "one id per request");
        assert_eq!(id.render(&scope).len(), 36);
        let off = Scope {
            context_vars: false,
            ..scope
        };
        let (template, _) = compile("[$tyk_context.path][$tyk_meta.tier]");
        assert_eq!(template.render(&off), "[][gold]");
        let (secret, unfilled) = compile("Bearer $secret_env.UPSTREAM_TOKEN!");
        assert_eq!(secret.render(&scope), "Bearer !");
        assert_eq!(unfilled, ["$secret_env.UPSTREAM_TOKEN"]);
    }

    #[test]
    fn secrets_from_the_environment_and_tyk_conf_are_filled_in_when_compiled() {
        let secrets = Secrets::new(
            [("db.pass".to_owned(), "p$1".to_owned())],
            [
                ("TYK_SECRET_UPSTREAM_TOKEN".to_owned(), "t0k".to_owned()),
                ("UPSTREAM_TOKEN".to_owned(), "not a secret".to_owned()),
            ],
        );
        let (template, unfilled) = Template::compile(
            "Bearer $secret_env.upstream_token;$secret_conf.db.pass;\
             $secret_conf.DB.PASS;$secret_vault.a.b;$secret_env.absent",
            &secrets,
        );
        assert_eq!(template.as_text(), Some("Bearer t0k;p$1;;;"));
        assert_eq!(
            unfilled,
            [
                "$secret_conf.DB.PASS",
                "$secret_vault.a.b",
                "$secret_env.absent"
            ]
        );
    }

    #[test]
    fn plain_text_is_known_as_such() {
        assert_eq!(compile("plain").0.as_text(), Some("plain"));
        assert_eq!(compile("$tyk_meta.x").0.as_text(), None);
    }

    #[test]
    fn meta_values_render_as_tyk_renders_them() {
        use serde_json::json;
        assert_eq!(meta_value(&json!("s")), Some("s".into()));
        assert_eq!(meta_value(&json!(100)), Some("100".into()));
        assert_eq!(meta_value(&json!(1.5)), Some("1.5".into()));
        assert_eq!(meta_value(&json!(["a b", 2])), Some("a+b,2".into()));
        assert_eq!(meta_value(&json!(true)), None);
    }
}
