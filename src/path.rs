//! The request path as it is routed, authorised and forwarded: one and the same text.
//!
//! Dot segments (`.` and `..`, and their percent-encoded forms `%2e`) are resolved as RFC 3986
//! §5.2.4 resolves them, before anything reads the path, so that an upstream that resolves
//! them itself cannot be reached on a path other than the one tollgate routed. Encoded slashes
//! (`%2F`) and backslashes are kept as they are, part of their segment; a segment in which one
//! of them sets off a dot segment (`..%2F`, `%2e%2e%5c`) is refused, as an upstream that
//! decodes them would see a `..` that tollgate did not.

use http::Uri;
use http::uri::PathAndQuery;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{}", self.message())]
    HiddenDotSegment,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            Self::HiddenDotSegment => "Request path has a dot segment behind an encoded slash",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    One,
    Two,
}

/// The path with its dot segments resolved: `Ok(None)` when it has none (nearly every
/// request, found without allocating), `Ok(Some(path))` otherwise.
pub fn normalize(path: &str) -> Result<Option<String>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        // `*` (OPTIONS) and the like: nothing to resolve.
        return Ok(None);
    };
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(None);
    }
    let mut any_dot = false;
    for segment in rest.split('/') {
        if dot_kind(segment).is_some() {
            any_dot = true;
        } else if hides_dot_segment(segment) {
            return Err(PathError::HiddenDotSegment);
        }
    }
    if !any_dot {
        return Ok(None);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match dot_kind(segment) {
            Some(dot) => {
                if dot == Dot::Two {
                    out.pop();
                }
                // `/a/..` is `/`, `/a/b/.` is `/a/b/`: a final dot segment leaves a slash.
                if i == last {
                    out.push("");
                }
            }
            None => out.push(segment),
        }
    }
    Ok(Some(format!("/{}", out.join("/"))))
}

/// `uri` with `path` and `query` in place of its own (scheme and authority kept), or `None`
/// when they do not make a URI.
pub fn with_path_and_query(uri: &Uri, path: String, query: Option<&str>) -> Option<Uri> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(text).ok()?);
    Uri::from_parts(parts).ok()
}

/// `.` or `..`, each dot plain or as `%2e` / `%2E`.
fn dot_kind(segment: &str) -> Option<Dot> {
    let mut dots = 0;
    let mut bytes = segment.as_bytes();
    while !bytes.is_empty() {
        if bytes[0] == b'.' {
            bytes = &bytes[1..];
        } else if bytes.len() >= 3
            && bytes[0] == b'%'
            && bytes[1] == b'2'
            && bytes[2] | 0x20 == b'e'
        {
            bytes = &bytes[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    match dots {
        1 => Some(Dot::One),
        2 => Some(Dot::Two),
        _ => None,
    }
}

/// Whether an encoded slash or a backslash inside `segment` sets off a dot segment.
fn hides_dot_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let separator = if bytes[i] == b'\\' {
            1
        } else if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && (bytes[i + 1] == b'2' && bytes[i + 2] | 0x20 == b'f'
                || bytes[i + 1] == b'5' && bytes[i + 2] | 0x20 == b'c')
        {
            3
        } else {
            0
        };
        if separator > 0 {
            pieces.push(&segment[start..i]);
            i += separator;
            start = i;
        } else {
            i += 1;
        }
    }
    if pieces.is_empty() {
        return false;
    }
    pieces.push(&segment[start..]);
    pieces.into_iter().any(|p| dot_kind(p).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize(path).unwrap().unwrap_or_else(|| path.to_owned())
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_says() {
        for (given, resolved) in [
            ("/get", "/get"),
            ("/a/b.json", "/a/b.json"),
            ("/public/../private/secret", "/private/secret"),
            ("/public/%2e%2e/private/secret", "/private/secret"),
            ("/public/.%2E/private", "/private"),
            ("/tyk-api-test/../tyk/keys", "/tyk/keys"),
            ("/../../x", "/x"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a//../b", "/a/b"),
            ("/a/...", "/a/..."),
            ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
            ("/a%2eb/c", "/a%2eb/c"),
            ("/a%2Fb", "/a%2Fb"),
            ("*", "*"),
        ] {
            assert_eq!(normal(given), resolved, "{given}");
        }
        assert_eq!(normalize("/plain/path"), Ok(None));
    }

    #[test]
    fn a_dot_segment_behind_an_encoded_slash_is_refused() {
        for path in [
            "/public/..%2fprivate/secret",
            "/public/%2e%2e%2fprivate",
            "/public/x%2F..",
            "/public/..%5Cprivate",
            "/public/..\\private",
            "/public/.%2fprivate",
        ] {
            assert_eq!(normalize(path), Err(PathError::HiddenDotSegment), "{path}");
        }
        assert_eq!(
            normalize("/a%2Fb%2Fc"),
            Ok(None),
            "encoded slashes alone are kept"
        );
    }
}
