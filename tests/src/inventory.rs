//! Pool inventories (the TOML of `docs/pool.md`) that tests write for the pool service.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Documentation proxy `n` (from 1): `http://u:pw{n}@203.0.113.{n}:3128`, in TEST-NET-3, so
/// never dialled: for tests of selection only.
pub fn documentation_proxy(n: usize) -> String {
    format!("http://u:pw{n}@203.0.113.{n}:3128")
}

/// A pool inventory for a test: regions of proxies chosen round robin, as TOML.
///
/// # Examples
///
/// ```
/// use proxybus_tests::TestInventory;
///
/// // Three documentation proxies in `us-east`, answers living 300 s.
/// let text = TestInventory::documentation(3).to_toml();
/// assert!(text.contains("url = \"http://u:pw3@203.0.113.3:3128\""));
///
/// let text = TestInventory::new("eu-west").ttl_seconds(60).sticky(false).region("eu-west", ["http://h:1"]).to_toml();
/// assert!(text.starts_with("default_region = \"eu-west\"\n"));
/// ```
#[derive(Debug, Clone)]
pub struct TestInventory {
    default_region: String,
    /// `key = value` lines of `[defaults]`.
    defaults: Vec<String>,
    /// Each region's name and proxy URLs, in the order given.
    regions: Vec<(String, Vec<String>)>,
}

impl TestInventory {
    /// An inventory whose requests that name no region go to `default_region`; no regions yet.
    pub fn new(default_region: &str) -> Self {
        Self {
            default_region: default_region.to_owned(),
            defaults: vec!["strategy = \"round_robin\"".to_owned()],
            regions: Vec::new(),
        }
    }

    /// `count` [`documentation_proxy`]s (1 to `count`) in the default region `us-east`, answers
    /// living 300 s.
    pub fn documentation(count: usize) -> Self {
        Self::new("us-east").ttl_seconds(300).region("us-east", (1..=count).map(documentation_proxy))
    }

    /// How long an answer lives (`ttl_seconds` of `[defaults]`).
    pub fn ttl_seconds(self, seconds: u64) -> Self {
        self.default_setting(format!("ttl_seconds = {seconds}"))
    }

    /// Whether a feed keeps its proxy (`sticky` of `[defaults]`).
    pub fn sticky(self, sticky: bool) -> Self {
        self.default_setting(format!("sticky = {sticky}"))
    }

    /// What a region answers when every proxy is ejected (`when_all_ejected` of `[defaults]`:
    /// `fail`, `direct` …).
    pub fn when_all_ejected(self, policy: &str) -> Self {
        self.default_setting(format!("when_all_ejected = \"{policy}\""))
    }

    /// Adds region `name` with the proxies `urls`.
    pub fn region<S: Into<String>>(mut self, name: &str, urls: impl IntoIterator<Item = S>) -> Self {
        self.regions.push((name.to_owned(), urls.into_iter().map(Into::into).collect()));
        self
    }

    fn default_setting(mut self, line: String) -> Self {
        self.defaults.push(line);
        self
    }

    /// The inventory as the pool reads it.
    pub fn to_toml(&self) -> String {
        let mut text = format!("default_region = \"{}\"\n[defaults]\n", self.default_region);
        for line in &self.defaults {
            let _ = writeln!(text, "{line}");
        }
        for (region, urls) in &self.regions {
            let _ = writeln!(text, "[regions.{region}]");
            for url in urls {
                let _ = writeln!(text, "[[regions.{region}.proxies]]\nurl = \"{url}\"");
            }
        }
        text
    }

    /// Writes the inventory to `path`; the path, for the pool's settings.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, path: impl Into<PathBuf>) -> PathBuf {
        let path = path.into();
        std::fs::write(&path, self.to_toml()).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }
}
