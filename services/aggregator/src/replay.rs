//! `proxybus-aggregator replay`: rebuilds health stats from stream `PROXY_FEEDBACK`
//! with an ordered consumer, at full speed, into a bucket of its choice. The fold is
//! the live one, so a replay from the start equals what live folding stored.
//!
//! `replay --what-if POLICY.toml` ([`what_if`]) folds the same stream under the live
//! policy and a candidate one side by side and reports which proxies each would have
//! ejected or barred, when and for how long; it writes nothing.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxybus_shared::subject::{FEEDBACK_STREAM, HEALTH_REPLAY_BUCKET};
use proxybus_shared::{ExchangeId, ProxyId};

use crate::AggregatorError;
use crate::config::AggregatorConfig;
use crate::fold::{FeedbackFolder, ProxyHealth};
use crate::intake;
use crate::intake::offset_to_chrono;
use crate::policy::HealthPolicy;
use crate::store::{HealthStore, open_bucket, read_bucket};

/// Longest wait for the next message before a replay gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayStart {
    /// The first message of the stream.
    #[default]
    Beginning,
    /// The first message stored at or after this time.
    Since(DateTime<Utc>),
    /// This stream sequence.
    FromSeq(u64),
}

/// What to replay and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Where to start.
    pub start: ReplayStart,
    /// Bucket to write the result into; its other keys are deleted. When it is the
    /// live health bucket, the checkpoint is moved too (stop the aggregator first).
    pub into: String,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { start: ReplayStart::Beginning, into: HEALTH_REPLAY_BUCKET.to_owned() }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayReport {
    /// Events folded.
    pub events: u64,
    /// Messages that could not be folded (counted, not dead-lettered again).
    pub dead: u64,
    /// Proxies written.
    pub proxies: usize,
    /// Stream sequence replayed up to.
    pub last_seq: u64,
}

