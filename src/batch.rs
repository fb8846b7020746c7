//! Tyk's batch requests (`enable_batch_request_support`): `POST <listen_path>/tyk/batch/`
//! carries several requests for the API, each answered as if a client had sent it on its own
//! (routed, authorised and limited by its own headers), and the answers come back as one JSON
//! array. This module owns the shapes and their bounds; the gateway (`server`) answers each
//! request.

use std::collections::BTreeMap;

use futures_util::future::{BoxFuture, join_all};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use crate::proxy::ClientBody;
use crate::response::{Body, json_response};
use crate::variables::canonical_header_name;

/// Requests one batch may carry.
pub const MAX_BATCH_REQUESTS: usize = 64;
/// Bytes of a batch request's body.
pub const MAX_BATCH_BODY: u64 = 1024 * 1024;
/// Bytes of each answer's body a reply takes; a larger answer is replied as failed.
pub const MAX_REPLY_BODY: usize = 1024 * 1024;

/// The batch endpoint of an API on `listen_path`, as Tyk's router joins the two.
pub fn endpoint(listen_path: &str) -> String {
    format!("{}/tyk/batch/", listen_path.trim_end_matches('/'))
}

/// Why a batch is refused, with Tyk's messages where Tyk has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("Batch request malformed")]
    Malformed,
    #[error("Batch request malformed: more than {MAX_BATCH_REQUESTS} requests")]
    TooMany,
    #[error("Batch request creation failed , request structure malformed")]
    Creation,
    #[error("Batch requests must be sent with POST")]
    NotPost,
    #[error("Batch requests cannot hold batch requests")]
    Nested,
}

impl BatchError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotPost => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Tyk's `BatchRequestStructure`.
#[derive(Deserialize)]
struct BatchRequest {
    #[serde(default)]
    requests: Option<Vec<RequestDefinition>>,
    #[serde(default)]
    suppress_parallel_execution: bool,
}

/// Tyk's `RequestDefinition`; `null` reads as empty, as Go reads it.
#[derive(Deserialize)]
struct RequestDefinition {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    relative_url: Option<String>,
}

/// Tyk's `BatchReplyUnit`: `headers` as Go's `http.Header` encodes (canonical names, each with
/// its values); a request whose answer could not be taken has code 0 and no headers.
#[derive(Debug, Serialize, PartialEq)]
pub struct Reply {
    pub relative_url: String,
    pub code: u16,
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    pub body: String,
}

/// A batch's requests, built and checked, in the order given.
#[derive(Debug)]
pub struct Batch {
    requests: Vec<(String, Request<ClientBody>)>,
    sequential: bool,
}

impl Batch {
    /// Reads a batch request's `body` for the API on `listen_path`: each request's URL is
    /// `relative_url` under the listen path, as Tyk joins them, and its `Host` is the batch's
    /// own (`host`), so that it routes to the API the batch came to.
    pub fn parse(
        body: &[u8],
        listen_path: &str,
        host: Option<&HeaderValue>,
    ) -> Result<Self, BatchError> {
        let batch: BatchRequest =
            serde_json::from_slice(body).map_err(|_| BatchError::Malformed)?;
        let definitions = batch.requests.unwrap_or_default();
        if definitions.len() > MAX_BATCH_REQUESTS {
            return Err(BatchError::TooMany);
        }
        let prefix = listen_path.trim_matches('/');
        let requests = definitions
            .into_iter()
            .map(|mut definition| {
                let relative_url = definition.relative_url.take().unwrap_or_default();
                let request = build(definition, prefix, &relative_url, host)?;
                Ok((relative_url, request))
            })
            .collect::<Result<_, BatchError>>()?;
        Ok(Self {
            requests,
            sequential: batch.suppress_parallel_execution,
        })
    }

    /// Answers each request with `answer` (together, unless the batch asked for one after
    /// another) and replies with the answers in the order of the requests.
    pub async fn run<'a>(
        self,
        answer: impl Fn(Request<ClientBody>) -> BoxFuture<'a, Response<Body>>,
    ) -> Response<Body> {
        let replies: Vec<Reply> = if self.sequential {
            let mut replies = Vec::with_capacity(self.requests.len());
            for (relative_url, request) in self.requests {
                replies.push(reply(relative_url, answer(request).await).await);
            }
            replies
        } else {
            join_all(self.requests.into_iter().map(|(relative_url, request)| {
                let answered = answer(request);
                async move { reply(relative_url, answered.await).await }
            }))
            .await
        };
        json_response(StatusCode::OK, &replies)
    }
}

/// One request as Tyk's `ConstructRequests` makes it: `GET` for no method; its headers set
/// one value each, except those Go's client sets itself (`Host`, `Content-Length`,
/// `Transfer-Encoding`).
fn build(
    definition: RequestDefinition,
    prefix: &str,
    relative_url: &str,
    host: Option<&HeaderValue>,
) -> Result<Request<ClientBody>, BatchError> {
    let method = match definition.method.as_deref() {
        None | Some("") => Method::GET,
        Some(method) => Method::from_bytes(method.as_bytes()).map_err(|_| BatchError::Creation)?,
    };
    let path = if prefix.is_empty() {
        format!("/{relative_url}")
    } else {
        format!("/{prefix}/{relative_url}")
    };
    let uri: Uri = path.parse().map_err(|_| BatchError::Creation)?;
    if uri.authority().is_some() || uri.scheme().is_some() {
        return Err(BatchError::Creation);
    }
    let body = definition.body.unwrap_or_default();
    let length = body.len();
    let mut request = Request::new(ClientBody::Read((length > 0).then(|| body.into())));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    for (name, value) in definition.headers.unwrap_or_default() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| BatchError::Creation)?;
        let value = HeaderValue::from_str(&value).map_err(|_| BatchError::Creation)?;
        if name != header::HOST
            && name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
        {
            headers.insert(name, value);
        }
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
    }
    let sends_length = length > 0
        || matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH
        );
    if sends_length {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(request)
}

