//! Active checks against listeners and proxies the test starts on 127.0.0.1: the
//! harness's real HTTP, HTTPS, SOCKS5 and SOCKS4 proxies (`proxybus_tests::TestProxy`),
//! and a scripted HTTP proxy whose every answer the test chooses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxybus_pool::ActiveCheckSettings;
use proxybus_pool::active_check::{self, ProbeTarget};
use proxybus_shared::ErrorKind;
use proxybus_tests::{ProxyCredentials, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::*;

/// A scripted HTTP proxy answering every CONNECT with `status`; records the requests' heads.
async fn fake_proxy(status: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    fake_proxy_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), status)
}

/// [`fake_proxy`] on a listener the test bound.
fn fake_proxy_on(listener: TcpListener, status: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 1024];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buffer.len() {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&buffer[..read]).into_owned());
                let _ = stream.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes()).await;
            });
        }
    });
    (port, heads)
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn inventory(urls: &[String]) -> String {
    let mut text =
        "default_region = \"local\"\n[regions.local]\nstrategy = \"round_robin\"\nsticky = false\n".to_owned();
    for url in urls {
        text.push_str(&format!("[[regions.local.proxies]]\nurl = \"{url}\"\n"));
    }
    text
}

#[tokio::test]
async fn failed_checks_take_a_proxy_out_and_passing_ones_bring_it_back() {
    let (good, heads) = fake_proxy("200 Connection established").await;
    let (refusing, _) = fake_proxy("407 Proxy Authentication Required").await;
    let dead = closed_port().await;
    let good_url = format!("http://feed:p%40ss@127.0.0.1:{good}");
    let refusing_url = format!("http://127.0.0.1:{refusing}");
    let dead_url = format!("http://127.0.0.1:{dead}");
    let selector = selector(&inventory(&[good_url.clone(), refusing_url.clone(), dead_url.clone()]));
    let target = Some("stream.binance.com:9443");
    let probe = active_check::ProbeTarget { connect_target: target.map(str::to_owned), ..Default::default() };
    let timeout = Duration::from_secs(5);

    let inventory = selector.inventory();
    let proxy = |url: &str| inventory.proxy(&proxybus_shared::proxy_id(url)).unwrap().clone();
    active_check::check(&proxy(&good_url), &probe, timeout).await.expect("CONNECT answered 200");
    let head = heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("CONNECT stream.binance.com:9443 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Proxy-Authorization: Basic ZmVlZDpwQHNz\r\n"), "decoded credentials, base64: {head}");
    let refused = active_check::check(&proxy(&refusing_url), &probe, timeout).await.unwrap_err();
    assert_eq!(refused.kind(), (ErrorKind::ProxyAuth, Some(407)), "{refused:?}");
    let dead_err = active_check::check(&proxy(&dead_url), &probe, timeout).await.unwrap_err();
    assert_eq!(dead_err.kind(), (ErrorKind::Refused, None), "{dead_err:?}");

    // One failed round is not enough (unhealthy_threshold = 2); two are.
    active_check::check_round(&selector, target, timeout).await;
    assert_eq!(selector.proxies(None).iter().filter(|v| v.local.check == "down").count(), 0);
    active_check::check_round(&selector, target, timeout).await;
    let down: Vec<_> =
        selector.proxies(None).into_iter().filter(|v| v.local.check == "down").map(|v| v.proxy_id).collect();
    assert_eq!(down.len(), 2);
    for i in 0..20 {
        let answer = selector.respond(&request("binance", &format!("c{i}"))).unwrap();
        assert_eq!(answer.proxy_url.as_deref(), Some(good_url.as_str()));
    }

    // The dead proxy comes up: one passing check (healthy_threshold = 1) brings it back.
    let listener = TcpListener::bind(("127.0.0.1", dead)).await.expect("the closed port is free again");
    fake_proxy_on(listener, "200 Connection established");
    active_check::check_round(&selector, target, timeout).await;
    let back = selector.proxies(None).into_iter().find(|v| v.proxy_id == proxybus_shared::proxy_id(&dead_url)).unwrap();
    assert_eq!(back.local.check, "up");
}

/// A listener standing for the exchange: it accepts connections and holds them.
async fn exchange_stand_in() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr.to_string()
}

