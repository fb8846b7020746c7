//! Tyk's `url_rewrites`: an endpoint's `match_pattern` (a regex tried on the request's path
//! and query, the listen path included) and `rewrite_to`, with `$N` for the pattern's groups
//! and Tyk's variables, or a trigger's `rewrite_to` when its conditions on headers, query
//! values, path segments, the key's metadata, context variables or the request's body hold
//! (`on: "any"` or `"all"`). The result is the upstream path and query (the listen path is then stripped if
//! it starts with it); one naming a scheme and host sends the request to that host instead.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderName, Uri};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::path::{self, PathError};
use crate::path_pattern::LiteralPattern;
use crate::target::{self, Target};
use crate::tls::client::UpstreamTls;
use crate::variables::{Scope, Secrets, Template, canonical_header_name, context_value};
use crate::version::{InvalidField, invalid};

/// One compiled rewrite.
#[derive(Debug)]
pub struct UrlRewrite {
    pattern: Regex,
    /// `match_pattern` when it is plain text: compared, not searched.
    plain_pattern: Option<LiteralPattern>,
    /// A `rewrite_to` (its own or a trigger's) names `match_pattern`'s groups (`$1`): only
    /// then are they captured, a search that costs several times a match.
    uses_groups: bool,
    rewrite_to: Destination,
    triggers: Box<[Trigger]>,
}

/// Where a request is rewritten to.
#[derive(Debug)]
struct Destination {
    template: Template,
    /// The host a `rewrite_to` with a scheme names (fixed, so parsed once).
    target: Option<Arc<Target>>,
    /// The path and query of a `rewrite_to` without variables or groups, resolved once
    /// (`None` too when it does not make a URI: that is then refused per request).
    fixed: Option<PathAndQuery>,
}

#[derive(Debug)]
struct Trigger {
    any: bool,
    headers: Vec<(HeaderName, String, Matcher)>,
    query: Vec<(String, Matcher)>,
    path_parts: Vec<(String, Matcher)>,
    session_meta: Vec<(String, Matcher)>,
    context: Vec<(String, Matcher)>,
    /// `payload_matches`: a regex on the request's body (read whole for it).
    payload: Option<Matcher>,
    rewrite_to: Destination,
}

/// Tyk's `StringRegexMap`: `match_rx`, matched or (with `reverse`) not.
#[derive(Debug)]
struct Matcher {
    regex: Regex,
    reverse: bool,
}

/// A request rewritten: its new path and query, and the host it goes to if not the API's.
#[derive(Debug)]
pub struct Rewritten<'a> {
    pub uri: Uri,
    pub target: Option<&'a Target>,
}

