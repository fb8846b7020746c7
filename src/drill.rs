//! The failover drill: keyed traffic at a fixed rate and key creation through the admin API
//! of one or more gateway nodes (in turn) while a disruption (a frozen or killed Redis master,
//! a partition) runs, then a check that every acknowledged key is readable and usable on every
//! node. Prints one line of figures; can write JSON.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;

/// What the drill does; the defaults are the seed's scenario.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// Gateway nodes' base URLs, e.g. `http://127.0.0.1:8080`; requests and key creations go
    /// to each in turn. An empty list means the default node.
    pub gateways: Vec<String>,
    pub secret: String,
    /// Keyed requests per second.
    pub rate: u32,
    /// Keys used by the traffic; a fifth of them is first used after the disruption starts.
    pub keys: usize,
    pub duration: Duration,
    /// When the disruption starts.
    pub disrupt_after: Duration,
    /// One admin key creation per this interval.
    pub create_every: Duration,
    pub api_id: String,
    pub path: String,
    /// How long the final check may wait for the layout to settle.
    pub settle: Duration,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            gateways: vec!["http://127.0.0.1:8080".into()],
            secret: String::new(),
            rate: 200,
            keys: 100,
            duration: Duration::from_secs(45),
            disrupt_after: Duration::from_secs(2),
            create_every: Duration::from_millis(200),
            api_id: "1".into(),
            path: "/tyk-api-test/get".into(),
            settle: Duration::from_secs(30),
        }
    }
}

/// The drill's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Non-2xx answers for keys used before the disruption.
    pub warm_non_2xx: BTreeMap<u16, u64>,
    /// Warm keys changed with `PUT` in the second before the disruption.
    pub keys_updated: u64,
    /// Non-2xx answers for those keys (counted in `warm_non_2xx` too).
    pub updated_non_2xx: BTreeMap<u16, u64>,
    /// Answers for keys first used during the disruption.
    pub cold_statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer at all.
    pub transport_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub keys_attempted: u64,
    pub keys_acknowledged: u64,
    pub keys_readable: u64,
    pub keys_usable: u64,
    /// Acknowledged keys that were not readable and usable on every node after the run.
    pub lost_keys: Vec<String>,
    /// The same figures node by node (one entry per gateway, in the order given).
    pub per_gateway: Vec<NodeFigures>,
}

/// One gateway node's share of the drill's traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeFigures {
    pub gateway: String,
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub warm_non_2xx: BTreeMap<u16, u64>,
    pub cold_statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Acknowledged keys (through any node) this node could not read or use after the run.
    pub keys_missing: u64,
}

fn status_list(m: &BTreeMap<u16, u64>) -> String {
    if m.is_empty() {
        "none".to_string()
    } else {
        m.iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = status_list;
        write!(
            f,
            "drill: sent {} | statuses {} | warm non-2xx {} | updated {} non-2xx {} | cold {} | no answer {} | p50 {:.1} ms p99 {:.1} ms max {:.1} ms | keys created {} acknowledged {} readable {} usable {} lost {}",
            self.sent,
            list(&self.statuses),
            list(&self.warm_non_2xx),
            self.keys_updated,
            list(&self.updated_non_2xx),
            list(&self.cold_statuses),
            self.transport_errors,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.keys_attempted,
            self.keys_acknowledged,
            self.keys_readable,
            self.keys_usable,
            self.lost_keys.len()
        )?;
        if self.per_gateway.len() > 1 {
            for node in &self.per_gateway {
                write!(f, "\n  {}: {node}", node.gateway)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for NodeFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, statuses {}, warm non-2xx {}, cold {}, no answer {}, keys missing {}",
            self.sent,
            status_list(&self.statuses),
            status_list(&self.warm_non_2xx),
            status_list(&self.cold_statuses),
            self.transport_errors,
            self.keys_missing
        )
    }
}

impl DrillReport {
    /// The figures as a table, a row each (and a block per node when there are several).
    pub fn table(&self) -> String {
        let list = status_list;
        let mut rows: Vec<(String, String)> = vec![
            ("keyed requests sent".into(), self.sent.to_string()),
            ("statuses".into(), list(&self.statuses)),
            (
                "warm keys' non-2xx (must be none)".into(),
                list(&self.warm_non_2xx),
            ),
            (
                "keys updated just before, non-2xx".into(),
                format!("{}, {}", self.keys_updated, list(&self.updated_non_2xx)),
            ),
            (
                "keys first used during it".into(),
                list(&self.cold_statuses),
            ),
            (
                "requests with no answer".into(),
                self.transport_errors.to_string(),
            ),
            (
                "latency p50 / p99 / max".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    self.p50_ms, self.p99_ms, self.max_ms
                ),
            ),
            (
                "keys created / acknowledged".into(),
                format!("{} / {}", self.keys_attempted, self.keys_acknowledged),
            ),
            (
                "acknowledged: readable / usable".into(),
                format!("{} / {}", self.keys_readable, self.keys_usable),
            ),
            (
                "acknowledged keys lost (must be 0)".into(),
                self.lost_keys.len().to_string(),
            ),
        ];
        if self.per_gateway.len() > 1 {
            for node in &self.per_gateway {
                rows.push((node.gateway.clone(), node.to_string()));
            }
        }
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(name, value)| format!("{name:<width$}  {value}\n"))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("setting up key {key} failed: {reason}")]
    Setup { key: String, reason: String },
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Drill {
    config: DrillConfig,
    client: HttpClient,
}

