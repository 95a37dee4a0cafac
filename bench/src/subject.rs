//! Service processes under test.
//!
//! The parent spawns this executable as `proxybus-bench subject <kind> …`; the
//! child runs the same library entry point as the service's own binary
//! (`proxybus_resolver::run`, `proxybus_aggregator::run`,
//! `proxybus_aggregator::replay`) or the bare responder of the baseline. Its
//! stdin is its shutdown signal: when the parent closes it, the child shuts
//! down gracefully and prints one JSON line, [`ChildReport`], with its own peak
//! RSS (`VmHWM` of `/proc/self/status`) measured after everything it did.
//!
//! Like the service binaries, a child installs the tracing subscriber of
//! `proxybus_shared::telemetry` (level `info` unless `RUST_LOG` says otherwise),
//! so spans and logs cost what they cost in production; its stderr goes to
//! `proxybus-bench-{pid}-{kind}.log` in the temporary directory, quoted when it fails.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use proxybus_aggregator::{AggregatorConfig, ReplayOptions, ReplayStart};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// What a child prints last.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ChildReport {
    /// `VmHWM` of the child, bytes.
    pub peak_rss_bytes: u64,
    /// Seconds the measured work took inside the child (replay), if it measured any.
    pub elapsed_seconds: Option<f64>,
    /// Events the child handled (replay), if it counted any.
    pub events: Option<u64>,
}

/// What a child runs (`proxybus-bench subject <kind>`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SubjectKind {
    /// `proxybus_resolver::run` with one upstream pool endpoint.
    Resolver {
        /// NATS server.
        #[arg(long)]
        nats_url: String,
        /// Base URL of the pool.
        #[arg(long)]
        pool_url: String,
        /// Bearer token of the pool.
        #[arg(long)]
        token: String,
        /// Bound of the answer cache.
        #[arg(long, default_value_t = 100_000)]
        cache_max_entries: u64,
    },
    /// A bare async-nats responder replying the bytes of `payload_file`.
    BareResponder {
        /// NATS server.
        #[arg(long)]
        nats_url: String,
        /// Subject to answer.
        #[arg(long)]
        subject: String,
        /// The reply's payload.
        #[arg(long)]
        payload_file: PathBuf,
    },
    /// A bare forwarder: an async-nats subscriber that POSTs each request's bytes (a
    /// JSON `ProxyRequest`) to the pool with the resolver's HTTP client
    /// (`proxy_service_client`), in a task per request as the resolver's cold requests
    /// get, and replies the pool's bytes — the bus and an HTTP call with no decision:
    /// the floor under any resolver's cold path on these libraries.
    BareForwarder {
        /// NATS server.
        #[arg(long)]
        nats_url: String,
        /// Subject to answer.
        #[arg(long)]
        subject: String,
        /// Base URL of the pool.
        #[arg(long)]
        pool_url: String,
        /// Bearer token of the pool.
        #[arg(long)]
        token: String,
    },
    /// `proxybus_aggregator::run` into its own buckets.
    Aggregator {
        /// NATS server.
        #[arg(long)]
        nats_url: String,
        /// Health bucket.
        #[arg(long)]
        health_bucket: String,
        /// Checkpoint bucket.
        #[arg(long)]
        state_bucket: String,
    },
    /// The reference pool (`proxybus_pool::PoolServer`) on a free port of 127.0.0.1: the
    /// resolver's upstream and the direct call's server ([`crate::pool`]).
    Pool,
    /// `proxybus_aggregator::replay` from the start into `into`, then exit.
    Replay {
        /// NATS server.
        #[arg(long)]
        nats_url: String,
        /// Bucket to write into.
        #[arg(long)]
        into: String,
    },
}

