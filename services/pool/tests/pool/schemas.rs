//! Answers of the HTTP API match the checked-in JSON Schemas of the contract.

use serde_json::Value;

use crate::helpers::*;

fn schema(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn assert_valid(schema_file: &str, instance: &Value) {
    let validator = jsonschema::validator_for(&schema(schema_file)).unwrap();
    let errors: Vec<String> = validator.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{schema_file}: {errors:?} in {instance}");
}

#[tokio::test]
async fn answers_and_inventory_health_match_the_contract_schemas() {
    let app = spawn_app(&one_region("p2c_ewma", &[1, 2]), |_| {}).await;
    let answer: Value = app
        .post("/api/v1/proxy/request", &serde_json::to_value(request("binance", "c")).unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_valid("proxy_response.schema.json", &answer);
    app.post("/api/v1/proxy/health", &serde_json::json!([banned_for(1, "binance")])).await;
    let listing: Vec<Value> =
        app.client.get(format!("{}/api/v1/proxies", app.base)).send().await.unwrap().json().await.unwrap();
    let health: Vec<&Value> = listing.iter().filter(|p| !p["health"].is_null()).map(|p| &p["health"]).collect();
    assert_eq!(health.len(), 1);
    assert_valid("health_stats.schema.json", health[0]);
    for proxy in &listing {
        assert!(proxy["proxy_id"].as_str().unwrap().len() == 16 && proxy["region"].is_string(), "{proxy}");
    }
    app.stop().await;
}
