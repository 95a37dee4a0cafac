//! Configuration parsers (`config::from_toml_str`, `config::load` with an
//! injected environment, `NatsSettings::from_env`): arbitrary text never panics
//! them, and no error ever shows a secret that was in the input.

use proptest::prelude::*;
use proxybus_shared::config::{self, EnvSource, PROXY_ENV_PREFIX, ProxySettings};
use proxybus_shared::nats::NatsSettings;

/// Pieces of settings files, so that random text reaches past the TOML parser
/// into deserialization and validation.
fn toml_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\n",
            " = ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "\"",
            "'",
            ".",
            "[[",
            "]]",
            "#",
            "\\",
            "enabled",
            "default",
            "http",
            "websocket",
            "url",
            "timeout_seconds",
            "pool",
            "proxies",
            "weight",
            "strategy",
            "exchanges",
            "binance",
            "external_service",
            "endpoints",
            "auth_method",
            "auth_credentials",
            "token",
            "srv_name",
            "cache_ttl_seconds",
            "round_robin",
            "bearer_token",
            "true",
            "false",
            "0",
            "301",
            "-1",
            "1.5",
            "nan",
            "inf",
            "1979-05-27T07:32:00Z",
            "\"http://u:p@h:1\"",
            "\"socks5://h:1080\"",
            "\"https://svc:8443\"",
            "[default.http]",
            "[external_service]",
            "[exchanges.binance.websocket]",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), prop::collection::vec(toml_fragment(), 0..40).prop_map(|pieces| pieces.concat()),]
}