#[tokio::test]
async fn every_scheme_is_probed_in_its_own_protocol_with_its_credentials() {
    let target = exchange_stand_in().await;
    let login = Some(ProxyCredentials::new("feed", "p@ss:w/rd"));
    let http = TestProxy::http_connect(login.clone()).await.unwrap();
    let https = TestProxy::https_connect(login.clone()).await.unwrap();
    let socks5 = TestProxy::socks5(login.clone()).await.unwrap();
    let socks4 = TestProxy::socks4(login).await.unwrap();
    // The https proxy's certificate comes from a CA of its own: the probe trusts it for
    // proxies only, through `proxy_ca_file`.
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), https.ca_pem().unwrap()).unwrap();
    let on = |proxy_ca_file: Option<&std::path::Path>| {
        let settings = ActiveCheckSettings {
            connect_target: Some(target.clone()),
            proxy_ca_file: proxy_ca_file.map(Into::into),
            ..Default::default()
        };
        ProbeTarget::from_settings(&settings).unwrap()
    };
    let probe = on(Some(ca.path()));
    assert!(active_check::speaks_through(&probe), "with a target, every pass went through the proxy");

    const WRONG: &str = "not-the-password";
    let passing = [
        (http.url(), &http),
        (https.url(), &https),
        (socks5.url(), &socks5),
        (socks5.url_as("socks5h"), &socks5),
        (socks4.url(), &socks4),
        (socks4.url_as("socks4a"), &socks4),
    ];
    let refusing = [http.url_with("feed", WRONG), https.url_with("feed", WRONG), socks5.url_with("feed", WRONG)];
    let urls: Vec<String> = passing.iter().map(|(url, _)| url.clone()).chain(refusing.iter().cloned()).collect();
    let selector = selector(&inventory(&urls));
    let inventory = selector.inventory();
    let proxy = |url: &str| inventory.proxy(&proxybus_shared::proxy_id(url)).unwrap().clone();
    let timeout = Duration::from_secs(5);

    for (url, through) in &passing {
        let before = through.log().tunnels().len();
        active_check::check(&proxy(url), &probe, timeout).await.unwrap_or_else(|err| panic!("{url}: {err}"));
        let tunnels = through.log().tunnels();
        assert_eq!(tunnels.len(), before + 1, "{url}: one tunnel opened: {tunnels:?}");
        assert!(tunnels.last().unwrap().ends_with(target.rsplit_once(':').unwrap().1), "{url}: {tunnels:?}");
    }
    for url in &refusing {
        let err = active_check::check(&proxy(url), &probe, timeout).await.unwrap_err();
        assert_eq!(err.kind().0, ErrorKind::ProxyAuth, "{url}: {err:?}");
        assert!(!err.to_string().contains(WRONG), "the password is not in the error: {err}");
    }

    // Without the proxy's CA, TLS to the https proxy fails: a `tls` fault of the proxy.
    let err = active_check::check(&proxy(&https.url()), &on(None), timeout).await.unwrap_err();
    assert_eq!(err.kind().0, ErrorKind::Tls, "{err:?}");

    // Without a target the check is a TCP connect, which a refusing proxy passes too:
    // such a pass is not published as a probe's success.
    let tcp_only = ProbeTarget::default();
    assert!(!active_check::speaks_through(&tcp_only));
    active_check::check(&proxy(&refusing[2]), &tcp_only, timeout).await.expect("TCP accepted");
}

#[tokio::test]
async fn the_service_runs_checks_on_its_interval() {
    let dead = closed_port().await;
    let (good, _) = fake_proxy("200 OK").await;
    let urls = [format!("http://127.0.0.1:{dead}"), format!("http://127.0.0.1:{good}")];
    let app = spawn_app(&inventory(&urls), |s| {
        s.settings.active_checks.enabled = true;
        s.settings.active_checks.interval_seconds = 1;
        s.settings.active_checks.unhealthy_threshold = 1;
    })
    .await;
    let dead_id = proxybus_shared::proxy_id(&urls[0]);
    let taken_out = eventually(Duration::from_secs(10), async || {
        app.selector.proxies(None).iter().any(|v| v.proxy_id == dead_id && v.local.check == "down")
    })
    .await;
    assert!(taken_out, "the periodic checks did not take the dead proxy out");
    for i in 0..10 {
        assert_eq!(app.ask("binance", &format!("c{i}")).await.proxy_id, Some(proxybus_shared::proxy_id(&urls[1])));
    }
    app.stop().await;
}
