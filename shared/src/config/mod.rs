//! Configuration: a TOML file overlaid by environment variables, both optional.
//!
//! Environment variables are read from an injected [`EnvSource`] (the process
//! environment in `main`, a map in tests), so no test has to set process variables.
//! Names follow the seed: a prefix (`CRYPTOFEED_PROXY_`), then the path of the
//! setting with `__` between nesting levels, case-insensitive. A value that looks
//! like JSON (`[...]`, `{...}`), a boolean or a number is taken as such, as
//! pydantic-settings does for the seed's Python `ProxySettings`.
//!
//! After deserialization every setting is validated, and **all** invalid settings
//! are reported at once, each with its key ([`ConfigError::Invalid`]).
//!
//! We build the environment overlay ourselves rather than with `config` or
//! `figment` because neither parses JSON lists inside a variable the way the
//! seed's `…__ENDPOINTS=["https://a", "https://b"]` needs, and both read the
//! process environment where we want an injected one.

mod settings;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use settings::*;

/// Prefix of the seed's proxy settings variables.
pub const PROXY_ENV_PREFIX: &str = "CRYPTOFEED_PROXY_";
/// Separator of nesting levels in variable names.
pub const NESTING: &str = "__";

/// A set of environment variables: the process's, or a map given by a test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSource {
    vars: BTreeMap<String, String>,
}

impl EnvSource {
    /// The variables of the running process (non-UTF-8 ones are skipped).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value of `name` when it is set and not empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// Every variable whose name starts with `prefix`, compared case-insensitively.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars.iter().filter_map(move |(k, v)| {
            let head = k.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix).then(|| (&k[prefix.len()..], v.as_str()))
        })
    }

    /// The value of the variable `name`, or else of the first of its `deprecated` old
    /// names that is set (non-empty), with a warning that names the new variable.
    ///
    /// Every config-file variable follows one pattern (docs/operations.md): the
    /// service's own file is `PROXYBUS_{SERVICE}_CONFIG` ([`RESOLVER_CONFIG_VAR`],
    /// [`AGGREGATOR_CONFIG_VAR`], [`POOL_CONFIG_VAR`]) and the seed's `ProxySettings`
    /// file, read by the resolver and the aggregator alike, is [`PROXY_CONFIG_VAR`].
    /// Old names keep working through this function until they are removed.
    pub fn renamed(&self, name: &str, deprecated: &[&str]) -> Option<&str> {
        if let Some(value) = self.non_empty(name) {
            return Some(value);
        }
        let (old, value) = deprecated.iter().find_map(|old| Some((*old, self.non_empty(old)?)))?;
        tracing::warn!(variable = old, replacement = name, "{old} is deprecated; set {name} instead");
        Some(value)
    }

    /// The file a service reads: `flag` (its command-line flag) when given, else the value
    /// of the variable `name`, else of the first of its `deprecated` old names that is set,
    /// with the warning of [`EnvSource::renamed`]. The variables are read only when no flag
    /// is given, so a flag never draws a warning; call it after telemetry is set up, so that
    /// the warning is logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::PathBuf;
    /// use proxybus_shared::config::{DEPRECATED_PROXY_CONFIG_VARS, EnvSource, PROXY_CONFIG_VAR};
    ///
    /// let env: EnvSource = [("PROXYBUS_CONFIG", "old.toml")].into_iter().collect();
    /// let file = |flag: Option<&str>| env.file_path(flag.map(PathBuf::from), PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS);
    /// assert_eq!(file(Some("flag.toml")), Some(PathBuf::from("flag.toml")));
    /// assert_eq!(file(None), Some(PathBuf::from("old.toml"))); // and a deprecation warning
    /// ```
    pub fn file_path(&self, flag: Option<PathBuf>, name: &str, deprecated: &[&str]) -> Option<PathBuf> {
        flag.or_else(|| self.renamed(name, deprecated).map(PathBuf::from))
    }
}

/// Writes `contents` to `path` (created or truncated) readable and writable by the
/// owner only (mode 0600 on Unix): for files that hold secrets — a pool token, an
/// inventory with proxy passwords. An existing file gets the mode too.
///
/// # Errors
/// The I/O error of opening, writing or setting the mode.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_ref())
    }
    #[cfg(not(unix))]
    {
        options.open(path)?.write_all(contents.as_ref())
    }
}

