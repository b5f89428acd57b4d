//! OTLP for a fleet: two gateways sending to one receiver, told apart by their resource; TLS
//! (a CA and certificates this test makes, mutual TLS over HTTP) and gzip on the wire.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use wgtel::lab::{self, Lab, LabOptions};
use wgtel_tests::{Daemon, ROTEL_GRPC, ROTEL_HTTP, Rotel, venv};

const WAIT: Duration = Duration::from_secs(20);

fn lab(peers: usize) -> Lab {
    let lab = Lab::build(LabOptions { peers, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    lab
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Links the two gateways' namespaces with a veth pair: `a` gets 198.18.251.1/30, `b`
/// 198.18.251.2/30 (lab numbers stop at 250, so no lab uses 198.18.251.0/24). The pair goes
/// with the namespaces.
fn link_gateways(a: &Lab, b: &Lab) {
    let (a, b) = (&a.gateway().namespace, &b.gateway().namespace);
    run(
        "ip",
        &["-n", a, "link", "add", "fleet0", "type", "veth", "peer", "name", "fleet0", "netns", b],
    );
    for (namespace, address) in [(a, "198.18.251.1/30"), (b, "198.18.251.2/30")] {
        run("ip", &["-n", namespace, "address", "add", address, "dev", "fleet0"]);
        run("ip", &["-n", namespace, "link", "set", "fleet0", "up"]);
    }
}

/// One resource's block of rotel's debug log: its attributes and everything under it.
#[derive(Debug)]
struct Block {
    attributes: Vec<(String, String)>,
    text: String,
}

impl Block {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Rotel's log cut at each `ResourceMetrics #N` / `ResourceLog #N` line.
fn resource_blocks(log: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut in_attributes = false;
    for line in log.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Resource") && trimmed.contains(" #") {
            blocks.push(Block { attributes: Vec::new(), text: String::new() });
            in_attributes = false;
            continue;
        }
        let Some(block) = blocks.last_mut() else { continue };
        if trimmed == "Resource attributes:" {
            in_attributes = true;
        } else if in_attributes && let Some(pair) = trimmed.strip_prefix("-> ") {
            let (key, value) = pair.split_once(": ").unwrap();
            let value =
                value.strip_prefix("Str(").and_then(|v| v.strip_suffix(')')).unwrap_or(value);
            block.attributes.push((key.to_owned(), value.to_owned()));
        } else {
            in_attributes = false;
        }
        block.text.push_str(line);
        block.text.push('\n');
    }
    blocks
}

#[test]
fn two_gateways_send_to_one_receiver_told_apart_by_their_resource() {
    let mut east = lab(2);
    let west = lab(1);
    link_gateways(&east, &west);
    // The receiver in east's namespace, on the address west reaches over the link.
    let rotel = Rotel::start_on(&east, "198.18.251.1:4317", "198.18.251.1:4318");
    let endpoint = "http://198.18.251.1:4317";
    let daemons: Vec<Daemon> = [(&east, "gw-east"), (&west, "gw-west")]
        .into_iter()
        .map(|(lab, host)| {
            let attributes = format!("host.name={host},deployment.environment.name=lab");
            Daemon::start_with_env(
                lab,
                &["--interval", "500ms", "--otlp-endpoint", endpoint],
                &[("OTEL_RESOURCE_ATTRIBUTES", attributes.as_str())],
            )
        })
        .collect();
    let keys = |lab: &Lab| -> Vec<String> {
        lab.peers().iter().map(|peer| peer.public_key.to_string()).collect()
    };
    let (east_keys, west_keys) = (keys(&east), keys(&west));
    assert_eq!((east_keys.len(), west_keys.len()), (2, 1));
    let mut needles: Vec<&str> = vec!["gw-east", "gw-west"];
    needles.extend(east_keys.iter().chain(&west_keys).map(String::as_str));
    rotel.wait_for(WAIT, &needles);
    // An event: a log record, under its gateway's resource like the metrics.
    let added = east.add_peer().unwrap().public_key.to_string();
    rotel.wait_for(WAIT, &["wireguard.peer_added", added.as_str()]);
    // A second round, so that every block checked below is complete.
    std::thread::sleep(Duration::from_secs(1));
    let blocks = resource_blocks(&rotel.log());
    let events: Vec<&Block> =
        blocks.iter().filter(|block| block.text.contains("wireguard.peer_added")).collect();
    assert_eq!(events.len(), 1, "one peer_added record: {events:#?}");
    assert_eq!(events[0].attribute("host.name"), Some("gw-east"), "{:?}", events[0].attributes);
    assert!(events[0].attribute("service.instance.id").is_some());

    let mut instances = Vec::new();
    for (host, lab, own, other) in
        [("gw-east", &east, &east_keys, &west_keys), ("gw-west", &west, &west_keys, &east_keys)]
    {
        let mine: Vec<&Block> =
            blocks.iter().filter(|block| block.attribute("host.name") == Some(host)).collect();
        assert!(!mine.is_empty(), "no resource with host.name {host} in {blocks:#?}");
        let ids: BTreeSet<&str> =
            mine.iter().map(|block| block.attribute("service.instance.id").unwrap()).collect();
        assert_eq!(ids.len(), 1, "{host} keeps one service.instance.id: {ids:?}");
        instances.extend(ids);
        for block in &mine {
            for (key, value) in [
                ("service.name", "wgtel"),
                ("service.version", env!("CARGO_PKG_VERSION")),
                ("os.type", "linux"),
                ("deployment.environment.name", "lab"),
            ] {
                assert_eq!(block.attribute(key), Some(value), "{key}: {:?}", block.attributes);
            }
            assert!(["amd64", "arm64"].contains(&block.attribute("host.arch").unwrap()));
            // Each gateway's peers under its own resource, never the other's. (Interfaces
            // are no test: `process.memory.usage` lists every WireGuard process on the host.)
            for key in other {
                assert!(!block.text.contains(key.as_str()), "{key} under {host}: {block:#?}");
            }
        }
        assert!(mine.iter().any(|block| block.text.contains(lab.gateway().interface.as_str())));
        for key in own {
            assert!(
                mine.iter().any(|block| block.text.contains(key.as_str())),
                "{host}'s peer {key} under no {host} resource"
            );
        }
    }
    assert_eq!(instances.len(), 2);
    assert_ne!(instances[0], instances[1], "the two gateways share a service.instance.id");
    for daemon in daemons {
        let (status, log) = daemon.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains("WARN"), "{log}");
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in
/// `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    let path = |name: &str| dir.join(name);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", ca_key.to_str().unwrap(), "-out", ca.to_str().unwrap()]);
    args.extend(["-days", "1", "-subj", "/CN=wgtel test CA"]);
    args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run("openssl", &args);
    let sign = |name: &str, extensions: &str| -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            path(&format!("{name}.pem")),
            path(&format!("{name}.key")),
            path(&format!("{name}.csr")),
            path(&format!("{name}.ext")),
        );
        std::fs::write(&ext, extensions).unwrap();
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", key.to_str().unwrap(), "-out", csr.to_str().unwrap()]);
        let subject = format!("/CN={name}");
        args.extend(["-subj", subject.as_str()]);
        run("openssl", &args);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                ca.to_str().unwrap(),
                "-CAkey",
                ca_key.to_str().unwrap(),
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                cert.to_str().unwrap(),
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
        (cert, key)
    };
    let (server, server_key) = sign(
        "server",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    let (client, client_key) =
        sign("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
    [ca, server, server_key, client, client_key]
}

/// A TLS front (Python's ssl module, in the setup's virtualenv) on `listen` that hands the
/// decrypted stream to `upstream` and writes what each connection's client sent to
/// `capture.N`. With `client_ca`, clients must present a certificate it signed.
const TLS_FRONT: &str = r#"
import socket, ssl, sys, threading
listen, upstream, cert, key, capture, client_ca = sys.argv[1:7]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.set_alpn_protocols(["h2", "http/1.1"])
if client_ca:
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
lock = threading.Lock()
connections = 0
def pump(source, sink, record):
    try:
        while data := source.recv(65536):
            if record:
                with open(record, "ab") as f:
                    f.write(data)
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
def serve(raw):
    try:
        client = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as error:
        print("handshake failed:", error, flush=True)
        raw.close()
        return
    host, port = upstream.rsplit(":", 1)
    server = socket.create_connection((host, int(port)))
    global connections
    with lock:
        connections += 1
        record = f"{capture}.{connections}"
    threading.Thread(target=pump, args=(server, client, None), daemon=True).start()
    pump(client, server, record)
host, port = listen.rsplit(":", 1)
listener = socket.create_server((host, int(port)))
print("listening", flush=True)
while True:
    raw, _ = listener.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"#;

/// The TLS front, stopped when dropped.
struct TlsFront {
    child: Option<Child>,
    capture: PathBuf,
    log: PathBuf,
}

impl TlsFront {
    fn start(lab: &Lab, listen: &str, upstream: &str, certs: &[PathBuf; 5], mtls: bool) -> Self {
        let capture = lab.dir().join("tls-front.capture");
        let log = lab.dir().join("tls-front.log");
        let client_ca = if mtls { certs[0].to_str().unwrap() } else { "" };
        let child = Lab::command(&lab.gateway().namespace, venv().join("bin/python3"))
            .args(["-c", TLS_FRONT, listen, upstream])
            .args([&certs[1], &certs[2], &capture])
            .arg(client_ca)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(lab.dir().join("tls-front.err")).unwrap())
            .spawn()
            .unwrap();
        let front = Self { child: Some(child), capture, log };
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&front.log).unwrap().contains("listening") {
            assert!(Instant::now() < deadline, "the TLS front never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        front
    }

    /// What each connection's client sent.
    fn captured(&self) -> Vec<Vec<u8>> {
        let prefix = format!("{}.", self.capture.file_name().unwrap().to_str().unwrap());
        std::fs::read_dir(self.capture.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with(&prefix))
            .map(|path| std::fs::read(path).unwrap())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let pid = child.id();
            lab::stop_child(child);
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the TLS front {pid} lives on");
        }
    }
}

/// `wgtel_otlp_exports_total{outcome="..."}` from `/metrics`.
fn exports(daemon: &Daemon, outcome: &str) -> f64 {
    let sample = format!("wgtel_otlp_exports_total{{outcome=\"{outcome}\"}} ");
    let metrics = daemon.get("/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample.as_str()))
        .unwrap_or_else(|| panic!("no {sample} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// The compressed flag of the first gRPC message of every HTTP/2 stream a client sent on one
/// connection.
fn grpc_compressed_flags(stream: &[u8]) -> Vec<u8> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut flags = Vec::new();
    let mut seen = BTreeSet::new();
    if let Some(mut rest) = stream.strip_prefix(PREFACE) {
        while rest.len() >= 9 {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, frame_flags) = (rest[3], rest[4]);
            let id = u32::from_be_bytes([rest[5] & 0x7f, rest[6], rest[7], rest[8]]);
            let Some(payload) = rest.get(9..9 + length) else { break };
            let padded = frame_flags & 0x8 != 0;
            let data = if padded { payload.get(1..).unwrap_or_default() } else { payload };
            if kind == 0 && !data.is_empty() && seen.insert(id) {
                flags.push(data[0]);
            }
            rest = &rest[9 + length..];
        }
    }
    flags
}

/// wgtel exports through a TLS front on `front_port` to rotel's `upstream`: without the CA
/// every export fails and is counted; with it (and, for mTLS, the client certificate) the
/// receiver gets the metrics. Gzip is asked for; `gzipped` checks the captured stream.
fn exports_over_tls(
    protocol: &str,
    upstream: &str,
    mtls: bool,
    gzipped: impl Fn(&[Vec<u8>]) -> bool,
) {
    let lab = lab(1);
    let certs = certificates(lab.dir());
    let rotel = Rotel::start(&lab);
    let listen = "127.0.0.1:14443";
    let front = TlsFront::start(&lab, listen, upstream, &certs, mtls);
    let endpoint = format!("https://{listen}");
    let args = ["--interval", "500ms", "--otlp-endpoint", endpoint.as_str()];
    let base =
        [("OTEL_EXPORTER_OTLP_PROTOCOL", protocol), ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];

    // The system's roots do not know the test's CA: every export fails, counted.
    let untrusting = Daemon::start_with_env(&lab, &args, &base);
    let deadline = Instant::now() + WAIT;
    while exports(&untrusting, "failure") < 2.0 {
        assert!(Instant::now() < deadline, "no failed export counted:\n{}", untrusting.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(exports(&untrusting, "success"), 0.0);
    let (status, log) = untrusting.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("OTLP export to https://127.0.0.1:14443 failed"), "{log}");
    assert!(!rotel.log().contains("wireguard.peer.io"), "rotel got data without TLS trust");

    let mut env = base.to_vec();
    let (ca, client, client_key) =
        (certs[0].to_str().unwrap(), certs[3].to_str().unwrap(), certs[4].to_str().unwrap());
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", ca));
    if mtls {
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", client));
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", client_key));
    }
    let trusting = Daemon::start_with_env(&lab, &args, &env);
    let key = lab.peer("peer1").unwrap().public_key.to_string();
    rotel.wait_for(WAIT, &["wireguard.peer.io", key.as_str(), "service.instance.id"]);
    let deadline = Instant::now() + WAIT;
    while exports(&trusting, "success") < 2.0 {
        assert!(Instant::now() < deadline, "no successful export:\n{}", trusting.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(exports(&trusting, "failure"), 0.0, "{}", trusting.log());
    let captured = front.captured();
    assert!(gzipped(&captured), "no gzip on the wire; the front's log:\n{}", front.log());
    let (status, log) = trusting.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn otlp_over_grpc_with_tls_trusts_the_named_ca_and_sends_gzip() {
    exports_over_tls("grpc", ROTEL_GRPC, false, |connections| {
        let flags: Vec<u8> =
            connections.iter().flat_map(|stream| grpc_compressed_flags(stream)).collect();
        // Every message of every stream is compressed (flag 1), and there were some.
        flags.len() >= 2 && flags.iter().all(|flag| *flag == 1)
    });
}

#[test]
fn otlp_over_http_with_mutual_tls_trusts_the_named_ca_and_sends_gzip() {
    exports_over_tls("http/protobuf", ROTEL_HTTP, true, |connections| {
        let text: String = connections
            .iter()
            .map(|stream| String::from_utf8_lossy(stream).to_ascii_lowercase())
            .collect();
        let requests = text.matches("post /v1/").count();
        text.matches("post /v1/metrics http/1.1").count() >= 2
            && text.matches("content-encoding: gzip").count() == requests
    });
}

#[test]
fn a_bad_certificate_file_stops_the_start_with_its_name() {
    let lab = lab(1);
    let garbage = lab.dir().join("not-a-ca.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (variable, expected) in [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "holds no usable PEM certificate"),
        ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "mutual TLS needs both"),
    ] {
        let daemon = Daemon::spawn(
            &lab,
            &["--otlp-endpoint", "https://127.0.0.1:14443"],
            &[(variable, garbage.to_str().unwrap())],
        );
        let (status, log) = daemon.exit_status(WAIT);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains(expected) && log.contains(variable), "{variable}: {log}");
    }
}

#[test]
fn settings_wgtel_cannot_honour_stop_the_start_with_the_reason() {
    let lab = lab(1);
    for (variable, value, expected) in [
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "delta",
            "wgtel exports cumulative metrics only",
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "unsupported compression \"zstd\""),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization", "no `=` in \"authorization\""),
    ] {
        let daemon = Daemon::spawn(
            &lab,
            &["--otlp-endpoint", &format!("http://{ROTEL_GRPC}")],
            &[(variable, value)],
        );
        let (status, log) = daemon.exit_status(WAIT);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains(expected) && log.contains(variable), "{variable}: {log}");
    }
}