/// Peak RSS (`VmHWM`) of process `pid`, bytes; `None` when unreadable.
pub fn peak_rss(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A running child.
#[derive(Debug)]
pub struct SubjectProcess {
    name: &'static str,
    log: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl SubjectProcess {
    /// Spawns `exe subject <args…>`, its stderr into a log file, under
    /// `PROXYBUS_BENCH_SUBJECT_WRAPPER` when that is set.
    pub fn spawn(exe: &Path, name: &'static str, args: &[String]) -> anyhow::Result<Self> {
        // `PROXYBUS_BENCH_SUBJECT_WRAPPER="valgrind --tool=callgrind"` runs each
        // subject under that command, for instruction counts that do not depend on
        // the machine's load (docs/benchmarks.md, "How it measures").
        let wrapper = std::env::var("PROXYBUS_BENCH_SUBJECT_WRAPPER").unwrap_or_default();
        Self::spawn_wrapped(&wrapper, exe, name, args)
    }

    /// As [`spawn`](Self::spawn), never under the wrapper: for the processes around the
    /// one measured (the pool), which a profiler would only slow down.
    pub fn spawn_plain(exe: &Path, name: &'static str, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_wrapped("", exe, name, args)
    }

    fn spawn_wrapped(wrapper: &str, exe: &Path, name: &'static str, args: &[String]) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("proxybus-bench-{}-{name}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("subject")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} subject {name}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        Ok(Self { name, log, child, stdin, stdout })
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the child's next line (JSON).
    pub async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let line = match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => bail!("subject {} exited; {}", self.name, self.log_tail()),
            Ok(Err(err)) => bail!("subject {}: {err}; {}", self.name, self.log_tail()),
            Err(_) => bail!("subject {} silent for {timeout:?}; {}", self.name, self.log_tail()),
        };
        serde_json::from_str(&line).with_context(|| format!("subject {} printed {line:?}", self.name))
    }

    /// The last lines of the child's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(10).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        format!("log {}:\n{}", self.log.display(), tail.join("\n"))
    }

    /// Closes the child's stdin (its shutdown signal), reads its report and reaps it.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<ChildReport> {
        drop(self.stdin.take());
        let report = loop {
            let value = self.next_line(timeout).await?;
            if value.get("peak_rss_bytes").is_some() {
                break serde_json::from_value::<ChildReport>(value)?;
            }
        };
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        if !status.success() {
            bail!("subject {} exited with {status}; {}", self.name, self.log_tail());
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(report)
    }
}

/// Completes when stdin reaches its end (the parent closed it or died).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0_u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn print_report(report: ChildReport) {
    let report = ChildReport { peak_rss_bytes: peak_rss("self").unwrap_or(0), ..report };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}

/// The child side: runs `kind` until stdin closes (or, for a replay, to its end).
pub async fn serve(kind: SubjectKind) -> anyhow::Result<()> {
    proxybus_shared::telemetry::init_from_env(&proxybus_shared::config::EnvSource::from_process());
    match kind {
        SubjectKind::Resolver { nats_url, pool_url, token, cache_max_entries } => {
            let config = proxybus_resolver::ResolverConfig {
                proxy: resolver_proxy_settings(&pool_url, &token),
                resolver: proxybus_resolver::ResolverSettings {
                    cache_max_entries,
                    // The bench counts upstream requests; probes would only add noise.
                    health_probe_interval_seconds: 0,
                    ..Default::default()
                },
                nats: NatsSettings::new(nats_url),
            };
            proxybus_resolver::run(config, stdin_closed()).await?;
            print_report(ChildReport::default());
        }
        SubjectKind::BareResponder { nats_url, subject, payload_file } => {
            let payload = bytes::Bytes::from(std::fs::read(&payload_file)?);
            let client = async_nats::connect(&nats_url).await?;
            let (replier, headers) = (client.clone(), proxybus_shared::Encoding::MsgPack.headers());
            answer_until_stdin_closes(&client, subject, "bench-bare", move |request| {
                let (replier, headers, payload) = (replier.clone(), headers.clone(), payload.clone());
                async move {
                    if let Some(reply) = request.reply {
                        replier.publish_with_headers(reply, headers, payload).await?;
                    }
                    anyhow::Ok(())
                }
            })
            .await?;
            client.drain().await?;
            print_report(ChildReport::default());
        }
        SubjectKind::BareForwarder { nats_url, subject, pool_url, token } => {
            bare_forwarder(&nats_url, &subject, &pool_url, &token).await?;
            print_report(ChildReport::default());
        }
        SubjectKind::Aggregator { nats_url, health_bucket, state_bucket } => {
            let mut config = AggregatorConfig::for_url(nats_url);
            config.settings.health_bucket = health_bucket;
            config.settings.state_bucket = state_bucket;
            config.settings.push.enabled = false;
            proxybus_aggregator::run(config, stdin_closed()).await?;
            print_report(ChildReport::default());
        }
        SubjectKind::Pool => {
            crate::pool::serve_child(stdin_closed()).await?;
            print_report(ChildReport::default());
        }
        SubjectKind::Replay { nats_url, into } => {
            let config = AggregatorConfig::for_url(nats_url);
            let options = ReplayOptions { start: ReplayStart::Beginning, into };
            let started = Instant::now();
            let report = proxybus_aggregator::replay(&config, &options, |_, _| {}).await?;
            let elapsed = started.elapsed().as_secs_f64();
            print_report(ChildReport {
                elapsed_seconds: Some(elapsed),
                events: Some(report.events + report.dead),
                ..ChildReport::default()
            });
        }
    }
    Ok(())
}