/// What follows a settings prefix in the variable that names the settings file
/// (`PROXYBUS_RESOLVER_` + `CONFIG`): the variable names the file, so the scan of the
/// prefix's variables for settings skips it.
pub const CONFIG_FILE_SUFFIX: &str = "CONFIG";
/// Variable naming the resolver's own settings file (`[resolver]` keys).
pub const RESOLVER_CONFIG_VAR: &str = "PROXYBUS_RESOLVER_CONFIG";
/// Variable naming the aggregator's own settings file (`[aggregator]` keys).
pub const AGGREGATOR_CONFIG_VAR: &str = "PROXYBUS_AGGREGATOR_CONFIG";
/// Variable naming the pool service's settings file.
pub const POOL_CONFIG_VAR: &str = "PROXYBUS_POOL_CONFIG";
/// Variable naming the seed's `ProxySettings` file (exchanges, pools, `external_service`),
/// shared by the resolver and the aggregator.
pub const PROXY_CONFIG_VAR: &str = "PROXYBUS_PROXY_CONFIG";
/// The old names of [`PROXY_CONFIG_VAR`], still read with a deprecation warning.
pub const DEPRECATED_PROXY_CONFIG_VARS: &[&str] = &["PROXYBUS_CONFIG"];
/// The old names of [`RESOLVER_CONFIG_VAR`], still read with a deprecation warning.
pub const DEPRECATED_RESOLVER_CONFIG_VARS: &[&str] = &["PROXYBUS_CONFIG_RESOLVER"];

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EnvSource {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self { vars: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the setting (`exchanges.binance.http.url`).
    pub key: String,
    /// What is wrong with it; never contains a secret.
    pub message: String,
    /// Where the setting was written, when known: `FILE:LINE` (`line LINE` for
    /// text without a file) or the environment variable's name.
    pub location: Option<String>,
}

impl ConfigIssue {
    /// An issue of setting `key`, not yet located.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into(), location: None }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{} ({location}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// One or more settings are invalid; all of them are listed.
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The invalid settings, when that is the error.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            _ => &[],
        }
    }
}

/// Collects invalid settings during validation.
#[derive(Debug, Default)]
pub struct Issues {
    found: Vec<ConfigIssue>,
}

impl Issues {
    /// Records that setting `key` is invalid.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push(ConfigIssue::new(key, message));
    }

    /// Records an issue when `value` is outside `range`.
    pub fn check_range<T: PartialOrd + fmt::Display>(
        &mut self,
        key: impl Into<String>,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.push(key, format!("{value} is out of range {}..={}", range.start(), range.end()));
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Ok when nothing was found, else every issue.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.found.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(self.found)) }
    }
}

/// Settings that can check themselves; `prefix` is the dotted path of `self`.
pub trait Validate {
    /// Records every invalid setting in `issues`.
    fn validate(&self, prefix: &str, issues: &mut Issues);
}

/// Joins a dotted key path.
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

/// Loads settings of type `T`: defaults, overlaid by the TOML `file` (if any),
/// overlaid by the variables of `env` that start with `prefix`; then validates.
///
/// # Errors
/// [`ConfigError`]; every [`ConfigIssue`] is located: the variable's name when
/// the setting came from `env`, else `FILE:LINE`.
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    env: &EnvSource,
    prefix: &str,
) -> Result<T, ConfigError> {
    let (mut tree, text) = match file {
        Some(path) => {
            let (tree, text) = read_toml(path)?;
            (tree, Some(text))
        }
        None => (Value::Object(Map::new()), None),
    };
    let (overlay, origins, mut issues) = env_tree(env, prefix);
    merge(&mut tree, overlay);
    let result = match serde_path_to_error_lite::<T>(tree) {
        Ok(settings) => {
            settings.validate("", &mut issues);
            Ok(settings)
        }
        Err(issue) => {
            issues.found.push(issue);
            Err(())
        }
    };
    if issues.is_empty()
        && let Ok(settings) = result
    {
        return Ok(settings);
    }
    let source = file.zip(text.as_deref()).map(|(path, text)| (path.display().to_string(), text));
    Err(ConfigError::Invalid(locate(issues.found, &origins, source.as_ref().map(|(p, t)| (p.as_str(), *t)))))
}