impl Drill {
    fn nodes(&self) -> usize {
        self.config.gateways.len()
    }

    async fn send(
        &self,
        node: usize,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Option<StatusCode> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.config.gateways[node]));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = builder.body(Full::new(body)).ok()?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        let status = response.status();
        // Drain the body so the connection is reused.
        let _ = response.into_body().collect().await;
        Some(status)
    }

    async fn keyed(&self, node: usize, key: &str) -> Option<StatusCode> {
        self.send(
            node,
            Method::GET,
            &self.config.path,
            &[("authorization", key)],
            None,
        )
        .await
    }

    fn key_body(&self) -> serde_json::Value {
        json!({
            "allowance": 100000, "rate": 100000, "per": 1, "expires": 0,
            "quota_max": -1, "quota_renewal_rate": 3600, "org_id": "default",
            "access_rights": {self.config.api_id.clone(): {"api_id": self.config.api_id, "api_name": "drill", "versions": ["Default"]}}
        })
    }

    async fn create(&self, node: usize, key: &str) -> Option<StatusCode> {
        self.write(node, Method::POST, key, &self.key_body()).await
    }

    async fn write(
        &self,
        node: usize,
        method: Method,
        key: &str,
        body: &serde_json::Value,
    ) -> Option<StatusCode> {
        self.send(
            node,
            method,
            &format!("/tyk/keys/{key}"),
            &[("x-tyk-authorization", &self.config.secret)],
            Some(body),
        )
        .await
    }

    async fn readable(&self, node: usize, key: &str) -> bool {
        self.send(
            node,
            Method::GET,
            &format!("/tyk/keys/{key}"),
            &[("x-tyk-authorization", &self.config.secret)],
            None,
        )
        .await
            == Some(StatusCode::OK)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    statuses: BTreeMap<u16, u64>,
    warm_non_2xx: BTreeMap<u16, u64>,
    updated_non_2xx: BTreeMap<u16, u64>,
    cold: BTreeMap<u16, u64>,
    transport_errors: u64,
    nodes: Vec<NodeFigures>,
}

fn count(map: &mut BTreeMap<u16, u64>, code: u16) {
    *map.entry(code).or_default() += 1;
}

