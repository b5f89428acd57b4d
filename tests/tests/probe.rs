//! The outside-in probe against a lab gateway (wireguard-go): `wgtel probe` from a monitoring
//! peer's namespace, which runs no WireGuard of its own, and `/probe` on the daemon's listener.
//! Success with exact echo counts; exit 1 for a wrong gateway key, a key the gateway does not
//! know, a closed port and a path dropped by nft; exit 2 for a malformed key file and a bad
//! endpoint; no private key in any output; `/probe` answers Prometheus text that promtool
//! accepts; and the probe against the current wireguard-go and boringtun as gateways.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use wgtel::{
    lab::{Implementation, Lab, LabOptions, MonitoringPeer, WIREGUARD_PORT},
    wg::PublicKey,
};
use wgtel_tests::{Daemon, wgtel_bin};

/// `wgtel probe ARGS` in `monitor`'s namespace: exit code, stdout, stderr.
fn probe(monitor: &MonitoringPeer, args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = Lab::command(&monitor.namespace, wgtel_bin())
        .arg("probe")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let code = status.code().unwrap_or_else(|| panic!("wgtel probe died: {status}"));
    (code, String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

/// Runs an nft command in the gateway's namespace; fails the test when nft refuses.
fn nft(lab: &Lab, rule: &str) {
    let status = Lab::command(&lab.gateway().namespace, "nft").arg(rule).status().unwrap();
    assert!(status.success(), "nft {rule}");
}

#[test]
fn wgtel_probe_succeeds_as_a_known_peer_and_fails_each_way_it_should() {
    let mut lab = Lab::build(LabOptions { peers: 0, ..LabOptions::default() }).unwrap();
    let monitor = lab.add_monitoring_peer(true).unwrap();
    let stranger = lab.add_monitoring_peer(false).unwrap();
    let endpoint = format!("{}:{WIREGUARD_PORT}", lab.gateway().underlay_v4);
    let closed = format!("{}:{}", lab.gateway().underlay_v4, WIREGUARD_PORT + 99);
    let gateway_key = lab.gateway().public_key.to_string();
    let wrong_key = PublicKey([1; 32]).to_string();
    let key_file = monitor.key_file().to_str().unwrap().to_owned();
    let stranger_file = stranger.key_file().to_str().unwrap().to_owned();
    let target = lab.gateway().tunnel_v4.to_string();
    let source = monitor.tunnel_v4.to_string();
    let args = |endpoint: &str, gateway: &str, key: &str| -> Vec<String> {
        ["--endpoint", endpoint, "--peer-public-key", gateway, "--private-key-file", key]
            .into_iter()
            .chain(["--timeout", "1s"])
            .map(str::to_owned)
            .collect()
    };
    let run = |who: &MonitoringPeer, args: Vec<String>| {
        probe(who, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut outputs = Vec::new();

    // Success: the handshake, then 5 echoes to the gateway's tunnel address, 5 replies.
    let mut json = args(&endpoint, &gateway_key, &key_file);
    json.extend(
        ["--inner-target", &target, "--inner-source", &source, "--count", "5", "--json"]
            .map(str::to_owned),
    );
    let (code, stdout, stderr) = run(&monitor, json);
    assert_eq!(code, 0, "stdout {stdout}, stderr {stderr}");
    println!("wgtel probe --count 5 --json: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["reachable"], true, "{report}");
    assert_eq!(report["success"], true, "{report}");
    assert_eq!(report["address"], endpoint.as_str());
    assert_eq!((report["sent"].as_u64(), report["received"].as_u64()), (Some(5), Some(5)));
    assert_eq!(report["loss"].as_f64(), Some(0.0));
    assert_eq!(report["error"], serde_json::Value::Null);
    let echoes = report["echoes"].as_array().unwrap();
    assert_eq!(
        echoes.iter().map(|echo| echo["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        echoes.iter().all(|echo| echo["rtt_seconds"].as_f64().is_some_and(|s| s > 0.0 && s < 1.0))
    );
    let handshake = report["handshake_seconds"].as_f64().unwrap();
    assert!(handshake > 0.0 && handshake < 1.0, "{handshake}");
    outputs.push(stdout + &stderr);

    // The same as text.
    let mut text = args(&endpoint, &gateway_key, &key_file);
    text.extend(
        ["--inner-target", &target, "--inner-source", &source, "--count", "2"].map(str::to_owned),
    );
    let (code, stdout, stderr) = run(&monitor, text);
    assert_eq!(code, 0, "stdout {stdout}, stderr {stderr}");
    println!("wgtel probe --count 2:\n{stdout}");
    assert!(
        stdout.starts_with(&format!("{endpoint} ({endpoint}): reachable, handshake in ")),
        "{stdout}"
    );
    assert!(stdout.ends_with("2 echoes, 2 replies, 0% loss\n"), "{stdout}");
    outputs.push(stdout + &stderr);

    let no_response =
        format!("{endpoint} ({endpoint}): unreachable\nfailed: no handshake response within 1s: ");
    // A wrong key for the gateway: it cannot read the initiation.
    let (code, stdout, stderr) = run(&monitor, args(&endpoint, &wrong_key, &key_file));
    assert_eq!(code, 1, "stdout {stdout}, stderr {stderr}");
    assert!(stdout.starts_with(&no_response), "{stdout}");
    outputs.push(stdout + &stderr);

    // A key the gateway does not know.
    let (code, stdout, stderr) = run(&stranger, args(&endpoint, &gateway_key, &stranger_file));
    assert_eq!(code, 1, "stdout {stdout}, stderr {stderr}");
    assert!(stdout.starts_with(&no_response), "{stdout}");
    outputs.push(stdout + &stderr);

    // A port nothing listens on: the gateway's host answers port unreachable.
    let (code, stdout, stderr) = run(&monitor, args(&closed, &gateway_key, &key_file));
    assert_eq!(code, 1, "stdout {stdout}, stderr {stderr}");
    assert_eq!(
        stdout,
        format!(
            "{closed} ({closed}): unreachable\nfailed: {closed} answered ICMP port unreachable: \
             nothing listens on that UDP port\n"
        )
    );
    outputs.push(stdout + &stderr);

    // The path dropped by the gateway's firewall.
    nft(&lab, "add table inet wgtelprobe");
    nft(&lab, "add chain inet wgtelprobe input { type filter hook input priority 0 ; }");
    nft(
        &lab,
        &format!(
            "add rule inet wgtelprobe input ip saddr {} udp dport {WIREGUARD_PORT} drop",
            monitor.underlay_v4
        ),
    );
    let (code, stdout, stderr) = run(&monitor, args(&endpoint, &gateway_key, &key_file));
    nft(&lab, "delete table inet wgtelprobe");
    assert_eq!(code, 1, "stdout {stdout}, stderr {stderr}");
    assert!(stdout.starts_with(&no_response), "{stdout}");
    outputs.push(stdout + &stderr);

    // Bad input: a malformed key file, an endpoint without a port.
    let malformed = lab.dir().join("malformed.key");
    let mut file = std::fs::File::create(&malformed).unwrap();
    file.write_all(b"this is not a WireGuard key\n").unwrap();
    let malformed = malformed.to_str().unwrap().to_owned();
    let (code, stdout, stderr) = run(&monitor, args(&endpoint, &gateway_key, &malformed));
    assert_eq!((code, stdout.as_str()), (2, ""), "stderr {stderr}");
    assert_eq!(
        stderr,
        format!(
            "wgtel probe: {malformed} holds no WireGuard private key (a line of 44 characters of \
             base64, as `wg genkey` writes)\n"
        )
    );
    let (code, stdout, stderr) = run(&monitor, args("198.18.0.1", &gateway_key, &key_file));
    assert_eq!((code, stdout.as_str()), (2, ""), "stderr {stderr}");
    assert!(
        stderr.starts_with("wgtel probe: endpoint \"198.18.0.1\" is not HOST:PORT"),
        "{stderr}"
    );
    outputs.push(stdout + &stderr);

    // No private key of the lab in anything printed.
    let keys: Vec<String> = lab
        .private_keys()
        .into_iter()
        .chain([monitor.private_key().to_owned(), stranger.private_key().to_owned()])
        .collect();
    for output in &outputs {
        for key in &keys {
            assert!(!output.contains(key.as_str()), "a private key printed in {output:?}");
        }
    }
}

/// A query value with `+`, `/` and `=` (base64) percent-encoded.
fn encoded(value: &str) -> String {
    value.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// Runs `promtool check metrics` on `text`; fails the test when promtool does.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by `cargo xtask setup`");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool refused:\n{text}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value of the sample `name` (without labels) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn slash_probe_answers_prometheus_text_with_the_configured_key() {
    let mut lab = Lab::build(LabOptions { peers: 0, ..LabOptions::default() }).unwrap();
    let monitor = lab.add_monitoring_peer(true).unwrap();
    let config = lab.dir().join("probe.toml");
    std::fs::write(
        &config,
        format!(
            "[probe]\nprivate-key-file = {:?}\ntimeout = \"1s\"\ncount = 4\n",
            monitor.key_file().to_str().unwrap()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&lab, &["--config", config.to_str().unwrap()]);
    // The daemon runs in the gateway's namespace: it probes its own gateway from there.
    let endpoint = format!("{}:{WIREGUARD_PORT}", lab.gateway().underlay_v4);
    let key = encoded(&lab.gateway().public_key.to_string());
    let echo =
        format!("&inner_target={}&inner_source={}", lab.gateway().tunnel_v4, monitor.tunnel_v4);

    let good = daemon.get(&format!("/probe?endpoint={endpoint}&peer_public_key={key}{echo}"));
    println!("/probe of the gateway with 4 echoes:\n{good}");
    promtool_accepts(&good);
    assert_eq!(sample(&good, "wgtel_probe_success"), Some(1.0), "{good}");
    assert_eq!(sample(&good, "wgtel_probe_handshake_success"), Some(1.0), "{good}");
    assert_eq!(sample(&good, "wgtel_probe_echo_success_ratio"), Some(1.0), "{good}");
    let echoes =
        good.lines().filter(|line| line.starts_with("wgtel_probe_echo_duration_seconds{")).count();
    assert_eq!(echoes, 4, "{good}");
    assert!(
        sample(&good, "wgtel_probe_handshake_duration_seconds").is_some_and(|s| s > 0.0 && s < 1.0),
        "{good}"
    );

    let closed = format!("{}:{}", lab.gateway().underlay_v4, WIREGUARD_PORT + 99);
    let bad = daemon.get(&format!("/probe?endpoint={closed}&peer_public_key={key}"));
    promtool_accepts(&bad);
    assert_eq!(sample(&bad, "wgtel_probe_success"), Some(0.0), "{bad}");
    assert_eq!(sample(&bad, "wgtel_probe_handshake_success"), Some(0.0), "{bad}");
    assert_eq!(sample(&bad, "wgtel_probe_handshake_duration_seconds"), None, "{bad}");

    // A probe that waits out its 1 s timeout (a wrong gateway key: no response) holds up
    // neither other requests nor collection.
    let wrong = encoded(&PublicKey([1; 32]).to_string());
    let slow_path = format!("/probe?endpoint={endpoint}&peer_public_key={wrong}");
    let (slow, healthz, waited) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| daemon.get(&slow_path));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let healthz = daemon.try_get("/healthz").unwrap();
        let waited = started.elapsed();
        (slow.join().unwrap(), healthz, waited)
    });
    assert_eq!(healthz, (200, "ok\n".to_owned()));
    assert!(waited < Duration::from_millis(300), "/healthz took {waited:?} beside a probe");
    promtool_accepts(&slow);
    assert_eq!(sample(&slow, "wgtel_probe_success"), Some(0.0), "{slow}");
    let took = sample(&slow, "wgtel_probe_duration_seconds").unwrap();
    assert!((1.0..1.5).contains(&took), "the probe took {took} s with a 1 s timeout");

    let (status, body) = daemon.try_get("/probe?endpoint=198.18.0.1&peer_public_key=x").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("400: endpoint \"198.18.0.1\" is not HOST:PORT"), "{body}");
    let (status, body) = daemon
        .try_get(&format!(
            "/probe?endpoint={endpoint}&peer_public_key={key}&inner_target=198.19.0.1"
        ))
        .unwrap();
    assert_eq!((status, body.as_str()), (400, "400: inner_target and inner_source go together\n"));
    for output in [&good, &bad] {
        assert!(!output.contains(monitor.private_key()), "the private key in {output}");
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(monitor.private_key()), "the private key in the daemon's log");
}

#[test]
fn the_probe_completes_with_every_userspace_gateway_implementation() {
    for implementation in [Implementation::WireguardGoCurrent, Implementation::Boringtun] {
        let options = LabOptions {
            peers: 0,
            gateway_implementation: Some(implementation),
            ..LabOptions::default()
        };
        let mut lab = Lab::build(options).unwrap();
        let monitor = lab.add_monitoring_peer(true).unwrap();
        let endpoint = format!("{}:{WIREGUARD_PORT}", lab.gateway().underlay_v4);
        let target = lab.gateway().tunnel_v4.to_string();
        let source = monitor.tunnel_v4.to_string();
        let (code, stdout, stderr) = probe(
            &monitor,
            &[
                "--endpoint",
                &endpoint,
                "--peer-public-key",
                &lab.gateway().public_key.to_string(),
                "--private-key-file",
                monitor.key_file().to_str().unwrap(),
                "--inner-target",
                &target,
                "--inner-source",
                &source,
                "--count",
                "3",
                "--timeout",
                "2s",
            ],
        );
        assert_eq!(code, 0, "{implementation:?}: stdout {stdout}, stderr {stderr}");
        assert!(stdout.ends_with("3 echoes, 3 replies, 0% loss\n"), "{implementation:?}: {stdout}");
    }
}
