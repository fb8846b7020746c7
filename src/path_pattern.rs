//! What Tyk's path patterns share wherever they are matched (endpoint entries, keys'
//! `allowed_urls`): the gateway's matching settings and the anchoring they add (Tyk's
//! `PreparePathRegexp`), and the path after an API's listen path that patterns are also tried
//! on (Tyk's `StripListenPath`); and the patterns that are plain text, matched without a
//! regex search.

use regex_syntax::hir::{Hir, HirKind, Look};

/// How paths match, from the gateway's `tyk.conf`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathMatching {
    /// `ignore_endpoint_case` (endpoint entries only, as in Tyk).
    pub ignore_case: bool,
    /// `http_server_options.enable_path_prefix_matching`: a pattern starting with `/` is
    /// anchored at its start.
    pub prefix: bool,
    /// `http_server_options.enable_path_suffix_matching`: anchored at its end.
    pub suffix: bool,
}

impl PathMatching {
    /// `regex`, made from the Tyk `pattern`, anchored as these settings ask: `^` when the
    /// pattern starts with `/`, `$` unless it already ends with one.
    pub fn anchor(self, pattern: &str, mut regex: String) -> String {
        if self.prefix && pattern.starts_with('/') {
            regex.insert(0, '^');
        }
        if self.suffix && !regex.ends_with('$') {
            regex.push('$');
        }
        regex
    }
}

/// `path` after the listen path `listen_path`; `/` when nothing, or no path segment, follows
/// it.
pub fn after_listen_path<'p>(listen_path: &str, path: &'p str) -> &'p str {
    match path.strip_prefix(listen_path.trim_end_matches('/')) {
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) | None => "/",
    }
}

/// A regex that is plain text, with at most `^` before it and `$` after it (the most common
/// shape of Tyk's path patterns and rewrite patterns): matched by comparing text, as a regex
/// search's setup costs several times the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralPattern {
    text: Box<str>,
    /// `^`: the text starts the haystack.
    start: bool,
    /// `$`: the text ends it.
    end: bool,
}

impl LiteralPattern {
    /// `regex` as plain text, if it is one (flags such as `(?i)`, classes and repetitions are
    /// left to the regex).
    pub fn of(regex: &str) -> Option<Self> {
        Self::of_hir(&regex_syntax::parse(regex).ok()?)
    }

    /// The same, from the regex already parsed.
    pub fn of_hir(hir: &Hir) -> Option<Self> {
        let parts = match hir.kind() {
            HirKind::Concat(parts) => parts.as_slice(),
            _ => std::slice::from_ref(hir),
        };
        let is = |hir: &Hir, look| matches!(hir.kind(), HirKind::Look(l) if *l == look);
        let (start, parts) = match parts.split_first() {
            Some((first, rest)) if is(first, Look::Start) => (true, rest),
            _ => (false, parts),
        };
        let (end, parts) = match parts.split_last() {
            Some((last, rest)) if is(last, Look::End) => (true, rest),
            _ => (false, parts),
        };
        let [only] = parts else {
            return None;
        };
        let HirKind::Literal(literal) = only.kind() else {
            return None;
        };
        let text = std::str::from_utf8(&literal.0).ok()?;
        Some(Self {
            text: text.into(),
            start,
            end,
        })
    }

    /// Whether the regex would match somewhere in `haystack`.
    pub fn is_match(&self, haystack: &str) -> bool {
        let text = &*self.text;
        match (self.start, self.end) {
            (true, true) => haystack == text,
            (true, false) => haystack.starts_with(text),
            (false, true) => haystack.ends_with(text),
            (false, false) => haystack.contains(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_as_tyk_prepares_a_pattern() {
        let both = PathMatching {
            prefix: true,
            suffix: true,
            ..PathMatching::default()
        };
        assert_eq!(both.anchor("/users", "/users".into()), "^/users$");
        assert_eq!(both.anchor("users$", "users$".into()), "users$");
        assert_eq!(
            PathMatching::default().anchor("/users", "/users".into()),
            "/users"
        );
    }

    #[test]
    fn the_path_after_the_listen_path() {
        assert_eq!(after_listen_path("/api/", "/api/users/1"), "/users/1");
        assert_eq!(after_listen_path("/api/", "/api"), "/");
        assert_eq!(after_listen_path("/api/", "/apix/1"), "/");
        assert_eq!(after_listen_path("/", "/users"), "/users");
    }

    #[test]
    fn plain_text_patterns_are_compared_as_the_regex_would_match() {
        let cases = [
            ("^/$", "/", true),
            ("^/$", "/a", false),
            ("^/users", "/users/1", true),
            ("^/users", "/a/users", false),
            ("/users$", "/a/users", true),
            ("/users$", "/users/1", false),
            ("/users", "/a/users/1", true),
            ("/users", "/user", false),
            (r"^/a\.json$", "/a.json", true),
            (r"\A/x\z", "/x", true),
        ];
        for (regex, haystack, matches) in cases {
            let literal = LiteralPattern::of(regex).unwrap_or_else(|| panic!("{regex}"));
            assert_eq!(literal.is_match(haystack), matches, "{regex} on {haystack}");
            let re = regex::Regex::new(regex).unwrap();
            assert_eq!(
                re.is_match(haystack),
                matches,
                "{regex} on {haystack} (regex)"
            );
        }
        for regex in [
            "/a.json",
            "(?i)/users",
            "/users/([^/]+)",
            "^$",
            "/a|/b",
            "(?m)^/a$",
            "/a/*",
        ] {
            assert_eq!(LiteralPattern::of(regex), None, "{regex}");
        }
    }
}
