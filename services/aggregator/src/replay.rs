//! `proxybus-aggregator replay`: rebuilds health stats from stream `PROXY_FEEDBACK`
//! with an ordered consumer, at full speed, into a bucket of its choice. The fold is
//! the live one, so a replay from the start equals what live folding stored.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxybus_shared::subject::FEEDBACK_STREAM;

use crate::AggregatorError;
use crate::config::AggregatorConfig;
use crate::fold::{FeedbackFolder, ProxyHealth};
use crate::intake;
use crate::service::offset_to_chrono;
use crate::store::{HealthStore, open_bucket, read_bucket};

/// Default bucket a replay writes into, so that it never overwrites live state by accident.
pub const DEFAULT_REPLAY_BUCKET: &str = "PROXY_HEALTH_REPLAY";
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
        Self { start: ReplayStart::Beginning, into: DEFAULT_REPLAY_BUCKET.to_owned() }
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
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, AggregatorError> {
    let client = config.nats.connect().await.map_err(|err| AggregatorError::Connect(err.to_string()))?;
    let jetstream = jetstream::new(client);
    let mut stream = jetstream
        .get_stream(FEEDBACK_STREAM)
        .await
        .map_err(|err| AggregatorError::Replay(format!("stream {FEEDBACK_STREAM}: {err}")))?;
    let state = stream.info().await.map_err(|err| AggregatorError::Replay(err.to_string()))?.state.clone();
    let target = state.last_sequence;
    let mut folder = FeedbackFolder::with_event_ids(config.settings.health.clone(), config.settings.event_ids());
    // Regions are sized by the inventories stored now (the live fold used those of its time).
    folder.set_inventory_sizes(crate::inventory::current_sizes(&jetstream).await);
    let mut report = ReplayReport::default();
    let start_seq = match options.start {
        ReplayStart::FromSeq(seq) => seq.max(state.first_sequence),
        _ => state.first_sequence,
    };
    if state.messages > 0 && target >= start_seq {
        let deliver_policy = match options.start {
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
        let mut messages = ordered.messages().await.map_err(|err| AggregatorError::Replay(err.to_string()))?;
        let mut done = 0;
        while done < total {
            let next = tokio::time::timeout(IDLE_TIMEOUT, messages.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(err))) => return Err(AggregatorError::Replay(err.to_string())),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(at = report.last_seq, target, "no message for {IDLE_TIMEOUT:?}; stopping");
                    break;
                }
            };
            let info = message.info().map_err(|err| AggregatorError::Replay(err.to_string()))?;
            let seq = info.stream_sequence;
            if seq > target {
                break;
            }
            match intake::read_event(message.subject.as_str(), message.headers.as_ref(), &message.payload) {
                Ok(event) => {
                    folder.fold_event(&event, seq, offset_to_chrono(info.published));
                    report.events += 1;
                }
                Err(_) => report.dead += 1,
            }
            report.last_seq = seq;
            done += 1;
            progress(done, total);
            if seq == target {
                break;
            }
        }
    }
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
    #[arg(long, default_value = DEFAULT_REPLAY_BUCKET)]
    pub into: String,
}

impl ReplayArgs {
    /// The replay these arguments ask for.
    pub fn options(&self) -> ReplayOptions {
        let start = match (self.since, self.from_seq) {
            (Some(at), _) => ReplayStart::Since(at),
            (None, Some(seq)) => ReplayStart::FromSeq(seq),
            (None, None) => ReplayStart::Beginning,
        };
        ReplayOptions { start, into: self.into.clone() }
    }
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
