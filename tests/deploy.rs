//! The shipped layouts: the Compose files validate; the Compose layout runs in real containers
//! (images built from Debian's packages) and the native stack as processes; each comes up,
//! bootstraps, answers the seed's curl, fails over and answers it again.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Client, free_port};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn compose_tool() -> Command {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

#[test]
fn compose_files_validate() {
    let dir = deploy().join("compose");
    for files in [
        vec!["docker-compose.yml"],
        vec!["docker-compose.yml", "docker-compose.sentinel.yml"],
    ] {
        let mut cmd = compose_tool();
        for f in &files {
            cmd.arg("-f").arg(dir.join(f));
        }
        let out = cmd
            .args(["config", "-q"])
            .output()
            .expect("a compose tool (scripts/test installs docker-compose)");
        assert!(
            out.status.success(),
            "{files:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let compose = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    for service in [
        "redis-a:",
        "redis-b:",
        "redis-c:",
        "sentinel-1:",
        "sentinel-2:",
        "sentinel-3:",
        "haproxy:",
        "upstream:",
        "tollgate:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "service {service}"
        );
    }
    for needle in [
        "\"--replicaof\", \"redis-a\", \"6379\"",
        "redis-sentinel",
        "\"${HAPROXY_PUBLISH:-6378:6378}\"",
        "\"${TOLLGATE_PUBLISH:-8080:8080}\"",
        "TYK_GW_STORAGE_HOST: haproxy",
    ] {
        assert!(compose.contains(needle), "{needle}");
    }
    for mounted in [
        "haproxy.cfg",
        "sentinel.conf",
        "tyk.conf",
        "app_sample.json",
    ] {
        assert!(
            deploy().join("templates").join(mounted).is_file(),
            "{mounted}"
        );
        assert!(
            compose.contains(&format!("../templates/{mounted}")),
            "{mounted} mounted"
        );
    }
    let haproxy = std::fs::read_to_string(deploy().join("templates/haproxy.cfg")).unwrap();
    for check in [
        "tcp-check send PING",
        "tcp-check expect string +PONG",
        "tcp-check send info\\ replication",
        "tcp-check expect string role:master",
        "tcp-check send QUIT",
        "tcp-check expect string +OK",
        "check inter 1s",
    ] {
        assert!(haproxy.contains(check), "{check}");
    }
    let sentinel = std::fs::read_to_string(dir.join("docker-compose.sentinel.yml")).unwrap();
    assert!(
        sentinel.contains("TYK_GW_STORAGE_ADDRS") && sentinel.contains("TYK_GW_STORAGE_MASTERNAME")
    );
}

