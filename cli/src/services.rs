//! `proxybus services`: who answers `$SRV.INFO` and `$SRV.STATS`. An aggregator's
//! stats carry its `role` (`active`: holds the leadership lease and folds, or
//! `standby`) and `leader_since`, shown in the `role` column.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

/// Arguments of `proxybus services`.
#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    /// How long to collect answers.
    #[arg(long, default_value = "500", value_name = "MILLISECONDS")]
    pub wait_ms: u64,
    /// Print the raw `$SRV.STATS` answers as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every answer to a request on `subject` within `wait`.
async fn gather(client: &async_nats::Client, subject: &str, wait: Duration) -> anyhow::Result<Vec<Value>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject.to_owned(), inbox, bytes::Bytes::new()).await?;
    client.flush().await?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(value) = serde_json::from_slice::<Value>(&msg.payload) {
            answers.push(value);
        }
    }
    Ok(answers)
}

/// `active since {time}` or `standby` from an endpoint's stats `data` (aggregators); empty
/// for services without a role.
fn role(data: &Value) -> String {
    match (data["role"].as_str(), data["leader_since"].as_str()) {
        (Some(role), Some(since)) => format!("{role} since {since}"),
        (Some(role), None) => role.to_owned(),
        (None, _) => String::new(),
    }
}

/// An endpoint's stats `data` as one `key: value` line per field (the role is its
/// own column), so the table stays as wide as its longest field instead of the
/// whole object on one line (a resolver's is some 400 characters).
fn data_lines(data: &Value) -> String {
    match data {
        Value::Null => String::new(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "role" | "leader_since"))
            .map(|(key, value)| match value {
                Value::String(text) => format!("{key}: {text}"),
                other => format!("{key}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

pub(crate) async fn run(client: &async_nats::Client, args: ServicesArgs) -> anyhow::Result<ExitCode> {
    let wait = Duration::from_millis(args.wait_ms);
    let mut stats = gather(client, "$SRV.STATS", wait).await?;
    stats.sort_by_key(|s| {
        (s["name"].as_str().unwrap_or_default().to_owned(), s["id"].as_str().unwrap_or_default().to_owned())
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table =
        crate::table(&["service", "id", "version", "role", "endpoint", "requests", "errors", "avg processing", "data"]);
    for service in &stats {
        for endpoint in service["endpoints"].as_array().into_iter().flatten() {
            let avg_ns = endpoint["average_processing_time"].as_u64().unwrap_or(0);
            table.add_row(vec![
                service["name"].as_str().unwrap_or_default().to_owned(),
                service["id"].as_str().unwrap_or_default().to_owned(),
                service["version"].as_str().unwrap_or_default().to_owned(),
                role(&endpoint["data"]),
                endpoint["subject"].as_str().or(endpoint["name"].as_str()).unwrap_or_default().to_owned(),
                endpoint["num_requests"].to_string(),
                endpoint["num_errors"].to_string(),
                format!("{:.3} ms", avg_ns as f64 / 1e6),
                data_lines(&endpoint["data"]),
            ]);
        }
    }
    println!("{table}");
    println!("{} service instances", stats.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregator_shows_its_role_and_other_services_none() {
        let active = serde_json::json!({ "role": "active", "leader_since": "2026-12-02T16:00:00Z" });
        assert_eq!(role(&active), "active since 2026-12-02T16:00:00Z");
        assert_eq!(role(&serde_json::json!({ "role": "standby", "leader_since": null })), "standby");
        assert_eq!(role(&Value::Null), "");
    }

    #[test]
    fn data_is_one_line_per_field_without_the_role() {
        let data = serde_json::json!({ "role": "active", "leader_since": "t", "events_folded": 118, "lag": { "n": 1 }, "state": "ok" });
        assert_eq!(data_lines(&data), "events_folded: 118\nlag: {\"n\":1}\nstate: ok");
        assert_eq!(data_lines(&Value::Null), "");
        assert_eq!(data_lines(&serde_json::json!(7)), "7");
    }
}