/// Parses TOML text into settings of type `T` (no environment), then validates;
/// issues are located as `line N` of `text`.
pub fn from_toml_str<T: DeserializeOwned + Validate>(text: &str) -> Result<T, ConfigError> {
    from_toml_source(text, None)
}

/// Parses the TOML `text` of file `path` (when given) into settings of type `T`,
/// then validates; issues are located as `PATH:LINE` (or `line LINE`).
pub fn from_toml_source<T: DeserializeOwned + Validate>(text: &str, path: Option<&Path>) -> Result<T, ConfigError> {
    let tree: Value = toml::from_str(text).map_err(|err| ConfigError::Toml {
        path: path.map_or_else(|| PathBuf::from("<string>"), Path::to_owned),
        message: toml_syntax_message(&err, text),
    })?;
    let name = path.map(|p| p.display().to_string());
    let source = Some((name.as_deref().unwrap_or_default(), text));
    let settings: T =
        serde_path_to_error_lite(tree).map_err(|issue| ConfigError::Invalid(locate(vec![issue], &[], source)))?;
    let mut issues = Issues::default();
    settings.validate("", &mut issues);
    if !issues.is_empty() {
        return Err(ConfigError::Invalid(locate(issues.found, &[], source)));
    }
    Ok(settings)
}

/// A TOML syntax error as the parser's message and the line it is on: never the
/// error's full text, which quotes the offending line and so may show a password
/// written on it (found by `settings_file_errors_never_show_a_secret`).
fn toml_syntax_message(err: &toml::de::Error, text: &str) -> String {
    match err.span() {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
            format!("{} (line {line})", err.message())
        }
        None => err.message().to_owned(),
    }
}

/// The segments of a dotted key with their indexes: `a.b[2].c` → `[("a", None), ("b", Some(2)), ("c", None)]`.
fn key_segments(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .map(|segment| match segment.split_once('[') {
            Some((name, index)) => (name, index.trim_end_matches(']').parse().ok()),
            None => (segment, None),
        })
        .collect()
}

/// The 1-based line of the setting at dotted `key` (`regions.us-east.proxies[0].url`)
/// in TOML `text`, or of the deepest part of it that is there; `None` when
/// the text does not parse or holds none of it.
pub fn toml_line(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut found: Option<std::ops::Range<usize>> = None;
    for (name, index) in key_segments(key) {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else { break };
        let mut value = value;
        if let Some(index) = index {
            match value.get_ref() {
                DeValue::Array(items) if index < items.len() => value = &items[index],
                _ => {
                    found = Some(value.span());
                    break;
                }
            }
        }
        found = Some(value.span());
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    let start = found?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// Gives every issue its location: the environment variable its setting came
/// from (`origins`: dotted path → variable), else its line in the TOML `source`
/// (`(file name, text)`; an empty name gives `line N`).
fn locate(
    mut found: Vec<ConfigIssue>,
    origins: &[(Vec<String>, String)],
    source: Option<(&str, &str)>,
) -> Vec<ConfigIssue> {
    for issue in &mut found {
        let names: Vec<&str> = key_segments(&issue.key).into_iter().map(|(name, _)| name).collect();
        let from_env =
            origins.iter().find(|(path, _)| names.len() >= path.len() && path.iter().zip(&names).all(|(a, b)| a == b));
        issue.location = match (from_env, source) {
            (Some((_, variable)), _) => Some(variable.clone()),
            (None, Some((file, text))) => toml_line(text, &issue.key)
                .map(|line| if file.is_empty() { format!("line {line}") } else { format!("{file}:{line}") }),
            (None, None) => None,
        };
    }
    found
}

fn read_toml(path: &Path) -> Result<(Value, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let tree = toml::from_str(&text)
        .map_err(|err| ConfigError::Toml { path: path.to_owned(), message: err.message().to_owned() })?;
    Ok((tree, text))
}

/// The tree the variables under `prefix` describe, where each value came from
/// (dotted path → variable name), and the variables that could not be read.
fn env_tree(env: &EnvSource, prefix: &str) -> (Value, Vec<(Vec<String>, String)>, Issues) {
    let mut tree = Value::Object(Map::new());
    let mut origins = Vec::new();
    let mut issues = Issues::default();
    for (name, raw) in env.with_prefix(prefix) {
        if name.eq_ignore_ascii_case(CONFIG_FILE_SUFFIX) {
            // `PROXYBUS_{SERVICE}_CONFIG` names the settings file; it is not a setting.
            continue;
        }
        let path: Vec<String> = name.split(NESTING).map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            issues.push(format!("{prefix}{name}"), "empty segment in variable name");
            continue;
        }
        let value = match parse_env_value(raw) {
            Ok(value) => value,
            Err(err) => {
                issues.push(
                    path.join("."),
                    format!("looks like JSON but is not valid JSON ({err}), from {prefix}{name}"),
                );
                continue;
            }
        };
        insert_path(&mut tree, &path, value);
        origins.push((path, format!("{prefix}{name}")));
    }
    (tree, origins, issues)
}

fn parse_env_value(raw: &str) -> Result<Value, serde_json::Error> {
    let trimmed = raw.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        return serde_json::from_str(trimmed);
    }
    if trimmed.eq_ignore_ascii_case("true") {
        return Ok(Value::Bool(true));
    }
    if trimmed.eq_ignore_ascii_case("false") {
        return Ok(Value::Bool(false));
    }
    if let Ok(n) = trimmed.parse::<i64>() {
        return Ok(Value::from(n));
    }
    if let Ok(x) = trimmed.parse::<f64>()
        && x.is_finite()
        && trimmed.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Ok(Value::from(x));
    }
    Ok(Value::String(raw.to_owned()))
}

