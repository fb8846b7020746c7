//! The live status page: its guard (the secret once, an HttpOnly cookie, same origin only),
//! and in headless Chromium during a real Sentinel failover, the master it shows following
//! the promotion within two seconds.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use support::redis::SeedLayout;
use support::{SECRET, gateway, sample_api, upstream};

#[tokio::test]
async fn the_status_page_is_signed_into_once_and_answers_its_own_origin_only() {
    let up = upstream().await;
    let gw = gateway().api(sample_api(&up.url(""))).start().await;
    let client = &gw.client;
    let r = client.request("GET", &gw.url("/status"), &[], None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("name=\"secret\""),
        "the sign-in form: {}",
        r.text()
    );
    let r = client
        .request("GET", &gw.url("/status/data"), &[], None)
        .await;
    assert_eq!(r.status, 403, "no data without signing in");

    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = client
        .request(
            "POST",
            &gw.url("/status/login"),
            &form,
            Some(b"secret=wrong".to_vec()),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    let body = format!("secret={SECRET}").into_bytes();
    let r = client
        .request("POST", &gw.url("/status/login"), &form, Some(body))
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/status"));
    let cookie = r.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();

    let signed = [("cookie", pair.as_str())];
    let r = client
        .request("GET", &gw.url("/status"), &signed, None)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/status/app.js"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let r = client
        .request("GET", &gw.url("/status/data"), &signed, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json();
    assert_eq!(data["store"]["mode"], "memory");
    assert!(data["apis"].as_array().is_some());
    // Another site's page, even carrying the cookie, gets nothing.
    let cross = [("cookie", pair.as_str()), ("sec-fetch-site", "cross-site")];
    let r = client
        .request("GET", &gw.url("/status/data"), &cross, None)
        .await;
    assert_eq!(r.status, 403);
    let other = [
        ("cookie", pair.as_str()),
        ("origin", "https://evil.example"),
    ];
    let r = client
        .request("GET", &gw.url("/status/data"), &other, None)
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn in_a_browser_the_master_shown_follows_a_sentinel_failover_within_two_seconds() {
    let layout = SeedLayout::builder().down_after(3000).start().await;
    let up = upstream().await;
    let gw = gateway()
        .api(sample_api(&up.url("")))
        .config(
            json!({"storage": {"type": "redis", "addrs": layout.sentinel_addrs(),
            "master_name": "mymaster", "timeout": 2}}),
        )
        .start()
        .await;
    let master = layout.master_index().await.unwrap();
    let old_port = layout.redis[master].port;
    let screenshot = format!("{}/status-page.png", env!("CARGO_TARGET_TMPDIR"));
    let script = format!(
        "{}/tests/fixtures/status_browser.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut browser = tokio::process::Command::new("python3")
        .args([&script, &gw.url("/status"), SECRET, "16", &screenshot])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the page within a minute")
        .unwrap()
        .unwrap_or_default();
    if ready.is_empty() {
        let out = browser.wait_with_output().await.unwrap();
        panic!(
            "the browser script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        ready,
        format!("ready 127.0.0.1:{old_port}"),
        "the page shows the master"
    );

    layout.redis[master].freeze(30);
    let start = Instant::now();
    let (promoted, new_port) = loop {
        if let Some(port) = layout.sentinel_master_port().await
            && port != old_port
        {
            break (now(), port);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser's report")
        .unwrap()
        .unwrap_or_default();
    let out = browser.wait_with_output().await.unwrap();
    let report: Value = serde_json::from_str(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {report} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["cookie_readable"], false, "the cookie is HttpOnly");
    assert!(report["updates"].as_u64().unwrap() > 10, "live: {report}");
    let new_master = format!("127.0.0.1:{new_port}");
    let shown = report["observations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o[1] == new_master.as_str())
        .map(|o| o[0].as_f64().unwrap())
        .unwrap_or_else(|| panic!("the page never showed {new_master}: {report}"));
    assert!(
        shown - promoted < 2.0,
        "shown {:.2} s after Sentinel named the new master",
        shown - promoted
    );
    assert!(std::path::Path::new(&screenshot).exists());
    eprintln!(
        "status page: the new master shown {:.2} s after Sentinel named it; screenshot {screenshot}",
        shown - promoted
    );
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
