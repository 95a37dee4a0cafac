//! `proxybus up` as an operator runs it: in the background, then `request`,
//! `feedback` ×5 failures, `health --json` showing the proxy ejected, `request`
//! no longer returning it; then SIGINT, after which no child process is left.

use std::process::{Output, Stdio};
use std::time::Duration;

use proxybus_shared::{ErrorKind, ExchangeState, HealthState, HealthStats, ProxyResponse, proxy_id};

const BIN: &str = env!("CARGO_BIN_EXE_proxybus");

async fn proxybus(data_dir: &std::path::Path, args: &[&str]) -> Output {
    let output =
        tokio::process::Command::new(BIN).arg("--data-dir").arg(data_dir).args(args).env_remove("NATS_URL").output();
    tokio::time::timeout(Duration::from_secs(30), output).await.expect("proxybus finished").expect("proxybus ran")
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
}

fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let parent = after_name.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(child);
        }
    }
    found
}

#[tokio::test]
async fn up_serves_requests_ejects_after_five_failures_and_leaves_nothing_behind_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["up", "--pool-listen", "127.0.0.1:0"])
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up_pid = up.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(up.stdout.take().unwrap());
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        while !banner.contains("Ctrl-C stops everything") {
            assert!(stdout.read_line(&mut banner).await.unwrap() > 0, "up exited early: {banner}");
        }
    })
    .await
    .expect("up printed its banner");
    assert!(banner.contains("12 proxies in 3 regions"), "{banner}");
    // The dashboard (issue 20) is served on loopback, and its address printed.
    let dashboard = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard").map(str::trim))
        .expect("up prints the dashboard's address")
        .to_owned();
    assert!(dashboard.starts_with("http://127.0.0.1:"), "{dashboard}");
    let nats_children = children(up_pid);
    assert_eq!(nats_children.len(), 1, "up runs exactly one child, nats-server: {nats_children:?}");

    // A proxy from the pool, through NATS and the resolver.
    let output = proxybus(&data, &["request", "binance", "websocket", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let first: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
    let chosen = first.proxy_id.expect("a proxy from the pool");
    let region = first.region.clone().expect("the pool says which region").to_string();
    let url = first.proxy_url.clone().unwrap();

    // Two other proxies of that region work, so ejecting one stays under the 50% cap.
    let sample = include_str!("../../services/pool/inventory.sample.toml");
    let others: Vec<String> = sample
        .lines()
        .filter_map(|l| l.strip_prefix("url = \"").and_then(|l| l.split('"').next()))
        .filter(|u| *u != url && (u.contains("203.0.113.1") || u.contains("198.51.100.")))
        .map(str::to_owned)
        .take(2)
        .collect();
    assert_eq!(others.len(), 2, "two other us-east proxies in the sample");
    for other in &others {
        let id = proxy_id(other);
        let output = proxybus(
            &data,
            &[
                "feedback",
                id.as_str(),
                "--exchange",
                "kraken",
                "--conn",
                "http",
                "--ok",
                "--region",
                &region,
                "--proxy-url",
                other,
            ],
        )
        .await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    for _ in 0..5 {
        let output = proxybus(
            &data,
            &[
                "feedback",
                chosen.as_str(),
                "--exchange",
                "binance",
                "--conn",
                "websocket",
                "--fail",
                "timeout",
                "--region",
                &region,
                "--proxy-url",
                &url,
            ],
        )
        .await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    let ejected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let output = proxybus(&data, &["health", "--json"]).await;
            if output.status.success() {
                let stats: Vec<HealthStats> = serde_json::from_slice(&output.stdout).unwrap();
                if let Some(s) = stats.iter().find(|s| s.proxy_id == chosen && s.state == HealthState::Ejected) {
                    return s.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("health --json shows the proxy ejected");
    assert_eq!(ejected.consecutive_failures, 5);
    assert!(!serde_json::to_string(&ejected).unwrap().contains("demo-secret"), "no password in KV");
    // The dashboard's data shows it ejected too, redacted.
    proxybus_shared::http::install_crypto_provider();
    let shown = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let snapshot = reqwest::get(format!("{dashboard}api/snapshot")).await.unwrap().text().await.unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
            let proxies = parsed["proxies"].as_array().cloned().unwrap_or_default();
            if proxies.iter().any(|p| p["proxy_id"] == chosen.as_str() && p["state"] == "ejected") {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the dashboard shows the proxy ejected");
    assert!(!shown.contains("demo-secret"), "no password on the dashboard");

    // The same client and new ones no longer get it.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let output = proxybus(&data, &["request", "binance", "websocket", "--json"]).await;
            let again: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
            if again.proxy_id.as_ref() != Some(&chosen) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the resolver stopped handing out the ejected proxy");
    for i in 0..5 {
        let client = format!("fresh-feed-{i}");
        let output = proxybus(&data, &["request", "binance", "websocket", "--json", "--client-id", &client]).await;
        let answer: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
        assert_ne!(answer.proxy_id.as_ref(), Some(&chosen), "{client} got the ejected proxy");
    }

    // Ctrl-C: everything stops, nothing is left running.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up_pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), up.wait()).await.expect("up stopped").unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await.unwrap();
    assert!(rest.contains("nats-server stopped"), "{rest}");
    for child in nats_children {
        assert!(!pid_alive(child), "child {child} outlived proxybus up");
    }
    assert!(!data.join("nats.url").exists(), "the URL of a stopped server is removed");
}

/// A lab of four proxies in one region (`docs/lab.md`).
const LAB_FILE: &str = r#"
dir = "lab"

[simulator]
trades_per_second = 5.0

[simulator.binance]
request_weight_limit = 10
request_window_seconds = 60
ban_base_seconds = 10
ban_max_seconds = 600
ws_connect_limit = 10
ws_connect_window_seconds = 60
ws_inbound_messages_per_second = 5
geo_restricted_ips = ["127.0.0.3"]

[simulator.coinbase]
request_weight_limit = 5
request_window_seconds = 1
ban_base_seconds = 0
ban_max_seconds = 0
ws_connect_limit = 4
ws_connect_window_seconds = 1
ws_inbound_messages_per_second = 20

[[proxies]]
kind = "http"
region = "us-east"
source_ip = "127.0.0.2"

[[proxies]]
kind = "socks5"
region = "us-east"
source_ip = "127.0.0.3"

[[proxies]]
kind = "http"
region = "us-east"
source_ip = "127.0.0.4"

[[proxies]]
kind = "socks5"
region = "us-east"
source_ip = "127.0.0.5"
fault = { kind = "dead" }
"#;

/// Sends SIGINT to `up` and waits up to 10 s for it to stop, so that a failing
/// test does not SIGKILL it (`kill_on_drop`) and orphan its nats-server.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !pid_alive(self.0) {
            return;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGINT);
        for _ in 0..100 {
            if !pid_alive(self.0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn exchange<'a>(stats: &'a HealthStats, id: &str) -> Option<&'a proxybus_shared::ExchangeHealth> {
    stats.exchanges.iter().find(|(k, _)| k.as_str() == id).map(|(_, e)| e)
}

/// `proxybus up --demo --lab FILE`: the lab starts, feeds really connect through its
/// proxies, a real 451 from the simulated Binance bans the geo-restricted
/// proxy for binance only, a real 429 puts a proxy in cool-down for binance, real
/// refusals eject the dead proxy, and on SIGINT the feeds report what flowed and nothing is left.
#[tokio::test]
async fn demo_feeds_flow_through_the_lab_and_real_refusals_become_bans_and_ejections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // One region, so that round robin hands every proxy to the feeds at once: 127.0.0.3 is
    // geo-restricted by binance, 127.0.0.5 is dead, and two depth polls (weight 5 each) exceed
    // a weight of 10 per minute within seconds.
    let lab_file = dir.path().join("lab.toml");
    std::fs::write(&lab_file, LAB_FILE).unwrap();
    let mut up = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["up", "--demo", "--pool-listen", "127.0.0.1:0", "--lab"])
        .arg(&lab_file)
        .env_remove("NATS_URL")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up_pid = up.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(up.stdout.take().unwrap());
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        while !banner.contains("Ctrl-C stops everything") {
            assert!(stdout.read_line(&mut banner).await.unwrap() > 0, "up exited early: {banner}");
        }
    })
    .await
    .expect("up printed its banner");
    // Declared after `stdout`, so dropped before it: `up` can still print while it stops.
    let _stop_on_panic = StopOnDrop(up_pid);
    assert!(banner.contains("proxybus lab is up"), "{banner}");
    assert!(banner.contains("4 proxies in 1 regions"), "the lab's inventory is served: {banner}");
    let nats_children = children(up_pid);
    assert_eq!(nats_children.len(), 1, "the lab runs in-process; the only child is nats-server: {nats_children:?}");

    // Which proxy sends from the geo-restricted 127.0.0.3, and which are dead or refuse logins.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("lab/lab.json")).unwrap()).unwrap();
    let url_of = |source: &str| {
        manifest["proxies"].as_array().unwrap().iter().find(|p| p["source_ip"] == source).unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let restricted = url_of("127.0.0.3");
    let broken = [url_of("127.0.0.5")];

    // Drain stdout meanwhile, so that up never blocks on a full pipe.
    let reader = tokio::spawn(async move {
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await.unwrap();
        rest
    });
    let (banned, ejected) = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let output = proxybus(&data, &["health", "--json"]).await;
            if output.status.success() {
                let stats: Vec<HealthStats> = serde_json::from_slice(&output.stdout).unwrap();
                let banned = stats.iter().find(|s| {
                    s.proxy_url == restricted
                        && exchange(s, "binance").is_some_and(|e| e.state == ExchangeState::Banned)
                });
                let ejected = stats.iter().find(|s| broken.contains(&s.proxy_url) && s.state == HealthState::Ejected);
                let cooled = stats.iter().any(|s| {
                    exchange(s, "binance").is_some_and(|e| {
                        e.state == ExchangeState::Cooldown && e.last_error_kind == Some(ErrorKind::Http429)
                    })
                });
                if let (Some(banned), Some(ejected), true) = (banned, ejected, cooled) {
                    return (banned.clone(), ejected.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect(
        "a real 451 banned the restricted proxy for binance, a real 429 cooled one down, a broken proxy was ejected",
    );
    assert_eq!(exchange(&banned, "binance").unwrap().last_error_kind, Some(ErrorKind::Http451));
    assert!(
        exchange(&banned, "coinbase").is_none_or(|e| e.state == ExchangeState::Healthy),
        "451 is binance's only: {:?}",
        banned.exchanges
    );
    assert!(ejected.consecutive_failures >= 5, "{ejected:?}");
    assert_eq!(ejected.last_error_kind, Some(ErrorKind::Refused), "{ejected:?}");
    // The dashboard has the demo feeds' counters (issue 20).
    let dashboard = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard").map(str::trim))
        .expect("up --demo prints the dashboard's address")
        .to_owned();
    proxybus_shared::http::install_crypto_provider();
    let feeds = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let snapshot: serde_json::Value =
                reqwest::get(format!("{dashboard}api/snapshot")).await.unwrap().json().await.unwrap();
            // The first counters may come before any message did.
            if let Some(feeds) =
                snapshot["feeds"].as_array().filter(|f| f.iter().any(|f| f["messages"].as_u64() > Some(0)))
            {
                return feeds.clone();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the dashboard got the demo feeds' counters, with messages");
    assert!(feeds.iter().all(|f| f["name"].is_string() && f["reconnects"].is_u64()), "{feeds:?}");

    // The demo probes every lab proxy through itself to the lab's Binance: the working
    // ones pass, the dead one and the geo-restricted one (451 on the ping) fail.
    assert!(
        banner.contains("probes      every 30 s, through each proxy to api.binance.com:443, GET /api/v3/ping"),
        "{banner}"
    );
    let metrics = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics").map(str::trim))
        .expect("up prints its metrics address")
        .to_owned();
    let (passed, failed) = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            let count = |result: &str| {
                let label = format!("result=\"{result}\"");
                text.lines()
                    .find(|l| l.starts_with("proxybus_pool_active_checks_total") && l.contains(&label))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if count("pass") >= 2.0 && count("fail") >= 2.0 {
                return (count("pass"), count("fail"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the demo's probes ran: two lab proxies pass, two fail");
    assert!(passed >= 2.0 && failed >= 2.0, "{passed} passed, {failed} failed");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up_pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), up.wait()).await.expect("up stopped").unwrap();
    assert!(status.success(), "{status}");
    let rest = reader.await.unwrap();
    let summary = rest.lines().find(|l| l.starts_with("demo feeds:")).unwrap_or_else(|| panic!("no summary: {rest}"));
    let number_before = |marker: &str| -> u64 {
        let before = &summary[..summary.find(marker).unwrap_or_else(|| panic!("{marker} in {summary}"))];
        before.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
    };
    assert!(number_before(" over websockets") > 0, "trades flowed over websockets: {summary}");
    assert!(number_before(" by REST") > 0, "REST polls were answered: {summary}");
    // No count of 451s is asserted: the pool's probes can meet the geo-restricted proxy's
    // 451 first, and then no binance feed is given that proxy (its ban, from a real 451, is
    // checked above).
    assert!(!summary.contains("http_429=0 "), "{summary}");
    assert!(rest.contains("-- what the exchanges did"), "the live view ran");
    assert!(rest.contains("exchange lab stopped") && rest.contains("nats-server stopped"), "{rest}");
    for child in nats_children {
        assert!(!pid_alive(child), "child {child} outlived proxybus up");
    }
}

/// `proxybus lab` alone: it writes the inventory, the CA bundle and the manifest,
/// prints where everything is without a password, and stops by itself.
#[tokio::test]
async fn lab_runs_alone_writes_its_files_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = proxybus(&data, &["lab", "--duration", "1"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("proxybus lab is up") && stdout.contains("lab stopped"), "{stdout}");
    let inventory = std::fs::read_to_string(data.join("lab/inventory.toml")).unwrap();
    assert_eq!(inventory.matches("url = ").count(), 12, "{inventory}");
    assert!(std::fs::read_to_string(data.join("lab/ca.pem")).unwrap().contains("BEGIN CERTIFICATE"));
    let passwords: Vec<String> = inventory
        .lines()
        .filter_map(|l| l.split("url = \"").nth(1))
        .filter_map(|u| {
            let (_, rest) = u.split_once("://")?;
            Some(rest.split_once('@')?.0.split_once(':')?.1.to_owned())
        })
        .collect();
    assert_eq!(passwords.len(), 12, "every lab proxy has a login");
    for password in passwords {
        assert!(!stdout.contains(&password), "a password was printed");
    }
}

/// Issue #11, input a), through the binary: a fresh one-region deployment of three
/// proxies; the first proxy to report at all reports five timeouts in a row. It is
/// ejected (at least one proxy of a region can always be ejected) and no longer
/// handed out.
#[tokio::test]
async fn in_a_fresh_three_proxy_region_five_timeouts_eject_the_first_proxy_to_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let inventory = dir.path().join("three.toml");
    std::fs::write(
        &inventory,
        r#"default_region = "eu-west"
[defaults]
strategy = "round_robin"
sticky = false
[regions.eu-west]
[[regions.eu-west.proxies]]
url = "http://feed:pw-one@192.0.2.1:3128"
[[regions.eu-west.proxies]]
url = "http://feed:pw-two@192.0.2.2:3128"
[[regions.eu-west.proxies]]
url = "http://feed:pw-three@192.0.2.3:3128"
"#,
    )
    .unwrap();
    let mut up = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("up")
        .arg("--inventory")
        .arg(&inventory)
        .args(["--pool-listen", "127.0.0.1:0"])
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up_pid = up.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(up.stdout.take().unwrap());
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        while !banner.contains("Ctrl-C stops everything") {
            assert!(stdout.read_line(&mut banner).await.unwrap() > 0, "up exited early: {banner}");
        }
    })
    .await
    .expect("up printed its banner");
    assert!(banner.contains("3 proxies in 1 regions"), "{banner}");

    let output = proxybus(&data, &["request", "binance", "websocket", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let first: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
    let chosen = first.proxy_id.expect("a proxy from the pool");
    let url = first.proxy_url.clone().unwrap();
    for _ in 0..5 {
        let output = proxybus(
            &data,
            &[
                "feedback",
                chosen.as_str(),
                "--exchange",
                "binance",
                "--conn",
                "websocket",
                "--fail",
                "timeout",
                "--region",
                "eu-west",
                "--proxy-url",
                &url,
            ],
        )
        .await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let ejected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let output = proxybus(&data, &["health", "--json"]).await;
            if output.status.success() {
                let stats: Vec<HealthStats> = serde_json::from_slice(&output.stdout).unwrap();
                if let Some(s) = stats.iter().find(|s| s.proxy_id == chosen && s.state == HealthState::Ejected) {
                    return (s.clone(), stats.len());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("health --json shows the proxy ejected");
    assert_eq!(ejected.1, 1, "the only proxy heard of");
    assert_eq!(ejected.0.consecutive_failures, 5);
    assert!(!serde_json::to_string(&ejected.0).unwrap().contains("pw-"), "no password in KV");
    // Not handed out again: the same feed (once its lease is dropped) and new ones.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let output = proxybus(&data, &["request", "binance", "websocket", "--json"]).await;
            let again: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
            if again.proxy_id.as_ref() != Some(&chosen) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the resolver stopped handing out the ejected proxy");
    for i in 0..6 {
        let client = format!("fresh-feed-{i}");
        let output = proxybus(&data, &["request", "binance", "websocket", "--json", "--client-id", &client]).await;
        let answer: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
        assert_ne!(answer.proxy_id.as_ref(), Some(&chosen), "{client} got the ejected proxy");
        assert!(answer.proxy_id.is_some(), "the two others still serve");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up_pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), up.wait()).await.expect("up stopped").unwrap();
    assert!(status.success(), "{status}");
}