/// Replays the stream up to its last message at the time of the call; `progress`
/// is called with (messages done, messages to do).
pub async fn replay(
    config: &AggregatorConfig,
    options: &ReplayOptions,
    progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, AggregatorError> {
    let client = config.nats.connect().await.map_err(|err| AggregatorError::Connect(err.to_string()))?;
    let jetstream = jetstream::new(client);
    let mut folder = FeedbackFolder::with_event_ids(config.settings.health.clone(), config.settings.event_ids());
    // Regions are sized by the inventories stored now (the live fold used those of its time).
    folder.set_inventory_sizes(crate::inventory::current_sizes(&jetstream).await);
    let mut report = ReplayReport::default();
    let read = read_stream(&jetstream, options.start, progress, |event, seq, at| {
        if let Ok(event) = event {
            folder.fold_event(&event, seq, at);
        }
    })
    .await?;
    (report.events, report.dead, report.last_seq) = (read.events, read.dead, read.last_seq);
    let records: Vec<ProxyHealth> = folder.proxies().cloned().collect();
    report.proxies = records.len();
    let store = HealthStore::open(&jetstream, &options.into, &config.settings.state_bucket)
        .await?
        .with_part_records(config.settings.max_commit_records);
    let bucket = open_bucket(&jetstream, &options.into, "proxybus health stats").await?;
    for old in read_bucket(&bucket).await? {
        if folder.get(&old.stats.proxy_id).is_none() {
            let _ = bucket.delete(old.stats.proxy_id.as_str()).await;
        }
    }
    store.replace_all(report.last_seq, &records).await?;
    Ok(report)
}

/// What [`read_stream`] read.
#[derive(Debug, Clone, Copy, Default)]
struct StreamRead {
    events: u64,
    dead: u64,
    last_seq: u64,
}

/// Reads stream `PROXY_FEEDBACK` from `start` up to its last message at the time of
/// the call with an ordered (ephemeral) consumer — never the aggregator's durable —
/// and hands each message to `each`, decoded ([`intake::read_event`]) or with the
/// reason it cannot be folded, with its stream sequence and stream time.
async fn read_stream(
    jetstream: &jetstream::Context,
    start: ReplayStart,
    mut progress: impl FnMut(u64, u64),
    mut each: impl FnMut(Result<intake::StreamEvent, String>, u64, DateTime<Utc>),
) -> Result<StreamRead, AggregatorError> {
    let mut stream = jetstream
        .get_stream(FEEDBACK_STREAM)
        .await
        .map_err(|err| AggregatorError::Replay(format!("stream {FEEDBACK_STREAM}: {err}")))?;
    let state = stream.info().await.map_err(|err| AggregatorError::Replay(err.to_string()))?.state.clone();
    let target = state.last_sequence;
    let mut read = StreamRead::default();
    let start_seq = match start {
        ReplayStart::FromSeq(seq) => seq.max(state.first_sequence),
        _ => state.first_sequence,
    };
    if state.messages == 0 || target < start_seq {
        return Ok(read);
    }
    let deliver_policy = match start {
        ReplayStart::Beginning => consumer::DeliverPolicy::All,
        ReplayStart::Since(at) => consumer::DeliverPolicy::ByStartTime {
            start_time: async_nats::datetime::from_nanos(i128::from(at.timestamp_nanos_opt().unwrap_or_default()))
                .map_err(|err| AggregatorError::Replay(err.to_string()))?,
        },
        ReplayStart::FromSeq(_) => consumer::DeliverPolicy::ByStartSequence { start_sequence: start_seq },
    };
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
        .await
        .map_err(|err| AggregatorError::Replay(err.to_string()))?;
    // What the consumer has to deliver up to `target` (fewer when `--since` starts late).
    let pending = ordered.cached_info().num_pending;
    let total = pending.min(target - start_seq + 1);
    let messages = ordered.messages().await.map_err(|err| AggregatorError::Replay(err.to_string()))?;
    // A task reads, another decodes, this one folds: three stages on two cores.
    let (read_tx, read_rx) = tokio::sync::mpsc::channel(READ_BATCHES_QUEUED);
    let (decoded_tx, mut decoded) = tokio::sync::mpsc::channel(DECODED_BATCHES_QUEUED);
    let reader = tokio::spawn(read_messages(messages, target, total, read_tx));
    let decoder = tokio::spawn(decode(read_rx, decoded_tx));
    let mut done = 0;
    while let Some(batch) = decoded.recv().await {
        for Decoded { event, seq, at } in batch? {
            if event.is_ok() {
                read.events += 1;
            } else {
                read.dead += 1;
            }
            each(event, seq, at);
            read.last_seq = seq;
            done += 1;
            progress(done, total);
        }
    }
    let _ = reader.await;
    let _ = decoder.await;
    Ok(read)
}

/// Messages per hand-over from the reading task to the decoding task and on to the fold.
const DECODED_BATCH: usize = 256;
/// Hand-overs queued at most between the decoding task and the fold (bounds the
/// memory of a fold slower than the reader).
const DECODED_BATCHES_QUEUED: usize = 16;
/// Hand-overs queued at most between the reading task and the decoding task.
const READ_BATCHES_QUEUED: usize = 4;

/// One message as read: the message, its stream sequence and time.
struct Read {
    message: jetstream::Message,
    seq: u64,
    at: DateTime<Utc>,
}

/// One message as decoded: the event or why it cannot be folded, its stream sequence and time.
struct Decoded {
    event: Result<intake::StreamEvent, String>,
    seq: u64,
    at: DateTime<Utc>,
}

/// Reads up to `total` messages (and none after stream sequence `target`) from the
/// ordered consumer's `messages` and sends them to `out` in batches of
/// [`DECODED_BATCH`]; an error ends the reading and is sent last. Stops early, with a
/// warning, when no message comes for [`IDLE_TIMEOUT`].
async fn read_messages<S, E>(
    mut messages: S,
    target: u64,
    total: u64,
    out: tokio::sync::mpsc::Sender<Result<Vec<Read>, AggregatorError>>,
) where
    S: futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut batch = Vec::with_capacity(DECODED_BATCH);
    let (mut done, mut last_seq) = (0_u64, 0_u64);
    let error = loop {
        if done >= total {
            break None;
        }
        let next = tokio::time::timeout(IDLE_TIMEOUT, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => break Some(AggregatorError::Replay(err.to_string())),
            Ok(None) => break None,
            Err(_) => {
                tracing::warn!(at = last_seq, target, "no message for {IDLE_TIMEOUT:?}; stopping");
                break None;
            }
        };
        let info = match message.info() {
            Ok(info) => info,
            Err(err) => break Some(AggregatorError::Replay(err.to_string())),
        };
        let (seq, at) = (info.stream_sequence, offset_to_chrono(info.published));
        if seq > target {
            break None;
        }
        batch.push(Read { message, seq, at });
        (done, last_seq) = (done + 1, seq);
        if seq == target {
            break None;
        }
        if batch.len() >= DECODED_BATCH && out.send(Ok(std::mem::take(&mut batch))).await.is_err() {
            return;
        }
    };
    if !batch.is_empty() && out.send(Ok(batch)).await.is_err() {
        return;
    }
    if let Some(err) = error {
        let _ = out.send(Err(err)).await;
    }
}

