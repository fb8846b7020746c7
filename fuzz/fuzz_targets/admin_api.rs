//! The Gateway API (`/tyk/keys`, `/tyk/apis`, `/tyk/policies`, `/tyk/reload`) and the probes
//! and status page beside it, on one in-memory node: the first byte picks the method, the
//! text up to a newline is the path and query, the rest the body. Every answer is an HTTP
//! response with a JSON (or the status page's) body, never a panic, and the node still
//! answers its health check after any request.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tollgate::admin;
use tollgate::config::GatewayConfig;
use tollgate::gateway::Gateway;
use tollgate::store::memory::MemoryStore;

const SECRET: &str = "fuzz-secret";

struct Node {
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    _dir: tempfile::TempDir,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (apps, policies) = (dir.path().join("apps"), dir.path().join("policies"));
        std::fs::create_dir_all(&apps).expect("apps dir");
        std::fs::create_dir_all(&policies).expect("policies dir");
        let config = serde_json::json!({
            "secret": SECRET,
            "app_path": apps,
            "policies": {"policy_source": "file", "policy_path": policies},
            "storage": {"type": "memory"},
        });
        let loaded = GatewayConfig::from_value(config, |_| None).expect("the fuzz node's config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let gateway = runtime
            .block_on(async { Gateway::new(loaded.config, Arc::new(MemoryStore::new())) })
            .expect("the fuzz node");
        Node {
            runtime,
            gateway,
            _dir: dir,
        }
    })
}

async fn call(gateway: &Arc<Gateway>, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let response = admin::handle(gateway, request).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let uri = format!("/tyk/{}", target.trim_start_matches('/'));
    let Ok(request) = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-tyk-authorization", SECRET)
        .body(Full::new(Bytes::copy_from_slice(body)))
    else {
        return;
    };
    let node = node();
    node.runtime.block_on(async {
        let (status, body) = call(&node.gateway, request).await;
        if !body.is_empty() && !body.starts_with(b"<") {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                "{status}: not JSON: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let hello = Request::get("/hello")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let (status, _) = call(&node.gateway, hello).await;
        assert_eq!(status, StatusCode::OK, "the node no longer answers /hello");
    });
});
