//! The node's metrics: counted where requests pass with relaxed atomics only (each API's
//! counters are resolved when its definition loads, never looked up per request), and
//! written at `/metrics` in Prometheus's text format by prometheus-client's encoder, with
//! what the store, the limiter and the listeners report at that moment.
//!
//! Labels are bounded: API ids (from the definitions loaded), status codes, and fixed sets of
//! reasons and faults; never a path, a key or a client's address.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::connection::ParkedConnections;
use crate::proxy::{ProxyError, UpstreamFault};
use crate::rejection::{Reason, Rejection};
use crate::store::{StoreHealth, StoreStats};

/// The `api_id` label of requests no API answers (no listen path matched, a path refused
/// before routing).
pub const UNROUTED: &str = "";

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes counted one by one (one outside, which HTTP allows up to 999, at the nearest
/// end).
const CODES: std::ops::RangeInclusive<u16> = 100..=599;

/// The node's counters, shared by every worker.
#[derive(Debug)]
pub struct Metrics {
    /// Each API's counters by id: read when definitions load, so that a reload keeps
    /// counting where it was.
    apis: Mutex<HashMap<Box<str>, Arc<ApiMetrics>>>,
    unrouted: Arc<ApiMetrics>,
    /// Client connections open on every listener.
    pub connections: AtomicI64,
    /// HTTP/1.1 connections parked (idle, holding only their socket) on every listener.
    pub parked: Arc<ParkedConnections>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            apis: Mutex::new(HashMap::new()),
            unrouted: Arc::new(ApiMetrics::new(UNROUTED)),
            connections: AtomicI64::new(0),
            parked: Default::default(),
        }
    }
}

impl Metrics {
    /// The counters of the API `api_id` (made on first use).
    pub fn for_api(&self, api_id: &str) -> Arc<ApiMetrics> {
        let mut apis = self.apis.lock().unwrap_or_else(|p| p.into_inner());
        apis.entry(api_id.into())
            .or_insert_with(|| Arc::new(ApiMetrics::new(api_id)))
            .clone()
    }

    /// Counts a client connection open until the mark is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Relaxed);
        OpenConnection(self.clone())
    }

    /// The counters of requests no API answered.
    pub fn unrouted(&self) -> &ApiMetrics {
        &self.unrouted
    }

    /// Each API's responses by status class (`1xx` to `5xx`), requests no API answered
    /// first (under the id `""`), then by id.
    pub fn by_class(&self) -> Vec<(String, [u64; 5])> {
        let mut apis: Vec<Arc<ApiMetrics>> = {
            let known = self.apis.lock().unwrap_or_else(|p| p.into_inner());
            known.values().cloned().collect()
        };
        apis.sort_by(|a, b| a.api_id.cmp(&b.api_id));
        std::iter::once(&self.unrouted)
            .chain(&apis)
            .map(|m| {
                let mut classes = [0; 5];
                for (count, code) in m.responses.iter().zip(CODES) {
                    classes[usize::from(code / 100 - 1)] += count.load(Relaxed);
                }
                (m.api_id.to_string(), classes)
            })
            .collect()
    }

    /// The metrics in Prometheus's text format (version 0.0.4), with `node`'s figures.
    pub fn render(self: &Arc<Self>, node: NodeFigures) -> String {
        let mut registry = Registry::with_prefix("tollgate");
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            node,
        }));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// A client connection counted open (see [`Metrics::connection_opened`]).
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// One API's counters.
#[derive(Debug)]
pub struct ApiMetrics {
    api_id: Box<str>,
    /// Responses by status code, `code - 100`.
    responses: Box<[AtomicU64]>,
    /// From routing to the response's head.
    duration: Histogram,
    /// From the request sent upstream to the upstream's response head.
    upstream: Histogram,
    refusals: [AtomicU64; Reason::ALL.len()],
    upstream_faults: [AtomicU64; UpstreamFault::ALL.len()],
}

