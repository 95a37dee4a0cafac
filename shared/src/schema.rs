//! JSON Schemas of the contract's messages, generated from the Rust types.
//!
//! `schemas/*.schema.json` in the repository are these, committed; a test fails
//! when they drift. Regenerate with
//! `UPDATE_SCHEMAS=1 cargo test -p proxybus-shared --test schemas`.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

use crate::messages::{
    ErrorReply, HealthStats, OperatorEvent, ProxyFeedback, ProxyInventory, ProxyRequest, ProxyResponse,
};

/// One generated schema: the file it lives in under `schemas/`, and its content.
#[derive(Debug, Clone)]
pub struct MessageSchema {
    /// Message name (`ProxyRequest` …).
    pub name: &'static str,
    /// File name under `schemas/` (`proxy_request.schema.json` …).
    pub file: &'static str,
    /// The JSON Schema (draft 2020-12).
    pub schema: Value,
}

fn generate<T: JsonSchema>(name: &'static str, file: &'static str) -> MessageSchema {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert("$id".into(), Value::String(format!("https://proxybus.dev/schemas/v1/{file}")));
    }
    MessageSchema { name, file, schema }
}

/// The schemas of every message of the contract.
pub fn message_schemas() -> Vec<MessageSchema> {
    vec![
        generate::<ProxyRequest>("ProxyRequest", "proxy_request.schema.json"),
        generate::<ProxyResponse>("ProxyResponse", "proxy_response.schema.json"),
        generate::<ErrorReply>("ErrorReply", "error_reply.schema.json"),
        generate::<ProxyFeedback>("ProxyFeedback", "proxy_feedback.schema.json"),
        generate::<HealthStats>("HealthStats", "health_stats.schema.json"),
        generate::<ProxyInventory>("ProxyInventory", "proxy_inventory.schema.json"),
        generate::<OperatorEvent>("OperatorEvent", "operator_event.schema.json"),
        generate::<crate::budget::RateBudget>("RateBudget", "rate_budget.schema.json"),
    ]
}

/// A schema as it is written to disk: pretty JSON with a final newline.
pub fn to_file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a JSON value always serializes");
    text.push('\n');
    text
}
