//! `proxybus health [--region R] [--watch] [--json]`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use proxybus_shared::{Codec, Encoding, HealthState, HealthStats, ProxyId, Region, health, subject};

/// Arguments of `proxybus health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Only proxies of this region.
    #[arg(long)]
    pub region: Option<Region>,
    /// Keep the table up to date as health changes (Ctrl-C to stop).
    #[arg(long)]
    pub watch: bool,
    /// Print a JSON array of HealthStats instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(client: &async_nats::Client, args: HealthArgs) -> anyhow::Result<ExitCode> {
    let js = jetstream::new(client.clone());
    let bucket = js
        .get_key_value(subject::HEALTH_BUCKET)
        .await
        .map_err(|err| anyhow::anyhow!("no KV bucket {}: {err} (has the aggregator run?)", subject::HEALTH_BUCKET))?;
    // The watch starts before the records are read, so a change made while they are read
    // is not lost: it comes through the watch too (a record read twice is the same record).
    let watch = if args.watch { Some(bucket.watch_all().await?) } else { None };
    let mut stats = load(&bucket).await?;
    if args.watch {
        new_frame(&args);
    }
    print(&stats, &args)?;
    let Some(mut watch) = watch else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            entry = watch.next() => {
                let Some(entry) = entry else { return Ok(ExitCode::SUCCESS) };
                let entry = entry?;
                let Ok(id) = entry.key.parse::<ProxyId>() else { continue };
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(value) = Codec::default().decode_as::<HealthStats>(Encoding::MsgPack, &entry.value) {
                            stats.insert(id, value);
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        stats.remove(&id);
                    }
                }
                new_frame(&args);
                print(&stats, &args)?;
            }
        }
    }
}

/// Before each table of `--watch`: on a terminal the screen is cleared, so the table is
/// redrawn in place; into a file or a pipe a `--- HH:MM:SS.mmm` line (UTC) separates one
/// table from the next. Nothing before JSON.
fn new_frame(args: &HealthArgs) {
    if args.json {
        return;
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print!("\x1b[2J\x1b[H");
    } else {
        println!("--- {}", chrono::Utc::now().format("%H:%M:%S%.3f"));
    }
}

/// Every HealthStats in the bucket, by proxy id.
pub(crate) async fn load(bucket: &kv::Store) -> anyhow::Result<BTreeMap<ProxyId, HealthStats>> {
    Ok(proxybus_shared::kv::health_stats(bucket).await?)
}

fn print(stats: &BTreeMap<ProxyId, HealthStats>, args: &HealthArgs) -> anyhow::Result<()> {
    let mut shown: Vec<&HealthStats> =
        stats.values().filter(|s| args.region.is_none() || s.region == args.region).collect();
    shown.sort_by(|a, b| (&a.region, &a.proxy_id).cmp(&(&b.region, &b.proxy_id)));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        println!("{}", render(&shown));
    }
    Ok(())
}

/// Who did what, when and why: the operator's controls in force, else the last one issued.
fn operator_column(stats: &HealthStats) -> String {
    let describe = |c: &proxybus_shared::OperatorControl| {
        let scope = c.exchange_id.as_ref().map_or_else(String::new, |e| format!(" {e}"));
        let until = c.until.map_or_else(String::new, |u| format!(" until {}", u.format("%Y-%m-%d %H:%M:%S")));
        format!("{}{scope}{until} by {} at {}: {}", c.action, c.operator, c.at.format("%Y-%m-%d %H:%M:%S"), c.reason)
    };
    if stats.operator_controls.is_empty() {
        stats.last_operator_action.as_ref().map(|c| format!("(last) {}", describe(c))).unwrap_or_default()
    } else {
        stats.operator_controls.iter().map(describe).collect::<Vec<_>>().join("\n")
    }
}

/// One exchange's bar of a proxy, as the health table shows it:
/// `{exchange}:{state} until {end} (last: {error_kind})`, the end as a time of day when it is
/// less than a day away, else with its date — so a 30-minute bar after `http_403`s and a
/// week's `http_451` ban, both in state `banned`, read apart.
fn exchange_bar(exchange: &str, bar: &proxybus_shared::ExchangeHealth, now: chrono::DateTime<chrono::Utc>) -> String {
    let until = bar.banned_until.map_or_else(String::new, |until| {
        let format = if until - now < chrono::TimeDelta::days(1) { "%H:%M:%S" } else { "%Y-%m-%d %H:%M" };
        format!(" until {}", until.format(format))
    });
    let last = bar.last_error_kind.map_or_else(String::new, |kind| format!(" (last: {kind})"));
    format!("{exchange}:{}{until}{last}", crate::request::serde_plain(&bar.state))
}

/// The health table of `shown`, with a count under it.
pub(crate) fn render(shown: &[&HealthStats]) -> String {
    let mut table = crate::table(&[
        "proxy_id",
        "region",
        "proxy",
        "state",
        "events",
        "success",
        "ewma ms",
        "p99 ms",
        "fails in a row",
        "ejections",
        "exchange bans",
        "operator",
    ]);
    let now = chrono::Utc::now();
    for stored in shown {
        // Shown as of now, by the shared rules: an ejection or bar that has run out is over.
        let s = &health::as_of(stored, now);
        let bans: Vec<String> = s
            .exchanges
            .iter()
            .filter(|(_, e)| health::is_exchange_barred(e, now))
            .map(|(ex, e)| exchange_bar(ex.as_str(), e, now))
            .collect();
        let state = match (s.state, s.ejected_until) {
            (HealthState::Ejected, Some(until)) => format!("ejected until {}", until.format("%H:%M:%S")),
            (other, _) => crate::request::serde_plain(&other),
        };
        table.add_row(vec![
            s.proxy_id.to_string(),
            s.region.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            s.proxy_url.clone(),
            state,
            s.total.to_string(),
            format!("{:.1}%", s.success_rate * 100.0),
            s.latency_ewma_ms.map(|v| format!("{v:.0}")).unwrap_or_default(),
            s.latency_p99_ms.map(|v| format!("{v:.0}")).unwrap_or_default(),
            s.consecutive_failures.to_string(),
            s.ejections.to_string(),
            bans.join(" "),
            operator_column(s),
        ]);
    }
    format!("{table}\n{} proxies", shown.len())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone, Utc};
    use proxybus_shared::{ErrorKind, ExchangeHealth, ExchangeState};

    use super::*;

    #[test]
    fn a_bar_and_a_ban_read_apart_in_the_table() {
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        let bar = |minutes: i64, kind: ErrorKind| ExchangeHealth {
            state: ExchangeState::Banned,
            banned_until: Some(now + TimeDelta::minutes(minutes)),
            last_error_kind: Some(kind),
            ..ExchangeHealth::default()
        };
        assert_eq!(
            exchange_bar("coinbase", &bar(30, ErrorKind::Http403), now),
            "coinbase:banned until 12:30:00 (last: http_403)"
        );
        assert_eq!(
            exchange_bar("binance", &bar(7 * 24 * 60, ErrorKind::Http451), now),
            "binance:banned until 2026-12-12 12:00 (last: http_451)"
        );
        let cooldown = ExchangeHealth {
            state: ExchangeState::Cooldown,
            banned_until: Some(now + TimeDelta::seconds(60)),
            ..ExchangeHealth::default()
        };
        assert_eq!(exchange_bar("binance", &cooldown, now), "binance:cooldown until 12:01:00");
    }
}
