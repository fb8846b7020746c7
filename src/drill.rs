//! The failover drill: keyed traffic at a fixed rate and key creation through the admin API
//! while a disruption (a frozen or killed Redis master) runs, then a check that every
//! acknowledged key is readable and usable. Prints one line of figures; can write JSON.

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
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
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
            gateway: "http://127.0.0.1:8080".into(),
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
    /// Acknowledged keys that were not readable and usable after the run.
    pub lost_keys: Vec<String>,
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<u16, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(s, n)| format!("{s}:{n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
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
        )
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
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Option<StatusCode> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.config.gateway));
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

    async fn keyed(&self, key: &str) -> Option<StatusCode> {
        self.send(
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

    async fn create(&self, key: &str) -> Option<StatusCode> {
        self.write(Method::POST, key, &self.key_body()).await
    }

    async fn write(
        &self,
        method: Method,
        key: &str,
        body: &serde_json::Value,
    ) -> Option<StatusCode> {
        self.send(
            method,
            &format!("/tyk/keys/{key}"),
            &[("x-tyk-authorization", &self.config.secret)],
            Some(body),
        )
        .await
    }

    async fn readable(&self, key: &str) -> bool {
        self.send(
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
}

/// Runs the drill; `disruption` starts at `disrupt_after` and runs alongside the traffic.
pub async fn run(
    config: DrillConfig,
    disruption: impl Future<Output = ()> + Send + 'static,
) -> Result<DrillReport, DrillError> {
    let drill = Arc::new(Drill {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        config,
    });
    let keys: Arc<Vec<String>> = Arc::new(
        (0..drill.config.keys)
            .map(|i| format!("drill-{}-{i}", uuid::Uuid::new_v4().simple()))
            .collect(),
    );
    for key in keys.iter() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match drill.create(key).await {
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
    // Every warm key is used once before the disruption, so the nodes have seen it.
    for key in &keys[..warm] {
        let _ = drill.keyed(key).await;
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
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
            for key in &keys[..updated] {
                if drill.write(Method::PUT, key, &body).await == Some(StatusCode::OK) {
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
                attempted += 1;
                if drill.create(&key).await == Some(StatusCode::OK) {
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
        n += 1;
        let (drill, keys, tally) = (drill.clone(), keys.clone(), tally.clone());
        in_flight.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = drill.keyed(&keys[index]).await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.latencies_ms.push(ms);
            match status {
                Some(status) => {
                    let code = status.as_u16();
                    *t.statuses.entry(code).or_default() += 1;
                    if index >= warm {
                        *t.cold.entry(code).or_default() += 1;
                    } else if !status.is_success() {
                        *t.warm_non_2xx.entry(code).or_default() += 1;
                        if index < updated {
                            *t.updated_non_2xx.entry(code).or_default() += 1;
                        }
                    }
                }
                None => t.transport_errors += 1,
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

    // Every acknowledged key must be readable and usable once the layout has settled.
    let settle_until = Instant::now() + drill.config.settle;
    let mut readable = 0;
    let mut usable = 0;
    let mut lost = Vec::new();
    for key in &acknowledged {
        let (mut r, mut u) = (false, false);
        loop {
            r = r || drill.readable(key).await;
            u = u || drill.keyed(key).await.is_some_and(|s| s.is_success());
            if (r && u) || Instant::now() > settle_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        readable += u64::from(r);
        usable += u64::from(u);
        if !(r && u) {
            lost.push(key.clone());
        }
    }

    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
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
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