/// Decodes ([`intake::read_event`]) each batch [`read_messages`] sends and passes it
/// on to `out` in order, the error that ended the reading included.
async fn decode(
    mut read: tokio::sync::mpsc::Receiver<Result<Vec<Read>, AggregatorError>>,
    out: tokio::sync::mpsc::Sender<Result<Vec<Decoded>, AggregatorError>>,
) {
    while let Some(batch) = read.recv().await {
        let decoded = batch.map(|batch| {
            batch
                .into_iter()
                .map(|Read { message, seq, at }| Decoded {
                    event: intake::read_event(message.subject.as_str(), message.headers.as_ref(), &message.payload),
                    seq,
                    at,
                })
                .collect()
        });
        if out.send(decoded).await.is_err() {
            return;
        }
    }
}

/// What a health policy did to a proxy in a what-if replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The proxy.
    pub proxy_id: ProxyId,
    /// `ejected` (every exchange), or the exchange bar's state (`cooldown`, `banned`).
    pub action: String,
    /// The exchange a bar is about; null for an ejection.
    pub exchange_id: Option<ExchangeId>,
    /// When (stream time of the event that decided it).
    pub at: DateTime<Utc>,
    /// Until when, as decided then.
    pub until: Option<DateTime<Utc>>,
    /// How long, in seconds.
    pub seconds: Option<i64>,
    /// Stream sequence of the deciding event.
    pub seq: u64,
}

/// Everything one policy decided over the replayed stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyDecisions {
    /// Ejections, in stream order.
    pub ejections: Vec<Decision>,
    /// Exchange bars (cool-downs and bans), in stream order.
    pub bars: Vec<Decision>,
    /// Ejections passing probes ended early.
    pub readmissions: u64,
}

/// The side-by-side result of `replay --what-if`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WhatIfReport {
    /// Events folded (under each policy).
    pub events: u64,
    /// Messages that could not be folded.
    pub dead: u64,
    /// Stream sequence replayed up to.
    pub last_seq: u64,
    /// Under the live policy (the aggregator's `health` settings).
    pub live: PolicyDecisions,
    /// Under the candidate policy.
    pub candidate: PolicyDecisions,
}

/// One folder of a what-if replay and what it decided.
struct Judge {
    folder: FeedbackFolder,
    decisions: PolicyDecisions,
}

impl Judge {
    fn new(policy: HealthPolicy, sizes: &crate::inventory::RegionSizes, config: &AggregatorConfig) -> Self {
        let mut folder = FeedbackFolder::with_event_ids(policy, config.settings.event_ids());
        folder.set_inventory_sizes(sizes.clone());
        Self { folder, decisions: PolicyDecisions::default() }
    }