/// Runs the drill; `disruption` starts at `disrupt_after` and runs alongside the traffic.
pub async fn run(
    config: DrillConfig,
    disruption: impl Future<Output = ()> + Send + 'static,
) -> Result<DrillReport, DrillError> {
    let mut config = config;
    if config.gateways.is_empty() {
        config.gateways = DrillConfig::default().gateways;
    }
    let drill = Arc::new(Drill {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        config,
    });
    let nodes = drill.nodes();
    let keys: Arc<Vec<String>> = Arc::new(
        (0..drill.config.keys)
            .map(|i| format!("drill-{}-{i}", uuid::Uuid::new_v4().simple()))
            .collect(),
    );
    for (i, key) in keys.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match drill.create(i % nodes, key).await {
                Some(StatusCode::OK) => break,
                other if Instant::now() > deadline => {
                    return Err(DrillError::Setup {
                        key: key.clone(),
                        reason: format!("admin API answered {other:?}"),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let warm = keys.len() - keys.len() / 5;
    // Every warm key is used once on every node before the disruption, so each has seen it.
    for key in &keys[..warm] {
        for node in 0..nodes {
            let _ = drill.keyed(node, key).await;
        }
    }

    let tally = Arc::new(Mutex::new(Tally {
        nodes: drill
            .config
            .gateways
            .iter()
            .map(|g| NodeFigures {
                gateway: g.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }));
    let start = Instant::now();
    let disrupt_at = start + drill.config.disrupt_after;
    let end = start + drill.config.duration;
    let disruption = tokio::spawn(async move {
        tokio::time::sleep_until(disrupt_at.into()).await;
        disruption.await;
    });
    // A tenth of the warm keys is changed in the second before the disruption: a node must
    // keep knowing a key it was just told of (or wrote), though it cannot read it again.
    let updated = (warm / 10).max(1).min(warm);
    let updater = {
        let (drill, keys) = (drill.clone(), keys.clone());
        let lead = drill.config.disrupt_after.min(Duration::from_secs(1));
        tokio::spawn(async move {
            tokio::time::sleep_until((disrupt_at - lead).into()).await;
            let mut body = drill.key_body();
            body["rate"] = json!(100_001);
            let mut done = 0u64;
            for (i, key) in keys[..updated].iter().enumerate() {
                if drill.write(i % nodes, Method::PUT, key, &body).await == Some(StatusCode::OK) {
                    done += 1;
                }
            }
            done
        })
    };

    let creator = {
        let drill = drill.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut attempted = 0u64;
            let mut tick = tokio::time::interval(drill.config.create_every);
            while Instant::now() < end {
                tick.tick().await;
                let key = format!("drill-new-{}", uuid::Uuid::new_v4().simple());
                let node = attempted as usize % nodes;
                attempted += 1;
                if drill.create(node, &key).await == Some(StatusCode::OK) {
                    acknowledged.push(key);
                }
            }
            (attempted, acknowledged)
        })
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(drill.config.rate.max(1)),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = Vec::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let disrupted = Instant::now() >= disrupt_at;
        // Before the disruption only warm keys; after it, all keys in turn.
        let index = if disrupted { n % keys.len() } else { n % warm };
        // Every node sees every key: the node turns once per round of the keys.
        let node = (n + n / keys.len()) % nodes;
        n += 1;
        let (drill, keys, tally) = (drill.clone(), keys.clone(), tally.clone());
        in_flight.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = drill.keyed(node, &keys[index]).await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            let mut guard = tally.lock().unwrap_or_else(|p| p.into_inner());
            let t = &mut *guard;
            t.latencies_ms.push(ms);
            let figures = &mut t.nodes[node];
            figures.sent += 1;
            match status {
                Some(status) => {
                    let code = status.as_u16();
                    count(&mut t.statuses, code);
                    count(&mut figures.statuses, code);
                    if index >= warm {
                        count(&mut t.cold, code);
                        count(&mut figures.cold_statuses, code);
                    } else if !status.is_success() {
                        count(&mut t.warm_non_2xx, code);
                        count(&mut figures.warm_non_2xx, code);
                        if index < updated {
                            count(&mut t.updated_non_2xx, code);
                        }
                    }
                }
                None => {
                    t.transport_errors += 1;
                    figures.transport_errors += 1;
                }
            }
        }));
        in_flight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
    }
    for handle in in_flight {
        let _ = handle.await;
    }
    let (attempted, acknowledged) = creator.await.unwrap_or_default();
    let keys_updated = updater.await.unwrap_or_default();
    let _ = disruption.await;

    // Every acknowledged key must be readable and usable on every node once the layout has
    // settled.
    let settle_until = Instant::now() + drill.config.settle;
    let mut readable = 0;
    let mut usable = 0;
    let mut lost = Vec::new();
    let mut missing = vec![0u64; nodes];
    for key in &acknowledged {
        let (mut all_readable, mut all_usable) = (true, true);
        for (node, missing) in missing.iter_mut().enumerate() {
            let (mut r, mut u) = (false, false);
            loop {
                r = r || drill.readable(node, key).await;
                u = u || drill.keyed(node, key).await.is_some_and(|s| s.is_success());
                if (r && u) || Instant::now() > settle_until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            all_readable &= r;
            all_usable &= u;
            *missing += u64::from(!(r && u));
        }
        readable += u64::from(all_readable);
        usable += u64::from(all_usable);
        if !(all_readable && all_usable) {
            lost.push(key.clone());
        }
    }

    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    for (figures, missing) in t.nodes.iter_mut().zip(missing) {
        figures.keys_missing = missing;
    }
    let mut latencies = t.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    Ok(DrillReport {
        sent: latencies.len() as u64,
        statuses: t.statuses,
        warm_non_2xx: t.warm_non_2xx,
        keys_updated,
        updated_non_2xx: t.updated_non_2xx,
        cold_statuses: t.cold,
        transport_errors: t.transport_errors,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        keys_attempted: attempted,
        keys_acknowledged: acknowledged.len() as u64,
        keys_readable: readable,
        keys_usable: usable,
        lost_keys: lost,
        per_gateway: t.nodes,
    })
}

/// Freezes the Redis master with `DEBUG SLEEP`, finding it through a sentinel or at a fixed
/// address. Used by `tollgate drill`.
pub async fn freeze_master(
    sentinel: Option<(String, u16)>,
    redis: Option<(String, u16)>,
    master_name: String,
    secs: u32,
) {
    let addr = match (sentinel, redis) {
        (Some((host, port)), _) => {
            let found: Option<(String, u16)> = async {
                let client = redis::Client::open(format!("redis://{host}:{port}/")).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&master_name)
                    .query_async(&mut conn)
                    .await
                    .ok()?
            }
            .await;
            found
        }
        (None, redis) => redis,
    };
    let Some((host, port)) = addr else {
        tracing::error!("drill: could not find the master to freeze");
        return;
    };
    tracing::info!("drill: freezing {host}:{port} for {secs} s");
    if let Ok(client) = redis::Client::open(format!("redis://{host}:{port}/")) {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(u64::from(secs) + 5)));
        if let Ok(mut conn) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            let _: redis::RedisResult<redis::Value> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(secs)
                .query_async(&mut conn)
                .await;
        }
    }
}

