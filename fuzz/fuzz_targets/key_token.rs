//! A key as requests carry it (header, `Bearer`, query parameter, cookie) and what the hasher
//! makes of it (the stored id, the token it may be stored as): bounded, never a panic.
#![no_main]

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::auth::{KeyHasher, KeySource, extract_key};

fuzz_target!(|data: &[u8]| {
    // header value, then query, then cookie, split by NUL bytes.
    let mut fields = data.splitn(3, |b| *b == 0);
    let header = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let cookie = fields.next().unwrap_or_default();
    let mut request = Request::builder();
    if let Ok(value) = HeaderValue::from_bytes(header) {
        request = request.header("authorization", value);
    }
    if let Ok(value) = HeaderValue::from_bytes(cookie) {
        request = request.header("cookie", value);
    }
    let query = String::from_utf8_lossy(query);
    let uri = format!("/api/?{}", query.replace(['#', ' '], ""));
    let Ok(request) = request.uri(uri).body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let source = KeySource {
        header: HeaderName::from_static("authorization"),
        param: Some("key".into()),
        cookie: Some("auth".into()),
    };
    if let Ok(key) = extract_key(&source, &parts) {
        assert!(key.len() <= tollgate::auth::MAX_KEY_LEN);
        for hasher in [
            KeyHasher::new(true, "murmur64"),
            KeyHasher::new(true, "sha256"),
            KeyHasher::new(false, ""),
        ] {
            let _ = hasher.storage_id(key);
            let _ = hasher.candidates("default", key);
            let _ = hasher.token("default", key);
        }
    }
    source.strip(&mut parts, "auth");
    assert!(parts.headers.get("authorization").is_none());
});
