//! `wgtel-vm-check`: the VM test's helper inside the guest (`cargo xtask vm-test`), where only
//! busybox is at hand.
//!
//! - `wgtel-vm-check bulk-config N`: prints a `wg addconf` file of N peers, the same on every
//!   run: public keys from a fixed pseudo-random sequence (any 32 bytes are a key the kernel
//!   accepts), three AllowedIPs each (an IPv4 /30, an IPv6 /128 and an IPv6 /48, none shared)
//!   and 1,000 more on the second peer (split across netlink messages), an endpoint on every
//!   second peer (IPv6 on every tenth), a persistent keepalive on every third.
//! - `wgtel-vm-check field FILE KEY PATH`: the value at PATH (dot-separated; in arrays an
//!   index or `*`) in the element of FILE's array whose `public_key` or `name` is KEY, as
//!   compact JSON.
//! - `wgtel-vm-check only FILE INTERFACE`: the elements of FILE's array (`/api/v1/peers`)
//!   whose `interface` is INTERFACE, as a JSON array: a small file for `field`, which parsing
//!   1,200 peers made take seconds under TCG.
//! - `wgtel-vm-check compare PEERS.json [IFACE=CONFIG]...` with `wg show all dump` on stdin:
//!   every peer line of the dump must be in `/api/v1/peers` (saved in PEERS.json) once, in the
//!   same order per interface, with the same endpoint, AllowedIPs, rx and tx bytes, persistent
//!   keepalive and last handshake (to the second: the API's `last_handshake_unix`, which unlike
//!   its age does not depend on when the daemon took its snapshot); the API may list no other
//!   peer. Each `IFACE=CONFIG` also requires the dump's peers
//!   of IFACE to be exactly those of CONFIG (as written by `bulk-config`), field by field.
//!   Prints one summary line per interface, or the first mismatches and exits 1.
//!
//! - `wgtel-vm-check bpf-objects`: prints how many BPF programs, links and maps the kernel
//!   holds (`programs N links N maps N`), to show that nothing of wgtel's outlives it.
//!
//! Interface lines of the dump (which hold the private key) and preshared keys are never
//! read into anything printed.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            println!("wgtel-vm-check: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bulk-config") => {
            let count = args.get(1).context("bulk-config N")?.parse().context("N")?;
            print!("{}", bulk_config(count));
            Ok(true)
        }
        Some("compare") => {
            let peers = args.get(1).context("compare PEERS.json [IFACE=CONFIG]...")?;
            let mut dump = String::new();
            std::io::stdin().read_to_string(&mut dump).context("reading the dump on stdin")?;
            let api: Value = serde_json::from_str(
                &std::fs::read_to_string(peers).with_context(|| format!("reading {peers}"))?,
            )
            .with_context(|| format!("{peers} is not JSON"))?;
            let mut configs = BTreeMap::new();
            for pair in &args[2..] {
                let (interface, path) = pair.split_once('=').context("IFACE=CONFIG")?;
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
                configs.insert(interface.to_owned(), parse_config(&text)?);
            }
            compare(&dump, &api, &configs)
        }
        Some("field") => {
            let [file, key, path] = [2, 3, 4].map(|i| args.get(i - 1).map(String::as_str));
            let (Some(file), Some(key), Some(path)) = (file, key, path) else {
                bail!("field FILE KEY PATH");
            };
            let document: Value = serde_json::from_str(
                &std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
            )
            .with_context(|| format!("{file} is not JSON"))?;
            println!("{}", field(&document, key, path));
            Ok(true)
        }
        Some("only") => {
            let (Some(file), Some(interface)) = (args.get(1), args.get(2)) else {
                bail!("only FILE INTERFACE");
            };
            let document: Value = serde_json::from_str(
                &std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
            )
            .with_context(|| format!("{file} is not JSON"))?;
            println!("{}", only(&document, interface)?);
            Ok(true)
        }
        Some("udp") => {
            let (Some(to), Some(payload)) = (args.get(1), args.get(2)) else {
                bail!("udp ADDRESS:PORT PAYLOAD");
            };
            let to: SocketAddr = to.parse().context("ADDRESS:PORT")?;
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
            socket.send_to(payload.as_bytes(), to).with_context(|| format!("sending to {to}"))?;
            Ok(true)
        }
        Some("bpf-objects") => {
            println!(
                "programs {} links {} maps {}",
                bpf_objects(BPF_PROG_GET_NEXT_ID)?,
                bpf_objects(BPF_LINK_GET_NEXT_ID)?,
                bpf_objects(BPF_MAP_GET_NEXT_ID)?
            );
            Ok(true)
        }
        _ => bail!(
            "usage: wgtel-vm-check bulk-config N | compare PEERS.json [IFACE=CONFIG]... | \
             field FILE KEY PATH | only FILE INTERFACE | udp ADDRESS:PORT PAYLOAD | bpf-objects"
        ),
    }
}

