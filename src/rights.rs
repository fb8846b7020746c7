//! Tyk's granular access: a key's `access_rights[api].allowed_urls`, compiled once when its
//! record is decoded and matched on every request, as Tyk's `GranularAccessMiddleware` does.
//!
//! An entry is `{"url": <pattern>, "methods": [...]}`. The pattern is Tyk's: `{name}` stands
//! for one path segment, `/*` for the rest of the path, anything else is a regular expression,
//! matched unanchored against the whole request path (listen path included). The method must
//! be one of `methods`, exactly; an entry without methods allows nothing.

use std::hash::{Hash, Hasher};

use regex::Regex;
use serde::{Deserialize, Deserializer};

/// One `allowed_urls` entry.
#[derive(Debug, Clone)]
pub struct UrlRight {
    pattern: Box<str>,
    methods: Box<[Box<str>]>,
    /// `None` when the pattern is not a valid expression: it then matches nothing, as in Tyk.
    regex: Option<Regex>,
}

impl UrlRight {
    pub fn new(pattern: &str, methods: Vec<String>) -> Self {
        let regex = Regex::new(&tyk_pattern(pattern)).ok();
        if regex.is_none() {
            tracing::warn!("allowed_urls: {pattern:?} is not a valid pattern; it allows nothing");
        }
        Self {
            pattern: pattern.into(),
            methods: methods.into_iter().map(String::into_boxed_str).collect(),
            regex,
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

    /// Whether this entry lets `method` call `path`.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        self.methods.iter().any(|m| &**m == method)
            && self.regex.as_ref().is_some_and(|r| r.is_match(path))
    }
}

/// Whether `rights` (a key's `allowed_urls` for one API) let `method` call `path`: an empty
/// list restricts nothing.
pub fn allowed(rights: &[UrlRight], method: &str, path: &str) -> bool {
    rights.is_empty() || rights.iter().any(|r| r.allows(method, path))
}

/// Tyk's `PreparePathRegexp` without prefix or suffix matching (its defaults): `{name}` is one
/// segment, `/*/` one segment, a final `/*` the rest.
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

    #[test]
    fn patterns_and_methods_as_tyk_matches_them() {
        let user = right("/users/{id}$", &["GET"]);
        assert!(user.allows("GET", "/api/users/42"));
        assert!(!user.allows("POST", "/api/users/42"), "method");
        assert!(!user.allows("GET", "/api/users/42/orders"), "one segment");
        assert!(
            !user.allows("get", "/api/users/42"),
            "methods match exactly"
        );
        let any = right("/orders/*", &["GET", "POST"]);
        assert!(any.allows("POST", "/api/orders/1/items"));
        let unanchored = right("status", &["GET"]);
        assert!(unanchored.allows("GET", "/api/v1/status/all"));
        assert!(!right("/x", &[]).allows("GET", "/x"), "no methods: nothing");
        assert!(
            !right("/x(", &["GET"]).allows("GET", "/x("),
            "invalid: nothing"
        );
        assert!(allowed(&[], "DELETE", "/anything"));
        assert!(!allowed(&[user], "GET", "/api/other"));
    }
}