/// Subscribes to `subject` in queue group `queue`, prints `{"ready":true}`, and awaits
/// `answer` for each request in turn until stdin closes. The loop runs in a task of the
/// runtime, as the resolver serves (`proxybus_resolver`'s `serve_in_task`): the same
/// thread hand-offs on both sides of a ratio.
async fn answer_until_stdin_closes<F, Fut>(
    client: &async_nats::Client,
    subject: String,
    queue: &str,
    mut answer: F,
) -> anyhow::Result<()>
where
    F: FnMut(async_nats::Message) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut requests = client.queue_subscribe(subject, queue.to_owned()).await?;
    client.flush().await?;
    println!("{{\"ready\":true}}");
    tokio::spawn(async move {
        let closed = stdin_closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                biased;
                () = &mut closed => break,
                request = requests.next() => match request {
                    Some(request) => answer(request).await?,
                    None => break,
                },
            }
        }
        anyhow::Ok(())
    })
    .await?
}

/// [`SubjectKind::BareForwarder`] until stdin closes: a task per request.
async fn bare_forwarder(nats_url: &str, subject: &str, pool_url: &str, token: &str) -> anyhow::Result<()> {
    use proxybus_shared::http::{TlsFiles, paths, proxy_service_client};
    let http = proxy_service_client(&external_service(pool_url, token), &TlsFiles::default())?;
    let url = reqwest::Url::parse(&format!("{pool_url}{}", paths::REQUEST))?;
    let client = async_nats::connect(nats_url).await?;
    let (replier, headers) = (client.clone(), proxybus_shared::Encoding::Json.headers());
    let tasks = tokio_util::task::TaskTracker::new();
    let spawner = tasks.clone();
    answer_until_stdin_closes(&client, subject.to_owned(), "bench-forwarder", move |request| {
        if let Some(reply) = request.reply {
            let (http, url, replier, headers) = (http.clone(), url.clone(), replier.clone(), headers.clone());
            spawner.spawn(async move {
                let answer = async {
                    let response = http
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(request.payload)
                        .send()
                        .await?
                        .error_for_status()?;
                    response.bytes().await
                };
                // A failed call is an error reply, which fails the requester's round.
                let (headers, body) = match answer.await {
                    Ok(body) => (headers, body),
                    Err(err) => {
                        let mut failed = async_nats::HeaderMap::new();
                        failed.insert(proxybus_shared::subject::SERVICE_ERROR_CODE_HEADER, "502");
                        (failed, bytes::Bytes::from(err.to_string()))
                    }
                };
                let _ = replier.publish_with_headers(reply, headers, body).await;
            });
        }
        std::future::ready(anyhow::Ok(()))
    })
    .await?;
    tasks.close();
    tasks.wait().await;
    client.drain().await?;
    Ok(())
}

/// The seed's settings with the pool as the one external service.
pub fn resolver_proxy_settings(pool_url: &str, token: &str) -> ProxySettings {
    ProxySettings { enabled: true, external_service: external_service(pool_url, token), ..Default::default() }
}

/// The pool as an external service with bearer-token auth.
pub fn external_service(pool_url: &str, token: &str) -> ExternalProxyServiceConfig {
    ExternalProxyServiceConfig {
        enabled: true,
        endpoints: vec![pool_url.to_owned()],
        auth_method: AuthMethod::BearerToken,
        auth_credentials: [("token".to_owned(), token.into())].into_iter().collect(),
        ..Default::default()
    }
}