    fn fold(&mut self, event: &intake::StreamEvent, seq: u64, at: DateTime<Utc>) {
        let before = match event {
            intake::StreamEvent::Feedback(feedback) => self
                .folder
                .get(&feedback.proxy_id)
                .and_then(|p| p.stats.exchanges.get(&feedback.exchange_id))
                .map(|e| (e.state, e.banned_until)),
            intake::StreamEvent::Operator(_) => None,
        };
        let outcome = self.folder.fold_event(event, seq, at);
        self.decisions.readmissions += u64::from(outcome.readmitted);
        let Some(proxy) = self.folder.get(event.proxy_id()) else { return };
        let decision = |action: String, exchange_id: Option<ExchangeId>, until: Option<DateTime<Utc>>| Decision {
            proxy_id: proxy.stats.proxy_id,
            action,
            exchange_id,
            at,
            until,
            seconds: until.map(|until| (until - at).num_seconds()),
            seq,
        };
        if outcome.ejected {
            self.decisions.ejections.push(decision("ejected".into(), None, proxy.stats.ejected_until));
        }
        if let intake::StreamEvent::Feedback(feedback) = event
            && outcome.exchange_barred
            && let Some(exchange) = proxy.stats.exchanges.get(&feedback.exchange_id)
            && before != Some((exchange.state, exchange.banned_until))
        {
            let state = serde_json::to_value(exchange.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            self.decisions.bars.push(decision(
                state.unwrap_or_default(),
                Some(feedback.exchange_id.clone()),
                exchange.banned_until,
            ));
        }
    }
}

/// Folds the recorded stream from `start` under the live policy (`config.settings.health`)
/// and under `candidate`, side by side, with an ordered (ephemeral) consumer. Writes
/// nothing: no bucket, no checkpoint, no durable consumer is touched.
pub async fn what_if(
    config: &AggregatorConfig,
    candidate: &HealthPolicy,
    start: ReplayStart,
    progress: impl FnMut(u64, u64),
) -> Result<WhatIfReport, AggregatorError> {
    let client = config.nats.connect().await.map_err(|err| AggregatorError::Connect(err.to_string()))?;
    let jetstream = jetstream::new(client);
    let sizes = crate::inventory::current_sizes(&jetstream).await;
    let mut live = Judge::new(config.settings.health.clone(), &sizes, config);
    let mut trial = Judge::new(candidate.clone(), &sizes, config);
    let read = read_stream(&jetstream, start, progress, |event, seq, at| {
        if let Ok(event) = event {
            live.fold(&event, seq, at);
            trial.fold(&event, seq, at);
        }
    })
    .await?;
    Ok(WhatIfReport {
        events: read.events,
        dead: read.dead,
        last_seq: read.last_seq,
        live: live.decisions,
        candidate: trial.decisions,
    })
}

/// Reads a candidate health policy: a TOML file of `HealthPolicy` settings (the names
/// of docs/health.md; missing ones keep their defaults), every one checked.
pub fn load_policy(path: &std::path::Path) -> Result<HealthPolicy, AggregatorError> {
    // The one configuration loader: TOML, every setting checked, errors with FILE:LINE.
    let no_env: proxybus_shared::config::EnvSource = std::iter::empty::<(String, String)>().collect();
    proxybus_shared::config::load::<HealthPolicy>(Some(path), &no_env, "PROXYBUS_WHAT_IF_")
        .map_err(|err| AggregatorError::Replay(format!("candidate policy {}: {err}", path.display())))
}

/// The report as a table: per proxy, what each policy decided, and the totals.
pub fn render_what_if(report: &WhatIfReport) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    fn describe(d: &Decision) -> String {
        let what = match &d.exchange_id {
            Some(exchange) => format!("{} {exchange}", d.action),
            None => d.action.clone(),
        };
        let long = d.seconds.map_or_else(|| "until lifted".to_owned(), |s| format!("{s}s"));
        format!("{what} at {} for {long} (seq {})", d.at.format("%Y-%m-%d %H:%M:%S"), d.seq)
    }
    let mut rows: BTreeMap<&ProxyId, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for d in report.live.ejections.iter().chain(&report.live.bars) {
        rows.entry(&d.proxy_id).or_default().0.push(describe(d));
    }
    for d in report.candidate.ejections.iter().chain(&report.candidate.bars) {
        rows.entry(&d.proxy_id).or_default().1.push(describe(d));
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<18} | {:<60} | candidate policy", "proxy_id", "live policy");
    for (proxy, (live, candidate)) in rows {
        let lines = live.len().max(candidate.len());
        for i in 0..lines {
            let id = if i == 0 { proxy.as_str() } else { "" };
            let left = live.get(i).map_or("", String::as_str);
            let right = candidate.get(i).map_or("", String::as_str);
            let _ = writeln!(out, "{id:<18} | {left:<60} | {right}");
        }
    }
    let _ = writeln!(
        out,
        "{} events up to sequence {}: live policy {} ejections, {} bars; candidate {} ejections, {} bars",
        report.events,
        report.last_seq,
        report.live.ejections.len(),
        report.live.bars.len(),
        report.candidate.ejections.len(),
        report.candidate.bars.len()
    );
    out
}

