//! The alert rules and the dashboard in `deploy/`: valid for Prometheus, and naming only
//! metrics that wgtel exports.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use wgtel::{export::prometheus, model::Snapshot};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// Every series name `/metrics` can carry: the families, and a histogram's three series.
fn exported_names() -> BTreeSet<String> {
    let text = prometheus::render(&Snapshot::empty());
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The metric names in a PromQL expression: the identifiers wgtel's metrics start with,
/// outside label matchers (`{...}`) and grouping (`by (...)`).
fn metric_names(expression: &str) -> Vec<String> {
    let mut outside = String::new();
    let mut rest = expression;
    while let Some(c) = rest.chars().next() {
        let skip_to = if c == '{' {
            Some('}')
        } else if rest.starts_with("by (") || rest.starts_with("without (") {
            Some(')')
        } else {
            None
        };
        match skip_to {
            Some(close) => {
                let end = rest.find(close).map_or(rest.len(), |end| end + 1);
                rest = &rest[end..];
                outside.push(' ');
            }
            None => {
                outside.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    outside
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("wireguard_") || word.starts_with("wgtel_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/wgtel-alerts.yml"))
        .output()
        .expect("promtool is installed by `cargo xtask setup`");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_and_the_dashboard_name_only_exported_metrics() {
    let exported = exported_names();
    let rules = std::fs::read_to_string(deploy("prometheus/wgtel-alerts.yml")).expect("the rules");
    let rule_names: Vec<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .flat_map(metric_names)
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/wgtel-dashboard.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut dashboard_names = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            dashboard_names.extend(metric_names(target["expr"].as_str().expect("an expression")));
        }
    }
    let variable =
        dashboard["templating"]["list"][1]["query"].as_str().expect("the interface query");
    assert_eq!(variable, "label_values(wireguard_peers, wireguard_interface)");
    dashboard_names.push("wireguard_peers".to_owned());
    assert!(rule_names.len() >= 8 && dashboard_names.len() >= 12);
    for name in rule_names.iter().chain(&dashboard_names) {
        assert!(exported.contains(name), "{name} is not a metric wgtel exports: {exported:?}");
    }
}
