//! A daemon that never serves stale data: when collection stalls, `/healthz` says how old the
//! newest snapshot is instead of answering 200 over the last one.
//!
//! The stall is real, not injected: a UAPI socket whose process accepts nothing and never
//! answers (as a hung wireguard-go would), beside a link of its name. The kernel queues the
//! daemon's connection and request, and the daemon's UAPI read waits for its 2 s deadline, the
//! bound on any one read: with a 200 ms interval, each collection then takes ten intervals, and
//! the snapshot grows older than the three intervals `/healthz` allows.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    os::unix::net::UnixListener,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::Daemon;

const INTERVAL: Duration = Duration::from_millis(200);
/// How long one UAPI read may take (the daemon's deadline).
const UAPI_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz` until `done` holds for its answer; fails after `timeout`.
fn wait_for_health(
    daemon: &Daemon,
    timeout: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let (status, body) = daemon.try_get("/healthz").unwrap();
        if done(status, &body) {
            return (status, body);
        }
        seen.push((status, body));
        seen.dedup();
        assert!(Instant::now() < deadline, "/healthz never got there; it said {seen:#?}");
        thread::sleep(INTERVAL / 4);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

#[test]
fn a_uapi_socket_that_never_answers_makes_healthz_stale_and_it_recovers_when_it_is_gone() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "200ms"]);
    wait_for_health(&daemon, INTERVAL * 10, |status, body| (status, body) == (200, "ok\n"));

    let silent = format!("wgt{}hang", lab.number());
    let namespace = lab.gateway().namespace.clone();
    ip(&["-n", &namespace, "link", "add", &silent, "type", "bridge"]);
    let socket = format!("/var/run/wireguard/{silent}.sock");
    let _stale = std::fs::remove_file(&socket);
    // Bound, listening, never accepting: connections wait in the kernel's queue.
    let listener = UnixListener::bind(&socket).unwrap();

    let (status, body) =
        wait_for_health(&daemon, UAPI_TIMEOUT * 3, |_, body| body.starts_with("stale:"));
    assert_eq!(status, 503, "{body}");
    let age: f64 = body
        .strip_prefix("stale: the newest snapshot is ")
        .and_then(|rest| {
            rest.strip_suffix(" s old, more than 3 intervals (600ms): collection is stuck\n")
        })
        .unwrap_or_else(|| panic!("not the stale answer: {body:?}"))
        .parse()
        .unwrap();
    // Older than three intervals (rounded to 0.1 s), younger than a stalled read and the
    // intervals around it.
    let bounds = ((INTERVAL * 3).as_secs_f64(), (UAPI_TIMEOUT + INTERVAL * 3).as_secs_f64());
    assert!(age >= bounds.0 && age <= bounds.1, "age {age} s not within {bounds:?}");
    // The API still answers with the last snapshot: the gateway's peer.
    assert_eq!(daemon.peers().len(), 1);

    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    ip(&["-n", &namespace, "link", "del", &silent]);
    // The read under way times out, the next collection finds neither link nor socket.
    wait_for_health(&daemon, UAPI_TIMEOUT + INTERVAL * 10, |status, body| {
        (status, body) == (200, "ok\n")
    });
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