/// Asserts that a command succeeded and returns what it printed.
fn succeeded(what: &str, out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ha-stack`'s `PORTS`: the ports in its order, space-separated.
fn ports_env(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A native stack in a temp dir, stopped on drop.
struct Stack {
    dir: tempfile::TempDir,
    gateway: u16,
}

impl Stack {
    fn up(sentinel: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
        let mut cmd = Command::new(deploy().join("local/ha-stack"));
        cmd.arg("up").arg("--dir").arg(dir.path());
        if sentinel {
            cmd.arg("--sentinel");
        }
        let stack = Self {
            gateway: ports[8],
            dir,
        };
        let out = cmd
            .env("PORTS", ports_env(&ports))
            .env("TOLLGATE_BIN", env!("CARGO_BIN_EXE_tollgate"))
            .output()
            .unwrap();
        succeeded("ha-stack up", out);
        stack
    }

    /// `ha-stack status`: one line per process, with the role of each Redis.
    fn status(&self) -> String {
        let out = Command::new(deploy().join("local/ha-stack"))
            .arg("status")
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(deploy().join("local").join(script))
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .env("DOWN_AFTER_MS", "2000")
            .output()
            .unwrap();
        succeeded(script, out)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new(deploy().join("local/ha-stack"))
            .arg("down")
            .arg("--dir")
            .arg(self.dir.path())
            .output();
    }
}

async fn seed_curl(client: &Client, port: u16) -> (u16, String) {
    let r = client
        .request(
            "GET",
            &format!("http://127.0.0.1:{port}/tyk-api-test/get"),
            &[("authorization", "testkey")],
            None,
        )
        .await;
    (r.status, r.text())
}

async fn native_stack_round_trip(sentinel: bool) {
    let stack = Stack::up(sentinel);
    let out = stack.run("bootstrap.sh", &[]);
    assert!(
        out.contains("sentinels see 2 replicas and each other"),
        "{out}"
    );
    assert!(out.contains("created testkey"), "{out}");
    let client = Client::new();
    assert_eq!(seed_curl(&client, stack.gateway).await.0, 200);
    stack.run("failover.sh", &["a"]);
    // The seed's curl answers 200 all along: while redis-a is frozen, through the promotion
    // (down-after 2000 ms here), and for two seconds on the new master.
    let start = Instant::now();
    let mut promoted_at = None;
    while promoted_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(2)) {
        let (status, body) = seed_curl(&client, stack.gateway).await;
        assert_eq!(status, 200, "at {:?}: {body}", start.elapsed());
        if promoted_at.is_none()
            && stack.status().lines().any(|l| {
                (l.starts_with("redis-b") || l.starts_with("redis-c")) && l.ends_with("master")
            })
        {
            promoted_at = Some(Instant::now());
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "Sentinel promoted redis-b or redis-c within 25 s: {}",
            stack.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn native_stack_through_haproxy() {
    native_stack_round_trip(false).await;
}

#[tokio::test]
async fn native_stack_with_native_sentinel() {
    native_stack_round_trip(true).await;
}

/// The container tests one after the other: each stack takes both cores for minutes.
fn one_stack_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static DOCKER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DOCKER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The demos' drill, shortened: `--` and what follows it on their command lines.
const SHORT_DRILL: [&str; 7] = [
    "--",
    "--duration",
    "12",
    "--freeze-secs",
    "6",
    "--rate",
    "50",
];

/// The value in the row of `tollgate drill --table`'s output that `name` starts.
fn table_row<'t>(table: &'t str, name: &str) -> &'t str {
    table
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no row {name}: {table}"))
}

/// `docker-compose down -v` of a project on drop, so a failed or interrupted run leaves nothing
/// (seed-test removes its stack itself; this covers the test being killed around it).
struct ComposeProject {
    name: String,
    sentinel: bool,
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let dir = deploy().join("compose");
        let mut cmd = compose_tool();
        cmd.arg("-f").arg(dir.join("docker-compose.yml"));
        if self.sentinel {
            cmd.arg("-f").arg(dir.join("docker-compose.sentinel.yml"));
        }
        let _ = cmd
            .args([
                "-p",
                &self.name,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "1",
            ])
            .output();
    }
}

/// The seed's steps verbatim on the Compose layout, in containers: `up -d`, `./bootstrap.sh`,
/// the curl, `./failover.sh`, the curl every 0.5 s through the 30 s freeze and the promotion
/// (all 200), then redis-a back as a replica. The images come from Debian's packages
/// (`build-images`, the rootfs cached under target/images) with this build's binary.
#[test]
fn compose_seed_steps_in_containers() {
    let _docker = one_stack_at_a_time();
    let dir = deploy().join("compose");
    let out = Command::new(dir.join("build-images"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .output()
        .expect("deploy/compose/build-images runs");
    let built = succeeded("build-images", out);
    assert!(built.contains("tollgate:local"), "{built}");
    for (variant, sentinel) in [("haproxy", false), ("sentinel", true)] {
        let project = ComposeProject {
            name: format!("tollgate-test-{variant}-{}", std::process::id()),
            sentinel,
        };
        let out = Command::new(dir.join("seed-test"))
            .arg(variant)
            .env("COMPOSE_PROJECT_NAME", &project.name)
            .output()
            .expect("deploy/compose/seed-test runs");
        let summary = succeeded(&format!("seed-test {variant}"), out);
        assert!(summary.contains(&format!("PASS ({variant})")), "{summary}");
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with("non-200 responses")
                    && l.split_whitespace().last() == Some("0")),
            "{summary}"
        );
    }
    // The Compose demo: the drill (shortened) inside the gateway's container, its table.
    let project = ComposeProject {
        name: format!("tollgate-test-demo-{}", std::process::id()),
        sentinel: false,
    };
    let out = Command::new(dir.join("demo"))
        .args(SHORT_DRILL)
        .env("COMPOSE_PROJECT_NAME", &project.name)
        .env("DOWN_AFTER_MS", "2000")
        .output()
        .expect("deploy/compose/demo runs");
    let shown = succeeded("compose demo", out);
    assert_eq!(
        table_row(&shown, "acknowledged keys lost (must be 0)"),
        "0",
        "{shown}"
    );
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=com.docker.compose.project={}", project.name))
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "containers left by the demo: {shown}"
    );
}

/// `ha-stack demo`: the layout up, bootstrapped, the drill through a freeze (shortened here),
/// its table printed, and every process gone afterwards.
#[test]
fn ha_stack_demo_runs_the_drill_and_takes_the_stack_down() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let out = Command::new(deploy().join("local/ha-stack"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args(SHORT_DRILL)
        .env("PORTS", ports_env(&ports))
        .env("DOWN_AFTER_MS", "2000")
        .env("TOLLGATE_BIN", env!("CARGO_BIN_EXE_tollgate"))
        .output()
        .unwrap();
    let shown = succeeded("ha-stack demo", out);
    let row = |name| table_row(&shown, name);
    assert!(
        row("keyed requests sent").parse::<u64>().unwrap() > 300,
        "{shown}"
    );
    assert_eq!(row("warm keys' non-2xx (must be none)"), "none", "{shown}");
    assert_eq!(row("acknowledged keys lost (must be 0)"), "0", "{shown}");
    assert!(!dir.path().join("ports.env").exists(), "{shown}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers after the demo: {shown}"
        );
    }
}

/// The partition drills across containers (`deploy/compose/drill-test all`, images built with
/// this build's binary): split brain, a gateway node cut off from every Redis for 60 s, a
/// sentinel minority cut off, a gateway node killed behind the HTTP load balancer and a
/// rolling restart of both, each on a fresh stack, each goal checked by the script.
#[test]
fn compose_partition_drills() {
    let _docker = one_stack_at_a_time();
    let out = Command::new(deploy().join("compose/drill-test"))
        .args(["all", "--build", "--bin"])
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .env("TOLLGATE_IMAGE", "tollgate:drill-test")
        .output()
        .expect("deploy/compose/drill-test runs");
    let shown = succeeded("drill-test all", out);
    for scenario in [
        "split-brain",
        "gateway-cut",
        "sentinel-minority",
        "lb-kill",
        "rolling-restart",
    ] {
        assert!(
            shown.contains(&format!("PASS ({scenario})")),
            "{scenario}: {shown}"
        );
    }
    assert!(!shown.contains("MISS"), "{shown}");
}