fn insert_path(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for segment in &path[..path.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("just made an object")
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    node.as_object_mut().expect("just made an object").insert(path[path.len() - 1].clone(), value);
}

/// Deep-merges `overlay` into `base`; the overlay wins on conflicts.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (k, v) in overlay {
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Deserializes `tree` into `T`, naming the key of the first type error.
fn serde_path_to_error_lite<T: DeserializeOwned>(tree: Value) -> Result<T, ConfigIssue> {
    serde_path_to_error::deserialize(tree).map_err(|err| {
        let path = err.path().to_string();
        ConfigIssue::new(
            if path == "." { "(root)".to_owned() } else { path },
            crate::proxy_url::redact_text(&err.into_inner().to_string()),
        )
    })
}

/// Deserializes a secret from a string, or from a number or boolean (a token of
/// digits given in an environment variable parses as a number).
pub(crate) fn lenient_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<secrecy::SecretString, D::Error> {
    use serde::Deserialize;
    let value = Value::deserialize(deserializer)?;
    match value {
        Value::String(s) => Ok(s.into()),
        Value::Number(n) => Ok(n.to_string().into()),
        Value::Bool(b) => Ok(b.to_string().into()),
        _ => Err(serde::de::Error::custom("expected a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.token");
        std::fs::write(&path, "old, world-readable").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let fresh = dir.path().join("inventory.toml");
        write_private(&fresh, "x").unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_settings_file_variable_is_not_read_as_a_setting() {
        let env: EnvSource = [
            (RESOLVER_CONFIG_VAR, "resolver.toml"),
            (POOL_CONFIG_VAR, "pool.toml"),
            (AGGREGATOR_CONFIG_VAR, "aggregator.toml"),
            ("PROXYBUS_RESOLVER_CACHE_TTL_SECONDS", "5"),
        ]
        .into_iter()
        .collect();
        for prefix in ["PROXYBUS_POOL_", "PROXYBUS_AGGREGATOR_"] {
            let (tree, origins, issues) = env_tree(&env, prefix);
            assert_eq!((tree, origins.len(), issues.is_empty()), (Value::Object(Map::new()), 0, true), "{prefix}");
        }
        let (tree, origins, _) = env_tree(&env, "PROXYBUS_RESOLVER_");
        assert_eq!(tree, serde_json::json!({ "cache_ttl_seconds": 5 }));
        assert_eq!(origins.len(), 1);
    }

    #[test]
    fn renamed_variables_prefer_the_new_name_and_still_read_the_old_one() {
        let both: EnvSource = [(PROXY_CONFIG_VAR, "new.toml"), ("PROXYBUS_CONFIG", "old.toml")].into_iter().collect();
        assert_eq!(both.renamed(PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS), Some("new.toml"));
        let old: EnvSource = [("PROXYBUS_CONFIG", "old.toml"), (PROXY_CONFIG_VAR, " ")].into_iter().collect();
        assert_eq!(old.renamed(PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS), Some("old.toml"));
        let none: EnvSource = [("PROXYBUS_CONFIG", "")].into_iter().collect();
        assert_eq!(none.renamed(PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS), None);
    }

    /// `env.file_path(flag, PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS)` and what it logged
    /// at `warn`.
    fn proxy_config_file(flag: Option<&str>, env: &[(&str, &str)]) -> (Option<PathBuf>, String) {
        let env: EnvSource = env.iter().copied().collect();
        let logs = crate::testing::LogBuffer::default();
        let subscriber =
            crate::telemetry::subscriber(crate::telemetry::LogFormat::Plain, Some("warn"), false, logs.clone());
        let file = tracing::subscriber::with_default(subscriber, || {
            env.file_path(flag.map(PathBuf::from), PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS)
        });
        (file, logs.text())
    }

    #[test]
    fn a_file_comes_from_the_flag_then_the_variable_then_its_deprecated_name_with_a_warning() {
        let all = [(PROXY_CONFIG_VAR, "var.toml"), ("PROXYBUS_CONFIG", "old.toml")];
        let (file, logs) = proxy_config_file(Some("flag.toml"), &all);
        assert_eq!(file, Some(PathBuf::from("flag.toml")), "the flag wins");
        assert_eq!(logs, "", "no warning: the variables are not read");
        let (file, logs) = proxy_config_file(None, &all);
        assert_eq!(file, Some(PathBuf::from("var.toml")), "the variable wins over its old name");
        assert_eq!(logs, "", "no warning: the old name is not read");
        let (file, logs) = proxy_config_file(None, &[(PROXY_CONFIG_VAR, " "), ("PROXYBUS_CONFIG", "old.toml")]);
        assert_eq!(file, Some(PathBuf::from("old.toml")), "the old name when the variable is blank");
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("PROXYBUS_CONFIG is deprecated; set PROXYBUS_PROXY_CONFIG instead"), "{logs}");
        let (file, logs) = proxy_config_file(Some("flag.toml"), &[("PROXYBUS_CONFIG", "old.toml")]);
        assert_eq!(file, Some(PathBuf::from("flag.toml")), "the flag wins over the old name");
        assert_eq!(logs, "", "no warning about a variable the flag overrides");
        assert_eq!(proxy_config_file(None, &[]), (None, String::new()));
    }

    #[test]
    fn env_values_are_typed_like_pydantic_settings() {
        assert_eq!(parse_env_value("TRUE").unwrap(), Value::Bool(true));
        assert_eq!(parse_env_value("10").unwrap(), Value::from(10));
        assert_eq!(parse_env_value("0.5").unwrap(), Value::from(0.5));
        assert_eq!(
            parse_env_value(r#"["https://a:1", "https://b:2"]"#).unwrap(),
            serde_json::json!(["https://a:1", "https://b:2"])
        );
        assert_eq!(parse_env_value("socks5://h:1080").unwrap(), Value::String("socks5://h:1080".into()));
        assert_eq!(parse_env_value("inf").unwrap(), Value::String("inf".into()));
        assert!(parse_env_value("[not json").is_err());
    }

    #[test]
    fn nested_names_become_a_tree_and_the_overlay_wins() {
        let env: EnvSource = [
            ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL", "socks5://h:1"),
            ("cryptofeed_proxy_enabled", "true"),
            ("OTHER_VAR", "x"),
        ]
        .into_iter()
        .collect();
        let (tree, origins, issues) = env_tree(&env, PROXY_ENV_PREFIX);
        assert_eq!(origins.len(), 2);
        assert!(issues.is_empty());
        assert_eq!(
            tree,
            serde_json::json!({"enabled": true, "exchanges": {"binance": {"websocket": {"url": "socks5://h:1"}}}})
        );
        let mut base = serde_json::json!({"enabled": false, "exchanges": {"binance": {"http": {"url": "http://f:1"}}}});
        merge(&mut base, tree);
        assert_eq!(base["enabled"], Value::Bool(true));
        assert_eq!(base["exchanges"]["binance"]["http"]["url"], "http://f:1");
        assert_eq!(base["exchanges"]["binance"]["websocket"]["url"], "socks5://h:1");
    }
}