/// Runs the shell command `fault` (a partition, a killed host: whatever the layout needs),
/// then `heal` after `heal_after`. Used by `tollgate drill --fault`; a command that fails is
/// reported, and the drill goes on.
pub async fn run_fault(fault: String, heal: Option<String>, heal_after: Duration) {
    async fn shell(what: &str, command: &str) {
        tracing::info!("drill: {what}: {command}");
        match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .await
        {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::error!("drill: {what} command failed ({status}): {command}"),
            Err(e) => tracing::error!("drill: {what} command did not run ({e}): {command}"),
        }
    }
    shell("fault", &fault).await;
    if let Some(heal) = heal {
        tokio::time::sleep(heal_after).await;
        shell("heal", &heal).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_figure_and_per_node() {
        let node = |gateway: &str| NodeFigures {
            gateway: gateway.into(),
            sent: 10,
            ..Default::default()
        };
        let report = DrillReport {
            sent: 20,
            statuses: BTreeMap::from([(200, 19), (503, 1)]),
            lost_keys: vec!["k".into()],
            per_gateway: vec![node("http://a"), node("http://b")],
            ..Default::default()
        };
        let table = report.table();
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}: {table}"))
                .to_owned()
        };
        assert!(row("statuses").ends_with("  200:19,503:1"), "{table}");
        assert!(row("acknowledged keys lost").ends_with("  1"), "{table}");
        assert!(row("http://b").contains("sent 10"), "{table}");
        assert_eq!(table.lines().count(), 12, "{table}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