/// The reply for one answer, its body taken whole (up to [`MAX_REPLY_BODY`]) as text.
async fn reply(relative_url: String, answer: Response<Body>) -> Reply {
    let (parts, body) = answer.into_parts();
    match Limited::new(body, MAX_REPLY_BODY).collect().await {
        Ok(read) => Reply {
            relative_url,
            code: parts.status.as_u16(),
            headers: Some(go_header(&parts.headers)),
            body: String::from_utf8_lossy(&read.to_bytes()).into_owned(),
        },
        Err(e) => {
            tracing::warn!(relative_url, "a batch request's answer was not taken: {e}");
            Reply {
                relative_url,
                code: 0,
                headers: None,
                body: String::new(),
            }
        }
    }
}

/// Headers as Go's `http.Header`: canonical names, each with its values in order.
fn go_header(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        map.entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn parse(body: &str) -> Result<Batch, BatchError> {
        Batch::parse(
            body.as_bytes(),
            "/api/",
            Some(&HeaderValue::from_static("gw.example")),
        )
    }

    #[test]
    fn the_endpoint_is_under_the_listen_path() {
        assert_eq!(endpoint("/api/"), "/api/tyk/batch/");
        assert_eq!(endpoint("/api"), "/api/tyk/batch/");
        assert_eq!(endpoint("/"), "/tyk/batch/");
    }

    #[test]
    fn requests_are_built_as_tyk_builds_them() {
        let batch = parse(
            r#"{"requests": [
                {"method": "POST", "relative_url": "post?a=1", "body": "hi",
                 "headers": {"authorization": "k", "Host": "evil", "content-length": "99"}},
                {"relative_url": "get", "headers": null}
            ], "suppress_parallel_execution": true}"#,
        )
        .unwrap();
        assert!(batch.sequential);
        let (url, post) = &batch.requests[0];
        assert_eq!(url, "post?a=1");
        assert_eq!(post.method(), Method::POST);
        assert_eq!(post.uri(), "/api/post?a=1");
        assert_eq!(post.headers()["authorization"], "k");
        assert_eq!(post.headers()["host"], "gw.example");
        assert_eq!(post.headers()["content-length"], "2");
        let (_, get) = &batch.requests[1];
        assert_eq!(get.method(), Method::GET);
        assert_eq!(get.uri(), "/api/get");
        assert!(get.headers().get("content-length").is_none());
    }

    #[test]
    fn bad_batches_are_refused_with_tyks_messages() {
        assert_eq!(parse("not json").unwrap_err(), BatchError::Malformed);
        assert_eq!(
            parse(r#"{"requests": {}}"#).unwrap_err(),
            BatchError::Malformed
        );
        let bad_method = r#"{"requests": [{"method": "G T", "relative_url": "x"}]}"#;
        assert_eq!(parse(bad_method).unwrap_err(), BatchError::Creation);
        let bad_url = r#"{"requests": [{"relative_url": "a b"}]}"#;
        assert_eq!(parse(bad_url).unwrap_err(), BatchError::Creation);
        let bad_header = r#"{"requests": [{"relative_url": "x", "headers": {"a b": "1"}}]}"#;
        assert_eq!(parse(bad_header).unwrap_err(), BatchError::Creation);
        let many = format!(
            r#"{{"requests": [{}]}}"#,
            vec![r#"{"relative_url": "x"}"#; MAX_BATCH_REQUESTS + 1].join(",")
        );
        assert_eq!(parse(&many).unwrap_err(), BatchError::TooMany);
        assert!(parse(&many.replacen(r#"{"relative_url": "x"},"#, "", 1)).is_ok());
        assert!(parse("{}").unwrap().requests.is_empty());
    }

    #[tokio::test]
    async fn replies_keep_the_order_of_the_requests_and_gos_header_shape() {
        let batch =
            parse(r#"{"requests": [{"relative_url": "a"}, {"relative_url": "b"}]}"#).unwrap();
        let response = batch
            .run(|request| {
                Box::pin(async move {
                    let mut response = Response::new(http_body_util::Either::Right(Full::new(
                        request.uri().path().to_owned().into(),
                    )));
                    response
                        .headers_mut()
                        .append("x-tyk-thing", HeaderValue::from_static("1"));
                    response
                        .headers_mut()
                        .append("x-tyk-thing", HeaderValue::from_static("2"));
                    response
                })
            })
            .await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let replies: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            replies,
            serde_json::json!([
                {"relative_url": "a", "code": 200, "headers": {"X-Tyk-Thing": ["1", "2"]}, "body": "/api/a"},
                {"relative_url": "b", "code": 200, "headers": {"X-Tyk-Thing": ["1", "2"]}, "body": "/api/b"},
            ])
        );
    }
}
