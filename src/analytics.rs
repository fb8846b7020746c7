//! Tyk's analytics for Tyk Pump (`enable_analytics`): a record per request an API answered,
//! in Pump's `AnalyticsRecord` encoded as the gateway encodes it (msgpack, a map keyed by the
//! Go struct's field names, times as `[unix seconds, nanoseconds]`), pushed to Tyk's Redis
//! list (`analytics-tyk-system-analytics`, or one of ten with
//! `enable_multiple_analytics_keys`) for Pump to drain.
//!
//! Records wait in a bounded queue (`records_buffer_size`) and are encoded and written in
//! batches by a task of their own, off the request path. A record that finds the queue full,
//! or whose batch the store could not take (Redis away), is dropped and counted: a request
//! never waits for analytics.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AnalyticsConfig;
use crate::request_record::RequestRecord;
use crate::store::SessionStore;

/// Tyk's list, under the analytics store's `analytics-` prefix.
pub const ANALYTICS_KEY: &str = "analytics-tyk-system-analytics";

/// Records written to the store in one command at most.
const BATCH: usize = 500;

/// How long a record may wait for others to fill its batch (Tyk's flush interval).
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// An analytics record's expiry when the API sets none (`expire_analytics_after: 0`): 100
/// years, as Pump's `SetExpiry` has it.
const NEVER_EXPIRES: i64 = 100 * 365 * 24 * 3600;

/// What one record needs beyond the request: the API's settings.
#[derive(Debug, Clone, Default)]
pub struct ApiAnalytics {
    /// The API's `tags`.
    pub tags: Vec<String>,
    /// `expire_analytics_after`: seconds a record is kept by Pump's sinks (0: 100 years).
    pub expire_after: i64,
    /// `enable_detailed_recording` (or the gateway's).
    pub detailed: bool,
}

/// A record queued: the request and its API's settings.
#[derive(Debug)]
pub struct Queued {
    pub request: Box<RequestRecord>,
    pub api: Arc<ApiAnalytics>,
}

/// The analytics queue and its writer's counts.
pub struct Analytics {
    queue: mpsc::Sender<Queued>,
    ignored: Box<[IpAddr]>,
    counts: Arc<Counts>,
    detailed: bool,
}

#[derive(Default)]
struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
}

impl Analytics {
    /// Starts the writer, which pushes to `store`; `config` is tyk.conf's `analytics_config`.
    /// Must run inside the runtime.
    pub fn start(config: &AnalyticsConfig, store: Arc<dyn SessionStore>) -> Self {
        let capacity = usize::try_from(config.records_buffer_size)
            .unwrap_or(usize::MAX)
            .max(1);
        let (queue, records) = mpsc::channel(capacity);
        let counts = Arc::new(Counts::default());
        let writer = Writer {
            store,
            counts: counts.clone(),
            multiple_keys: config.enable_multiple_analytics_keys,
            list_ttl: match config.storage_expiration_time {
                -1 => None,
                0 => Some(60),
                seconds => Some(seconds.max(1) as u64),
            },
        };
        tokio::spawn(writer.run(records));
        Self {
            queue,
            ignored: config
                .ignored_ips
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            counts,
            detailed: config.enable_detailed_recording,
        }
    }

    /// Whether requests from `client` are recorded (`ignored_ips`).
    pub fn records(&self, client: Option<IpAddr>) -> bool {
        client.is_none_or(|ip| !self.ignored.contains(&ip))
    }

    /// `enable_detailed_recording` for every API.
    pub fn detailed(&self) -> bool {
        self.detailed
    }

