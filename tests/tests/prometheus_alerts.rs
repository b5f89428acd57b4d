//! The shipped alert rules (`deploy/prometheus/wgtel-alerts.yml`) evaluated by a real
//! Prometheus scraping wgtel in a lab with a broken peer: the handshake alert and the
//! diagnosis alert fire for that peer, naming it by its public key (the lab names no peer
//! here), and none fires for the healthy peer. The rules are the shipped ones with every
//! `for:` set to 0s, so that the test need not wait minutes.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use wgtel::lab::{Lab, LabOptions, stop_child};
use wgtel_tests::{Daemon, get_in_namespace};

/// Where the lab's Prometheus listens, inside the gateway namespace.
const PROMETHEUS: &str = "127.0.0.1:9590";

const WAIT: Duration = Duration::from_secs(60);

/// A Prometheus server in the gateway namespace, stopped (by its own PID) when dropped.
struct Prometheus(Option<std::process::Child>);

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop_child(child);
        }
    }
}

fn start_prometheus(lab: &Lab) -> Prometheus {
    let shipped = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/wgtel-alerts.yml"),
    )
    .unwrap();
    let rules: String = shipped
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 0s\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(rules.matches("for: 0s").count() >= 10, "{rules}");
    let dir = lab.dir().join("prometheus");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("rules.yml"), rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
         scrape_configs:\n  - job_name: wgtel\n    static_configs:\n      - targets: ['127.0.0.1:9587']\n",
        dir.join("rules.yml").display()
    );
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Lab::command(&lab.gateway().namespace, "prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus is installed by `cargo xtask setup`");
    Prometheus(Some(child))
}

/// Prometheus' firing alerts, once `done` holds for them.
fn firing_alerts(lab: &Lab, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let alerts: Vec<Value> =
            get_in_namespace(&lab.gateway().namespace, PROMETHEUS, "/api/v1/alerts")
                .ok()
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .and_then(|reply| reply["data"]["alerts"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|alert| alert["state"] == "firing")
                .collect();
        if done(&alerts) {
            return alerts;
        }
        let log =
            fs::read_to_string(lab.dir().join("prometheus/prometheus.log")).unwrap_or_default();
        assert!(started.elapsed() < WAIT, "alerts firing: {alerts:#?}\nprometheus log:\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn named(alerts: &[Value], name: &str) -> Vec<Value> {
    alerts.iter().filter(|alert| alert["labels"]["alertname"] == name).cloned().collect()
}

#[test]
fn a_real_prometheus_fires_the_shipped_alerts_for_a_broken_peer_by_its_key() {
    let lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(Duration::from_secs(20)).unwrap();
    let _daemon = Daemon::start(&lab, &["--interval", "1s"]);
    let _prometheus = start_prometheus(&lab);
    let broken = lab.peer("broken").unwrap().clone();
    let healthy = lab.peer("peer1").unwrap().public_key.to_string();
    let interface = lab.gateway().interface.clone();
    // Traffic for the broken peer: the gateway initiates every 5 s, never answered.
    let mut ping = Lab::command(&lab.gateway().namespace, "ping")
        .args(["-n", "-q", "-c", "40", "-i", "1", "-W", "1"])
        .arg(broken.tunnel_v4.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let key = broken.public_key.to_string();
    let alerts = firing_alerts(&lab, |alerts| {
        !named(alerts, "WireGuardPeerHandshakesUnanswered").is_empty()
            && named(alerts, "WireGuardPeerDiagnosis")
                .iter()
                .any(|a| a["labels"]["wireguard_diagnosis_code"] == "handshake_unanswered")
    });
    ping.kill().unwrap();
    ping.wait().unwrap();
    let unanswered = named(&alerts, "WireGuardPeerHandshakesUnanswered");
    assert_eq!(unanswered.len(), 1, "{alerts:#?}");
    assert_eq!(
        unanswered[0]["annotations"]["summary"],
        format!("WireGuard peer {key} on {interface} does not answer handshakes")
    );
    let diagnosis: Vec<Value> = named(&alerts, "WireGuardPeerDiagnosis")
        .into_iter()
        .filter(|a| a["labels"]["wireguard_diagnosis_code"] == "handshake_unanswered")
        .collect();
    assert_eq!(
        diagnosis[0]["annotations"]["summary"],
        format!("WireGuard peer {key} on {interface}: handshake_unanswered")
    );
    assert_eq!(
        diagnosis[0]["annotations"]["description"],
        format!(
            "`wgtel explain {key} --interface {interface}` on the gateway prints the evidence; \
             the README's table of codes says what to fix"
        )
    );
    for alert in &alerts {
        assert_ne!(alert["labels"]["wireguard_peer_public_key"], healthy.as_str(), "{alert:#}");
    }
}