/// `bpf(2)` commands that walk the kernel's BPF objects by id.
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// How many BPF objects of one kind (programs, maps or links, by `command`) the kernel holds:
/// what is left attached or loaded once a process is gone, with no bpftool at hand.
fn bpf_objects(command: libc::c_long) -> Result<usize> {
    // `union bpf_attr` for the GET_NEXT_ID commands: start_id, next_id, open_flags.
    let mut attr = [0u32; 3];
    let mut count = 0;
    loop {
        // SAFETY: `attr` is a valid, writable buffer of the size passed, for the whole call.
        let result =
            unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), size_of_val(&attr)) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOENT) {
                return Ok(count);
            }
            return Err(error).context("bpf(GET_NEXT_ID)");
        }
        count += 1;
        attr[0] = attr[1];
    }
}

/// The value at dot-separated `path` in the element of array `document` whose `public_key` or
/// `name` is `key`, as compact JSON (objects with sorted keys); `missing` when there is none.
/// In arrays, a number picks an element and `*` each element (giving an array).
fn field(document: &Value, key: &str, path: &str) -> String {
    let element = document.as_array().and_then(|elements| {
        elements.iter().find(|element| {
            element["public_key"].as_str() == Some(key) || element["name"].as_str() == Some(key)
        })
    });
    let parts: Vec<&str> = path.split('.').collect();
    element
        .and_then(|element| at_path(element, &parts))
        .map_or_else(|| "missing".to_owned(), |value| value.to_string())
}

/// The value at `parts` below `value`; `None` when a part is not there.
fn at_path(value: &Value, parts: &[&str]) -> Option<Value> {
    let Some((part, rest)) = parts.split_first() else { return Some(value.clone()) };
    match (value, *part) {
        (Value::Array(elements), "*") => {
            elements.iter().map(|element| at_path(element, rest)).collect::<Option<_>>()
        }
        (Value::Array(elements), index) => {
            at_path(elements.get(index.parse::<usize>().ok()?)?, rest)
        }
        (value, name) => at_path(value.get(name)?, rest),
    }
}

/// The elements of array `document` whose `interface` is `interface`.
fn only(document: &Value, interface: &str) -> Result<Value> {
    let elements = document.as_array().context("not an array")?;
    Ok(Value::Array(
        elements
            .iter()
            .filter(|element| element["interface"].as_str() == Some(interface))
            .cloned()
            .collect(),
    ))
}

/// One peer as the dump, the API or a config file says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    public_key: String,
    /// `None` when there is none.
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
    /// Seconds since the Unix epoch; `None` when never.
    last_handshake: Option<u64>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// `None` when off.
    persistent_keepalive: Option<u64>,
}

