//! Configuration loading: TOML file, `CRYPTOFEED_PROXY_*` overlay from an injected
//! environment, and validation that reports every invalid setting at once.

use std::io::Write;

use proxybus_shared::ConnectionType;
use proxybus_shared::config::{self, AuthMethod, EnvSource, PROXY_ENV_PREFIX, PoolStrategy, ProxySettings};
use proxybus_shared::nats::{NatsAuth, NatsSettings};
use secrecy::ExposeSecret;

fn env(vars: &[(&str, &str)]) -> EnvSource {
    vars.iter().copied().collect()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

const FILE: &str = r#"
enabled = true

[default.http]
url = "http://file-default:3128"
timeout_seconds = 15

[exchanges.binance.websocket]
url = "socks5://alice:filepw@file-binance:1080"

[exchanges.kraken.http.pool]
strategy = "least_connections"
proxies = [ { url = "http://p1:8080", weight = 2.0 }, { url = "http://p2:8080" } ]

[external_service]
enabled = true
endpoints = ["https://file-service:8080"]
auth_credentials = { token = "file-token" }
"#;

#[test]
fn the_seed_environment_names_load_without_a_file() {
    let vars = env(&[
        ("CRYPTOFEED_PROXY_ENABLED", "true"),
        ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "socks5://fallback-proxy:1080"),
        ("CRYPTOFEED_PROXY_DEFAULT__WEBSOCKET__URL", "http://ws-proxy:8080"),
        ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL", "socks5://user:pw@binance-proxy:1080"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true"),
        (
            "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS",
            r#"["https://proxy-service-1:8080", "https://proxy-service-2:8080"]"#,
        ),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "bearer_token"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "12345"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "7"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__CACHE_TTL_SECONDS", "60"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__CIRCUIT_BREAKER_ENABLED", "false"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__FALLBACK_TO_EMBEDDED", "False"),
    ]);
    let settings: ProxySettings = config::load(None, &vars, PROXY_ENV_PREFIX).unwrap();
    assert!(settings.enabled);
    let service = &settings.external_service;
    assert!(service.enabled);
    assert_eq!(service.endpoints, ["https://proxy-service-1:8080", "https://proxy-service-2:8080"]);
    assert_eq!(service.auth_method, AuthMethod::BearerToken);
    assert_eq!(service.credential("token").unwrap().expose_secret(), "12345", "a numeric token stays a string");
    assert_eq!((service.timeout_seconds, service.cache_ttl_seconds), (7, 60));
    assert!(!service.circuit_breaker_enabled && !service.fallback_to_embedded);
    let binance_ws = settings.proxy_for("binance", ConnectionType::Websocket).unwrap();
    assert_eq!(binance_ws.proxy_url().unwrap().expose(), "socks5://user:pw@binance-proxy:1080");
    let binance_http = settings.proxy_for("binance", ConnectionType::Http).unwrap();
    assert_eq!(binance_http.proxy_url().unwrap().expose(), "socks5://fallback-proxy:1080", "falls back to default");
    assert_eq!(binance_http.timeout_seconds, 30, "the seed's default timeout");
}

#[test]
fn the_environment_wins_over_the_file() {
    let file = toml_file(FILE);
    let vars = env(&[
        ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL", "socks5://env-binance:1080"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "env-token"),
        ("UNRELATED", "ignored"),
    ]);
    let settings: ProxySettings = config::load(Some(file.path()), &vars, PROXY_ENV_PREFIX).unwrap();
    let ws = settings.proxy_for("binance", ConnectionType::Websocket).unwrap();
    assert_eq!(ws.proxy_url().unwrap().expose(), "socks5://env-binance:1080");
    assert_eq!(settings.external_service.credential("token").unwrap().expose_secret(), "env-token");
    // What the environment does not name stays as the file says.
    assert_eq!(settings.external_service.endpoints, ["https://file-service:8080"]);
    let http = settings.proxy_for("coinbase", ConnectionType::Http).unwrap();
    assert_eq!(http.proxy_url().unwrap().expose(), "http://file-default:3128");
    assert_eq!(http.timeout_seconds, 15);
    let pool = settings.proxy_for("kraken", ConnectionType::Http).unwrap().pool.as_ref().unwrap();
    assert_eq!(pool.strategy, PoolStrategy::LeastConnections);
    assert_eq!(pool.proxies.len(), 2);
    assert_eq!(pool.proxies[0].weight, 2.0);
    assert_eq!(pool.proxies[1].weight, 1.0);
}

#[test]
fn disabled_proxying_hands_out_nothing() {
    let file = toml_file(&FILE.replace("enabled = true\n\n[default.http]", "enabled = false\n\n[default.http]"));
    let settings: ProxySettings = config::load(Some(file.path()), &EnvSource::default(), PROXY_ENV_PREFIX).unwrap();
    assert!(settings.proxy_for("binance", ConnectionType::Websocket).is_none());
}