impl ApiMetrics {
    fn new(api_id: &str) -> Self {
        Self {
            api_id: api_id.into(),
            responses: CODES.map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::default(),
            upstream: Histogram::default(),
            refusals: Default::default(),
            upstream_faults: Default::default(),
        }
    }

    /// A response sent with `status`, `took` after the request was routed.
    pub fn answered(&self, status: u16, took: Duration) {
        self.counted(status);
        self.duration.observe(took);
    }

    /// A response sent with `status`, not timed (one refused before routing).
    pub fn counted(&self, status: u16) {
        let index = usize::from(status.clamp(*CODES.start(), *CODES.end()) - CODES.start());
        self.responses[index].fetch_add(1, Relaxed);
    }

    /// The upstream answered (or failed) `took` after the request was sent.
    pub fn upstream_took(&self, took: Duration) {
        self.upstream.observe(took);
    }

    /// A request refused with `rejection`.
    pub fn refused(&self, rejection: &Rejection) {
        let reason = rejection.reason();
        self.refusals[reason as usize].fetch_add(1, Relaxed);
        if let Rejection::Upstream(e) = rejection
            && let Some(fault) = ProxyError::fault(e)
        {
            self.upstream_faults[fault as usize].fetch_add(1, Relaxed);
        }
    }
}

