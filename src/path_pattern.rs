//! What Tyk's path patterns share wherever they are matched (endpoint entries, keys'
//! `allowed_urls`): the gateway's matching settings and the anchoring they add (Tyk's
//! `PreparePathRegexp`), and the path after an API's listen path that patterns are also tried
//! on (Tyk's `StripListenPath`).

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
}
