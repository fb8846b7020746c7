//! Tyk's granular access: a key's `access_rights[api].allowed_urls`, compiled once when its
//! record is decoded and matched on every request, as Tyk's `GranularAccessMiddleware` does.
//!
//! An entry is `{"url": <pattern>, "methods": [...]}`. The pattern is Tyk's: `{name}` stands
//! for one path segment, `/*` for the rest of the path, anything else is a regular expression,
//! matched unanchored against the whole request path (listen path included); with the
//! gateway's prefix matching, anchored at its start and tried on the path after the listen
//! path too; with its suffix matching, anchored at its end. The method must be one of
//! `methods`, exactly; an entry without methods allows nothing. A pattern that is plain text
//! is compared as text (see `path_pattern`), with the same answers.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Deserializer};

use crate::path_pattern::{LiteralPattern, PathMatching, after_listen_path};

/// One `allowed_urls` entry.
#[derive(Debug, Clone)]
pub struct UrlRight {
    pattern: Box<str>,
    methods: Box<[Box<str>]>,
    /// `None` when the pattern is not a valid expression: it then matches nothing, as in Tyk.
    matcher: Option<Matcher>,
    /// The pattern anchored as the gateway's path matching asks (prefix, suffix, both),
    /// compiled when first asked for: most gateways use none of them.
    anchored: [OnceLock<Option<Matcher>>; 3],
}

/// A compiled pattern: compared as text when it is plain text, else searched.
#[derive(Debug, Clone)]
enum Matcher {
    Text(LiteralPattern),
    Regex(Regex),
}

impl Matcher {
    /// `None` when `regex` is not a valid expression.
    fn new(regex: &str) -> Option<Self> {
        match LiteralPattern::of(regex) {
            Some(text) => Some(Self::Text(text)),
            None => Regex::new(regex).ok().map(Self::Regex),
        }
    }

    fn is_match(&self, path: &str) -> bool {
        match self {
            Self::Text(text) => text.is_match(path),
            Self::Regex(regex) => regex.is_match(path),
        }
    }
}

/// A request's path as rights are matched against it.
#[derive(Debug, Clone, Copy)]
pub struct RequestPath<'a> {
    /// Listen path included, after dot segments are resolved and the version stripped.
    pub whole: &'a str,
    /// The API's: with prefix matching, the path after it is tried too, as Tyk does.
    pub listen_path: &'a str,
}

impl UrlRight {
    pub fn new(pattern: &str, methods: Vec<String>) -> Self {
        let matcher = Matcher::new(&tyk_pattern(pattern));
        if matcher.is_none() {
            tracing::warn!("allowed_urls: {pattern:?} is not a valid pattern; it allows nothing");
        }
        Self {
            pattern: pattern.into(),
            methods: methods.into_iter().map(String::into_boxed_str).collect(),
            matcher,
            anchored: Default::default(),
        }
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// This entry with the methods of `other` added (same pattern).
    pub fn with_methods_of(&self, other: &UrlRight) -> Self {
        let mut methods = self.methods.to_vec();
        for m in other.methods.iter() {
            if !methods.contains(m) {
                methods.push(m.clone());
            }
        }
        Self {
            methods: methods.into_boxed_slice(),
            ..self.clone()
        }
    }

    /// Whether this entry lets `method` call `path`, matched as `matching` says (Tyk's
    /// `GranularAccessMiddleware`).
    pub fn allows(&self, method: &str, path: RequestPath<'_>, matching: PathMatching) -> bool {
        if !self.methods.iter().any(|m| &**m == method) {
            return false;
        }
        let Some(matcher) = self.matcher_for(matching) else {
            return false;
        };
        matcher.is_match(path.whole)
            || (matching.prefix
                && matcher.is_match(after_listen_path(path.listen_path, path.whole)))
    }

    fn matcher_for(&self, matching: PathMatching) -> Option<&Matcher> {
        let slot = match (matching.prefix, matching.suffix) {
            (false, false) => return self.matcher.as_ref(),
            (true, false) => 0,
            (false, true) => 1,
            (true, true) => 2,
        };
        self.anchored[slot]
            .get_or_init(|| {
                Matcher::new(&matching.anchor(&self.pattern, tyk_pattern(&self.pattern)))
            })
            .as_ref()
    }
}

/// Whether `rights` (a key's `allowed_urls` for one API) let `method` call `path`: an empty
/// list restricts nothing.
pub fn allowed(
    rights: &[UrlRight],
    method: &str,
    path: RequestPath<'_>,
    matching: PathMatching,
) -> bool {
    rights.is_empty() || rights.iter().any(|r| r.allows(method, path, matching))
}

/// Tyk's `PreparePathRegexp` before anchoring: `{name}` is one segment, `/*/` one segment, a
/// final `/*` the rest.
fn tyk_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(&rest[..open]);
                out.push_str("([^/]+)");
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("/*/", "/[^/]+/").replace("/*", "/.*")
}