/// A latency histogram of relaxed atomics: a bucket, the count and the sum per observation.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last past every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Sum in seconds, count, and each bucket's bound and own count (the encoder makes them
    /// cumulative).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = BUCKETS
            .iter()
            .chain([&f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, count)| (*bound, count.load(Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (sum, self.count.load(Relaxed), buckets)
    }
}

/// What the rest of the node reports when it is scraped.
#[derive(Debug, Default)]
pub struct NodeFigures {
    pub store: Option<(StoreHealth, StoreStats)>,
    /// Rate and quota admissions leased from the store and held by this node.
    pub limiter_leases: u64,
    /// Requests of an API's counter admitted while the store was away, waiting to be counted.
    pub limiter_pending: u64,
    pub apis_loaded: u64,
    /// Access log lines dropped because the writer was behind (`None`: no access log).
    pub access_log_dropped: Option<u64>,
    /// Analytics records written and dropped (`None`: analytics off).
    pub analytics: Option<(u64, u64)>,
    /// Trace spans dropped (`None`: traces off).
    pub spans_dropped: Option<u64>,
}

/// One scrape: the counters and the node's figures of the moment.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    node: NodeFigures,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one family: its name, help and type, then each labelled value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram's snapshot, as prometheus-client encodes one.
#[derive(Debug)]
struct HistogramValue((f64, u64, Vec<(f64, u64)>));

impl EncodeMetric for HistogramValue {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        let (sum, count, buckets) = &self.0;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            *sum, *count, buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut apis: Vec<Arc<ApiMetrics>> = {
            let known = self.metrics.apis.lock().unwrap_or_else(|p| p.into_inner());
            known.values().cloned().collect()
        };
        apis.sort_by(|a, b| a.api_id.cmp(&b.api_id));
        apis.insert(0, self.metrics.unrouted.clone());
        let api = |m: &ApiMetrics| ("api_id", m.api_id.to_string());

        let responses = apis.iter().flat_map(|m| {
            m.responses
                .iter()
                .zip(CODES)
                .map(|(count, code)| (code, count.load(Relaxed)))
                .filter(|(_, count)| *count > 0)
                .map(move |(code, count)| {
                    let class = format!("{}xx", code / 100);
                    (
                        vec![api(m), ("class", class), ("code", code.to_string())],
                        counter(count),
                    )
                })
        });
        family(
            &mut encoder,
            "requests",
            "Responses sent, by API, status class and status code",
            MetricType::Counter,
            responses,
        )?;
        for (name, help, pick) in [
            (
                "request_duration_seconds",
                "Time from routing a request to its response's head",
                (|m: &ApiMetrics| &m.duration) as fn(&ApiMetrics) -> &Histogram,
            ),
            (
                "upstream_duration_seconds",
                "Time from sending a request upstream to the upstream's response head",
                |m: &ApiMetrics| &m.upstream,
            ),
        ] {
            let values = apis
                .iter()
                .filter(|m| pick(m).count.load(Relaxed) > 0)
                .map(|m| (vec![api(m)], HistogramValue(pick(m).snapshot())));
            family(&mut encoder, name, help, MetricType::Histogram, values)?;
        }
        let refusals = apis.iter().flat_map(|m| {
            Reason::ALL
                .into_iter()
                .map(move |reason| (reason, m.refusals[reason as usize].load(Relaxed)))
                .filter(|(_, count)| *count > 0)
                .map(move |(reason, count)| {
                    (
                        vec![api(m), ("reason", reason.name().to_owned())],
                        counter(count),
                    )
                })
        });
        family(
            &mut encoder,
            "refusals",
            "Requests refused by the gateway, by API and reason",
            MetricType::Counter,
            refusals,
        )?;
        let faults = apis.iter().flat_map(|m| {
            UpstreamFault::ALL
                .into_iter()
                .map(move |fault| (fault, m.upstream_faults[fault as usize].load(Relaxed)))
                .filter(|(_, count)| *count > 0)
                .map(move |(fault, count)| {
                    (
                        vec![api(m), ("kind", fault.name().to_owned())],
                        counter(count),
                    )
                })
        });
        family(
            &mut encoder,
            "upstream_errors",
            "Requests the upstream gave no response to, by API and kind",
            MetricType::Counter,
            faults,
        )?;

        let node = &self.node;
        let connections = self.metrics.connections.load(Relaxed);
        family(
            &mut encoder,
            "connections_open",
            "Client connections open on the gateway's listeners",
            MetricType::Gauge,
            [(Labels::new(), gauge(connections))],
        )?;
        family(
            &mut encoder,
            "connections_parked",
            "Open HTTP/1.1 connections parked while idle: holding their socket, no buffers",
            MetricType::Gauge,
            [(Labels::new(), gauge(self.metrics.parked.count()))],
        )?;
        family(
            &mut encoder,
            "apis_loaded",
            "API definitions served",
            MetricType::Gauge,
            [(Labels::new(), gauge(saturating(node.apis_loaded)))],
        )?;
        family(
            &mut encoder,
            "limiter_leases",
            "Rate and quota admissions leased from the store, by counter held",
            MetricType::Gauge,
            [(Labels::new(), gauge(saturating(node.limiter_leases)))],
        )?;
        family(
            &mut encoder,
            "limiter_pending_quota",
            "Quota use counted while the store was away, not yet written to it",
            MetricType::Gauge,
            [(Labels::new(), gauge(saturating(node.limiter_pending)))],
        )?;
        family(
            &mut encoder,
            "build_info",
            "The running build",
            MetricType::Gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                gauge(1),
            )],
        )?;
        if let Some(dropped) = node.access_log_dropped {
            family(
                &mut encoder,
                "access_log_dropped",
                "Access log lines dropped because the writer was behind",
                MetricType::Counter,
                [(Labels::new(), counter(dropped))],
            )?;
        }
        if let Some((written, dropped)) = node.analytics {
            family(
                &mut encoder,
                "analytics_records_written",
                "Analytics records pushed to Redis for Tyk Pump",
                MetricType::Counter,
                [(Labels::new(), counter(written))],
            )?;
            family(
                &mut encoder,
                "analytics_records_dropped",
                "Analytics records dropped: the queue was full or the store could not take them",
                MetricType::Counter,
                [(Labels::new(), counter(dropped))],
            )?;
        }
        if let Some(dropped) = node.spans_dropped {
            family(
                &mut encoder,
                "trace_spans_dropped",
                "Trace spans dropped: the export queue was full or the receiver did not take them",
                MetricType::Counter,
                [(Labels::new(), counter(dropped))],
            )?;
        }
        if let Some((health, stats)) = &node.store {
            self.encode_store(&mut encoder, health, stats)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_store(
        &self,
        encoder: &mut DescriptorEncoder,
        health: &StoreHealth,
        stats: &StoreStats,
    ) -> fmt::Result {
        let master = health
            .details
            .get("master")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned();
        family(
            encoder,
            "store_info",
            "The key store in use: its mode and current master",
            MetricType::Gauge,
            [(
                vec![("mode", health.mode.to_owned()), ("master", master)],
                gauge(1),
            )],
        )?;
        family(
            encoder,
            "store_reachable",
            "1 when the key store answered the scrape's check",
            MetricType::Gauge,
            [(Labels::new(), gauge(i64::from(health.reachable)))],
        )?;
        let replicas = health
            .details
            .get("replicas")
            .and_then(|r| r.as_array())
            .map_or(0, Vec::len);
        family(
            encoder,
            "store_replicas",
            "Replicas known, read from while the master is away",
            MetricType::Gauge,
            [(Labels::new(), gauge(replicas as i64))],
        )?;
        let counters = [
            (
                "store_master_changes",
                "Times the master in use became another Redis server (a failover seen)",
                stats.failovers,
            ),
            (
                "store_round_trips",
                "Commands sent to Redis for requests and the Gateway API",
                stats.round_trips,
            ),
            (
                "store_replica_reads",
                "Key records read from a replica while the master was away",
                stats.replica_reads,
            ),
            (
                "store_unconfirmed_writes",
                "Writes refused because WAIT confirmed them on too few replicas",
                stats.unconfirmed_writes,
            ),
        ];
        for (name, help, value) in counters {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                [(Labels::new(), counter(value))],
            )?;
        }
        if let Some(at) = stats.last_failover {
            family(
                encoder,
                "store_last_master_change_timestamp_seconds",
                "Unix time of the last master change",
                MetricType::Gauge,
                [(Labels::new(), ConstGauge::new(at))],
            )?;
        }
        if let Some(cache) = &stats.cache {
            for (name, help, value) in [
                (
                    "session_cache_hits",
                    "Key lookups answered by the session cache",
                    cache.hits,
                ),
                (
                    "session_cache_misses",
                    "Key lookups that asked the store",
                    cache.misses,
                ),
                (
                    "session_cache_stale_serves",
                    "Key lookups answered by a stale entry while the store was unreachable",
                    cache.stale_serves,
                ),
            ] {
                family(
                    encoder,
                    name,
                    help,
                    MetricType::Counter,
                    [(Labels::new(), counter(value))],
                )?;
            }
            family(
                encoder,
                "session_cache_entries",
                "Key records held by the session cache",
                MetricType::Gauge,
                [(Labels::new(), gauge(saturating(cache.entries)))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text_with_bounded_labels() {
        let metrics = Arc::new(Metrics::default());
        let api = metrics.for_api("a1");
        assert!(Arc::ptr_eq(&api, &metrics.for_api("a1")), "one set per id");
        api.answered(200, Duration::from_millis(3));
        api.answered(200, Duration::from_millis(40));
        api.answered(429, Duration::from_micros(200));
        api.refused(&Rejection::Upstream(ProxyError::Timeout));
        api.upstream_took(Duration::from_millis(2));
        metrics.unrouted().counted(404);
        let text = metrics.render(NodeFigures::default());
        for line in [
            "# TYPE tollgate_requests_total counter",
            r#"tollgate_requests_total{api_id="a1",class="2xx",code="200"} 2"#,
            r#"tollgate_requests_total{api_id="a1",class="4xx",code="429"} 1"#,
            r#"tollgate_requests_total{api_id="",class="4xx",code="404"} 1"#,
            r#"tollgate_request_duration_seconds_bucket{api_id="a1",le="0.005"} 2"#,
            r#"tollgate_request_duration_seconds_bucket{api_id="a1",le="+Inf"} 3"#,
            r#"tollgate_request_duration_seconds_count{api_id="a1"} 3"#,
            r#"tollgate_refusals_total{api_id="a1",reason="upstream"} 1"#,
            r#"tollgate_upstream_errors_total{api_id="a1",kind="timeout"} 1"#,
            r#"tollgate_build_info{version=""#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