/// Why a rewritten path and query is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteError {
    /// It is not a request target.
    NotAUri,
    /// Its path hides a dot segment (see `path`).
    Path(PathError),
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RewriteFields {
    pub path: String,
    pub method: String,
    pub disabled: bool,
    match_pattern: String,
    rewrite_to: String,
    triggers: Vec<TriggerFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TriggerFields {
    on: String,
    options: TriggerOptions,
    rewrite_to: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TriggerOptions {
    header_matches: serde_json::Map<String, Value>,
    query_val_matches: serde_json::Map<String, Value>,
    path_part_matches: serde_json::Map<String, Value>,
    session_meta_matches: serde_json::Map<String, Value>,
    request_context_matches: serde_json::Map<String, Value>,
    payload_matches: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MatcherFields {
    match_rx: String,
    reverse: bool,
}

impl UrlRewrite {
    /// Compiles an entry found at `at`; `tls` is the API's, for a rewrite to an HTTPS host;
    /// secrets in its texts are filled in from `secrets`. Also returns the variables in its
    /// texts that tollgate leaves empty.
    pub fn compile(
        fields: &RewriteFields,
        at: &str,
        tls: &UpstreamTls,
        secrets: &Secrets,
    ) -> Result<(Self, Vec<String>), InvalidField> {
        let pattern = Regex::new(&fields.match_pattern)
            .map_err(|e| invalid(&format!("{at}.match_pattern"), e.to_string()))?;
        let mut unfilled = Vec::new();
        let rewrite_to = destination(
            &fields.rewrite_to,
            &format!("{at}.rewrite_to"),
            tls,
            secrets,
        )?;
        unfilled.extend(rewrite_to.1);
        let mut triggers = Vec::new();
        for (i, trigger) in fields.triggers.iter().enumerate() {
            let at = format!("{at}.triggers[{i}]");
            let any = match trigger.on.as_str() {
                "any" => true,
                "all" => false,
                other => {
                    return Err(invalid(
                        &format!("{at}.on"),
                        format!("{other:?} is not \"any\" or \"all\""),
                    ));
                }
            };
            let options = &trigger.options;
            let matchers = |map: &serde_json::Map<String, Value>, field: &str| {
                map.iter()
                    .map(|(name, value)| {
                        let field = format!("{at}.options.{field}.{name}");
                        Ok((name.clone(), matcher(value, &field)?))
                    })
                    .collect::<Result<Vec<_>, InvalidField>>()
            };
            let headers = matchers(&options.header_matches, "header_matches")?
                .into_iter()
                .map(|(name, m)| {
                    let canonical = canonical_header_name(&name);
                    HeaderName::from_bytes(name.as_bytes())
                        .map(|header| (header, canonical, m))
                        .map_err(|_| {
                            invalid(
                                &format!("{at}.options.header_matches.{name}"),
                                "is not a header name",
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            let rewrite_to = destination(
                &trigger.rewrite_to,
                &format!("{at}.rewrite_to"),
                tls,
                secrets,
            )?;
            unfilled.extend(rewrite_to.1);
            triggers.push(Trigger {
                any,
                headers,
                query: matchers(&options.query_val_matches, "query_val_matches")?,
                path_parts: matchers(&options.path_part_matches, "path_part_matches")?,
                session_meta: matchers(&options.session_meta_matches, "session_meta_matches")?,
                context: matchers(&options.request_context_matches, "request_context_matches")?,
                // Tyk's empty `match_rx` turns the condition off.
                payload: match &options.payload_matches {
                    Value::Object(fields)
                        if fields.get("match_rx").and_then(Value::as_str) != Some("") =>
                    {
                        let field = format!("{at}.options.payload_matches");
                        Some(matcher(&options.payload_matches, &field)?)
                    }
                    Value::Null | Value::Object(_) => None,
                    _ => {
                        return Err(invalid(
                            &format!("{at}.options.payload_matches"),
                            "must be an object",
                        ));
                    }
                },
                rewrite_to: rewrite_to.0,
            });
        }
        let uses_groups = names_group(&fields.rewrite_to)
            || fields.triggers.iter().any(|t| names_group(&t.rewrite_to));
        let rewrite = Self {
            plain_pattern: LiteralPattern::of(&fields.match_pattern),
            pattern,
            uses_groups,
            rewrite_to: rewrite_to.0,
            triggers: triggers.into(),
        };
        Ok((rewrite, unfilled))
    }

    /// Whether applying the rewrite reads the request's body: a trigger's `payload_matches`,
    /// or (`form_vars`: with `enable_context_vars`, for a form body) a `request_data_`
    /// variable in a `rewrite_to` or a `request_context_matches` condition.
    pub fn reads_body(&self, form_vars: bool) -> bool {
        let reads_form = || {
            std::iter::once(&self.rewrite_to)
                .chain(self.triggers.iter().map(|t| &t.rewrite_to))
                .any(|d| d.template.reads_request_data())
                || self.triggers.iter().any(|t| {
                    t.context
                        .iter()
                        .any(|(name, _)| name.starts_with("request_data_"))
                })
        };
        self.triggers.iter().any(|t| t.payload.is_some()) || (form_vars && reads_form())
    }

    /// The request rewritten, or `None` when `match_pattern` does not match it (the request
    /// then goes on as it is). `scope` is the request's, without captures: the triggers'
    /// are added here.
    pub fn apply<'a>(&'a self, scope: &Scope<'_>) -> Option<Result<Rewritten<'a>, RewriteError>> {
        let uri = &scope.request.uri;
        let url = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut captures = Vec::new();
        let destination = self
            .triggers
            .iter()
            .enumerate()
            .find(|(n, trigger)| trigger.holds(*n, scope, &mut captures))
            .map_or(&self.rewrite_to, |(_, trigger)| &trigger.rewrite_to);
        let decoded;
        let groups = match self.find(url) {
            Some(groups) => groups,
            None if url.contains('%') => {
                decoded = percent_decoded(url);
                self.find(&decoded)?
            }
            None => return None,
        };
        let target = destination.target.as_deref();
        if let Some(path_and_query) = &destination.fixed {
            let uri = Uri::from(path_and_query.clone());
            return Some(Ok(Rewritten { uri, target }));
        }
        let scope = Scope {
            captures: &captures,
            ..*scope
        };
        let fill_groups = |text: &str, out: &mut String| match &groups {
            Some(groups) => fill_dollar_groups(text, groups, out),
            None => out.push_str(text),
        };
        let rendered = destination.template.render_with(&scope, true, fill_groups);
        let uri = resolved(&path_and_query(rendered, target.is_some()));
        Some(uri.map(|uri| Rewritten { uri, target }))
    }

    /// Whether `match_pattern` matches `url`: `Some(None)` when no group is needed.
    fn find<'u>(&self, url: &'u str) -> Option<Option<regex::Captures<'u>>> {
        if self.uses_groups {
            self.pattern.captures(url).map(Some)
        } else if let Some(plain) = &self.plain_pattern {
            plain.is_match(url).then_some(None)
        } else {
            self.pattern.is_match(url).then_some(None)
        }
    }
}

impl Trigger {
    /// Whether the trigger's conditions hold; what its matchers capture is added to
    /// `captures` as Tyk names it (`trigger-<n>-<name>-<i>`, groups `…-<g>`), whether or not
    /// the whole trigger then holds.
    fn holds(&self, n: usize, scope: &Scope<'_>, captures: &mut Vec<(String, String)>) -> bool {
        let request = scope.request;
        let mut tally = Tally {
            any: self.any,
            kinds: 0,
            held: 0,
        };
        // Headers: each value of each header named.
        let mut matched = 0;
        for (name, canonical, matcher) in &self.headers {
            for (i, value) in request.headers.get_all(name).iter().enumerate() {
                let value = value.to_str().unwrap_or("");
                if matcher.capture(value, &format!("trigger-{n}-{canonical}-{i}"), captures) {
                    matched += 1;
                }
            }
        }
        if tally.decides(self.headers.len(), matched) {
            return true;
        }
        let query = request.uri.query().unwrap_or("");
        let mut matched = 0;
        for (name, matcher) in &self.query {
            let values = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name);
            for (i, (_, value)) in values.enumerate() {
                if matcher.capture(&value, &format!("trigger-{n}-{name}-{i}"), captures) {
                    matched += 1;
                }
            }
        }
        if tally.decides(self.query.len(), matched) {
            return true;
        }
        let mut matched = 0;
        for (name, matcher) in &self.path_parts {
            for part in request.uri.path().split('/') {
                let key = format!("trigger-{n}-{name}-{matched}");
                if matcher.capture(part, &key, captures) {
                    matched += 1;
                }
            }
        }
        if tally.decides(self.path_parts.len(), matched) {
            return true;
        }
        // The key's metadata: only with a key, as in Tyk.
        let mut matched = 0;
        for (name, matcher) in &self.session_meta {
            let value = scope
                .meta
                .and_then(|meta| meta.iter().find(|(k, _)| **k == **name));
            if let Some((_, value)) = value
                && matcher.capture(value, &format!("trigger-{n}-{name}"), captures)
            {
                matched += 1;
            }
        }
        if tally.decides(self.session_meta.len(), matched) {
            return true;
        }
        let mut matched = 0;
        for (name, matcher) in &self.context {
            let value = context_value(scope, name);
            let key = format!("trigger-{n}-{name}");
            if !value.is_empty() && matcher.capture(&value, &key, captures) {
                matched += 1;
            }
        }
        if tally.decides(self.context.len(), matched) {
            return true;
        }
        if let Some(matcher) = &self.payload {
            let body = String::from_utf8_lossy(scope.body.unwrap_or_default());
            let held = matcher.capture_all(&body, &format!("trigger-{n}-payload"), captures);
            if tally.decides(1, usize::from(held)) {
                return true;
            }
        }
        !self.any && tally.kinds > 0 && tally.held == tally.kinds
    }
}

/// A trigger's conditions counted by kind, as Tyk counts them: with `any`, the first kind
/// with a match decides; with `all`, every kind used must have as many matches as names.
struct Tally {
    any: bool,
    kinds: usize,
    held: usize,
}

impl Tally {
    /// Counts a kind with `names` conditions, `matched` of its values matching; true when
    /// that decides the trigger (`any`).
    fn decides(&mut self, names: usize, matched: usize) -> bool {
        if names == 0 {
            return false;
        }
        self.kinds += 1;
        let holds = matched > 0 && (self.any || matched >= names);
        self.held += usize::from(holds);
        holds && self.any
    }
}

impl Matcher {
    /// Whether `value` matches (or, with `reverse`, does not), capturing every match as Tyk's
    /// `payload_matches` does: the first under `key`, each under `key-<i>`, its groups
    /// under `key-<i>-<g>`.
    fn capture_all(&self, value: &str, key: &str, captures: &mut Vec<(String, String)>) -> bool {
        let mut found = false;
        for (i, groups) in self.regex.captures_iter(value).enumerate() {
            let whole = groups.get(0).map_or("", |m| m.as_str());
            if !found {
                captures.push((key.to_owned(), whole.to_owned()));
                found = true;
            }
            for (g, group) in groups.iter().enumerate() {
                let name = match g {
                    0 => format!("{key}-{i}"),
                    g => format!("{key}-{i}-{}", g - 1),
                };
                captures.push((name, group.map_or("", |m| m.as_str()).to_owned()));
            }
        }
        found != self.reverse
    }

    /// Whether `value` matches (or, reversed, does not); a match's text and groups are
    /// captured under `key`.
    fn capture(&self, value: &str, key: &str, captures: &mut Vec<(String, String)>) -> bool {
        let found = self.regex.captures(value);
        if let Some(groups) = &found {
            for (g, group) in groups.iter().enumerate() {
                let text = group.map_or("", |m| m.as_str()).to_owned();
                let name = match g {
                    0 => key.to_owned(),
                    g => format!("{key}-{}", g - 1),
                };
                captures.push((name, text));
            }
        }
        found.is_some() != self.reverse
    }
}

/// The path and query a rendered `rewrite_to` sends: with a host (`with_target`), what
/// follows it; else the text, rooted.
fn path_and_query(rendered: String, with_target: bool) -> String {
    if with_target {
        let after_scheme = rendered.split_once("://").map_or("", |(_, rest)| rest);
        return match after_scheme.find(['/', '?']) {
            Some(at) if after_scheme[at..].starts_with('/') => after_scheme[at..].into(),
            Some(at) => format!("/{}", &after_scheme[at..]),
            None => "/".into(),
        };
    }
    if rendered.starts_with('/') {
        rendered
    } else {
        format!("/{rendered}")
    }
}

/// The URI of a rewritten path and query, its dot segments resolved as a client's are (see
/// `path`).
fn resolved(path_and_query: &str) -> Result<Uri, RewriteError> {
    let uri: Uri = path_and_query.parse().map_err(|_| RewriteError::NotAUri)?;
    match path::normalize(uri.path()) {
        Ok(None) => Ok(uri),
        Ok(Some(resolved)) => {
            path::with_path_and_query(&uri, resolved, uri.query()).ok_or(RewriteError::NotAUri)
        }
        Err(e) => Err(RewriteError::Path(e)),
    }
}

/// A `rewrite_to`: its template, and the host it names if it has a scheme.
fn destination(
    text: &str,
    at: &str,
    tls: &UpstreamTls,
    secrets: &Secrets,
) -> Result<(Destination, Vec<String>), InvalidField> {
    let (template, unfilled) = Template::compile(text, secrets);
    let target = match text.split_once("://") {
        Some(("tyk", _)) => {
            return Err(invalid(
                at,
                "looping (tyk://) is not supported by tollgate; the API is not served rather \
                 than served without it",
            ));
        }
        Some((scheme, rest)) if !scheme.contains(['/', '$', '?']) => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if authority.contains('$') {
                return Err(invalid(
                    at,
                    "a rewrite to another host must name the host without variables",
                ));
            }
            let target = target::parse(&format!("{scheme}://{authority}"), tls)
                .map_err(|reason| invalid(at, reason))?;
            Some(Arc::new(target))
        }
        _ => None,
    };
    let fixed = template
        .as_text()
        .filter(|text| !names_group(text))
        .and_then(|text| resolved(&path_and_query(text.to_owned(), target.is_some())).ok())
        .and_then(|uri| uri.into_parts().path_and_query);
    let destination = Destination {
        template,
        target,
        fixed,
    };
    Ok((destination, unfilled))
}

/// Whether a `rewrite_to` names one of `match_pattern`'s groups (`$1`).
fn names_group(text: &str) -> bool {
    text.split('$')
        .skip(1)
        .any(|after| after.starts_with(|c: char| c.is_ascii_digit()))
}

fn matcher(value: &Value, at: &str) -> Result<Matcher, InvalidField> {
    let fields: MatcherFields =
        serde_json::from_value(value.clone()).map_err(|e| invalid(at, e.to_string()))?;
    let regex = Regex::new(&fields.match_rx)
        .map_err(|e| invalid(&format!("{at}.match_rx"), e.to_string()))?;
    Ok(Matcher {
        regex,
        reverse: fields.reverse,
    })
}

/// `text` with each `$N` replaced by group N of `groups` (empty if there is none), as Tyk's
/// `dollarMatch` replacements.
fn fill_dollar_groups(text: &str, groups: &regex::Captures<'_>, out: &mut String) {
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        if digits == 0 {
            out.push('$');
            rest = &rest[at + 1..];
            continue;
        }
        let number = &rest[at + 1..at + 1 + digits];
        if let Some(group) = number.parse().ok().and_then(|n: usize| groups.get(n)) {
            out.push_str(group.as_str());
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
}

fn percent_decoded(text: &str) -> String {
    let bytes: Vec<u8> = percent_decode(text.as_bytes());
    String::from_utf8_lossy(&bytes).into_owned()
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use serde_json::json;
    use std::cell::OnceCell;

    fn rewrite(fields: Value) -> UrlRewrite {
        let fields: RewriteFields = serde_json::from_value(fields).unwrap();
        UrlRewrite::compile(&fields, "r", &UpstreamTls::default(), &Secrets::default())
            .unwrap()
            .0
    }

    fn apply(
        rewrite: &UrlRewrite,
        uri: &str,
        headers: &[(&str, &str)],
        meta: Option<&[(Box<str>, Box<str>)]>,
    ) -> Option<String> {
        apply_with_body(rewrite, uri, headers, meta, None)
    }

    fn apply_with_body(
        rewrite: &UrlRewrite,
        uri: &str,
        headers: &[(&str, &str)],
        meta: Option<&[(Box<str>, Box<str>)]>,
        body: Option<&[u8]>,
    ) -> Option<String> {
        let rewritten = rewritten(rewrite, uri, headers, meta, body)?;
        Some(rewritten.expect("a request target").uri.to_string())
    }

    /// `rewrite` applied to a POST of `uri` with `headers`, the key's `meta` and `body`.
    fn rewritten<'r>(
        rewrite: &'r UrlRewrite,
        uri: &str,
        headers: &[(&str, &str)],
        meta: Option<&[(Box<str>, Box<str>)]>,
        body: Option<&[u8]>,
    ) -> Option<Result<Rewritten<'r>, RewriteError>> {
        let mut builder = Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (request, ()) = builder.body(()).unwrap().into_parts();
        let request_id = OnceCell::new();
        let scope = Scope {
            request: &request,
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            xff_depth: 0,
            request_id: &request_id,
            meta,
            context_vars: true,
            captures: &[],
            body,
        };
        rewrite.apply(&scope)
    }

    #[test]
    fn a_fixed_rewrite_to_is_resolved_once_and_a_plain_pattern_compared() {
        let r = rewrite(json!({"match_pattern": "^/api/$", "rewrite_to": "root/../top?x=1"}));
        assert!(r.plain_pattern.is_some());
        assert_eq!(
            r.rewrite_to
                .fixed
                .as_ref()
                .map(|u| u.to_string())
                .as_deref(),
            Some("/top?x=1")
        );
        assert_eq!(apply(&r, "/api/", &[], None).as_deref(), Some("/top?x=1"));
        assert_eq!(apply(&r, "/api/x", &[], None), None);
        // One that is not a request target is refused when a request is rewritten to it.
        let r = rewrite(json!({"match_pattern": "/api", "rewrite_to": "/a b"}));
        assert!(r.rewrite_to.fixed.is_none());
        let refused = rewritten(&r, "/api", &[], None, None).map(|r| r.unwrap_err());
        assert_eq!(refused, Some(RewriteError::NotAUri));
    }

    #[test]
    fn groups_fill_rewrite_to_and_the_query_goes_unless_kept() {
        let r = rewrite(json!({"match_pattern": "/api/users/(\\w+)(.*)",
            "rewrite_to": "/people/$1/profile$2$9"}));
        assert_eq!(
            apply(&r, "/api/users/ann?x=1", &[], None).as_deref(),
            Some("/people/ann/profile?x=1")
        );
        assert_eq!(apply(&r, "/api/orders", &[], None), None);
        let r = rewrite(json!({"match_pattern": "^/api/(.*)$", "rewrite_to": "/v2/$1"}));
        assert_eq!(
            apply(&r, "/api/a?b=1", &[], None).as_deref(),
            Some("/v2/a?b=1"),
            "the query is part of what is matched"
        );
        let r = rewrite(json!({"match_pattern": "^/api/([^?]*)", "rewrite_to": "/v2/$1"}));
        assert_eq!(apply(&r, "/api/a?b=1", &[], None).as_deref(), Some("/v2/a"));
    }

    #[test]
    fn a_group_is_never_read_for_variables() {
        let r = rewrite(json!({"match_pattern": "/api/(.*)", "rewrite_to": "/x/$1"}));
        let meta: [(Box<str>, Box<str>); 1] = [("secret".into(), "s3cr3t".into())];
        assert_eq!(
            apply(&r, "/api/$tyk_meta.secret", &[], Some(&meta)).as_deref(),
            Some("/x/$tyk_meta.secret")
        );
    }

    #[test]
    fn triggers_pick_their_rewrite_and_capture_what_matched() {
        let r = rewrite(
            json!({"match_pattern": "/api/(.*)", "rewrite_to": "/default/$1",
            "triggers": [
                {"on": "all", "options": {
                    "header_matches": {"x-tier": {"match_rx": "^(gold|silver)$"}},
                    "query_val_matches": {"region": {"match_rx": "eu"}}},
                 "rewrite_to": "/premium/$tyk_context.trigger-0-X-Tier-0-0/$1"},
                {"on": "any", "options": {
                    "session_meta_matches": {"plan": {"match_rx": "trial"}},
                    "path_part_matches": {"part": {"match_rx": "^beta$"}}},
                 "rewrite_to": "/trial/$1"},
                {"on": "any", "options": {
                    "header_matches": {"x-block": {"match_rx": "yes", "reverse": true}}},
                 "rewrite_to": "/unblocked/$1"},
                {"on": "any", "options": {
                    "request_context_matches": {"headers_X_Zone": {"match_rx": "^(eu)$"}}},
                 "rewrite_to": "/zone/$tyk_context.trigger-3-headers_X_Zone-0/$1"},
            ]}),
        );
        let gold = [("x-tier", "gold"), ("x-block", "yes")];
        assert_eq!(
            apply(&r, "/api/a?region=eu", &gold, None).as_deref(),
            Some("/premium/gold/a?region=eu")
        );
        assert_eq!(
            apply(&r, "/api/a?region=us", &gold, None).as_deref(),
            Some("/default/a?region=us"),
            "all: the query condition fails"
        );
        let meta: [(Box<str>, Box<str>); 1] = [("plan".into(), "trial".into())];
        let blocked = [("x-block", "yes")];
        assert_eq!(
            apply(&r, "/api/a", &blocked, Some(&meta)).as_deref(),
            Some("/trial/a")
        );
        assert_eq!(
            apply(&r, "/api/beta/x", &blocked, None).as_deref(),
            Some("/trial/beta/x")
        );
        assert_eq!(
            apply(&r, "/api/a", &[("x-block", "no")], None).as_deref(),
            Some("/unblocked/a"),
            "reverse"
        );
        assert_eq!(
            apply(&r, "/api/a", &blocked, None).as_deref(),
            Some("/default/a")
        );
        let zone = [("x-block", "yes"), ("x-zone", "eu")];
        assert_eq!(
            apply(&r, "/api/a", &zone, None).as_deref(),
            Some("/zone/eu/a"),
            "a request context variable, captured"
        );
    }

    #[test]
    fn a_payload_trigger_matches_the_body_and_captures_each_match() {
        let r = rewrite(
            json!({"match_pattern": "/api/(.*)", "rewrite_to": "/default/$1",
            "triggers": [
                {"on": "all", "options": {"payload_matches": {"match_rx": "sku=(\\w+)"}},
                 "rewrite_to": "/sku/$tyk_context.trigger-0-payload-0-0/$tyk_context.trigger-0-payload-1-0/$1"},
                {"on": "any", "options": {"payload_matches": {"match_rx": "draft", "reverse": true}},
                 "rewrite_to": "/published/$1"},
            ]}),
        );
        assert!(r.reads_body(false), "a payload is read whatever its type");
        let body = |text: &'static str| Some(text.as_bytes());
        assert_eq!(
            apply_with_body(&r, "/api/o", &[], None, body("sku=a1&sku=b2")).as_deref(),
            Some("/sku/a1/b2/o")
        );
        assert_eq!(
            apply_with_body(&r, "/api/o", &[], None, body("final")).as_deref(),
            Some("/published/o"),
            "reverse: the body does not match"
        );
        assert_eq!(
            apply_with_body(&r, "/api/o", &[], None, body("a draft")).as_deref(),
            Some("/default/o")
        );
        let off = rewrite(json!({"match_pattern": "/api/(.*)", "rewrite_to": "/x/$1",
            "triggers": [{"on": "any", "options": {"payload_matches": {"match_rx": ""}},
                "rewrite_to": "/never"}]}));
        assert!(!off.reads_body(true), "an empty match_rx is no condition");
        let form = rewrite(json!({"match_pattern": "/api/(.*)",
            "rewrite_to": "/x/$tyk_context.request_data_user"}));
        assert!(form.reads_body(true) && !form.reads_body(false));
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        assert_eq!(
            apply_with_body(&form, "/api/o?user=q", &headers, None, body("user=f")).as_deref(),
            Some("/x/f"),
            "a form body's value comes before the query's"
        );
    }

    #[test]
    fn variables_in_a_rewrite_are_query_escaped() {
        let r = rewrite(json!({"match_pattern": "/api/(.*)",
            "rewrite_to": "/x?user=$tyk_meta.name&h=$tyk_context.headers_X_Who"}));
        let meta: [(Box<str>, Box<str>); 1] = [("name".into(), "a b&c".into())];
        assert_eq!(
            apply(&r, "/api/q", &[("x-who", "me/you")], Some(&meta)).as_deref(),
            Some("/x?user=a+b%26c&h=me%2Fyou")
        );
    }

    #[test]
    fn bad_fields_are_load_errors_naming_them() {
        let fail = |fields: Value| {
            let fields: RewriteFields = serde_json::from_value(fields).unwrap();
            UrlRewrite::compile(&fields, "r", &UpstreamTls::default(), &Secrets::default())
                .unwrap_err()
                .field
        };
        assert_eq!(
            fail(json!({"match_pattern": "(", "rewrite_to": "/"})),
            "r.match_pattern"
        );
        assert_eq!(
            fail(json!({"match_pattern": "a", "rewrite_to": "tyk://self/x"})),
            "r.rewrite_to"
        );
        assert_eq!(
            fail(
                json!({"match_pattern": "a", "rewrite_to": "/", "triggers": [
                {"on": "most", "options": {}, "rewrite_to": "/"}]})
            ),
            "r.triggers[0].on"
        );
        assert_eq!(
            fail(
                json!({"match_pattern": "a", "rewrite_to": "/", "triggers": [
                {"on": "any", "options": {"query_val_matches": {"q": {"match_rx": "["}}},
                 "rewrite_to": "/"}]})
            ),
            "r.triggers[0].options.query_val_matches.q.match_rx"
        );
    }

    #[test]
    fn a_rewrite_to_another_host_names_its_target() {
        let r = rewrite(json!({"match_pattern": "/api/(.*)",
            "rewrite_to": "http://other.example:8081/v1/$1"}));
        let rewritten = rewritten(&r, "/api/a", &[], None, None).unwrap().unwrap();
        assert_eq!(rewritten.uri, "/v1/a");
        assert_eq!(&*rewritten.target.unwrap().address, "other.example:8081");
    }
}
