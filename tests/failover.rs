//! The seed's failover, automated: the drill runs against the seed layout (down-after 5000)
//! while the master is frozen (`DEBUG SLEEP 30`) or killed and restarted, with a gateway
//! through HAProxy, one through native Sentinel, and two nodes at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::drill::{self, DrillConfig, DrillReport};

use support::redis::{SeedLayout, text};
use support::{SECRET, TestGateway, gateway, sample_api, upstream};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    HaProxy,
    Sentinel,
}

#[derive(Clone, Copy, Debug)]
enum Disruption {
    Freeze,
    KillAndRestart,
}

fn storage(layout: &SeedLayout, mode: Mode) -> Value {
    match mode {
        Mode::HaProxy => {
            json!({"storage": {"type": "redis", "host": "127.0.0.1", "port": layout.haproxy.port}})
        }
        Mode::Sentinel => {
            json!({"storage": {"type": "redis", "addrs": layout.sentinel_addrs(), "master_name": "mymaster"}})
        }
    }
}

fn drill_config(gw: &TestGateway, rate: u32) -> DrillConfig {
    DrillConfig {
        gateways: vec![format!("http://{}", gw.addr())],
        secret: SECRET.into(),
        rate,
        ..Default::default()
    }
}

fn check(name: &str, report: &DrillReport) {
    eprintln!("{name}: {report}");
    assert!(
        report.warm_non_2xx.is_empty(),
        "{name}: keys used before the disruption failed: {report}"
    );
    // Keys changed in the second before the disruption are warm keys too: none failed.
    assert!(
        report.keys_updated > 0,
        "{name}: no key was updated: {report}"
    );
    assert!(
        report
            .cold_statuses
            .keys()
            .all(|s| (200..300).contains(s) || *s == 503),
        "{name}: a key first used during the disruption got an auth error: {report}"
    );
    assert_eq!(report.transport_errors, 0, "{name}: {report}");
    assert!(report.keys_acknowledged > 0, "{name}: {report}");
    assert!(
        report.lost_keys.is_empty(),
        "{name}: acknowledged keys lost: {:?}",
        report.lost_keys
    );
}

