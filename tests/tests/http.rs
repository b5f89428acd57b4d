//! The HTTP listener on a gateway: connection, header and body limits that keep it serving,
//! TLS with a bearer token (a self-signed certificate made here with `openssl`, requests made
//! with `curl` from a peer's namespace over the underlay), and a refusal to serve the API in
//! the clear on a non-loopback address.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use wgtel::{
    export::listener::MAX_CONNECTIONS,
    lab::{self, Lab, LabOptions},
};
use wgtel_tests::{API, Daemon, wgtel_bin};

const INTERVAL: Duration = Duration::from_millis(200);

/// Sends `request` on a new connection and reads the status line; `None` when the reply does
/// not come within `wait`.
fn status_line(request: &[u8], wait: Duration) -> Option<String> {
    let mut stream = TcpStream::connect(API).unwrap();
    // The server may stop reading (and close) before it has all of a too-large request.
    let _written = stream.write_all(request);
    read_status_line(&mut stream, wait)
}

fn read_status_line(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                response.extend_from_slice(&chunk[..read]);
                if response.windows(2).any(|pair| pair == b"\r\n") {
                    break;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(error) => panic!("reading the response: {error}"),
        }
    }
    let text = String::from_utf8_lossy(&response);
    Some(text.lines().next().unwrap_or_default().to_owned())
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: wgtel\r\nConnection: close\r\n\r\n";

#[test]
fn connections_over_the_limit_wait_their_turn_and_big_requests_are_refused() {
    assert_eq!(MAX_CONNECTIONS, 64);
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "200ms"]);
    let namespace = lab.gateway().namespace.clone();
    let results = lab::in_namespace(&namespace, || {
        // 64 connections that never finish their request head hold every slot.
        let mut held: Vec<TcpStream> = (0..64)
            .map(|_| {
                let mut stream = TcpStream::connect(API).unwrap();
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: wgtel\r\n").unwrap();
                stream
            })
            .collect();
        thread::sleep(INTERVAL);
        // The 65th is queued: connected by the kernel, not answered ...
        let mut queued = TcpStream::connect(API).unwrap();
        queued.write_all(GET_HEALTHZ).unwrap();
        let while_full = read_status_line(&mut queued, INTERVAL * 5);
        // ... until a slot frees.
        drop(held.remove(0));
        let after_one_closed = read_status_line(&mut queued, INTERVAL * 10);
        drop(held);
        let mut huge_head = b"GET /healthz HTTP/1.1\r\nHost: wgtel\r\nX-Filler: ".to_vec();
        huge_head.resize(huge_head.len() + 64 * 1024, b'a');
        huge_head.extend_from_slice(b"\r\n\r\n");
        let huge_header = status_line(&huge_head, INTERVAL * 10);
        let big_body = status_line(
            b"POST /healthz HTTP/1.1\r\nHost: wgtel\r\nContent-Length: 1048576\r\n\r\n",
            INTERVAL * 10,
        );
        let afterwards = status_line(GET_HEALTHZ, INTERVAL * 10);
        (while_full, after_one_closed, huge_header, big_body, afterwards)
    })
    .unwrap();
    assert_eq!(
        results,
        (
            None,
            Some("HTTP/1.1 200 OK".to_owned()),
            Some("HTTP/1.1 431 Request Header Fields Too Large".to_owned()),
            Some("HTTP/1.1 413 Payload Too Large".to_owned()),
            Some("HTTP/1.1 200 OK".to_owned()),
        )
    );
    assert_eq!(daemon.peers().len(), 1, "still serving");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_non_loopback_listener_without_tls_and_a_token_is_refused_at_start() {
    let lab = Lab::build(LabOptions::default()).unwrap();
    let address = format!("{}:9587", lab.gateway().underlay_v4);
    let refused = |extra: &[&str]| {
        let output = Lab::command(&lab.gateway().namespace, wgtel_bin())
            .args(["run", "--listen", &address])
            .args(extra)
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let message = format!(
        "wgtel: refusing to listen on {address}, which is not a loopback address, without TLS \
         and a bearer token: the API lists every peer's endpoint. Set --tls-cert, --tls-key and \
         --bearer-token-file ([http] tls-cert, tls-key, bearer-token-file), or pass \
         --listen-insecure ([http] listen-insecure = true) to serve it in the clear to anyone\n"
    );
    assert_eq!(refused(&[]), (Some(1), message.clone()));
    // TLS alone, or a token alone, is not enough.
    assert_eq!(refused(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]), (Some(1), message.clone()));
    assert_eq!(refused(&["--bearer-token-file", "token"]), (Some(1), message));
}

/// `curl` from `namespace`: (HTTP status, body); status `000` when no HTTP answer came.
fn curl(namespace: &str, cert: &Path, url: &str, token: Option<&str>) -> (String, String) {
    let mut command = Lab::command(namespace, "curl");
    command.args(["-sS", "--max-time", "5", "--cacert"]).arg(cert).args(["-w", "\n%{http_code}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.arg(url).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

#[test]
fn over_tls_the_api_needs_the_bearer_token() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let gateway = lab.gateway();
    let (cert, key) = (lab.dir().join("cert.pem"), lab.dir().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=wgtel-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-addext", &format!("subjectAltName=IP:{}", gateway.underlay_v4)])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let token = format!("test-token-{}", std::process::id());
    let token_file = lab.dir().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let address = format!("{}:9587", gateway.underlay_v4);
    let daemon = Daemon::spawn(
        &lab,
        &[
            "--interval",
            "200ms",
            "--listen",
            &address,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--bearer-token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    // Requests come from the peer's namespace, over the underlay.
    let client = &lab.peer("peer1").unwrap().namespace;
    let https = |path: &str| format!("https://{address}{path}");
    let deadline = Instant::now() + INTERVAL * 100;
    while curl(client, &cert, &https("/healthz"), Some(&token)) != ("200".into(), "ok\n".into()) {
        assert!(Instant::now() < deadline, "never healthy over TLS; log:\n{}", daemon.log());
        thread::sleep(INTERVAL);
    }
    let refused = ("401".to_owned(), "401: a bearer token is required\n".to_owned());
    assert_eq!(curl(client, &cert, &https("/api/v1/peers"), None), refused);
    assert_eq!(curl(client, &cert, &https("/metrics"), Some("not-the-token")), refused);
    let (status, peers) = curl(client, &cert, &https("/api/v1/peers"), Some(&token));
    assert_eq!(status, "200");
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let key = lab.peer("peer1").unwrap().public_key.to_string();
    assert_eq!(peers[0]["public_key"], serde_json::Value::String(key));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = curl(client, &cert, &format!("http://{address}/healthz"), Some(&token));
    assert_eq!(plain.0, "000");
    assert!(daemon.log().contains(&format!("wgtel listening on https://{address} (bearer")));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
