//! `proxybus up` as an operator runs it: in the background, then `request`,
//! `feedback` ×5 failures, `health --json` showing the proxy ejected, `request`
//! no longer returning it; then SIGINT, after which no child process is left.

use std::process::{Output, Stdio};
use std::time::Duration;

use proxybus_shared::{HealthState, HealthStats, ProxyResponse, proxy_id};

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
    let nats_children = children(up_pid);
    assert_eq!(nats_children.len(), 1, "up runs exactly one child, nats-server: {nats_children:?}");

    // A proxy from the pool, through NATS and the resolver.
    let output = proxybus(&data, &["request", "binance", "websocket", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let first: ProxyResponse = serde_json::from_slice(&output.stdout).unwrap();
    let chosen = first.proxy_id.clone().expect("a proxy from the pool");
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
    let chosen = first.proxy_id.clone().expect("a proxy from the pool");
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
