//! The host-wide CPU rule in the lab: `cpu_saturated` fires while every CPU spins and resolves
//! when they stop, and the interface carries the `cpu_saturated` code meanwhile. In a file of its own, so that it runs alone: `cargo test` runs one test
//! binary at a time, and its spinning threads would starve the other tests' daemons (and their
//! CPU readings would fire this rule there).

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use wgtel::{
    events::Event,
    lab::{Lab, LabOptions},
    rules::{Alert, Rule},
};
use wgtel_tests::{Daemon, peer};

const INTERVAL: Duration = Duration::from_millis(300);
/// Sixty intervals: the rule must hold for `for` = 1 s (a few intervals) to fire or resolve.
const WAIT: Duration = Duration::from_millis(300 * 60);

fn alerts(daemon: &Daemon) -> Vec<Alert> {
    serde_json::from_str(&daemon.get("/api/v1/alerts")).unwrap()
}

/// The host-wide alert events of `rule`, oldest first.
fn host_alert_events(daemon: &Daemon, rule: Rule) -> Vec<String> {
    let events: Vec<Event> =
        serde_json::from_str(&daemon.get("/api/v1/events?limit=1000")).unwrap();
    let prefix = format!("{}: ", rule.as_str());
    let mut found: Vec<String> = events
        .into_iter()
        .filter(|e| {
            e.kind.starts_with("alert_") && e.peer.is_none() && e.detail.starts_with(&prefix)
        })
        .map(|e| e.kind)
        .collect();
    found.reverse();
    found
}

#[test]
fn cpu_saturation_is_a_host_wide_alert_that_fires_while_the_cpus_spin() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let config = lab.dir().join("cpu.toml");
    std::fs::write(&config, "[alerts]\nfor = \"1s\"\ncpu-saturated = 0.9\n").unwrap();
    let daemon =
        Daemon::start(&lab, &["--interval", "300ms", "--config", config.to_str().unwrap()]);
    daemon.wait_for(WAIT, "the peer", |peers| peers.len() == 1);

    // Every CPU busy until the alert fires.
    let spinning = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinners: Vec<_> = (0..thread::available_parallelism().map_or(2, usize::from))
        .map(|_| {
            let spinning = Arc::clone(&spinning);
            thread::spawn(move || {
                while spinning.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let cpu = loop {
        if let Some(alert) = alerts(&daemon).into_iter().find(|a| a.rule == Rule::CpuSaturated) {
            break alert;
        }
        assert!(Instant::now() < deadline, "no cpu_saturated alert; log:\n{}", daemon.log());
        thread::sleep(INTERVAL / 3);
    };
    assert_eq!((cpu.interface.as_deref(), cpu.peer.as_deref()), (None, None));
    assert!(cpu.value > 0.9 && cpu.value <= 1.0, "{cpu:?}");
    assert!(daemon.get("/metrics").contains("wgtel_alerts{alert_rule=\"cpu_saturated\"} 1"));
    let peer1 = lab.peer("peer1").unwrap();
    assert_eq!(peer(&daemon.peers(), peer1).alerts, Vec::<String>::new());
    // The interface carries the diagnosis code with the numbers behind it (the alert's `for`
    // is 1 s; the code holds from the first interval above the threshold).
    let code = cpu_code(&daemon).expect("cpu_saturated on the interface while the alert fires");
    let evidence = code["evidence"].as_str().unwrap();
    assert!(
        evidence.starts_with("host CPU ")
            && evidence
                .contains("% busy over the last interval, above the 90% threshold (softirq ")
            && evidence.contains("'s WireGuard process "),
        "{evidence}"
    );
    assert!(code["counters"]["cpu.busy_per_mille"].as_f64().unwrap() > 900.0, "{code}");

    spinning.store(false, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while host_alert_events(&daemon, Rule::CpuSaturated).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "cpu_saturated never resolved after the spinners stopped (is something else keeping \
             this host's CPUs busy?): {:?}",
            alerts(&daemon)
        );
        thread::sleep(INTERVAL / 3);
    }
    assert_eq!(host_alert_events(&daemon, Rule::CpuSaturated), ["alert_firing", "alert_resolved"]);
    assert_eq!(alerts(&daemon), Vec::new());
    assert_eq!(cpu_code(&daemon), None, "the code cleared with its evidence");
}

/// The `cpu_saturated` diagnosis of the lab's one interface, if it holds.
fn cpu_code(daemon: &Daemon) -> Option<serde_json::Value> {
    let interfaces = daemon.interfaces();
    let diagnosis = interfaces[0]["diagnosis"].as_array().unwrap().clone();
    diagnosis.into_iter().find(|d| d["code"] == "cpu_saturated")
}