#[test]
fn every_invalid_setting_is_reported_at_once_with_its_key() {
    let vars = env(&[
        ("CRYPTOFEED_PROXY_ENABLED", "true"),
        ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "ftp://user:ftpsecret@files:21"),
        ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL", "socks5://:1080"),
        ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__TIMEOUT_SECONDS", "301"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "0"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", r#"["ftp://service:21"]"#),
    ]);
    let err = config::load::<ProxySettings>(None, &vars, PROXY_ENV_PREFIX).unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    for expected in [
        "default.http.url",
        "exchanges.binance.websocket.url",
        "exchanges.binance.websocket.timeout_seconds",
        "external_service.timeout_seconds",
        "external_service.endpoints[0]",
        "external_service.auth_credentials.token",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    let text = err.to_string();
    assert!(text.contains("unsupported proxy scheme \"ftp\""), "{text}");
    assert!(text.contains("no host"), "{text}");
    assert!(text.contains("301 is out of range 1..=300"), "{text}");
    assert!(!text.contains("ftpsecret"), "a password leaked into the error: {text}");
}

#[test]
fn a_wrong_type_names_its_key() {
    let vars = env(&[("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "soon")]);
    let err = config::load::<ProxySettings>(None, &vars, PROXY_ENV_PREFIX).unwrap_err();
    assert_eq!(err.issues().len(), 1, "{err}");
    assert_eq!(err.issues()[0].key, "external_service.timeout_seconds");
    let vars = env(&[("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", "[\"unterminated")]);
    let err = config::load::<ProxySettings>(None, &vars, PROXY_ENV_PREFIX).unwrap_err();
    assert_eq!(err.issues()[0].key, "external_service.endpoints");
}

#[test]
fn a_broken_file_is_reported_with_its_path() {
    let file = toml_file("enabled = [unclosed");
    let err = config::load::<ProxySettings>(Some(file.path()), &EnvSource::default(), PROXY_ENV_PREFIX).unwrap_err();
    assert!(matches!(err, config::ConfigError::Toml { .. }), "{err:?}");
    let missing = std::path::Path::new("/nonexistent/proxybus.toml");
    let err = config::load::<ProxySettings>(Some(missing), &EnvSource::default(), PROXY_ENV_PREFIX).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/proxybus.toml"), "{err}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let vars = env(&[
        ("CRYPTOFEED_PROXY_ENABLED", "true"),
        ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "http://bob:proxy-pass-123@h:3128"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "service-token-456"),
    ]);
    let settings: ProxySettings = config::load(None, &vars, PROXY_ENV_PREFIX).unwrap();
    let shown = format!("{settings:?}");
    assert!(!shown.contains("proxy-pass-123") && !shown.contains("service-token-456"), "{shown}");
    let nats = NatsSettings::from_env(&env(&[("NATS_TOKEN", "nats-secret-789")])).unwrap();
    assert!(!format!("{nats:?}").contains("nats-secret-789"));
}

#[test]
fn nats_settings_read_every_credential_kind() {
    let token =
        NatsSettings::from_env(&env(&[("NATS_URL", "nats://10.0.0.1:4222,nats://10.0.0.2:4222"), ("NATS_TOKEN", "t")]))
            .unwrap();
    assert_eq!(token.url, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
    assert!(matches!(token.auth, NatsAuth::Token(_)));
    let user = NatsSettings::from_env(&env(&[("NATS_USER", "u"), ("NATS_PASSWORD", "p")])).unwrap();
    assert!(matches!(user.auth, NatsAuth::UserPassword { ref user, .. } if user == "u"));
    let creds = NatsSettings::from_env(&env(&[("NATS_CREDS", "/etc/nats/app.creds")])).unwrap();
    assert!(matches!(creds.auth, NatsAuth::CredsFile(ref p) if p.ends_with("app.creds")));
    let tls = NatsSettings::from_env(&env(&[("NATS_CA", "/ca.pem"), ("NATS_CERT", "/c.pem"), ("NATS_KEY", "/k.pem")]))
        .unwrap();
    assert!(tls.tls_ca.is_some() && tls.tls_client.is_some());
    assert_eq!(NatsSettings::from_env(&EnvSource::default()).unwrap().url, "nats://127.0.0.1:4222");

    let err = NatsSettings::from_env(&env(&[
        ("NATS_TOKEN", "t"),
        ("NATS_USER", "u"),
        ("NATS_CERT", "/c.pem"),
        ("NATS_TLS_REQUIRED", "maybe"),
    ]))
    .unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["NATS_TOKEN/NATS_USER/NATS_NKEY_SEED/NATS_CREDS", "NATS_CERT/NATS_KEY", "NATS_TLS_REQUIRED"]);
}

#[test]
fn external_service_rollout_list_and_srv_name() {
    use proxybus_shared::config::{EnvSource, PROXY_ENV_PREFIX, ProxySettings, load};
    let env: EnvSource = [
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__SRV_NAME", "_proxy-service._tcp.example.internal"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "none"),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__EXCHANGES", r#"["binance"]"#),
    ]
    .into_iter()
    .collect();
    let settings: ProxySettings = load(None, &env, PROXY_ENV_PREFIX).expect("srv_name stands in for endpoints");
    assert!(settings.external_service.delegates("binance"));
    assert!(!settings.external_service.delegates("kraken"));
    let bad: EnvSource = [("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__EXCHANGES", r#"["Bin.ance"]"#)].into_iter().collect();
    let err = load::<ProxySettings>(None, &bad, PROXY_ENV_PREFIX).unwrap_err();
    assert_eq!(err.issues()[0].key, "external_service.exchanges[0]");
}

#[test]
fn a_bad_proxy_url_names_its_variable_or_file_line_shows_the_url_redacted_and_never_the_password() {
    // Issue #12 (a): raw reserved characters in a password, as users write them.
    for (password, secret) in
        [("12/34xyz", "34xyz"), ("pa#ss", "pa#ss"), ("pa?ss", "pa?ss"), ("p@ss", "p@ss"), ("pa:ss", "pa:ss")]
    {
        let url = format!("http://alice:{password}@203.0.113.10:3128");
        let from_env = env(&[
            ("CRYPTOFEED_PROXY_ENABLED", "true"),
            ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__HTTP__URL", url.as_str()),
        ]);
        let err = config::load::<ProxySettings>(None, &from_env, PROXY_ENV_PREFIX).unwrap_err();
        let issue = &err.issues()[0];
        assert_eq!(issue.key, "exchanges.binance.http.url");
        assert_eq!(issue.location.as_deref(), Some("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__HTTP__URL"));
        let shown = err.to_string();
        assert!(shown.contains("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__HTTP__URL"), "{shown}");
        assert!(shown.contains("http://alice:***@203.0.113.10:3128"), "{shown}");
        assert!(!shown.contains(secret) && !format!("{err:?}").contains(secret), "{secret} in {shown}");

        let file = toml_file(&format!(
            "enabled = true\n\n[default.websocket.pool]\nproxies = [\n  {{ url = \"socks5://ok:pw@10.0.0.1:1080\" }},\n  {{ url = \"{url}\" }},\n]\n"
        ));
        let err = config::load::<ProxySettings>(Some(file.path()), &env(&[]), PROXY_ENV_PREFIX).unwrap_err();
        let issue = &err.issues()[0];
        assert_eq!(issue.key, "default.websocket.pool.proxies[1].url");
        assert_eq!(issue.location, Some(format!("{}:6", file.path().display())), "{err}");
        assert!(!err.to_string().contains(secret), "{err}");
    }
    // A JSON list in one variable: the variable is named for the entry inside it.
    let list = r#"[{"url": "socks5h://bob:s3cr%2Ft@[2001:db8::1]:1080"}, {"url": "socks4a://bob@h"}]"#;
    let err = config::load::<ProxySettings>(
        None,
        &env(&[("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES", list)]),
        PROXY_ENV_PREFIX,
    )
    .unwrap_err();
    let issue = &err.issues()[0];
    assert_eq!(issue.key, "default.http.pool.proxies[1].url");
    assert_eq!(issue.location.as_deref(), Some("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES"));
    assert!(issue.message.contains("no port"), "{issue}");
}

#[test]
fn proxy_urls_of_every_scheme_and_host_kind_load() {
    let settings: ProxySettings = config::from_toml_str(
        r#"
        enabled = true
        [default.http.pool]
        proxies = [
          { url = "https://u:p%40ss@proxy.example:8443" },
          { url = "socks4://user-id@10.0.0.2:1080" },
          { url = "socks4a://10.0.0.3:1080" },
          { url = "socks5://u:pw@[2001:db8::5]:1080" },
          { url = "socks5h://u:pw@gw.example:1080" },
          { url = "http://10.0.0.6:3128" },
        ]
        "#,
    )
    .unwrap();
    let pool = &settings.default.unwrap().http.unwrap().pool.unwrap().proxies;
    let schemes: Vec<String> = pool.iter().map(|p| p.proxy_url().unwrap().scheme().to_string()).collect();
    assert_eq!(schemes, ["https", "socks4", "socks4a", "socks5", "socks5h", "http"]);
    assert_eq!(pool[0].proxy_url().unwrap().credentials(), Some(("u", "p@ss")));
}
