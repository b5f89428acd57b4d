//! The probe against a stand-in gateway on loopback: a boringtun responder that answers
//! handshakes and echo requests (no root, no lab).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use boringtun::{
    noise::{Tunn, TunnResult},
    x25519,
};
use tokio::net::UdpSocket;

use super::*;

const GATEWAY_SECRET: [u8; 32] = [7; 32];
const PROBE_SECRET: [u8; 32] = [9; 32];
/// `PROBE_SECRET` in base64, as a key file holds it.
const PROBE_KEY_BASE64: &str = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 60);
const TARGET: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 1);

fn public(secret: [u8; 32]) -> PublicKey {
    PublicKey(x25519::PublicKey::from(&x25519::StaticSecret::from(secret)).to_bytes())
}

/// A gateway that knows the probe's key and answers every echo request (after ignoring the
/// first `ignored` datagrams); its address.
async fn gateway_ignoring(ignored: usize) -> SocketAddr {
    gateway_on("127.0.0.1:0", ignored).await
}

/// [`gateway_ignoring`] on `bind`.
async fn gateway_on(bind: &str, ignored: usize) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.expect("binding");
    let address = socket.local_addr().expect("an address");
    let mut tunn = Tunn::new(
        x25519::StaticSecret::from(GATEWAY_SECRET),
        x25519::PublicKey::from(public(PROBE_SECRET).0),
        None,
        None,
        1,
        None,
    );
    tokio::spawn(async move {
        let (mut received, mut out) = (vec![0; BUFFER], vec![0; BUFFER]);
        let mut seen = 0;
        while let Ok((length, from)) = socket.recv_from(&mut received).await {
            seen += 1;
            if seen <= ignored {
                continue;
            }
            let mut datagram = &received[..length];
            let mut reply = None;
            loop {
                match tunn.decapsulate(Some(from.ip()), datagram, &mut out) {
                    TunnResult::WriteToNetwork(packet) => {
                        socket.send_to(packet, from).await.expect("answering");
                        datagram = &[];
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(packet, _) => reply = icmp::reply_to(packet),
                    _ => {}
                }
                break;
            }
            if let Some(reply) = reply
                && let TunnResult::WriteToNetwork(packet) = tunn.encapsulate(&reply, &mut out)
            {
                socket.send_to(packet, from).await.expect("answering the echo");
            }
        }
    });
    address
}

async fn gateway() -> SocketAddr {
    gateway_ignoring(0).await
}

fn key() -> PrivateKey {
    PrivateKey::parse(PROBE_KEY_BASE64).expect("a key")
}

fn target(endpoint: SocketAddr, gateway_key: PublicKey, count: u16) -> ProbeTarget {
    let echo = EchoTarget { target: TARGET, source: SOURCE, count };
    ProbeTarget::new(
        &endpoint.to_string(),
        &gateway_key.to_string(),
        Some(echo),
        Duration::from_millis(1500),
    )
    .expect("a target")
}

