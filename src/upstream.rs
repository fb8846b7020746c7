//! A small httpbin-compatible upstream, used by `tollgate demo`, the tests and the benchmarks,
//! so nothing needs the internet.
//!
//! Answers `/get`, `/post`, `/put`, `/patch`, `/delete`, `/anything[/...]`, `/headers`, `/ip`,
//! `/status/{code}`, `/delay/{secs}`, `/bytes/{n}` and `/response-headers?name=value` with
//! httpbin's JSON shapes, and `/ws`, a WebSocket that echoes every message.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite;

use crate::connection::Peer;
use crate::response::{Body, buffered_response, error_response, json_response};

/// Longest `/delay/{secs}` honoured, as in httpbin.
const MAX_DELAY_SECS: f64 = 10.0;
/// Largest `/bytes/{n}` served.
const MAX_BYTES: usize = 10 * 1024 * 1024;

/// A WebSocket handshake answered with 101, then every text or binary message sent back
/// (tungstenite speaks the protocol); anything else is a 400.
fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").filter(|_| asked) else {
        return error_response(StatusCode::BAD_REQUEST, "not a WebSocket handshake");
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgraded.await else {
            return;
        };
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(io),
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut replies, mut messages) = socket.split();
        while let Some(Ok(message)) = messages.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && replies.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = buffered_response(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Serves the upstream on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let accepting = crate::server::Accepting {
        tls: None,
        max_connections: Semaphore::MAX_PERMITS,
        // h2c with prior knowledge as well, so that HTTP/2 to upstreams can be tried on it.
        http2: true,
        deadlines: crate::connection::Deadlines::DEFAULT,
        metrics: None,
    };
    crate::server::serve(listener, accepting, handle, shutdown).await
}

/// httpbin's `/response-headers`: each query parameter becomes a response header, and the
/// body lists them.
fn response_headers<B>(req: &Request<B>) -> Response<Body> {
    let query = req.uri().query().unwrap_or_default();
    let mut response = json_response(StatusCode::OK, &url_encoded(query.as_bytes()));
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Answers one request the way httpbin would.
pub async fn handle(req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let peer = peer.addr;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let head = segments.next().unwrap_or_default();
    let rest = segments.next();
    match (head, rest, &method) {
        ("get", None, &Method::GET | &Method::HEAD) => echo(req, peer, false, false).await,
        ("post", None, &Method::POST)
        | ("put", None, &Method::PUT)
        | ("patch", None, &Method::PATCH)
        | ("delete", None, &Method::DELETE) => echo(req, peer, true, false).await,
        ("anything", _, _) => echo(req, peer, true, true).await,
        ("headers", None, _) => json_response(StatusCode::OK, &json!({"headers": headers(&req)})),
        ("ws", None, &Method::GET) => websocket_echo(req),
        ("response-headers", None, _) => response_headers(&req),
        ("ip", None, _) => json_response(StatusCode::OK, &json!({"origin": peer.ip().to_string()})),
        ("status", Some(code), _) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => buffered_response(status, Bytes::new()),
            None => error_response(StatusCode::BAD_REQUEST, "invalid status code"),
        },
        ("delay", Some(secs), _) => match secs.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(secs.min(MAX_DELAY_SECS))).await;
                echo(req, peer, true, false).await
            }
            _ => error_response(StatusCode::BAD_REQUEST, "invalid delay"),
        },
        ("bytes", Some(n), _) => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => {
                // Deterministic filler: the content does not matter, only the length.
                let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let mut response = buffered_response(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            _ => error_response(StatusCode::BAD_REQUEST, "invalid byte count"),
        },
        ("get" | "post" | "put" | "patch" | "delete", None, _) => {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        }
        _ => error_response(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// httpbin's request echo: args, headers, origin, url (and data/json/form for bodies).
async fn echo(
    req: Request<Incoming>,
    peer: SocketAddr,
    with_body: bool,
    with_method: bool,
) -> Response<Body> {
    let url = format!(
        "http://{}{}",
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost"),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut out = Map::new();
    out.insert(
        "args".into(),
        url_encoded(req.uri().query().unwrap_or_default().as_bytes()),
    );
    out.insert("headers".into(), headers(&req));
    out.insert("origin".into(), Value::String(peer.ip().to_string()));
    out.insert("url".into(), Value::String(url));
    if with_method {
        out.insert("method".into(), Value::String(req.method().to_string()));
    }
    if with_body {
        let form_encoded = req.headers().get(header::CONTENT_TYPE).is_some_and(|t| {
            t.as_bytes()
                .starts_with(b"application/x-www-form-urlencoded")
        });
        let body = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "body could not be read"),
        };
        let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        // As httpbin: a form body is parsed into `form` and leaves `data` empty.
        let (data, form) = if form_encoded {
            (String::new(), url_encoded(&body))
        } else {
            (String::from_utf8_lossy(&body).into_owned(), json!({}))
        };
        out.insert("data".into(), Value::String(data));
        out.insert("files".into(), json!({}));
        out.insert("form".into(), form);
        out.insert("json".into(), json);
    }
    json_response(StatusCode::OK, &Value::Object(out))
}

/// A query string or form body as httpbin shows it: a repeated name becomes a list.
fn url_encoded(text: &[u8]) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(text) {
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            Some(Value::Array(list)) => list.push(v),
            Some(existing) => *existing = Value::Array(vec![existing.take(), v]),
            None => {
                map.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(map)
}

/// Request headers with httpbin's Title-Case names.
fn headers<B>(req: &Request<B>) -> Value {
    let mut map = Map::new();
    for (name, value) in req.headers() {
        let title = name
            .as_str()
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-");
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(&title) {
            Some(Value::String(prior)) => {
                prior.push(',');
                prior.push_str(&value);
            }
            _ => {
                map.insert(title, Value::String(value));
            }
        }
    }
    Value::Object(map)
}