/// The next value of a splitmix64 sequence.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// AllowedIPs of the second peer of `bulk-config` beyond the three every peer has: 40 bytes of
/// attributes each, 40 kB in all, more than the 32 kB one message of a netlink dump holds at
/// most, so the kernel must continue this peer in a later message.
const LONG_PEER_EXTRA: u16 = 1000;

/// The peers of `bulk-config N`.
fn bulk_peers(count: usize) -> Vec<Peer> {
    let mut state = 0x5767_7465_6c56_4d00;
    (0..count)
        .map(|i| {
            let mut key = [0u8; 32];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
            }
            // Written as WireGuard prints them (RFC 5952 IPv6: `fd00:b::`, not `fd00:b::0`).
            let n = u16::try_from(i).unwrap_or(u16::MAX);
            let port = 20000_u16.saturating_add(n);
            let endpoint = if i % 10 == 0 {
                Some(SocketAddr::from((Ipv6Addr::new(0xfd00, 0xe, 0, 0, 0, 0, 0, n), port)))
            } else if i % 2 == 0 {
                Some(SocketAddr::from((Ipv4Addr::new(198, 18, 9, 10 + (n % 200) as u8), port)))
            } else {
                None
            };
            let v4 = Ipv4Addr::new(198, 19, 64 + (n / 64) as u8, (n % 64) as u8 * 4);
            let mut allowed_ips = vec![
                format!("{v4}/30"),
                format!("{}/128", Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, 0, n)),
                format!("{}/48", Ipv6Addr::new(0xfd00, 0xc, n, 0, 0, 0, 0, 0)),
            ];
            if i == 1 {
                // Too many for one netlink message: the kernel continues this peer in the next.
                allowed_ips.extend(
                    (0..LONG_PEER_EXTRA)
                        .map(|j| format!("{}/128", Ipv6Addr::new(0xfd00, 0xd, 0, 0, 0, 0, 1, j))),
                );
            }
            Peer {
                public_key: base64(&key),
                endpoint: endpoint.map(|endpoint| endpoint.to_string()),
                allowed_ips,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: (i % 3 == 0).then_some(1 + (i as u64 * 37) % 65_535),
            }
        })
        .collect()
}

fn bulk_config(count: usize) -> String {
    let mut config = String::new();
    for peer in bulk_peers(count) {
        let _ = writeln!(config, "[Peer]\nPublicKey = {}", peer.public_key);
        let _ = writeln!(config, "AllowedIPs = {}", peer.allowed_ips.join(", "));
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(config, "Endpoint = {endpoint}");
        }
        if let Some(interval) = peer.persistent_keepalive {
            let _ = writeln!(config, "PersistentKeepalive = {interval}");
        }
        config.push('\n');
    }
    config
}

/// The peers of a config file written by [`bulk_config`].
fn parse_config(text: &str) -> Result<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line == "[Peer]" {
            peers.push(Peer {
                public_key: String::new(),
                endpoint: None,
                allowed_ips: Vec::new(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: None,
            });
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else { continue };
        let peer = peers.last_mut().context("a key before [Peer]")?;
        match key {
            "PublicKey" => peer.public_key = value.to_owned(),
            "AllowedIPs" => peer.allowed_ips = value.split(", ").map(str::to_owned).collect(),
            "Endpoint" => peer.endpoint = Some(value.to_owned()),
            "PersistentKeepalive" => peer.persistent_keepalive = Some(value.parse()?),
            other => bail!("unexpected key {other}"),
        }
    }
    Ok(peers)
}