impl PartialEq for UrlRight {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.methods == other.methods
    }
}

impl Hash for UrlRight {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.methods.hash(state);
    }
}

impl<'de> Deserialize<'de> for UrlRight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            url: String,
            #[serde(default)]
            methods: Option<Vec<String>>,
        }
        let spec = Spec::deserialize(deserializer)?;
        Ok(Self::new(&spec.url, spec.methods.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn right(url: &str, methods: &[&str]) -> UrlRight {
        UrlRight::new(url, methods.iter().map(|m| m.to_string()).collect())
    }

    /// `path` of an API listening on `/api/`.
    fn at(path: &str) -> RequestPath<'_> {
        RequestPath {
            whole: path,
            listen_path: "/api/",
        }
    }

    fn allows(right: &UrlRight, method: &str, path: &str) -> bool {
        right.allows(method, at(path), PathMatching::default())
    }

    #[test]
    fn patterns_and_methods_as_tyk_matches_them() {
        let user = right("/users/{id}$", &["GET"]);
        assert!(allows(&user, "GET", "/api/users/42"));
        assert!(!allows(&user, "POST", "/api/users/42"), "method");
        assert!(!allows(&user, "GET", "/api/users/42/orders"), "one segment");
        assert!(
            !allows(&user, "get", "/api/users/42"),
            "methods match exactly"
        );
        let any = right("/orders/*", &["GET", "POST"]);
        assert!(allows(&any, "POST", "/api/orders/1/items"));
        let unanchored = right("status", &["GET"]);
        assert!(matches!(unanchored.matcher, Some(Matcher::Text(_))));
        assert!(allows(&unanchored, "GET", "/api/v1/status/all"));
        assert!(!allows(&unanchored, "GET", "/api/v1/stat"));
        let root = right("/api/$", &["GET"]);
        assert!(allows(&root, "GET", "/api/") && !allows(&root, "GET", "/api/x"));
        assert!(
            !allows(&right("/x", &[]), "GET", "/x"),
            "no methods: nothing"
        );
        assert!(
            !allows(&right("/x(", &["GET"]), "GET", "/x("),
            "invalid: nothing"
        );
        assert!(allowed(
            &[],
            "DELETE",
            at("/anything"),
            PathMatching::default()
        ));
        assert!(!allowed(
            &[user],
            "GET",
            at("/api/other"),
            PathMatching::default()
        ));
    }

    #[test]
    fn prefix_and_suffix_matching_anchor_the_pattern_as_tyk_does() {
        let get = right("/get", &["GET"]);
        let (prefix, suffix) = (
            PathMatching {
                prefix: true,
                ..PathMatching::default()
            },
            PathMatching {
                suffix: true,
                ..PathMatching::default()
            },
        );
        let check = |path, matching| get.allows("GET", at(path), matching);
        // Prefix: anchored at the start, tried on the path after the listen path too.
        assert!(check("/api/get", prefix));
        assert!(check("/api/get/more", prefix));
        assert!(!check("/api/anything/get", prefix));
        assert!(check("/api/anything/get", PathMatching::default()));
        // Suffix: anchored at the end, on the whole path.
        assert!(check("/api/anything/get", suffix));
        assert!(!check("/api/get/more", suffix));
    }
}