/// The arguments of a replay command line (`proxybus-aggregator replay`, `proxybus replay`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Start with the first event stored at or after this time (RFC 3339).
    #[arg(long, conflicts_with = "from_seq")]
    pub since: Option<DateTime<Utc>>,
    /// Start at this stream sequence.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Bucket to write into; PROXY_HEALTH replaces live state (stop the aggregator first).
    #[arg(long, default_value = HEALTH_REPLAY_BUCKET)]
    pub into: String,
    /// Compare a candidate health policy (a TOML file of the settings in docs/health.md)
    /// with the live one over the recorded stream; writes nothing.
    #[arg(long, value_name = "POLICY.toml", conflicts_with = "into")]
    pub what_if: Option<std::path::PathBuf>,
    /// With --what-if: print the report as JSON.
    #[arg(long, requires = "what_if")]
    pub json: bool,
}

impl ReplayArgs {
    /// The replay these arguments ask for.
    pub fn options(&self) -> ReplayOptions {
        ReplayOptions { start: self.start(), into: self.into.clone() }
    }

    /// Where these arguments start.
    pub fn start(&self) -> ReplayStart {
        match (self.since, self.from_seq) {
            (Some(at), _) => ReplayStart::Since(at),
            (None, Some(seq)) => ReplayStart::FromSeq(seq),
            (None, None) => ReplayStart::Beginning,
        }
    }
}

/// Runs a replay command line: `--what-if` compares policies and prints the report,
/// otherwise the stream is replayed into a bucket ([`replay_with_progress_bar`]).
pub async fn run_command(config: &AggregatorConfig, args: &ReplayArgs) -> Result<(), AggregatorError> {
    let Some(path) = &args.what_if else {
        replay_with_progress_bar(config, args).await?;
        return Ok(());
    };
    let candidate = load_policy(path)?;
    let report = what_if(config, &candidate, args.start(), |_, _| {}).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|err| AggregatorError::Replay(err.to_string()))?);
    } else {
        print!("{}", render_what_if(&report));
    }
    Ok(())
}

/// Replays with a progress bar on the terminal and prints a one-line summary.
pub async fn replay_with_progress_bar(
    config: &AggregatorConfig,
    args: &ReplayArgs,
) -> Result<ReplayReport, AggregatorError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = args.options();
    let report = replay(config, &options, |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "replayed {} events ({} unfoldable) up to sequence {} into {}: {} proxies",
        report.events, report.dead, report.last_seq, options.into, report.proxies
    );
    Ok(report)
}
