//! The `tollgate` binary: `serve --conf` with a real tyk.conf, environment overrides,
//! configuration errors (exit 2), SIGHUP reload, and `demo`.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use support::{Client, Process, free_port, sample_api, seed_key, upstream, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `tollgate serve` with the real tyk.conf fixture, made local by Tyk's environment names.
fn serve_fixture(app_path: &std::path::Path, port: u16, log: &std::path::Path) -> Process {
    let child = Command::new(BIN)
        .args(["serve", "--conf", &fixture("tyk.conf")])
        .env("TYK_GW_APPPATH", app_path)
        .env("TYK_GW_LISTENPORT", port.to_string())
        .env("TYK_GW_LISTENADDRESS", "127.0.0.1")
        .env("TYK_GW_STORAGE_TYPE", "memory")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Process { child }
}

#[tokio::test]
async fn a_real_tyk_conf_serves_the_sample_api() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    std::fs::write(
        apps.join("app_sample.json"),
        sample_api(&up.url("")).to_string(),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("gw.log");
    let mut gw = serve_fixture(&apps, port, &log);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for_port(addr, Duration::from_secs(10)).await,
        "gateway did not start"
    );

    let client = Client::new();
    let base = format!("http://{addr}");
    let secret = ("x-tyk-authorization", "352d20ee67be67f6340b4c0605b044b7");
    let r = client
        .request(
            "POST",
            &format!("{base}/tyk/keys/testkey"),
            &[secret],
            Some(seed_key().to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = client
        .request(
            "GET",
            &format!("{base}/tyk-api-test/get"),
            &[("authorization", "testkey")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // SIGHUP reloads: a second API appears.
    let mut second = sample_api(&up.url(""));
    second["api_id"] = json!("2");
    second["use_keyless"] = json!(true);
    second["proxy"]["listen_path"] = json!("/second/");
    std::fs::write(apps.join("second.json"), second.to_string()).unwrap();
    assert_eq!(
        client
            .request("GET", &format!("{base}/second/get"), &[], None)
            .await
            .status,
        404
    );
    let hup = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut status = 0;
    for _ in 0..50 {
        status = client
            .request("GET", &format!("{base}/second/get"), &[], None)
            .await
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "SIGHUP reloaded the definitions");

    let stderr = std::fs::read_to_string(&log).unwrap();
    let warning = stderr
        .lines()
        .find(|l| l.contains("not supported"))
        .expect("one warning line");
    assert!(
        warning.contains("template_path") && warning.contains("analytics_config"),
        "{warning}"
    );
    assert_eq!(stderr.matches("not supported").count(), 1, "warned once");
    gw.child.kill().unwrap();
}

fn run_with_conf(conf: &str, ext: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("tyk.{ext}"));
    std::fs::write(&path, conf).unwrap();
    std::fs::create_dir(dir.path().join("apps")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--conf"]).arg(&path);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let port = free_port();
    // (config text, file extension, environment, field the error must name)
    type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            json!({"secret": "s", "listen_port": 70000}).to_string(),
            "conf",
            vec![],
            "listen_port",
        ),
        (
            json!({"secret": "s", "listen_port": port, "storage": {"type": "etcd"}}).to_string(),
            "conf",
            vec![],
            "storage.type",
        ),
        (
            json!({"secret": "s", "listen_port": port, "hash_key_function": "md5"}).to_string(),
            "conf",
            vec![],
            "hash_key_function",
        ),
        (
            json!({"listen_port": port, "storage": {"type": "memory"}}).to_string(),
            "conf",
            vec![],
            "secret",
        ),
        (
            json!({"secret": "s", "listen_port": port, "app_path": "/nonexistent/apps"})
                .to_string(),
            "conf",
            vec![],
            "app_path",
        ),
        ("{ not json".to_string(), "conf", vec![], "JSON"),
        (
            json!({"secret": "s", "listen_port": port, "http_server_options": {"use_ssl": true}})
                .to_string(),
            "conf",
            vec![],
            "http_server_options.certificates",
        ),
        (
            json!({"secret": "s", "listen_port": port, "http_server_options": {"use_ssl": true,
                "certificates": [{"domain_name": "x", "cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}]}})
            .to_string(),
            "conf",
            vec![],
            "http_server_options.certificates[0].cert_file",
        ),
        (
            json!({"secret": "s", "listen_port": port, "http_server_options": {"use_ssl": true, "min_version": 999}})
                .to_string(),
            "conf",
            vec![],
            "http_server_options.min_version",
        ),
        (
            "secret = \"s\"\nlisten_port = \"x\"\n".to_string(),
            "toml",
            vec![],
            "listen_port",
        ),
        (
            json!({"secret": "s", "listen_port": port}).to_string(),
            "conf",
            vec![("TYK_GW_LISTENPORT", "nope")],
            "TYK_GW_LISTENPORT",
        ),
        (
            json!({"secret": "s", "listen_port": port, "storage": {"addrs": ["a:1"]}}).to_string(),
            "conf",
            vec![],
            "storage.master_name",
        ),
        (
            json!({"secret": "s", "listen_port": port, "log_level": "verbose"}).to_string(),
            "conf",
            vec![],
            "log_level",
        ),
        (
            json!({"secret": "s", "listen_port": port,
                "access_logs": {"enabled": true, "template": ["path", "cookie"]}})
            .to_string(),
            "conf",
            vec![],
            "access_logs.template[1]",
        ),
        (
            json!({"secret": "s", "listen_port": port, "storage": {"type": "memory"},
                "access_logs": {"enabled": true, "path": "/nonexistent/dir/access.log"}})
            .to_string(),
            "conf",
            vec![],
            "access_logs.path",
        ),
    ];
    for (conf, ext, envs, field) in cases {
        let (code, stderr) = run_with_conf(&conf, ext, &envs);
        assert_eq!(code, Some(2), "{conf}: {stderr}");
        assert!(stderr.contains(field), "{conf}: {stderr}");
    }
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "no port was bound"
    );
}

#[tokio::test]
async fn toml_config_works_too() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    std::fs::write(apps.join("a.json"), api.to_string()).unwrap();
    let port = free_port();
    let conf = dir.path().join("tyk.toml");
    std::fs::write(
        &conf,
        format!("listen_address = \"127.0.0.1\"\nlisten_port = {port}\nsecret = \"s\"\napp_path = \"apps\"\n[storage]\ntype = \"memory\"\n"),
    )
    .unwrap();
    let _gw = serve(&conf, Stdio::null());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    let r = Client::new()
        .request("GET", &format!("http://{addr}/tyk-api-test/get"), &[], None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn secrets_from_the_environment_and_tyk_conf_fill_header_values_and_rewrites() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    let mut api = sample_api(&up.url(""));
    api["use_keyless"] = json!(true);
    let version = &mut api["version_data"]["versions"]["Default"];
    version["use_extended_paths"] = json!(true);
    version["global_headers"] = json!({
        "x-upstream-token": "Bearer $secret_env.upstream_token",
        "x-db": "$secret_conf.db_user",
        "x-unset": "[$secret_env.absent]",
    });
    version["extended_paths"] = json!({"url_rewrites": [{"path": "/tenant", "method": "GET",
        "match_pattern": "/tenant", "rewrite_to": "/anything/$secret_conf.tenant"}]});
    std::fs::write(apps.join("a.json"), api.to_string()).unwrap();
    let port = free_port();
    let conf = dir.path().join("tyk.conf");
    std::fs::write(
        &conf,
        json!({"listen_address": "127.0.0.1", "listen_port": port, "secret": "s",
            "app_path": apps, "storage": {"type": "memory"},
            "secrets": {"db_user": "svc-reader", "tenant": "acme"}})
        .to_string(),
    )
    .unwrap();
    let log = dir.path().join("log");
    let _gw = Process {
        child: Command::new(BIN)
            .args(["serve", "--conf"])
            .arg(&conf)
            .env("TYK_SECRET_UPSTREAM_TOKEN", "t0k3n")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    let client = Client::new();
    let r = client
        .request("GET", &format!("http://{addr}/tyk-api-test/get"), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["X-Upstream-Token"], "Bearer t0k3n", "{seen}");
    assert_eq!(seen["X-Db"], "svc-reader");
    assert_eq!(seen["X-Unset"], "[]");
    let r = client
        .request(
            "GET",
            &format!("http://{addr}/tyk-api-test/tenant"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["url"]
            .as_str()
            .unwrap()
            .ends_with("/anything/acme"),
        "{}",
        r.text()
    );
    // The secret without a value is reported at load; no secret's value is logged.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains('\u{1b}'),
        "no colour codes in a file: {logged:?}"
    );
    assert!(logged.contains("$secret_env.absent"), "{logged}");
    assert!(
        !logged.contains("t0k3n") && !logged.contains("svc-reader"),
        "{logged}"
    );
}

#[tokio::test]
async fn log_level_from_tyk_conf_sets_what_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    let port = free_port();
    let conf = dir.path().join("tyk.conf");
    std::fs::write(
        &conf,
        json!({"listen_address": "127.0.0.1", "listen_port": port, "secret": "s",
            "app_path": apps, "storage": {"type": "memory"}, "log_level": "warn"})
        .to_string(),
    )
    .unwrap();
    let log = dir.path().join("log");
    let _gw = Process {
        child: Command::new(BIN)
            .args(["serve", "--conf"])
            .arg(&conf)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    // The start-up lines are written around the bind: give them time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains("INFO") && !logged.contains("listening"),
        "info lines below log_level warn: {logged}"
    );
}

#[tokio::test]
async fn demo_answers_the_seed_curl() {
    let out = Command::new(BIN)
        .args(["demo", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["storage"]["type"], "memory");
    assert_eq!(config["listen_port"], 8080);

    let port = free_port();
    let _demo = Process {
        child: Command::new(BIN)
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    let client = Client::new();
    let r = client
        .request(
            "GET",
            &format!("http://{addr}/tyk-api-test/get?q=1"),
            &[("authorization", "testkey")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(body["url"].as_str().unwrap().ends_with("/get?q=1"));
    assert_eq!(body["args"]["q"], "1");
    let r = client
        .request("GET", &format!("http://{addr}/tyk-api-test/get"), &[], None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn control_api_port_moves_the_gateway_api_off_the_public_port() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    std::fs::write(apps.join("a.json"), sample_api(&up.url("")).to_string()).unwrap();
    let (port, control) = (free_port(), free_port());
    let conf = dir.path().join("tyk.conf");
    let config = json!({"listen_address": "127.0.0.1", "listen_port": port,
        "control_api_port": control, "secret": "s", "app_path": "apps",
        "storage": {"type": "memory"}});
    std::fs::write(&conf, config.to_string()).unwrap();
    let _gw = serve(&conf, Stdio::null());
    let (public, control): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("127.0.0.1:{control}").parse().unwrap(),
    );
    assert!(wait_for_port(public, Duration::from_secs(10)).await);
    assert!(wait_for_port(control, Duration::from_secs(10)).await);
    let client = Client::new();
    let secret = [("x-tyk-authorization", "s")];
    let body = Some(seed_key().to_string().into_bytes());
    let r = client
        .request(
            "POST",
            &format!("http://{control}/tyk/keys/ctl"),
            &secret,
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The public port answers /tyk/ as Tyk does with a control port: not found.
    let r = client
        .request(
            "POST",
            &format!("http://{public}/tyk/keys/other"),
            &secret,
            body,
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (404, "Not Found"));
    for path in ["/hello", "/ready"] {
        let (on_public, on_control) = (
            format!("http://{public}{path}"),
            format!("http://{control}{path}"),
        );
        let r = client.request("GET", &on_public, &[], None).await;
        assert_eq!(r.status, 404, "{path} on the public port");
        let r = client.request("GET", &on_control, &[], None).await;
        assert_eq!(r.status, 200, "{path} on the control port");
    }
    let key = [("authorization", "ctl")];
    let r = client
        .request(
            "GET",
            &format!("http://{public}/tyk-api-test/get"),
            &key,
            None,
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "the key serves on the public port: {}",
        r.text()
    );
    let r = client
        .request(
            "GET",
            &format!("http://{control}/tyk-api-test/get"),
            &key,
            None,
        )
        .await;
    assert_eq!(r.status, 404, "the control port serves no API");
}

/// `tollgate serve --conf conf` at log level info, its stderr to `stderr`.
fn serve(conf: &std::path::Path, stderr: impl Into<Stdio>) -> Process {
    Process {
        child: Command::new(BIN)
            .args(["serve", "--conf"])
            .arg(conf)
            .env("RUST_LOG", "info")
            .stderr(stderr)
            .spawn()
            .unwrap(),
    }
}

/// [`serve`], its stderr written to `log`.
fn serve_logged(conf: &std::path::Path, log: &std::path::Path) -> Process {
    serve(conf, std::fs::File::create(log).unwrap())
}

#[tokio::test]
async fn a_new_process_takes_over_while_the_old_one_drains_with_no_failed_request() {
    let redis = support::redis::RedisServer::start().await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).unwrap();
    std::fs::write(apps.join("a.json"), sample_api(&up.url("")).to_string()).unwrap();
    let port = free_port();
    let conf = dir.path().join("tyk.conf");
    let config = json!({"listen_address": "127.0.0.1", "listen_port": port, "secret": "s",
        "app_path": "apps", "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port}});
    std::fs::write(&conf, config.to_string()).unwrap();
    let mut old = serve_logged(&conf, &dir.path().join("old.log"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    // The seed's key without its rate limit and quota: every refusal here is a failure.
    let mut key = seed_key();
    key["rate"] = json!(0);
    key["quota_max"] = json!(-1);
    let body = Some(key.to_string().into_bytes());
    let secret = [("x-tyk-authorization", "s")];
    let r = Client::new()
        .request(
            "POST",
            &format!("http://{addr}/tyk/keys/takeover"),
            &secret,
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Steady keyed load over keep-alive connections, through the replacement.
    let url = format!("http://{addr}/tyk-api-test/get");
    let load = tokio::process::Command::new("wrk")
        .args(["-t2", "-c16", "-d8s", "-H", "authorization: takeover", &url])
        .kill_on_drop(true)
        .output();
    let load = tokio::spawn(load);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new_log = dir.path().join("new.log");
    let _new = serve_logged(&conf, &new_log);
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&new_log)
        .unwrap_or_default()
        .contains("gateway listening")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new process listens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &old.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = load
        .await
        .unwrap()
        .expect("wrk runs (scripts/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("requests in"), "{report}");
    assert!(
        !report.contains("Socket errors"),
        "no connection error: {report}"
    );
    let after = Client::new()
        .request("GET", &url, &[("authorization", "takeover")], None)
        .await;
    assert!(
        !report.contains("Non-2xx"),
        "no failed request: {report}; now: {} {}",
        after.status,
        after.text()
    );
    let exited = old.child.try_wait().unwrap();
    assert!(
        exited.is_some_and(|status| status.success()),
        "the old process finished draining and exited: {exited:?}"
    );
}
