//! The live status page at `/status`, served by the node itself (nothing fetched from
//! elsewhere): the store as this node sees it (mode, master, replicas, sentinels, the last
//! master changes), each API's request rate and status mix as small live charts, and the
//! cache and limiter figures, read from `/status/data` twice a second.
//!
//! Guarded like the Gateway API: the secret is entered once in a form and the node answers
//! with a token in an `HttpOnly`, `SameSite=Strict` cookie; the data answers only to that
//! cookie and only to same-origin requests.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::admin_body::{ADMIN_BODY_TIMEOUT, AdminBody};
use crate::gateway::{Gateway, secret_matches};
use crate::response::{Body, buffered_response, json_response};

const PAGE: &str = include_str!("status_page.html");
const SCRIPT: &str = include_str!("status_page.js");
const COOKIE: &str = "tollgate_status";
/// The login form's body at most.
const MAX_LOGIN_BODY: usize = 4096;

/// Whether `path` is the status page's.
pub fn owns(path: &str) -> bool {
    path == "/status" || path.starts_with("/status/")
}

/// Answers the status page's requests.
pub async fn handle(gw: &Gateway, req: Request<impl AdminBody>) -> Response<Body> {
    let signed_in = signed_in(gw, &req);
    match (req.uri().path(), req.method()) {
        ("/status", &Method::GET) if signed_in => page(PAGE, "text/html; charset=utf-8"),
        ("/status", &Method::GET) => login_form(StatusCode::OK, ""),
        ("/status/app.js", &Method::GET) if signed_in => {
            page(SCRIPT, "text/javascript; charset=utf-8")
        }
        ("/status/login", &Method::POST) => login(gw, req).await,
        ("/status/data", &Method::GET) if signed_in && same_origin(&req) => {
            let mut response = json_response(StatusCode::OK, &data(gw).await);
            no_store(response.headers_mut());
            response
        }
        ("/status/data" | "/status/app.js", &Method::GET) => json_response(
            StatusCode::FORBIDDEN,
            &json!({"status": "error", "message": "sign in at /status first (same origin only)"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"status": "error", "message": "Not Found"}),
        ),
    }
}

/// The cookie holds this node's status token.
fn signed_in<B>(gw: &Gateway, req: &Request<B>) -> bool {
    let token = gw.status_token.as_bytes();
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && bool::from(value.as_bytes().ct_eq(token)))
}

/// A browser marks a request from another site's page (`Sec-Fetch-Site`, or an `Origin`
/// that is not the page's host): the data is not for it.
fn same_origin<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("same-origin");
    let origin_ok = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.as_bytes() == host.as_bytes()),
        (Some(_), None) => false,
        (None, _) => true,
    };
    matches!(site, "same-origin" | "none") && origin_ok
}

/// The secret from the form, checked; right: the cookie and back to the page.
async fn login(gw: &Gateway, req: Request<impl AdminBody>) -> Response<Body> {
    if !same_origin(&req) {
        return login_form(
            StatusCode::FORBIDDEN,
            "Sign in from the status page itself.",
        );
    }
    let collected = Limited::new(req.into_body(), MAX_LOGIN_BODY).collect();
    let body = match tokio::time::timeout(ADMIN_BODY_TIMEOUT, collected).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => return login_form(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
        Err(_) => {
            return login_form(
                StatusCode::REQUEST_TIMEOUT,
                "The form did not arrive in time.",
            );
        }
    };
    let secret = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "secret")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if !secret_matches(&gw.config.secret, secret.as_bytes()) {
        return login_form(StatusCode::FORBIDDEN, "That is not the gateway's secret.");
    }
    let mut response = buffered_response(StatusCode::SEE_OTHER, "");
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/status"));
    let cookie = format!(
        "{COOKIE}={}; Path=/status; HttpOnly; SameSite=Strict",
        gw.status_token
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    no_store(headers);
    response
}

fn login_form(status: StatusCode, message: &str) -> Response<Body> {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{message}</p>")
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tollgate status</title>\
         </head><body style=\"font-family: sans-serif; margin: 3em\"><h1>tollgate status</h1>\
         {note}<form method=\"post\" action=\"/status/login\"><label>Gateway secret \
         <input type=\"password\" name=\"secret\" autofocus></label> \
         <button type=\"submit\">Sign in</button></form></body></html>"
    );
    let mut response = page_owned(html, "text/html; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn page(text: &'static str, content_type: &'static str) -> Response<Body> {
    page_owned(text.to_owned(), content_type)
}

fn page_owned(text: String, content_type: &'static str) -> Response<Body> {
    let mut response = buffered_response(StatusCode::OK, text);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Nothing but the node itself: its own script and styles, in no other site's frame.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with the latter a browser sends the form's post with
    // `Origin: null`, which the origin check then refuses.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    no_store(headers);
    response
}

fn no_store(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// What the page shows, now.
async fn data(gw: &Gateway) -> Value {
    let health = gw.sessions.health().await;
    let stats = gw.sessions.stats();
    let (leases, pending) = gw.limiter.figures();
    let apis: Vec<Value> = gw
        .metrics
        .by_class()
        .into_iter()
        .map(|(api_id, classes)| {
            json!({
                "api_id": api_id,
                "requests": classes.iter().sum::<u64>(),
                "classes": {"1xx": classes[0], "2xx": classes[1], "3xx": classes[2],
                            "4xx": classes[3], "5xx": classes[4]},
            })
        })
        .collect();
    json!({
        "time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        "version": env!("CARGO_PKG_VERSION"),
        "connections": gw.metrics.connections.load(std::sync::atomic::Ordering::Relaxed),
        "store": {
            "mode": health.mode,
            "reachable": health.reachable,
            "master": health.details.get("master").cloned().unwrap_or(Value::Null),
            "replicas": health.details.get("replicas").cloned().unwrap_or(json!([])),
            "sentinels": gw.config.storage.addrs,
            "master_changes": stats.failovers,
            "history": health.details.get("master_history").cloned().unwrap_or(json!([])),
            "last_error": health.details.get("last_error").cloned().unwrap_or(Value::Null),
            "round_trips": stats.round_trips,
            "replica_reads": stats.replica_reads,
            "unconfirmed_writes": stats.unconfirmed_writes,
        },
        "cache": stats.cache.map(|c| json!({
            "hits": c.hits, "misses": c.misses, "stale_serves": c.stale_serves,
            "entries": c.entries,
        })),
        "limiter": {"leases": leases, "pending_quota": pending},
        "apis": apis,
    })
}
