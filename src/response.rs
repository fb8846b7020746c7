//! The answers the gateway makes itself: the body type every response has, JSON bodies, and
//! Tyk's error shapes.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::proxy::UpstreamBody;

/// Every response body: a streamed upstream body or a small buffered one.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// A response with `status` and a buffered `body`, no headers.
pub fn buffered_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

/// A JSON response with a buffered body. Serialising writes stored JSON through as it is, so
/// it does not fail on what the store holds; should it fail, the answer is a 500 saying so.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            tracing::error!("response body could not be written as JSON: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"status":"error","message":"response could not be encoded"}"#.to_vec(),
            )
        }
    };
    let mut response = buffered_response(status, bytes);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Tyk's answer to a path no API listens on: its router's plain `Not Found`.
pub fn not_found() -> Response<Body> {
    plain_response(StatusCode::NOT_FOUND, "Not Found")
}

/// A plain-text answer, as Tyk gives before its middleware runs.
pub fn plain_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = buffered_response(status, text.as_bytes());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Tyk's gateway error body: `{"error": "..."}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Tyk's Gateway API error body (also its batch endpoint's): `{"status": "error", "message": "..."}`.
pub fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"status": "error", "message": message}),
    )
}
