//! tollgate: a Tyk-compatible API gateway.
//!
//! A request flows `server → path → route (api) → pipeline (request stages) → proxy →
//! pipeline (response stages)`; keys live behind the [`store::SessionStore`] trait. See the
//! README for the architecture.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod admin_body;
pub mod analytics;
pub mod api;
pub mod auth;
pub mod batch;
pub mod breaker;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod cors;
pub mod counting;
pub mod domain;
pub mod drill;
pub mod endpoints;
pub mod files;
pub mod gateway;
pub mod guard;
pub mod headers;
pub mod honoured;
pub mod ip_access;
pub mod json_validation;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod path_pattern;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod rejection;
pub mod request_record;
pub mod response;
pub mod rewrite;
pub mod rights;
pub mod server;
pub mod session;
pub mod status;
pub mod store;
pub mod target;
pub mod tls;
pub mod traces;
pub mod tunnel;
pub mod upstream;
pub mod variables;
pub mod version;