/// Peer lines of `wg show all dump`, by interface, in order. Interface lines (5 fields, the
/// second the private key) are skipped unread.
fn parse_dump(dump: &str) -> Result<BTreeMap<String, Vec<Peer>>> {
    let mut interfaces: BTreeMap<String, Vec<Peer>> = BTreeMap::new();
    for line in dump.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.len() {
            5 => {
                interfaces.entry(fields[0].to_owned()).or_default();
            }
            9 => {
                let number = |index: usize| -> Result<u64> {
                    fields[index].parse().with_context(|| format!("dump field {index}"))
                };
                let peer = Peer {
                    public_key: fields[1].to_owned(),
                    endpoint: (fields[3] != "(none)").then(|| fields[3].to_owned()),
                    allowed_ips: if fields[4] == "(none)" {
                        Vec::new()
                    } else {
                        fields[4].split(',').map(str::to_owned).collect()
                    },
                    last_handshake: Some(number(5)?).filter(|&seconds| seconds != 0),
                    rx_bytes: number(6)?,
                    tx_bytes: number(7)?,
                    persistent_keepalive: if fields[8] == "off" { None } else { Some(number(8)?) },
                };
                interfaces.entry(fields[0].to_owned()).or_default().push(peer);
            }
            count => bail!("a dump line of {count} fields"),
        }
    }
    Ok(interfaces)
}

/// `/api/v1/peers` by interface, in order. The handshake is cut to its whole second, as the
/// dump prints it.
fn parse_api(api: &Value) -> Result<BTreeMap<String, Vec<Peer>>> {
    let mut interfaces: BTreeMap<String, Vec<Peer>> = BTreeMap::new();
    for peer in api.as_array().context("/api/v1/peers is not an array")? {
        let text = |key: &str| -> Result<String> {
            peer[key].as_str().map(str::to_owned).with_context(|| format!("{key} of {peer}"))
        };
        let number = |key: &str| -> Result<u64> {
            peer[key].as_u64().with_context(|| format!("{key} of {peer}"))
        };
        let allowed_ips = peer["allowed_ips"]
            .as_array()
            .context("allowed_ips")?
            .iter()
            .map(|ip| ip.as_str().map(str::to_owned).context("an allowed IP"))
            .collect::<Result<_>>()?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an epoch time in seconds"
        )]
        let last_handshake =
            peer["last_handshake_unix"].as_f64().map(|at| at.floor().max(0.0) as u64);
        interfaces.entry(text("interface")?).or_default().push(Peer {
            public_key: text("public_key")?,
            endpoint: peer["endpoint"].as_str().map(str::to_owned),
            allowed_ips,
            last_handshake,
            rx_bytes: number("rx_bytes")?,
            tx_bytes: number("tx_bytes")?,
            persistent_keepalive: peer["persistent_keepalive"].as_u64(),
        });
    }
    Ok(interfaces)
}

/// Field-by-field differences of `got` from `want`, handshake times only when `handshake`.
fn differences(got: &Peer, want: &Peer, handshake: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, got: String, want: String| {
        if got != want {
            out.push(format!("{name} {got}, want {want}"));
        }
    };
    field("endpoint", format!("{:?}", got.endpoint), format!("{:?}", want.endpoint));
    field("allowed_ips", got.allowed_ips.join(","), want.allowed_ips.join(","));
    field("rx_bytes", got.rx_bytes.to_string(), want.rx_bytes.to_string());
    field("tx_bytes", got.tx_bytes.to_string(), want.tx_bytes.to_string());
    field(
        "persistent_keepalive",
        format!("{:?}", got.persistent_keepalive),
        format!("{:?}", want.persistent_keepalive),
    );
    if handshake {
        field(
            "last_handshake",
            format!("{:?}", got.last_handshake),
            format!("{:?}", want.last_handshake),
        );
    }
    out
}

