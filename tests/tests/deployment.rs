//! `docker-compose.yml` and the `Dockerfile` describe a deployment of every
//! binary the workspace builds (there is no Docker engine here, so their
//! structure is what we can test).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn workspace_binaries() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut bins = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            let kinds = target["kind"].as_array().unwrap();
            if kinds.iter().any(|k| k == "bin") {
                bins.push(target["name"].as_str().unwrap().to_owned());
            }
        }
    }
    bins
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_norway::from_str(&text).expect("docker-compose.yml is valid YAML")
}

#[test]
fn compose_runs_nats_with_jetstream_and_a_persistent_store() {
    let compose = compose();
    let nats = &compose["services"]["nats"];
    assert!(nats["image"].as_str().unwrap().starts_with("nats:"), "{nats}");
    let command: Vec<&str> = nats["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(command.contains(&"-js"), "JetStream must be on: {command:?}");
    let store = command.iter().position(|c| *c == "-sd").map(|i| command[i + 1]).expect("a store directory");
    let volumes: Vec<&str> = nats["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(volumes.iter().any(|v| v.ends_with(&format!(":{store}"))), "store {store} is not on a volume: {volumes:?}");
}

#[test]
fn compose_builds_every_workspace_binary_from_the_one_dockerfile() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let mut built = Vec::new();
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            assert_eq!(build["dockerfile"], "Dockerfile", "service {name} must use the one Dockerfile");
            let bin = build["args"]["BIN"].as_str().unwrap_or_else(|| panic!("service {name} names no BIN"));
            assert!(
                service["depends_on"].get("nats").is_some(),
                "service {name} must wait for nats: {}",
                service["depends_on"]
            );
            built.push(bin.to_owned());
        }
    }
    let services_needed: Vec<String> = workspace_binaries()
        .into_iter()
        // The bench and the exchange lab are development tools, not services to deploy.
        .filter(|b| {
            b.starts_with("proxybus-") && !["proxybus-tests", "proxybus-bench", "proxybus-lab"].contains(&b.as_str())
        })
        .collect();
    for bin in &services_needed {
        assert!(built.contains(bin), "docker-compose.yml does not run binary {bin} (it runs {built:?})");
    }
    for bin in &built {
        assert!(
            workspace_binaries().contains(bin),
            "docker-compose.yml runs {bin}, which the workspace does not build"
        );
    }
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a build stage and a slim runtime stage");
    assert!(text.contains("ARG BIN"), "the binary is chosen by build argument");
    let user = text.lines().rev().find(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && user.trim() != "USER 0", "{user}");
}
