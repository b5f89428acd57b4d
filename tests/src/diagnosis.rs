//! What the diagnosis lab tests share: a daemon on a short interval, waiting for a code on a
//! peer, checking that the other peers carry none, firewall rules, background pings.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabNode},
    model::{Code, Diagnosis},
};

use crate::{Daemon, peer};

/// The daemon's interval in these tests.
pub const INTERVAL: Duration = Duration::from_millis(300);

/// Three intervals, and the time one API poll and scheduling on a shared host may add.
pub const THREE_INTERVALS: Duration = Duration::from_millis(3 * 300 + 600);

/// How long a test waits for a code before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// `wgtel run` on [`INTERVAL`] with the lab's names file, and `extra` flags.
pub fn start(lab: &Lab, extra: &[&str]) -> Daemon {
    start_with_alerts(lab, "", extra)
}

/// [`start`] with `alerts` (TOML lines) in the `[alerts]` table of its configuration file.
/// `cpu-saturated` is 1.0 there: the tests share two CPUs, which iperf3 and the other tests
/// keep busy, and `cpu_saturated` has a test of its own (`cpu_alert.rs`, run alone).
pub fn start_with_alerts(lab: &Lab, alerts: &str, extra: &[&str]) -> Daemon {
    let names = lab.write_names_file().unwrap();
    let config = lab.dir().join(format!("diagnosis-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[alerts]\ncpu-saturated = 1.0\n{alerts}\n")).unwrap();
    let mut args = vec![
        "--interval",
        "300ms",
        "--names-from",
        names.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Daemon::start(lab, &args)
}

/// The codes of `diagnosis`, in order.
pub fn codes(diagnosis: &[Diagnosis]) -> Vec<Code> {
    diagnosis.iter().map(|d| d.code).collect()
}

/// Waits until `node`'s peer carries `code`; the peers then, and how long it took.
pub fn wait_for_code(daemon: &Daemon, node: &LabNode, code: Code) -> (Vec<ApiPeer>, Duration) {
    let started = Instant::now();
    loop {
        let peers = daemon.peers();
        if peers.iter().any(|p| p.public_key == node.public_key.to_string())
            && codes(&peer(&peers, node).diagnosis).contains(&code)
        {
            return (peers, started.elapsed());
        }
        assert!(
            started.elapsed() < WAIT,
            "waited for {code:?} on {}: {peers:#?}\nlog:\n{}",
            node.name,
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every peer but `except` carries no code.
pub fn others_clean(peers: &[ApiPeer], except: &LabNode) {
    let key = except.public_key.to_string();
    for other in peers.iter().filter(|p| p.public_key != key) {
        assert_eq!(other.diagnosis, Vec::new(), "{:?} carries a code", other.name);
    }
}

/// `nft` rules in `namespace`, in a table of their own; fails the test when nft refuses.
pub fn nft(namespace: &str, rules: &[&str]) {
    for rule in rules {
        let status = Lab::command(namespace, "nft").arg(rule).status().unwrap();
        assert!(status.success(), "nft {rule}");
    }
}

/// Starts `count` pings from `namespace` to `to`, 10 ms apart, without waiting for them.
pub fn spawn_ping(namespace: &str, to: std::net::Ipv4Addr, count: u32) -> std::process::Child {
    Lab::command(namespace, "ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.01", "-W", "1"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}
