//! docs/health.md states every rule of the health model with the default the code
//! has: a changed default that the page does not follow fails here.

use proxybus_shared::health::HealthPolicy;

#[test]
fn every_setting_of_the_health_model_is_in_docs_health_md_with_its_default() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/health.md")).unwrap();
    let defaults = serde_json::to_value(HealthPolicy::default()).unwrap();
    for (name, value) in defaults.as_object().unwrap() {
        let row = page
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/health.md has no row for `{name}`"));
        let default = match value.as_f64() {
            Some(number) if number.fract() == 0.0 => format!("{}", number as u64),
            Some(number) => format!("{number}"),
            None => value.to_string(),
        };
        let cell = row.split('|').nth(3).unwrap_or_default().replace(' ', "");
        let documented: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        assert_eq!(documented, default, "docs/health.md gives `{name}` the default {cell:?}");
    }
}