/// Compares the dump with the API's peers and with `configs`; prints what it found.
fn compare(dump: &str, api: &Value, configs: &BTreeMap<String, Vec<Peer>>) -> Result<bool> {
    let dump = parse_dump(dump)?;
    let api = parse_api(api)?;
    let mut errors = Vec::new();
    for interface in api.keys().filter(|name| !dump.contains_key(*name)) {
        errors.push(format!("{interface}: in the API, not in the dump"));
    }
    for (interface, want) in &dump {
        let got = api.get(interface).map(Vec::as_slice).unwrap_or_default();
        let mut seen = HashSet::new();
        for peer in got {
            if !seen.insert(&peer.public_key) {
                errors.push(format!("{interface}: peer {} listed twice", peer.public_key));
            }
        }
        if got.len() != want.len() {
            errors.push(format!(
                "{interface}: {} peers in the API, {} in the dump",
                got.len(),
                want.len()
            ));
        }
        for (index, (got, want)) in got.iter().zip(want).enumerate() {
            if got.public_key != want.public_key {
                errors.push(format!(
                    "{interface}: peer {index} is {} in the API, {} in the dump",
                    got.public_key, want.public_key
                ));
                continue;
            }
            for difference in differences(got, want, true) {
                errors.push(format!("{interface} {}: API {difference}", got.public_key));
            }
        }
        if let Some(config) = configs.get(interface) {
            if config.len() != want.len() {
                errors.push(format!(
                    "{interface}: {} peers in the dump, {} configured",
                    want.len(),
                    config.len()
                ));
            }
            for (dumped, configured) in want.iter().zip(config) {
                if dumped.public_key != configured.public_key {
                    errors.push(format!(
                        "{interface}: dump has {} where {} was configured",
                        dumped.public_key, configured.public_key
                    ));
                    continue;
                }
                let mut configured = configured.clone();
                (configured.rx_bytes, configured.tx_bytes) = (dumped.rx_bytes, dumped.tx_bytes);
                for difference in differences(dumped, &configured, false) {
                    errors.push(format!(
                        "{interface} {}: dump {difference} (configured)",
                        dumped.public_key
                    ));
                }
            }
        }
        if errors.is_empty() {
            let allowed: usize = want.iter().map(|peer| peer.allowed_ips.len()).sum();
            let keepalive = want.iter().filter(|peer| peer.persistent_keepalive.is_some()).count();
            let endpoints = want.iter().filter(|peer| peer.endpoint.is_some()).count();
            println!(
                "wgtel-vm-check: {interface}: {} peers, {allowed} AllowedIPs, {endpoints} endpoints, \
                 {keepalive} keepalives: API = dump{}",
                want.len(),
                if configs.contains_key(interface) { " = configured" } else { "" }
            );
        }
    }
    for error in errors.iter().take(20) {
        println!("wgtel-vm-check: MISMATCH {error}");
    }
    if errors.len() > 20 {
        println!("wgtel-vm-check: ... {} mismatches in all", errors.len());
    }
    Ok(errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_of_the_element_with_a_key() {
        let document = serde_json::json!([
            {"name": "wg0", "drops": {"no_peer": 7}},
            {"public_key": "AAAA", "fragments": {"transmit": 16, "receive": 16}, "x": null},
        ]);
        assert_eq!(field(&document, "wg0", "drops"), r#"{"no_peer":7}"#);
        assert_eq!(field(&document, "AAAA", "fragments"), r#"{"receive":16,"transmit":16}"#);
        assert_eq!(field(&document, "AAAA", "fragments.receive"), "16");
        assert_eq!(field(&document, "AAAA", "x"), "null");
        assert_eq!(field(&document, "AAAA", "y.z"), "missing");
        assert_eq!(field(&document, "BBBB", "x"), "missing");
        let interfaces = serde_json::json!([{"name": "wg0", "unavailable": [
            {"feature": "tcx", "reason": "kernel 5.10.262 has no tcx (6.6+)"},
            {"feature": "drop_reasons", "reason": "no reasons"},
        ]}, {"name": "wg1", "unavailable": []}]);
        assert_eq!(field(&interfaces, "wg0", "unavailable.*.feature"), r#"["tcx","drop_reasons"]"#);
        assert_eq!(field(&interfaces, "wg0", "unavailable.1.reason"), r#""no reasons""#);
        assert_eq!(field(&interfaces, "wg0", "unavailable.2.reason"), "missing");
        assert_eq!(field(&interfaces, "wg0", "unavailable.*.x"), "missing");
        assert_eq!(field(&interfaces, "wg1", "unavailable.*.feature"), "[]");
    }

    #[test]
    fn only_the_peers_of_one_interface() {
        let peers = serde_json::json!([
            {"interface": "wg0", "public_key": "A"},
            {"interface": "wg1", "public_key": "B"},
            {"interface": "wg0", "public_key": "C"},
        ]);
        assert_eq!(
            only(&peers, "wg0").unwrap().to_string(),
            r#"[{"interface":"wg0","public_key":"A"},{"interface":"wg0","public_key":"C"}]"#
        );
        assert_eq!(only(&peers, "wg2").unwrap().to_string(), "[]");
        assert!(only(&serde_json::json!({}), "wg0").is_err());
    }

    #[test]
    fn base64_of_known_bytes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff; 32]).len(), 44);
    }

    #[test]
    fn a_bulk_config_reads_back_as_written() {
        let peers = bulk_peers(30);
        assert_eq!(parse_config(&bulk_config(30)).unwrap(), peers);
        let keys: HashSet<_> = peers.iter().map(|peer| &peer.public_key).collect();
        assert_eq!(keys.len(), 30);
        assert_eq!(peers[10].endpoint.as_deref(), Some("[fd00:e::a]:20010"));
        assert_eq!(peers[2].endpoint.as_deref(), Some("198.18.9.12:20002"));
        assert_eq!(peers[0].allowed_ips, ["198.19.64.0/30", "fd00:b::/128", "fd00:c::/48"]);
        assert_eq!(bulk_peers(66)[65].allowed_ips[0], "198.19.65.4/30");
        assert_eq!(peers[1].allowed_ips.len(), 1003);
        assert_eq!(peers[1].allowed_ips[1002], "fd00:d::1:3e7/128");
        assert_eq!(peers[2].allowed_ips.len(), 3);
        assert_eq!(peers[3].persistent_keepalive, Some(112));
    }

    #[test]
    fn the_dump_and_the_api_compare_field_by_field() {
        let dump = "wg1\tPRIVATE\tPUBLIC\t51821\toff\n\
                    wg1\tAAAA\t(none)\t198.18.9.10:20000\t198.19.64.0/30,fd00:b::/128\t0\t0\t0\t25\n";
        let api = serde_json::json!([{
            "interface": "wg1", "public_key": "AAAA", "endpoint": "198.18.9.10:20000",
            "allowed_ips": ["198.19.64.0/30", "fd00:b::/128"], "last_handshake_seconds_ago": null,
            "rx_bytes": 0, "tx_bytes": 0, "persistent_keepalive": 25
        }]);
        assert!(compare(dump, &api, &BTreeMap::new()).unwrap());
        let mut doubled = api.clone();
        doubled.as_array_mut().unwrap().push(api[0].clone());
        assert!(!compare(dump, &doubled, &BTreeMap::new()).unwrap());
        let mut lost_ip = api.clone();
        lost_ip[0]["allowed_ips"] = serde_json::json!(["198.19.64.0/30"]);
        assert!(!compare(dump, &lost_ip, &BTreeMap::new()).unwrap());
        // A handshake at 1796000000.75: the dump's whole second, not the next.
        let dumped = |at: u64| dump.replace("\t0\t0\t0\t25", &format!("\t{at}\t0\t0\t25"));
        let mut shook = api.clone();
        shook[0]["last_handshake_unix"] = serde_json::json!(1_796_000_000.75);
        assert!(compare(&dumped(1_796_000_000), &shook, &BTreeMap::new()).unwrap());
        assert!(!compare(&dumped(1_796_000_001), &shook, &BTreeMap::new()).unwrap());
        assert!(!compare(dump, &shook, &BTreeMap::new()).unwrap());
    }
}