#[tokio::test]
async fn a_gateway_that_knows_the_key_completes_the_handshake_and_answers_every_echo() {
    let address = gateway().await;
    let report = probe(&key(), &target(address, public(GATEWAY_SECRET), 5)).await.expect("a run");
    assert!(report.success, "{report:?}");
    assert!(report.reachable);
    assert_eq!(report.address, Some(address));
    assert!(report.handshake_seconds.is_some_and(|s| s > 0.0 && s < 1.0), "{report:?}");
    assert_eq!((report.sent, report.received, report.loss), (5, 5, Some(0.0)));
    assert_eq!(report.echoes.iter().map(|echo| echo.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(report.echoes.iter().all(|echo| echo.rtt_seconds.is_some()), "{report:?}");
    assert_eq!(report.error, None);
}

#[tokio::test]
async fn an_ipv6_endpoint_works_the_same() {
    let address = gateway_on("[::1]:0", 0).await;
    let report = probe(&key(), &target(address, public(GATEWAY_SECRET), 2)).await.expect("a run");
    assert!(report.success, "{report:?}");
    assert_eq!((report.address, report.sent, report.received), (Some(address), 2, 2));
}

#[tokio::test]
async fn lost_initiations_are_sent_again_and_the_round_trip_is_the_answered_ones() {
    // The first two initiations are lost: the third, 200 + 400 ms later, is answered.
    let address = gateway_ignoring(2).await;
    let started = Instant::now();
    let report = probe(&key(), &target(address, public(GATEWAY_SECRET), 1)).await.expect("a run");
    assert!(report.success, "{report:?}");
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    let handshake = report.handshake_seconds.expect("a handshake");
    assert!(handshake < 0.1, "the round trip of the answered initiation, not {handshake} s");
}

#[tokio::test]
async fn a_wrong_gateway_key_gets_no_response() {
    let address = gateway().await;
    let target =
        ProbeTarget { timeout: Duration::from_millis(300), ..target(address, public([1; 32]), 1) };
    let report = probe(&key(), &target).await.expect("a run");
    assert!(!report.success && !report.reachable, "{report:?}");
    assert_eq!((report.sent, report.received, report.handshake_seconds), (0, 0, None));
    let error = report.error.expect("a reason");
    assert!(error.starts_with("no handshake response within 300ms"), "{error}");
}

#[tokio::test]
async fn a_closed_port_is_told_by_its_port_unreachable() {
    let closed = UdpSocket::bind("127.0.0.1:0").await.expect("binding");
    let address = closed.local_addr().expect("an address");
    drop(closed);
    let report = probe(&key(), &target(address, public(GATEWAY_SECRET), 1)).await.expect("a run");
    assert!(!report.success, "{report:?}");
    assert_eq!(
        report.error.as_deref(),
        Some(
            format!("{address} answered ICMP port unreachable: nothing listens on that UDP port")
                .as_str()
        )
    );
}

#[test]
fn bad_input_is_refused_without_quoting_the_key() {
    let dir = std::env::temp_dir().join(format!("wgtel-probe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("bad.key");
    let secretish = "c2VjcmV0LWJ1dC1ub3QtYS1rZXk=";
    std::fs::write(&file, secretish).expect("writing");
    let error = PrivateKey::read(&file).expect_err("not a key");
    assert!(error.is_bad_input());
    assert!(!error.to_string().contains(secretish), "{error}");
    assert!(matches!(PrivateKey::read(&dir.join("missing")), Err(ProbeError::KeyFile { .. })));
    std::fs::write(&file, format!("{PROBE_KEY_BASE64}\n")).expect("writing");
    let key = PrivateKey::read(&file).expect("a key");
    assert_eq!(format!("{key:?}"), "PrivateKey(..)");
    assert_eq!(key.public_key(), public(PROBE_SECRET));
    std::fs::remove_dir_all(&dir).expect("cleaning up");

    let timeout = Duration::from_secs(1);
    let gateway = public(GATEWAY_SECRET).to_string();
    for endpoint in ["198.18.0.1", "198.18.0.1:x", ":51820", "fd00::1:51820", ""] {
        let error = ProbeTarget::new(endpoint, &gateway, None, timeout).expect_err(endpoint);
        assert!(matches!(error, ProbeError::Endpoint(_)), "{endpoint}: {error}");
    }
    for endpoint in ["198.18.0.1:51820", "[fd00::1]:51820", "vpn.example:51820"] {
        assert!(ProbeTarget::new(endpoint, &gateway, None, timeout).is_ok(), "{endpoint}");
    }
    let error =
        ProbeTarget::new("198.18.0.1:51820", "short", None, timeout).expect_err("a bad key");
    assert!(matches!(error, ProbeError::PeerKey(_)));
    let echo = EchoTarget { target: TARGET, source: SOURCE, count: 0 };
    let error = ProbeTarget::new("198.18.0.1:51820", &gateway, Some(echo), timeout);
    assert!(matches!(error, Err(ProbeError::Count(0))));
}

#[tokio::test]
async fn a_prober_with_every_slot_taken_answers_none_after_its_timeout() {
    let file = std::env::temp_dir().join(format!("wgtel-prober-test-{}.key", std::process::id()));
    std::fs::write(&file, PROBE_KEY_BASE64).expect("writing");
    let prober = Prober::load(&file, Duration::from_millis(100), 1).expect("a prober");
    std::fs::remove_file(&file).expect("cleaning up");
    let address = gateway().await;
    let target = target(address, public(GATEWAY_SECRET), 1);
    let all = u32::try_from(Prober::MAX_RUNNING).expect("a small number");
    let taken = prober.slots.acquire_many(all).await.expect("the slots");
    let started = Instant::now();
    assert!(prober.run(&target).await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));
    drop(taken);
    let report = prober.run(&target).await.expect("a slot").expect("a run");
    assert!(report.success, "{report:?}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_failed_probe() {
    let target = ProbeTarget::new(
        "gateway.invalid:51820",
        &public(GATEWAY_SECRET).to_string(),
        None,
        Duration::from_secs(1),
    )
    .expect("a target");
    let report = probe(&key(), &target).await.expect("a run");
    assert!(!report.success && !report.reachable && report.address.is_none(), "{report:?}");
    assert_eq!(
        report.error.as_deref(),
        Some("gateway.invalid:51820 does not resolve to an address within 1s")
    );
}