/// A password as users write them: letters, digits, the characters that
/// break URLs (`/ ? # @ :`), quotes, backslashes, spaces and non-ASCII.
fn password() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9]{8,16}", "[A-Za-z0-9/?#@:%!$&'()*+,;=~._ \"\\\\-]{8,16}", "\\PC{6,12}",]
        .prop_filter("distinctive", |p| p.chars().count() >= 6 && p.trim().chars().count() >= 6)
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn percent_encoded(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A settings file with `secret` (written as `written`) in a proxy URL, a
/// service endpoint or a credential, broken in one of several ways.
fn settings_with_secret(place: usize, breakage: usize, written: &str) -> String {
    let url = |scheme: &str, host: &str| format!("{scheme}://alice:{written}@{host}");
    let (table, line) = match place {
        0 => ("[default.http]", format!("url = {}", toml_string(&url("http", "10.0.0.1:3128")))),
        1 => (
            "[default.websocket.pool]",
            format!("proxies = [ {{ url = {} }} ]", toml_string(&url("socks5", "gw.example:1080"))),
        ),
        2 => ("[external_service]", format!("endpoints = [{}]", toml_string(&url("https", "svc.example:8443")))),
        3 => ("[external_service]", format!("auth_credentials = {{ token = {} }}", toml_string(written))),
        _ => ("[exchanges.binance.http]", format!("url = {}", toml_string(&url("socks5h", "[2001:db8::1]:1080")))),
    };
    let line = match breakage {
        // The string left open.
        1 => line.trim_end_matches([']', '}', ' ']).trim_end_matches('"').to_owned(),
        // Junk after the value.
        2 => format!("{line} junk"),
        // The secret's line twice: a duplicate key.
        3 => format!("{line}\n{line}"),
        // An unsupported scheme.
        4 => line.replacen("://", "x://", 1),
        // A value of the wrong type beside it.
        5 => format!("{line}\ntimeout_seconds = \"soon\""),
        // The value where a table belongs.
        6 => line.replacen("url = ", "http = ", 1).replacen("proxies = [ {", "pool = [ {", 1),
        _ => line,
    };
    format!("enabled = true\n{table}\nenabled = true\n{line}\n")
}

/// `secret` and its written form do not show in `shown`, unless the input holds
/// them outside the secret too (then they are not the secret).
fn assert_hidden(shown: &str, secret: &str, written: &str, without: &str) -> Result<(), TestCaseError> {
    for candidate in [secret, written] {
        if !without.contains(candidate) {
            prop_assert!(!shown.contains(candidate), "{:?} shown in {}", candidate, shown);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary text and random assemblies of settings-file pieces never panic
    /// the TOML parser or the validation; a failure is a `Toml` or `Invalid` error
    /// whose issues all name a key.
    #[test]
    fn arbitrary_text_never_panics_the_settings_parser(text in toml_text()) {
        if let Err(err) = config::from_toml_str::<ProxySettings>(&text) {
            match &err {
                config::ConfigError::Toml { .. } => {}
                config::ConfigError::Invalid(issues) => {
                    prop_assert!(!issues.is_empty());
                    prop_assert!(issues.iter().all(|issue| !issue.key.is_empty()), "{}", err);
                }
                config::ConfigError::Read { .. } => prop_assert!(false, "no file was read: {}", err),
            }
        }
    }

    /// A secret in a settings file (a proxy URL's password, an endpoint's
    /// password, a credential), escaped, percent-encoded or raw, in a file broken
    /// in any of several ways, never shows in the error (`Display` or `Debug`).
    #[test]
    fn settings_file_errors_never_show_a_secret(
        secret in password(),
        place in 0usize..5,
        breakage in 0usize..7,
        encode in any::<bool>(),
    ) {
        let written = if encode { percent_encoded(&secret) } else { secret.clone() };
        let text = settings_with_secret(place, breakage, &written);
        let without = settings_with_secret(place, breakage, "");
        if let Err(err) = config::from_toml_str::<ProxySettings>(&text) {
            assert_hidden(&err.to_string(), &secret, &written, &without)?;
            assert_hidden(&format!("{err:?}"), &secret, &written, &without)?;
        }
    }

    /// `CRYPTOFEED_PROXY_*` variables with any names and values never panic the
    /// loader, and a secret given in any of them — a proxy URL's password, a
    /// credential or a URL variable's whole value, in a JSON list of URLs, broken or
    /// not, or in a URL put in the wrong place — never shows in the error.
    #[test]
    fn environment_errors_never_show_a_secret(
        secret in password(),
        name in prop::sample::select(vec![
            "DEFAULT__HTTP__URL", "EXCHANGES__BINANCE__WEBSOCKET__URL", "DEFAULT__HTTP", "DEFAULT__HTTP__TIMEOUT_SECONDS",
            "DEFAULT__HTTP__POOL__PROXIES", "EXTERNAL_SERVICE__ENDPOINTS", "EXTERNAL_SERVICE__AUTH_CREDENTIALS",
            "EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "EXTERNAL_SERVICE", "ENABLED", "EXCHANGES__BIN.ANCE__HTTP__URL",
            "DEFAULT____URL", "EXCHANGES__Binance__HTTP__URL",
        ]),
        shape in 0usize..6,
        encode in any::<bool>(),
        noise in prop::collection::vec((toml_fragment(), toml_fragment()), 0..3),
    ) {
        let written = if encode { percent_encoded(&secret) } else { secret.clone() };
        // The secret alone is a secret only where a secret belongs (a URL, a
        // credential); elsewhere it goes in a URL's password.
        let secret_field = name.ends_with("__URL") || name.contains("AUTH_CREDENTIALS");
        let shape = if shape == 1 && !secret_field { 0 } else { shape };
        let value = |w: &str| match shape {
            0 => format!("socks5://alice:{w}@10.0.0.1:1080"),
            1 => w.to_owned(),
            2 => serde_json::json!([{ "url": format!("http://alice:{w}@h:1") }]).to_string(),
            3 => format!("[\"https://alice:{w}@svc:8443\""),
            4 => format!("{{\"url\": \"http://alice:{w}@h\"}}"),
            _ => format!("ftp://alice:{w}@h:21"),
        };
        let mut vars: Vec<(String, String)> = noise
            .into_iter()
            .map(|(n, v)| (format!("{PROXY_ENV_PREFIX}{}", n.to_ascii_uppercase()), v))
            .collect();
        vars.push(("CRYPTOFEED_PROXY_ENABLED".into(), "true".into()));
        vars.push((format!("{PROXY_ENV_PREFIX}{name}"), value(&written)));
        let without: String = vars.iter().map(|(n, v)| format!("{n}={v}\n")).collect::<String>().replace(&written, "");
        let env: EnvSource = vars.into_iter().collect();
        if let Err(err) = config::load::<ProxySettings>(None, &env, PROXY_ENV_PREFIX) {
            assert_hidden(&err.to_string(), &secret, &written, &without)?;
            assert_hidden(&format!("{err:?}"), &secret, &written, &without)?;
        }
    }

    /// `NATS_*` variables with a secret (a password in `NATS_URL`, `NATS_PASSWORD`,
    /// `NATS_TOKEN`, `NATS_NKEY_SEED`) beside invalid settings never show it.
    #[test]
    fn nats_settings_errors_never_show_a_secret(
        secret in password(),
        encode in any::<bool>(),
        url_shape in 0usize..4,
        also in prop::sample::subsequence(vec![
            ("NATS_TOKEN", "t"), ("NATS_USER", "u"), ("NATS_CERT", "/c.pem"), ("NATS_TLS_REQUIRED", "maybe"),
            ("NATS_CONNECT_TIMEOUT_SECONDS", "0"),
        ], 0..5),
    ) {
        let written = if encode { percent_encoded(&secret) } else { secret.clone() };
        let url = |w: &str| match url_shape {
            0 => format!("nats://alice:{w}@10.0.0.1:4222"),
            1 => format!("nats://10.0.0.2:4222, tls://bob:{w}@[::1:4222"),
            2 => format!("nats://alice:{w}@h:42x22"),
            _ => format!("alice:{w}@h:4222"),
        };
        let mut vars: Vec<(String, String)> = also.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        vars.push(("NATS_URL".into(), url(&written)));
        vars.push(("NATS_PASSWORD".into(), secret.clone()));
        vars.push(("NATS_NKEY_SEED".into(), secret.clone()));
        let without: String = vars.iter().map(|(n, v)| format!("{n}={v}\n")).collect::<String>().replace(&written, "").replace(&secret, "");
        match NatsSettings::from_env(&vars.into_iter().collect()) {
            Err(err) => {
                assert_hidden(&err.to_string(), &secret, &written, &without)?;
                assert_hidden(&format!("{err:?}"), &secret, &written, &without)?;
            }
            Ok(settings) => assert_hidden(&format!("{settings:?}"), &secret, &written, &without)?,
        }
    }
}

/// Inputs the properties above found leaking, kept as plain regression tests.
mod found {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> EnvSource {
        vars.iter().copied().collect()
    }

    #[test]
    fn a_toml_syntax_error_names_its_line_but_never_quotes_it() {
        let err = config::from_toml_str::<ProxySettings>(
            "enabled = true\n[default.http]\nenabled = true\nurl = \"http://alice:AAA0aAAa@10.0.0.1:3128\n",
        )
        .unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("AAA0aAAa") && !format!("{err:?}").contains("AAA0aAAa"), "{shown}");
        assert!(shown.contains("(line 4)"), "{shown}");
    }

    #[test]
    fn a_url_setting_without_a_scheme_is_not_quoted() {
        let vars = env(&[("CRYPTOFEED_PROXY_ENABLED", "true"), ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "AAA0aAAa")]);
        let err = config::load::<ProxySettings>(None, &vars, PROXY_ENV_PREFIX).unwrap_err();
        assert!(!err.to_string().contains("AAA0aAAa"), "{err}");
        assert!(err.to_string().contains("not a proxy URL"), "{err}");
    }

    #[test]
    fn credentials_given_as_a_string_are_not_quoted() {
        let vars = env(&[("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS", "AAA0aAAa")]);
        let err = config::load::<ProxySettings>(None, &vars, PROXY_ENV_PREFIX).unwrap_err();
        assert!(!err.to_string().contains("AAA0aAAa"), "{err}");
        assert_eq!(err.issues()[0].key, "external_service.auth_credentials");
    }

    #[test]
    fn nats_settings_debug_redacts_the_url() {
        let settings =
            NatsSettings::from_env(&env(&[("NATS_URL", "nats://alice:AAA0aAAa@10.0.0.1:4222,nats://h:4222")])).unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("AAA0aAAa"), "{shown}");
        assert!(shown.contains("nats://alice:***@10.0.0.1:4222,nats://h:4222"), "{shown}");
        assert_eq!(settings.url, "nats://alice:AAA0aAAa@10.0.0.1:4222,nats://h:4222", "the URL itself is kept");
    }
}