    /// Queues a record; dropped (and counted) when the queue is full.
    pub fn record(&self, queued: Queued) {
        if self.queue.try_send(queued).is_err() {
            self.counts.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Records pushed to the store, and records dropped.
    pub fn figures(&self) -> (u64, u64) {
        (
            self.counts.written.load(Relaxed),
            self.counts.dropped.load(Relaxed),
        )
    }
}

struct Writer {
    store: Arc<dyn SessionStore>,
    counts: Arc<Counts>,
    multiple_keys: bool,
    /// `storage_expiration_time`: the list's expiry, set when it has none (`None`: never).
    list_ttl: Option<u64>,
}

impl Writer {
    async fn run(self, mut records: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut next_key = 0usize;
        loop {
            if records.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            // Let a batch fill for a moment: one round trip for many records.
            let deadline = tokio::time::Instant::now() + FLUSH_AFTER;
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                match tokio::time::timeout_at(deadline, records.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let encoded: Vec<Vec<u8>> = batch.drain(..).filter_map(|q| encode(&q)).collect();
            let key = if self.multiple_keys {
                next_key = (next_key + 1) % 10;
                format!("{ANALYTICS_KEY}_{next_key}")
            } else {
                ANALYTICS_KEY.to_owned()
            };
            let count = encoded.len() as u64;
            match self
                .store
                .append_analytics(&key, encoded, self.list_ttl)
                .await
            {
                Ok(()) => self.counts.written.fetch_add(count, Relaxed),
                Err(e) => {
                    tracing::debug!("analytics: {count} records dropped: {e}");
                    self.counts.dropped.fetch_add(count, Relaxed)
                }
            };
        }
    }
}

/// A time as vmihailenco/msgpack v2 (the gateway's and Pump's encoder) writes `time.Time`.
type GoTime = (i64, u32);

fn go_time(at: SystemTime) -> GoTime {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

/// Pump's `AnalyticsRecord`, field by field, under the Go names its msgpack keys are.
#[derive(Serialize)]
struct PumpRecord<'a> {
    #[serde(rename = "Method")]
    method: &'a str,
    #[serde(rename = "Host")]
    host: &'a str,
    #[serde(rename = "Path")]
    path: &'a str,
    #[serde(rename = "RawPath")]
    raw_path: &'a str,
    #[serde(rename = "ContentLength")]
    content_length: i64,
    #[serde(rename = "UserAgent")]
    user_agent: &'a str,
    #[serde(rename = "Day")]
    day: u32,
    #[serde(rename = "Month")]
    month: u32,
    #[serde(rename = "Year")]
    year: i64,
    #[serde(rename = "Hour")]
    hour: u32,
    #[serde(rename = "ResponseCode")]
    response_code: u16,
    #[serde(rename = "APIKey")]
    api_key: &'a str,
    #[serde(rename = "TimeStamp")]
    timestamp: GoTime,
    #[serde(rename = "APIVersion")]
    api_version: &'a str,
    #[serde(rename = "APIName")]
    api_name: &'a str,
    #[serde(rename = "APIID")]
    api_id: &'a str,
    #[serde(rename = "OrgID")]
    org_id: &'a str,
    #[serde(rename = "OauthID")]
    oauth_id: &'a str,
    #[serde(rename = "RequestTime")]
    request_time: u64,
    #[serde(rename = "RawRequest")]
    raw_request: String,
    #[serde(rename = "RawResponse")]
    raw_response: String,
    #[serde(rename = "IPAddress")]
    ip_address: &'a str,
    #[serde(rename = "Geo")]
    geo: Geo,
    #[serde(rename = "Network")]
    network: Network,
    #[serde(rename = "Latency")]
    latency: Latency,
    #[serde(rename = "Tags")]
    tags: Vec<String>,
    #[serde(rename = "Alias")]
    alias: &'a str,
    #[serde(rename = "TrackPath")]
    track_path: bool,
    #[serde(rename = "ExpireAt")]
    expire_at: GoTime,
    #[serde(rename = "ApiSchema")]
    api_schema: &'a str,
    #[serde(rename = "OriginalPath")]
    original_path: &'a str,
    #[serde(rename = "ListenPath")]
    listen_path: &'a str,
    #[serde(rename = "GraphQLStats")]
    graphql_stats: GraphQlStats,
    #[serde(rename = "MCPStats")]
    mcp_stats: McpStats,
    #[serde(rename = "CollectionName")]
    collection_name: &'a str,
}

#[derive(Serialize, Default)]
struct Geo {
    #[serde(rename = "Country")]
    country: Country,
    #[serde(rename = "City")]
    city: City,
    #[serde(rename = "Location")]
    location: Location,
}

#[derive(Serialize, Default)]
struct Country {
    #[serde(rename = "ISOCode")]
    iso_code: String,
}

#[derive(Serialize, Default)]
struct City {
    #[serde(rename = "GeoNameID")]
    geo_name_id: u32,
    /// A Go `map[string]string` left nil.
    #[serde(rename = "Names")]
    names: Option<()>,
}

#[derive(Serialize, Default)]
struct Location {
    #[serde(rename = "Latitude")]
    latitude: f64,
    #[serde(rename = "Longitude")]
    longitude: f64,
    #[serde(rename = "TimeZone")]
    time_zone: String,
}

#[derive(Serialize, Default)]
struct Network {
    #[serde(rename = "OpenConnections")]
    open_connections: i64,
    #[serde(rename = "ClosedConnection")]
    closed_connection: i64,
    #[serde(rename = "BytesIn")]
    bytes_in: i64,
    #[serde(rename = "BytesOut")]
    bytes_out: i64,
}

#[derive(Serialize)]
struct Latency {
    #[serde(rename = "Total")]
    total: u64,
    #[serde(rename = "Upstream")]
    upstream: u64,
    #[serde(rename = "Gateway")]
    gateway: u64,
}

/// GraphQL's statistics, empty: tollgate serves no GraphQL API.
#[derive(Serialize, Default)]
struct GraphQlStats {
    #[serde(rename = "Variables")]
    variables: String,
    #[serde(rename = "RootFields")]
    root_fields: Option<()>,
    #[serde(rename = "Types")]
    types: Option<()>,
    #[serde(rename = "Errors")]
    errors: Option<()>,
    #[serde(rename = "OperationType")]
    operation_type: i64,
    #[serde(rename = "HasErrors")]
    has_errors: bool,
    #[serde(rename = "IsGraphQL")]
    is_graphql: bool,
}

#[derive(Serialize, Default)]
struct McpStats {
    #[serde(rename = "IsMCP")]
    is_mcp: bool,
    #[serde(rename = "JSONRPCMethod")]
    jsonrpc_method: String,
    #[serde(rename = "PrimitiveType")]
    primitive_type: String,
    #[serde(rename = "PrimitiveName")]
    primitive_name: String,
}

/// The record as the gateway's worker finishes it: the key's, org's and API's tags added
/// (`key-<key>`, `org-<org>`, `api-<id>`), then msgpack.
fn encode(queued: &Queued) -> Option<Vec<u8>> {
    let r = &queued.request;
    let (day, month, year, hour) = civil(r.at);
    let mut tags: Vec<String> = r.key_tags.clone();
    tags.extend(queued.api.tags.iter().cloned());
    if !r.key_id.is_empty() {
        tags.push(format!("key-{}", r.key_id));
    }
    if !r.org_id.is_empty() {
        tags.push(format!("org-{}", r.org_id));
    }
    tags.push(format!("api-{}", r.api_id));
    let expire_after = match queued.api.expire_after {
        0 => NEVER_EXPIRES,
        seconds => seconds,
    };
    let expire_at = r.at + Duration::from_secs(expire_after.max(0) as u64);
    let base64 = |text: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    let raw_request = r.raw_request.as_deref().map(base64).unwrap_or_default();
    let raw_response = r.raw_response.as_deref().map(base64).unwrap_or_default();
    let record = PumpRecord {
        method: &r.method,
        host: &r.upstream_host,
        path: r.tracked_path.as_deref().unwrap_or(&r.path),
        raw_path: &r.path,
        content_length: r.content_length,
        user_agent: &r.user_agent,
        day,
        month,
        year,
        hour,
        response_code: r.status,
        api_key: &r.key_id,
        timestamp: go_time(r.at),
        api_version: &r.api_version,
        api_name: &r.api_name,
        api_id: &r.api_id,
        org_id: &r.org_id,
        oauth_id: "",
        request_time: r.latency_total,
        raw_request,
        raw_response,
        ip_address: &r.client_ip,
        geo: Geo::default(),
        network: Network::default(),
        latency: Latency {
            total: r.latency_total,
            upstream: r.upstream_latency,
            gateway: r.latency_gateway(),
        },
        tags,
        alias: &r.alias,
        track_path: r.tracked_path.is_some(),
        expire_at: go_time(expire_at),
        api_schema: "",
        original_path: r.original_path.as_deref().unwrap_or(""),
        listen_path: &r.listen_path,
        graphql_stats: GraphQlStats::default(),
        mcp_stats: McpStats::default(),
        collection_name: "",
    };
    match rmp_serde::to_vec_named(&record) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("analytics: a record could not be encoded: {e}");
            None
        }
    }
}

/// Day, month, year and hour of `at` in UTC (the gateway's `time.Now()` in a container).
fn civil(at: SystemTime) -> (u32, u32, i64, u32) {
    let text = humantime::format_rfc3339_seconds(at).to_string();
    let number = |range: std::ops::Range<usize>| {
        text.get(range)
            .and_then(|digits| digits.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (
        number(8..10) as u32,
        number(5..7) as u32,
        number(0..4),
        number(11..13) as u32,
    )
}

/// The request's head in HTTP/1.1 wire format, for detailed recording.
pub fn raw_request_head(request: &http::request::Parts) -> String {
    let mut head = format!(
        "{} {} HTTP/1.1\r\n",
        request.method,
        request.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    write_headers(&mut head, &request.headers);
    head
}

/// The response's head in HTTP/1.1 wire format, for detailed recording.
pub fn raw_response_head(status: http::StatusCode, headers: &http::HeaderMap) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    write_headers(&mut head, headers);
    head
}

fn write_headers(out: &mut String, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_a_map_under_pumps_go_field_names() {
        let at = UNIX_EPOCH + Duration::from_secs(1_764_763_200);
        let queued = Queued {
            request: Box::new(RequestRecord {
                at,
                api_id: "a1".into(),
                org_id: "o1".into(),
                key_id: "k1".into(),
                key_tags: vec!["gold".into()],
                status: 200,
                ..RequestRecord::default()
            }),
            api: Arc::new(ApiAnalytics {
                tags: vec!["edge".into()],
                ..ApiAnalytics::default()
            }),
        };
        let bytes = encode(&queued).unwrap();
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        let map = value.as_object().unwrap();
        let get = |name: &str| {
            map.get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(get("ResponseCode").as_u64(), Some(200));
        assert_eq!(get("Year").as_i64(), Some(2025));
        assert_eq!(get("Month").as_u64(), Some(12));
        assert_eq!(get("Day").as_u64(), Some(3));
        assert_eq!(get("Hour").as_u64(), Some(12));
        let stamp = get("TimeStamp");
        let stamp = stamp.as_array().unwrap();
        assert_eq!(stamp[0].as_i64(), Some(1_764_763_200));
        assert_eq!(
            get("Tags"),
            serde_json::json!(["gold", "edge", "key-k1", "org-o1", "api-a1"])
        );
        assert_eq!(map.len(), 35, "every field of Pump's struct");
    }
}
