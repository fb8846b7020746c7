//! What the node's own endpoints (the Gateway API, the status page) take as a request body,
//! and how long it may take to arrive.

use std::time::Duration;

use bytes::Bytes;

/// Time an admin request body may take to arrive, from its request's head.
pub const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body the node's own endpoints read: hyper's, or any other body of bytes (as in
/// the fuzz targets, which call `admin::handle` without a connection).
pub trait AdminBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Unpin
{
}

impl<B> AdminBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Unpin
{
}
