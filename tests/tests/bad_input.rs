//! Broken sources and sinks: each gives one clear log line, not one per interval, and the
//! daemon keeps serving everything else.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::Daemon;

/// Ten intervals of 200 ms: long enough for a per-interval complaint to repeat ten times.
const INTERVAL: &str = "200ms";
const TEN_INTERVALS: Duration = Duration::from_secs(2);

/// Log lines at WARN or above that mention `needle`.
fn warnings_about(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|line| (line.contains("WARN") || line.contains("ERROR")) && line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A fake UAPI server answering every `get` with `reply`, until dropped.
struct FakeUapi {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl FakeUapi {
    fn serve(interface: &str, reply: &'static str) -> Self {
        let path = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
        std::fs::create_dir_all("/var/run/wireguard").unwrap();
        let _stale = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                        let mut request = [0u8; 16];
                        let _read = stream.read(&mut request);
                        let _written = stream.write_all(reply.as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { path, stop }
    }
}

impl Drop for FakeUapi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _gone = std::fs::remove_file(&self.path);
    }
}

/// A private key in hex that must never be echoed.
const FAKE_PRIVATE_KEY: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";

#[test]
fn a_garbled_uapi_reply_gives_one_log_line_and_the_good_interface_keeps_counting() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let fake = format!("wgt{}x", lab.number());
    let added = Command::new("ip")
        .args(["-n", &lab.gateway().namespace, "link", "add", &fake, "type", "bridge"])
        .status()
        .unwrap();
    assert!(added.success());
    let reply = Box::leak(
        format!("private_key={FAKE_PRIVATE_KEY}\nlisten_port=banana\npublic_key=zz\nerrno=0\n\n")
            .into_boxed_str(),
    );
    let _server = FakeUapi::serve(&fake, reply);

    let daemon = Daemon::start(&lab, &["--interval", INTERVAL]);
    thread::sleep(TEN_INTERVALS);
    let (status, reason) = daemon.try_get("/healthz").unwrap();
    assert_eq!(status, 503);
    assert!(reason.contains(&fake), "{reason}");
    // The real interface is still watched and counted.
    let peer = lab.peer("peer1").unwrap();
    assert_eq!(lab.ping(lab.gateway(), peer.tunnel_v4.into(), 10).unwrap(), 10);
    let key = peer.public_key.to_string();
    daemon.wait_for(Duration::from_secs(5), "10 pings on peer1", |peers| {
        peers.iter().any(|p| p.public_key == key && p.tx_packets >= 10)
    });
    assert!(daemon.get("/metrics").contains("wireguard_peer_packets_total"));

    let (_, log) = daemon.stop();
    let complaints = warnings_about(&log, &fake);
    assert_eq!(complaints.len(), 1, "one line, not one per interval:\n{log}");
    assert!(!log.contains(FAKE_PRIVATE_KEY), "the private key reached the log:\n{log}");
}

#[test]
fn a_missing_interface_gives_one_log_line_and_unhealthy() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let missing = format!("wgt{}nope", lab.number());
    let gateway = lab.gateway().interface.clone();
    let daemon = Daemon::start(
        &lab,
        &["--interval", INTERVAL, "--interface", &missing, "--interface", &gateway],
    );
    thread::sleep(TEN_INTERVALS);
    let (status, reason) = daemon.try_get("/healthz").unwrap();
    assert_eq!(status, 503);
    assert!(reason.contains(&missing), "{reason}");
    assert_eq!(daemon.peers().len(), 1, "the interface that exists is still served");
    let (_, log) = daemon.stop();
    assert_eq!(warnings_about(&log, &missing).len(), 1, "{log}");
}

#[test]
fn an_interface_that_vanishes_is_released_once_and_the_daemon_keeps_serving() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", INTERVAL]);
    daemon.wait_for(Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    lab.stop_gateway();
    daemon.wait_for(Duration::from_secs(5), "no peers", <[_]>::is_empty);
    thread::sleep(TEN_INTERVALS);
    assert_eq!(daemon.try_get("/healthz").unwrap().0, 200);
    assert!(daemon.get("/metrics").contains("wireguard_peers"));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let interface = &lab.gateway().interface;
    let releases: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("releasing") && line.contains(interface.as_str()))
        .collect();
    assert_eq!(releases.len(), 1, "{log}");
    assert_eq!(warnings_about(&log, interface), Vec::<String>::new(), "{log}");
}

#[test]
fn an_otlp_endpoint_that_is_down_gives_one_log_line_and_the_api_keeps_serving() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    // Nothing listens on this port inside the gateway's namespace.
    let daemon =
        Daemon::start(&lab, &["--interval", INTERVAL, "--otlp-endpoint", "http://127.0.0.1:4317"]);
    thread::sleep(TEN_INTERVALS);
    assert_eq!(daemon.peers().len(), 1);
    assert_eq!(daemon.try_get("/healthz").unwrap().0, 200);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let warnings: Vec<&str> =
        log.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
    assert_eq!(warnings.len(), 1, "one warning about OTLP, not one per interval:\n{log}");
    assert!(warnings[0].contains("OTLP"), "{log}");
}