/// After the run: the old master is a replica, and a write through `gw` lands on the new one.
async fn check_new_master(layout: &SeedLayout, old_port: u16, gw: &TestGateway) {
    let start = Instant::now();
    loop {
        let role = support::redis::cmd(old_port, &["ROLE"]).await;
        if matches!(&role, Ok(redis::Value::Array(items)) if items.first().map(text).as_deref() == Some("slave"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "old master still not a replica: {role:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_port = layout.sentinel_master_port().await.unwrap();
    assert_ne!(new_port, old_port);
    let start = Instant::now();
    loop {
        let r = gw
            .admin(
                "POST",
                "/tyk/keys/after-failover",
                Some(support::seed_key()),
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = gw.key_id("after-failover");
    let new_master = layout.redis.iter().find(|r| r.port == new_port).unwrap();
    assert!(
        new_master.get(&format!("apikey-{id}")).await.is_some(),
        "the write is on the new master"
    );
    // The node's metrics saw the master change (through HAProxy too: another server's
    // run_id behind the same address).
    let m = support::scrape(&gw.url("/metrics")).await;
    assert!(
        m.value("tollgate_store_master_changes_total", &[]) >= Some(1.0),
        "{}",
        m.text
    );
    assert!(
        m.value("tollgate_store_last_master_change_timestamp_seconds", &[])
            .is_some()
    );
    let master = m.labels("tollgate_store_info").expect("store info")["master"].clone();
    if master != format!("127.0.0.1:{}", layout.haproxy.port) {
        assert_eq!(master, format!("127.0.0.1:{new_port}"), "{}", m.text);
    }
}

async fn scenario(modes: &[Mode], disruption: Disruption) {
    let mut layout = SeedLayout::builder().down_after(5000).start().await;
    let up = upstream().await;
    let mut nodes = Vec::new();
    for mode in modes {
        nodes.push(
            gateway()
                .api(sample_api(&up.url("")))
                .config(storage(&layout, *mode))
                .start()
                .await,
        );
    }
    let master = layout.master_index().await.unwrap();
    let old_port = layout.redis[master].port;
    let rate = 200 / modes.len() as u32;
    // The first drill says when its traffic reaches the disruption point (2 s in).
    let (disrupt_now, disrupt) = tokio::sync::oneshot::channel::<()>();
    let mut disrupt_now = Some(disrupt_now);
    let drills: Vec<_> = nodes
        .iter()
        .map(|gw| {
            let signal = disrupt_now.take();
            tokio::spawn(drill::run(drill_config(gw, rate), async move {
                if let Some(signal) = signal {
                    let _ = signal.send(());
                }
            }))
        })
        .collect();
    disrupt
        .await
        .expect("the drill reached the disruption point");
    let churn = modes
        .contains(&Mode::HaProxy)
        .then(|| fresh_connections(&layout, &up.url(""), disruption));
    match disruption {
        Disruption::Freeze => layout.redis[master].freeze(30),
        Disruption::KillAndRestart => {
            layout.redis[master].kill();
            tokio::time::sleep(Duration::from_secs(20)).await;
            layout.redis[master].restart().await;
        }
    }
    for ((drill, mode), gw) in drills.into_iter().zip(modes).zip(&nodes) {
        let report = drill.await.unwrap().expect("drill set-up");
        check(&format!("{mode:?}/{disruption:?}"), &report);
        check_new_master(&layout, old_port, gw).await;
    }
    if let Some(churn) = churn {
        let (attempts, acknowledged) = churn.await.unwrap();
        let new_port = layout.sentinel_master_port().await.unwrap();
        let new_master = layout.redis.iter().find(|r| r.port == new_port).unwrap();
        let mut lost = Vec::new();
        for id in &acknowledged {
            if new_master.get(&format!("apikey-{id}")).await.is_none() {
                lost.push(id.clone());
            }
        }
        eprintln!(
            "{disruption:?}: fresh HAProxy connections around the old master's return: {attempts} writes, {} acknowledged, {} lost",
            acknowledged.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "acknowledged through a fresh connection and lost: {lost:?}"
        );
    }
}

/// While the old master comes back (still calling itself master until Sentinel demotes it,
/// so HAProxy routes new connections to it too), a fresh gateway node every 500 ms connects
/// through HAProxy and writes a key. Returns the writes tried and the ids acknowledged.
fn fresh_connections(
    layout: &SeedLayout,
    target: &str,
    disruption: Disruption,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let config = storage(layout, Mode::HaProxy);
    let target = target.to_owned();
    let returns_after = match disruption {
        Disruption::Freeze => 30,
        Disruption::KillAndRestart => 20,
    };
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(returns_after - 2)).await;
        let until = Instant::now() + Duration::from_secs(16);
        let mut acknowledged = Vec::new();
        let mut attempts = 0;
        while Instant::now() < until {
            let node = gateway()
                .api(sample_api(&target))
                .config(config.clone())
                .start()
                .await;
            let name = format!("fresh-{attempts}");
            attempts += 1;
            let r = node
                .admin(
                    "POST",
                    &format!("/tyk/keys/{name}"),
                    Some(support::seed_key()),
                )
                .await;
            if r.status == 200 {
                acknowledged.push(node.key_id(&name));
            }
            drop(node);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (attempts, acknowledged)
    })
}

#[tokio::test]
async fn frozen_master_through_haproxy() {
    scenario(&[Mode::HaProxy], Disruption::Freeze).await;
}

#[tokio::test]
async fn frozen_master_with_native_sentinel() {
    scenario(&[Mode::Sentinel], Disruption::Freeze).await;
}

#[tokio::test]
async fn killed_master_through_haproxy() {
    scenario(&[Mode::HaProxy], Disruption::KillAndRestart).await;
}

#[tokio::test]
async fn killed_master_with_native_sentinel() {
    scenario(&[Mode::Sentinel], Disruption::KillAndRestart).await;
}

#[tokio::test]
async fn two_nodes_at_once() {
    scenario(&[Mode::HaProxy, Mode::Sentinel], Disruption::Freeze).await;
}

/// The `tollgate drill` command itself, against a running layout of two gateway nodes: a short
/// run that freezes the master found through a sentinel, prints its figures (a line per node)
/// and writes JSON.
#[tokio::test]
async fn drill_command_against_a_running_layout() {
    let layout = SeedLayout::builder().down_after(2000).start().await;
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(storage(&layout, Mode::Sentinel))
        .start()
        .await;
    let gw2 = gateway()
        .api(sample_api(&up.url("")))
        .config(storage(&layout, Mode::HaProxy))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("drill.json");
    let sentinel = format!("127.0.0.1:{}", layout.sentinels[0].port);
    let gateway_url = format!("http://{}", gw.addr());
    let gateway2_url = format!("http://{}", gw2.addr());
    let json_arg = json.display().to_string();
    let args = [
        "drill",
        "--gateway",
        &gateway_url,
        "--gateway",
        &gateway2_url,
        "--secret",
        SECRET,
        "--sentinel",
        &sentinel,
        "--duration",
        "8",
        "--freeze-secs",
        "5",
        "--rate",
        "100",
        "--keys",
        "20",
        "--json",
        &json_arg,
    ];
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("drill: sent "), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["sent"].as_u64().unwrap() > 500, "{report}");
    assert_eq!(report["warm_non_2xx"], json!({}), "{report}");
    assert_eq!(report["lost_keys"], json!([]), "{report}");
    let nodes = report["per_gateway"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{report}");
    for (node, url) in nodes.iter().zip([&gateway_url, &gateway2_url]) {
        assert_eq!(node["gateway"], json!(url), "{report}");
        assert!(node["sent"].as_u64().unwrap() > 250, "{report}");
        assert_eq!(node["warm_non_2xx"], json!({}), "{report}");
        assert_eq!(node["keys_missing"], json!(0), "{report}");
    }
    assert!(
        stdout.contains(&format!("\n  {gateway2_url}: sent ")),
        "{stdout}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["drill", "--secret", "s", "--sentinel", "nocolon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sentinel"));
}
