//! `wgtel-bench`: the measurements behind `cargo xtask bench`, written as Markdown.
//!
//! 1. Per-packet cost of every eBPF program by `BPF_PROG_TEST_RUN`, each beside an empty
//!    program of the same type in the same run, with 1, 1k, 10k and 100k peers in maps sized
//!    for them; single packets and GSO super-packets (the cost per skb and per message/packet).
//! 2. Throughput through a wireguard-go tunnel with the daemon attached and not, alternated.
//! 3. Collection cost (wall, CPU, RSS) with 100, 1k and 10k peers, beside `wg show all dump`.
//! 4. Export cost at 10k peers: `/metrics` size and time to serve.
//!
//! Usage (as root): `wgtel-bench REPORT.md`. `WGTEL_BIN` names the release daemon (default
//! `target/release/wgtel`); `WGTEL_BENCH_QUICK=1` shortens every loop for a smoke run;
//! `WGTEL_BENCH_ONLY=per` runs only the sections whose name starts so (`per`: section 1 alone);
//! `WGTEL_BENCH_PEERS=10000` (a comma-separated list) restricts the peer counts of section 1.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader, RawTracePointRunOptions, TestRun as _, TestRunOptions,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramInfo, RawTracePoint, SchedClassifier},
};
use collector_common::maps::{
    InnerAddress, InterfaceTraffic, Ipv4EndpointKey, PeerAddress, PeerCounters,
};
use wgtel::{
    ebpf::MapCapacity,
    lab::{self, Lab, LabOptions},
};

/// The daemon's API inside the gateway namespace.
const API: &str = "127.0.0.1:9587";

/// The WireGuard port of the packets and of the lab.
const WG_PORT: u16 = 51820;

/// Interface index the underlay packets' WireGuard interface has in the maps (any value: the
/// underlay programs find it through `LISTEN_PORTS`).
const WG_IFINDEX: u32 = 1000;

/// Interface index the tunnel programs see in a test run: the test skb is on loopback.
const TEST_RUN_IFINDEX: u32 = 1;

/// Index of the transport-data message type in `PeerUnderlay::messages`.
const TRANSPORT_DATA: usize = 3;

/// How the run is sized.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// `BPF_PROG_TEST_RUN` repeat.
    repeat: u32,
    /// Runs per measurement (the median is reported).
    runs: usize,
    /// Throughput pairs.
    pairs: usize,
    /// Seconds per iperf3 run.
    iperf_seconds: u32,
    /// Collection cycles observed per exporting daemon (the OTLP and cardinality rows).
    cycles: u32,
    /// Collection cycles in the CPU window of each peer count without export: CPU time comes
    /// in 10 ms ticks, so a few milliseconds per cycle need dozens of cycles.
    collection_cycles: u32,
    /// Peer counts of the collection benchmark.
    collection_peers: &'static [usize],
}

/// One section of the report: measures and appends its Markdown.
type Section = fn(&mut Report) -> Result<()>;

fn main() -> Result<()> {
    let out =
        std::env::args_os().nth(1).map_or_else(|| PathBuf::from("bench/REPORT.md"), PathBuf::from);
    let quick = std::env::var_os("WGTEL_BENCH_QUICK").is_some();
    let sizes = if quick {
        Sizes {
            repeat: 100_000,
            runs: 3,
            pairs: 2,
            iperf_seconds: 2,
            cycles: 3,
            collection_cycles: 3,
            collection_peers: &[100, 1000],
        }
    } else {
        Sizes {
            repeat: 1_000_000,
            runs: 7,
            pairs: 8,
            iperf_seconds: 10,
            cycles: 10,
            collection_cycles: 60,
            collection_peers: &[100, 1000, 10_000],
        }
    };
    let mut report = Report::new(out, sizes)?;
    let sections: [(&str, Section); 3] = [
        ("per-packet cost", per_packet),
        ("throughput", throughput),
        ("collection and export cost", collection),
    ];
    let mut failed = Vec::new();
    let only = std::env::var("WGTEL_BENCH_ONLY").ok();
    for (name, section) in sections {
        if only.as_deref().is_some_and(|only| !name.starts_with(only)) {
            continue;
        }
        eprintln!("bench: {name}");
        if let Err(error) = section(&mut report) {
            eprintln!("bench: {name} failed: {error:#}");
            report.line(&format!("\n**{name} failed:** `{error:#}`\n"));
            failed.push(name);
        }
        report.save()?;
    }
    report.targets();
    report.save()?;
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The Markdown report, saved after every section.
struct Report {
    path: PathBuf,
    sizes: Sizes,
    text: String,
    /// Added ns per packet at 10k peers: (underlay data path worst, tunnel path worst).
    added_at_10k: Option<(f64, f64)>,
    /// Added ns of the tunnel path at 1 peer (worst case), for the explanation.
    tunnel_at_1: Option<f64>,
    /// Added ns of unrelated underlay traffic at 10k peers (worst case).
    unrelated_at_10k: Option<f64>,
    /// Median throughput ratio (attached / not attached).
    throughput_ratio: Option<f64>,
    /// Lowest and highest ratio of a pair.
    throughput_spread: (f64, f64),
    /// At 10k peers: (collection wall s or None, CPU s per cycle, RSS MB, wg dump s).
    collection_at_10k: Option<(Option<f64>, f64, f64, f64)>,
    /// At 10k peers: bytes of `wg show all dump` and of `/metrics`.
    sizes_at_10k: (usize, usize),
    /// prometheus_wireguard_exporter scrape seconds at 10k peers.
    exporter_scrape: Option<f64>,
    /// At 1k peers: CPU s per collection cycle, and the exporter's scrape seconds.
    collection_at_1k: Option<(f64, Option<f64>)>,
    /// Every peer of the largest gateway exported over OTLP to rotel, per protocol: CPU s per
    /// cycle (collection and export) and peak RSS MB.
    otlp_full: Vec<(&'static str, f64, f64)>,
}

impl Report {
    fn new(path: PathBuf, sizes: Sizes) -> Result<Self> {
        let mut text = String::from("# wgtel benchmarks\n\nWritten by `cargo xtask bench` ");
        let _ = writeln!(text, "(`tests/src/bin/wgtel-bench.rs`); every figure below comes from");
        let _ = writeln!(text, "the run that wrote this file.\n\n## Machine\n");
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split(':').nth(1))
                    .map(|name| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus = thread::available_parallelism().map_or(0, usize::from);
        let memory = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| info.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let kernel = command_text(Command::new("uname").arg("-srvm")).unwrap_or_default();
        let wg_go = command_text(Command::new("wireguard-go").arg("--version"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let iperf = command_text(Command::new("iperf3").arg("--version"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let _ = writeln!(text, "| | |\n| --- | --- |");
        let _ = writeln!(text, "| CPU | {cpu}, {cpus} logical CPUs |");
        let _ = writeln!(text, "| memory | {} |", memory.trim_start_matches("MemTotal:").trim());
        let _ = writeln!(text, "| kernel | `{}` |", kernel.trim());
        let _ = writeln!(text, "| wireguard-go | {} |", wg_go.trim());
        let _ = writeln!(text, "| iperf3 | {} |", iperf.trim());
        let _ = writeln!(text, "| date | {} |", command_text(&mut Command::new("date"))?.trim());
        let _ = writeln!(
            text,
            "| sizes | test-run repeat {}, {} runs per figure (median), {} throughput pairs of {} s, {} collection cycles per peer count ({} per exporting daemon) |",
            sizes.repeat,
            sizes.runs,
            sizes.pairs,
            sizes.iperf_seconds,
            sizes.collection_cycles,
            sizes.cycles
        );
        Ok(Self {
            path,
            sizes,
            text,
            added_at_10k: None,
            tunnel_at_1: None,
            unrelated_at_10k: None,
            throughput_ratio: None,
            throughput_spread: (f64::NAN, f64::NAN),
            collection_at_10k: None,
            exporter_scrape: None,
            sizes_at_10k: (0, 0),
            collection_at_1k: None,
            otlp_full: Vec::new(),
        })
    }

    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&self.path, &self.text)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// The targets of issue #7, met or missed by how much.
    fn targets(&mut self) {
        let mut out =
            String::from("\n## Targets\n\n| target | measured | verdict |\n| --- | --- | --- |\n");
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        if let Some((underlay, tunnel)) = self.added_at_10k {
            let _ = writeln!(
                out,
                "| underlay data path ≤ 30 ns added per packet at 10k peers | {underlay:.0} ns | {} |",
                verdict(underlay <= 30.0)
            );
            let _ = writeln!(
                out,
                "| tunnel path ≤ 50 ns added per packet at 10k peers | {tunnel:.0} ns | {} |",
                verdict(tunnel <= 50.0)
            );
        } else {
            out.push_str("| per-packet targets | not measured | — |\n");
        }
        let (lowest, highest) = self.throughput_spread;
        // A spread of the pair ratios wider than the 1 % the target allows cannot decide it.
        let throughput_noisy = highest - lowest > 0.02;
        if let Some(ratio) = self.throughput_ratio {
            let _ = writeln!(
                out,
                "| throughput ≥ 99 % of unobserved | median ratio {:.1} % (pairs {:.1} % to {:.1} %) | {} |",
                ratio * 100.0,
                lowest * 100.0,
                highest * 100.0,
                if throughput_noisy {
                    "**inconclusive**: the noise between pairs exceeds the margin"
                } else {
                    verdict(ratio >= 0.99)
                }
            );
        } else {
            out.push_str("| throughput | not measured | — |\n");
        }
        if let Some((wall, cpu, rss, dump)) = self.collection_at_10k {
            let _ = writeln!(
                out,
                "| RSS < 50 MB at 10k peers | {rss:.1} MB | {} |",
                verdict(rss < 50.0)
            );
            let cycle = wall.unwrap_or(cpu);
            match self.exporter_scrape {
                Some(scrape) => {
                    let _ = writeln!(
                        out,
                        "| collection cycle ≥ 10× cheaper than prometheus_wireguard_exporter's scrape at 10k peers | cycle {} vs scrape {} ({:.1}×) | {} |",
                        ms(cycle),
                        ms(scrape),
                        scrape / cycle,
                        verdict(scrape / cycle >= 10.0)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| collection cycle ≥ 10× cheaper than prometheus_wireguard_exporter's scrape | cycle {}; exporter not measured (its scrape runs `wg show all dump`, {} here: {:.1}×) | not measured |",
                        ms(cycle),
                        ms(dump),
                        dump / cycle
                    );
                }
            }
        } else {
            out.push_str("| collection targets | not measured | — |\n");
        }
        match self.collection_at_1k {
            Some((cpu, Some(scrape))) => {
                let _ = writeln!(
                    out,
                    "| collection ≥ 20× cheaper than prometheus_wireguard_exporter's scrape at 1k peers | CPU per cycle {} vs scrape {} ({:.1}×) | {} |",
                    ms(cpu),
                    ms(scrape),
                    scrape / cpu,
                    verdict(scrape / cpu >= 20.0)
                );
            }
            _ => out.push_str(
                "| collection ≥ 20× cheaper than the exporter's scrape at 1k peers | not measured | — |\n",
            ),
        }
        if self.otlp_full.is_empty() {
            out.push_str("| full OTLP export targets | not measured | — |\n");
        }
        for (protocol, cpu, peak) in &self.otlp_full {
            let _ = writeln!(
                out,
                "| every peer of 10k exported over OTLP ({protocol} to rotel): ≤ 100 ms CPU per collection and export | {} | {} |",
                ms(*cpu),
                verdict(*cpu <= 0.1)
            );
            let _ = writeln!(
                out,
                "| the same ({protocol}): peak RSS ≤ 64 MB | {peak:.1} MB | {} |",
                verdict(*peak <= 64.0)
            );
        }
        if let (Some((underlay, tunnel)), Some(at_1), Some(unrelated)) =
            (self.added_at_10k, self.tunnel_at_1, self.unrelated_at_10k)
            && (underlay > 30.0 || tunnel > 50.0)
        {
            let _ = write!(
                out,
                "\n**Why the per-packet targets are missed** (causes read from the tables above and \
                 the programs' source; not profiled instruction by instruction): the underlay \
                 target is missed by {:.0} ns ({:.1}×), the tunnel target by {:.0} ns ({:.1}×).\n\n\
                 - Tunnel path: {at_1:.0} ns added at 1 peer, {tunnel:.0} ns at 10k. Host \
                 AllowedIPs (/32, /128) are found in a hash before the LPM trie is asked, so the \
                 lookup no longer grows with the peer count (with every entry in the trie it did: \
                 about 145 ns at 10k, one pointer chase per branching bit of a 160-bit key). What \
                 remains is that hash lookup (20-byte key), the header reads (direct from the \
                 skb's linear area) and the per-CPU counter update.\n\
                 - Underlay path: unrelated traffic pays {unrelated:.0} ns (the Ethernet and IP \
                 headers, read directly from the linear area); WireGuard data adds the UDP header, \
                 the `LISTEN_PORTS` array slot of the port, the payload header, the endpoint hash \
                 lookup (`ENDPOINTS_V4`, 12-byte key; most of what WireGuard data adds: with \
                 the 24-byte key it was 19 of 35 ns) and the per-CPU update.\n\
                 - What would close the gap: fewer hash lookups per packet (the endpoint and \
                 AllowedIPs lookups are what is left).\n",
                (underlay - 30.0).max(0.0),
                underlay / 30.0,
                (tunnel - 50.0).max(0.0),
                tunnel / 50.0,
            );
        }
        if let Some(ratio) = self.throughput_ratio
            && (ratio < 0.99 || throughput_noisy)
        {
            let _ = write!(
                out,
                "\n**Throughput** (median ratio {:.1} %): the ratios of the pairs range from \
                 {lowest:.3} to {highest:.3}, so the run-to-run noise of this lab (wireguard-go \
                 on 2 vCPUs, CPU-bound by encryption in user space, in a VM) is several times the \
                 1 % the target allows, and this run cannot resolve an effect of that size either \
                 way. What the daemon costs here is paid on the same two CPUs as wireguard-go: a \
                 collection every second (`--interval 1s`, ten times the default rate; see the CPU \
                 per cycle in section 3) and the per-packet cost of section 1 (at ~60k packets/s \
                 each way, a few hundred ns per packet over the four programs is of the order of \
                 1 % of one CPU). A quieter machine (pinned CPUs, kernel WireGuard, more pairs) is \
                 needed to decide the 99 % target.\n",
                ratio * 100.0,
            );
        }
        if let Some((_, _, rss, _)) = self.collection_at_10k
            && rss >= 50.0
        {
            let _ = write!(
                out,
                "\n**Why the RSS target is missed** (by {:.1} MB, not profiled): at 10k peers \
                 the daemon holds the parsed UAPI dump (the reply is {:.1} MB, read into a buffer \
                 kept between cycles), the current and the previous snapshot (counters are deltas \
                 between them), the per-peer sums read from the maps, and each peer's diagnosis \
                 history (about 13 readings per peer). `/metrics` ({:.1} MB here, {:.1} kB per \
                 peer) is streamed in 64 kB pieces and never held whole. Trimming the diagnosis \
                 history and the previous snapshot to the counters the next cycle needs are the \
                 next steps; `--top-peers` (section 4) does not change what is collected.\n",
                rss - 50.0,
                self.sizes_at_10k.0 as f64 / 1e6,
                self.sizes_at_10k.1 as f64 / 1e6,
                self.sizes_at_10k.1 as f64 / 1e4 / 1e3,
            );
        }
        self.text.push_str(&out);
    }
}

/// Milliseconds, for the report.
fn ms(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1e3)
}

/// The median of `values` (NaN when empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs `command` and returns its standard output, failing when it fails.
fn command_text(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command.stdin(Stdio::null()).output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// 1. Per-packet cost
// ---------------------------------------------------------------------------------------------

/// Offset of `gso_segs` in the kernel's `struct __sk_buff` (UAPI `linux/bpf.h`; read from the
/// running kernel's BTF, `/sys/kernel/btf/vmlinux`): right after `wire_len` at 160.
const SK_BUFF_GSO_SEGS: usize = 164;

/// Offset of `gso_size` in `struct __sk_buff`: after the 8-byte `sk` pointer at 168.
const SK_BUFF_GSO_SIZE: usize = 176;

/// `sizeof(struct __sk_buff)`: the test run's context.
const SK_BUFF_SIZE: usize = 192;

/// Most packet bytes `BPF_PROG_TEST_RUN` takes for an skb program, whose skb is all linear: a
/// page less the headroom (`NET_SKB_PAD`, 64) and the room for `struct skb_shared_info` (320
/// bytes on this kernel, x86_64). 3712 bytes pass, 3713 are `EINVAL`.
const TEST_RUN_DATA_MAX: usize = 4096 - 64 - 320;

/// A full-size WireGuard transport-data message at MTU 1420: 16-byte header, the 1420-byte
/// packet (padded no further than the MTU, so not a multiple of 16), 16-byte tag.
const FULL_MESSAGE: u32 = 1452;

/// Messages of the underlay's UDP GSO/GRO skb.
const UDP_GSO_MESSAGES: u32 = 2;

/// TCP payload of a full-size inner segment at MTU 1420 with timestamps (1420 - 20 - 32): the
/// `gso_size` wireguard-go writes into its TUN device.
const TCP_SEGMENT: u32 = 1368;

/// Segments of the inner TCP super-packet.
const TCP_GSO_SEGMENTS: u32 = 3;

/// The TCP timestamps option (NOP, NOP, kind 8 length 10, value, echo reply): what Linux puts
/// in every segment by default.
const TCP_TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 1];

/// Headers of every inner TCP segment: IPv4 and TCP with timestamps.
const TCP_HEADERS: usize = 20 + 20 + TCP_TIMESTAMPS.len();

/// TCP payload of the super-packet: full segments (1368 bytes each) where the test run takes
/// them; three need 4156 bytes with the headers, more than `TEST_RUN_DATA_MAX`, so the last
/// one is cut to what fits. The programs read headers only and count it all the same.
const TCP_GSO_PAYLOAD: usize = {
    let full = (TCP_GSO_SEGMENTS * TCP_SEGMENT) as usize;
    if TCP_HEADERS + full <= TEST_RUN_DATA_MAX { full } else { TEST_RUN_DATA_MAX - TCP_HEADERS }
};

// The programs count the payload / `gso_size` rounded up (`gso_segs` 0): the segments meant.
const _: () = assert!(TCP_GSO_PAYLOAD.div_ceil(TCP_SEGMENT as usize) == TCP_GSO_SEGMENTS as usize);

/// A packet for one tc program.
struct Case {
    /// Program under test.
    program: &'static str,
    /// What the packet is.
    what: String,
    /// Path it counts toward for the targets.
    path: PathKind,
    /// The packet, from `skb->data` on.
    packet: Vec<u8>,
    /// The test run's `struct __sk_buff` of a GSO super-packet; `None` for a single packet.
    context: Option<[u8; SK_BUFF_SIZE]>,
    /// Messages (underlay) or packets (tunnel) the skb stands for: what the cost per message or
    /// packet divides by, and what the peer's counter grows by per run.
    segments: u32,
    /// Whether the packet concerns the peer; unrelated traffic is counted for no peer.
    related: bool,
}

impl Case {
    /// A single packet about the peer.
    fn new(
        program: &'static str,
        what: impl Into<String>,
        path: PathKind,
        packet: Vec<u8>,
    ) -> Self {
        Self { program, what: what.into(), path, packet, context: None, segments: 1, related: true }
    }

    /// The same packet, about no peer.
    fn unrelated(self) -> Self {
        Self { related: false, ..self }
    }

    /// The packet as a GSO super-packet of `segments` messages or packets whose skb has
    /// `gso_size` and `gso_segs`.
    fn gso(self, gso_size: u32, gso_segs: u32, segments: u32) -> Self {
        Self { context: Some(gso_context(gso_size, gso_segs)), segments, ..self }
    }
}

/// A zeroed `struct __sk_buff` but for `gso_size` and `gso_segs`: two of the fields a test
/// run of an skb program takes non-zero (`convert___skb_to_skb` copies them to the skb's
/// shared info).
fn gso_context(gso_size: u32, gso_segs: u32) -> [u8; SK_BUFF_SIZE] {
    let mut context = [0; SK_BUFF_SIZE];
    context[SK_BUFF_GSO_SEGS..SK_BUFF_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    context[SK_BUFF_GSO_SIZE..SK_BUFF_GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    context
}

/// Which target a case is held to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Underlay,
    Tunnel,
}

/// Peer `index`'s tunnel address: 10.0.0.0/8 has room for every map size.
fn peer_tunnel_address(index: u32) -> [u8; 4] {
    let [_, b, c, d] = index.to_be_bytes();
    [10, b, c, d]
}

/// Peer `index`'s underlay endpoint address.
fn peer_endpoint_address(index: u32) -> [u8; 4] {
    let [_, b, c, d] = index.to_be_bytes();
    [100, 64 | (b & 0x3f), c, d]
}

/// An IPv4 header for `payload_len` bytes of `protocol`.
fn ipv4_header(protocol: u8, source: [u8; 4], destination: [u8; 4], payload_len: usize) -> Vec<u8> {
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX).to_be_bytes();
    let mut header = vec![0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, protocol, 0, 0];
    header.extend_from_slice(&source);
    header.extend_from_slice(&destination);
    header
}

/// A UDP datagram (header and payload).
fn udp(source_port: u16, destination_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&source_port.to_be_bytes());
    out.extend_from_slice(&destination_port.to_be_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    out
}

/// A TCP segment (ACK) with `options` (a multiple of 4 bytes) and `payload_len` bytes.
fn tcp(source_port: u16, destination_port: u16, options: &[u8], payload_len: usize) -> Vec<u8> {
    let header_len = 20 + options.len();
    // Data offset: the header's length in 32-bit words, in the high nibble.
    let data_offset = u8::try_from((header_len / 4) << 4).unwrap_or(0xf0);
    let mut out = Vec::with_capacity(header_len + payload_len);
    out.extend_from_slice(&source_port.to_be_bytes());
    out.extend_from_slice(&destination_port.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, data_offset, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    out.extend_from_slice(options);
    out.resize(header_len + payload_len, 0xab);
    out
}

/// An IPv4 packet with `transport` behind its header.
fn ipv4(protocol: u8, source: [u8; 4], destination: [u8; 4], transport: &[u8]) -> Vec<u8> {
    let mut packet = ipv4_header(protocol, source, destination, transport.len());
    packet.extend_from_slice(transport);
    packet
}

/// An Ethernet frame carrying IPv4 `packet`.
fn ethernet(packet: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend_from_slice(packet);
    frame
}

/// A WireGuard transport-data message with `payload` bytes in all (type 4, 16-byte header).
fn transport_data(payload: usize) -> Vec<u8> {
    let mut message = vec![4, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
    message.resize(payload, 0x5a);
    message
}

/// The representative packets, each single-packet case followed by its GSO super-packet where
/// there is one; the peer they concern is `peer`.
fn cases(peer: u32) -> Vec<Case> {
    let mut cases = underlay_cases(peer);
    cases.extend(tunnel_cases(peer));
    cases
}

/// The underlay programs' packets: WireGuard data from and to the peer's endpoint, single and
/// in a UDP GSO/GRO skb, and unrelated traffic.
fn underlay_cases(peer: u32) -> Vec<Case> {
    const LOCAL: [u8; 4] = [192, 0, 2, 1];
    const WEB: [u8; 4] = [203, 0, 113, 9];
    let underlay = PathKind::Underlay;
    let endpoint = peer_endpoint_address(peer);
    let data = udp(WG_PORT, WG_PORT, &transport_data(1440));
    let batch = udp(
        WG_PORT,
        WG_PORT,
        &transport_data(FULL_MESSAGE as usize).repeat(UDP_GSO_MESSAGES as usize),
    );
    let gso = |way: &str| {
        format!(
            "UDP GSO/GRO skb: {UDP_GSO_MESSAGES} transport-data messages of {FULL_MESSAGE} bytes \
             (full size at MTU 1420), gso_size {FULL_MESSAGE}, gso_segs {UDP_GSO_MESSAGES}, {way} \
             a peer's endpoint"
        )
    };
    vec![
        Case::new(
            "underlay_ingress",
            "WireGuard transport data, 1440-byte payload, from a peer's endpoint",
            underlay,
            ethernet(&ipv4(17, endpoint, LOCAL, &data)),
        ),
        Case::new(
            "underlay_ingress",
            gso("from"),
            underlay,
            ethernet(&ipv4(17, endpoint, LOCAL, &batch)),
        )
        .gso(FULL_MESSAGE, UDP_GSO_MESSAGES, UDP_GSO_MESSAGES),
        Case::new(
            "underlay_egress",
            "WireGuard transport data, 1440-byte payload, to a peer's endpoint",
            underlay,
            ethernet(&ipv4(17, LOCAL, endpoint, &data)),
        ),
        Case::new(
            "underlay_egress",
            gso("to"),
            underlay,
            ethernet(&ipv4(17, LOCAL, endpoint, &batch)),
        )
        .gso(FULL_MESSAGE, UDP_GSO_MESSAGES, UDP_GSO_MESSAGES),
        Case::new(
            "underlay_ingress",
            "unrelated: TCP from port 443, 1400-byte payload",
            underlay,
            ethernet(&ipv4(6, WEB, LOCAL, &tcp(443, 40000, &[], 1400))),
        )
        .unrelated(),
        Case::new(
            "underlay_egress",
            "unrelated: TCP to port 443, 1400-byte payload",
            underlay,
            ethernet(&ipv4(6, LOCAL, WEB, &tcp(40000, 443, &[], 1400))),
        )
        .unrelated(),
    ]
}

/// The tunnel programs' packets (L3, as on a WireGuard interface): inner TCP and UDP from
/// and to the peer, and TCP in a GSO skb as wireguard-go writes it into its TUN device.
fn tunnel_cases(peer: u32) -> Vec<Case> {
    const TUNNEL_LOCAL: [u8; 4] = [10, 255, 255, 254];
    let tunnel = PathKind::Tunnel;
    let inner = peer_tunnel_address(peer);
    let last = TCP_GSO_PAYLOAD - (TCP_GSO_SEGMENTS - 1) as usize * TCP_SEGMENT as usize;
    let gso = format!(
        "inner TCP GSO skb from a peer: {TCP_GSO_SEGMENTS} segments of {TCP_SEGMENT} bytes (the \
         last cut to {last} to fit the test run), timestamps option, gso_size {TCP_SEGMENT}, \
         gso_segs 0 (L3)"
    );
    vec![
        Case::new(
            "tunnel_ingress",
            "inner TCP from a peer, 1380-byte payload (L3)",
            tunnel,
            ipv4(6, inner, TUNNEL_LOCAL, &tcp(5201, 40000, &[], 1380)),
        ),
        Case::new(
            "tunnel_ingress",
            gso,
            tunnel,
            ipv4(6, inner, TUNNEL_LOCAL, &tcp(5201, 40000, &TCP_TIMESTAMPS, TCP_GSO_PAYLOAD)),
        )
        .gso(TCP_SEGMENT, 0, TCP_GSO_SEGMENTS),
        Case::new(
            "tunnel_ingress",
            "inner UDP from a peer, 1372-byte payload (L3)",
            tunnel,
            ipv4(17, inner, TUNNEL_LOCAL, &udp(5201, 40000, &[0x11; 1372])),
        ),
        Case::new(
            "tunnel_egress",
            "inner TCP to a peer, 1380-byte payload (L3)",
            tunnel,
            ipv4(6, TUNNEL_LOCAL, inner, &tcp(40000, 5201, &[], 1380)),
        ),
        Case::new(
            "tunnel_egress",
            "inner UDP to a peer, 1372-byte payload (L3)",
            tunnel,
            ipv4(17, TUNNEL_LOCAL, inner, &udp(40000, 5201, &[0x11; 1372])),
        ),
    ]
}

/// Loads the object, its maps sized as the daemon sizes them on a host with `peers` peers of
/// one AllowedIP each, and every program the benchmark runs.
fn load(peers: u32) -> Result<(Ebpf, MapCapacity)> {
    let capacity = MapCapacity::for_host(peers as usize, peers as usize);
    let mut loader = EbpfLoader::new();
    capacity.apply(&mut loader);
    wgtel::ebpf::quiet(&mut loader);
    let mut ebpf = loader.load(wgtel::ebpf::object()).context("loading the object")?;
    for name in [
        "tunnel_ingress",
        "tunnel_egress",
        "underlay_ingress",
        "underlay_egress",
        "baseline_classifier",
    ] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a classifier"))?;
        program.load().with_context(|| format!("loading {name}"))?;
    }
    for name in ["kfree_skb", "baseline_raw_tracepoint"] {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a raw tracepoint"))?;
        program.load().with_context(|| format!("loading {name}"))?;
    }
    Ok((ebpf, capacity))
}

/// Fills the maps as a gateway with `peers` peers would: peer `index` has one /32 AllowedIP
/// and one endpoint. The maps are sized for them ([`load`]): an insert the kernel refuses fails
/// the run.
fn fill(ebpf: &mut Ebpf, peers: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(path, error)| anyhow::anyhow!("{path}: {error}"))?;
    {
        // Host entries go where the collector puts them: the hash the programs look up before
        // the trie of shorter prefixes.
        let mut hosts: HashMap<&mut MapData, PeerAddress, u32> =
            HashMap::try_from(ebpf.map_mut("HOST_ALLOWED_IPS").context("no HOST_ALLOWED_IPS")?)?;
        for index in 0..peers {
            let address =
                PeerAddress::new(TEST_RUN_IFINDEX, InnerAddress::ipv4(peer_tunnel_address(index)));
            hosts.insert(address, index, 0).context("filling HOST_ALLOWED_IPS")?;
        }
    }
    {
        let mut endpoints: HashMap<&mut MapData, Ipv4EndpointKey, u32> =
            HashMap::try_from(ebpf.map_mut("ENDPOINTS_V4").context("no ENDPOINTS_V4")?)?;
        for index in 0..peers {
            let key = Ipv4EndpointKey {
                ifindex: WG_IFINDEX,
                port: u32::from(WG_PORT),
                address: peer_endpoint_address(index),
            };
            endpoints.insert(key, index, 0).context("filling ENDPOINTS_V4")?;
        }
    }
    {
        let mut ports: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("LISTEN_PORTS").context("no LISTEN_PORTS")?)?;
        ports.set(u32::from(WG_PORT), WG_IFINDEX, 0).context("filling LISTEN_PORTS")?;
    }
    {
        let mut interfaces: PerCpuHashMap<&mut MapData, u32, InterfaceTraffic> =
            PerCpuHashMap::try_from(
                ebpf.map_mut("INTERFACE_TRAFFIC").context("no INTERFACE_TRAFFIC")?,
            )?;
        for ifindex in [TEST_RUN_IFINDEX, WG_IFINDEX] {
            let zero = PerCpuValues::try_from(vec![InterfaceTraffic::default(); cpus])?;
            interfaces.insert(ifindex, zero, 0).context("filling INTERFACE_TRAFFIC")?;
        }
    }
    {
        // A watched interface that is not the one the drops happen on.
        let mut watched: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(ebpf.map_mut("WATCHED").context("no WATCHED")?)?;
        watched.insert(WG_IFINDEX, 1, 0).context("filling WATCHED")?;
    }
    Ok(())
}

/// Per-run ns of tc program `name` on the case's packet, with its `struct __sk_buff` when it
/// has one, by `BPF_PROG_TEST_RUN`.
fn run_classifier(ebpf: &Ebpf, name: &str, case: &Case, repeat: u32) -> Result<f64> {
    if case.packet.len() > TEST_RUN_DATA_MAX {
        bail!(
            "{}: {} bytes exceed the {TEST_RUN_DATA_MAX} a test run takes",
            case.what,
            case.packet.len()
        );
    }
    let program: &SchedClassifier = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a classifier"))?;
    let mut options = TestRunOptions::new();
    options.data_in = Some(&case.packet);
    options.ctx_in = case.context.as_ref().map(<[u8; SK_BUFF_SIZE]>::as_slice);
    options.repeat = repeat;
    let result = program.test_run(options).with_context(|| format!("test run of {name}"))?;
    Ok(result.duration.as_secs_f64() * 1e9)
}

/// Sum over CPUs of a peer's counters (tunnel and underlay).
fn peer_counters(ebpf: &Ebpf, peer: u32) -> Result<PeerCounters> {
    let map: PerCpuArray<&MapData, PeerCounters> =
        PerCpuArray::try_from(ebpf.map("PEER_COUNTERS").context("no PEER_COUNTERS")?)?;
    Ok(map.get(&peer, 0)?.iter().fold(PeerCounters::default(), |sum, value| sum.merge(*value)))
}

/// What the case's program counts for `peer`: transport-data messages (underlay) or packets
/// (tunnel), in the case's direction. Its growth over the runs proves that the lookups hit.
fn counted(ebpf: &Ebpf, case: &Case, peer: u32) -> Result<u64> {
    Ok(match case.program {
        "tunnel_ingress" => peer_counters(ebpf, peer)?.traffic.rx_packets,
        "tunnel_egress" => peer_counters(ebpf, peer)?.traffic.tx_packets,
        "underlay_ingress" => peer_counters(ebpf, peer)?.underlay.messages[0][TRANSPORT_DATA],
        _ => peer_counters(ebpf, peer)?.underlay.messages[1][TRANSPORT_DATA],
    })
}

/// `(run_time ns, run_count)` of a program from the kernel's BPF statistics.
fn stats(ebpf: &Ebpf, name: &str) -> Result<(u64, u64)> {
    let program: &RawTracePoint = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a raw tracepoint"))?;
    let info: ProgramInfo = program.info().with_context(|| format!("info of {name}"))?;
    Ok((u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX), info.run_count()))
}

/// Mean ns per invocation of raw tracepoint `name` over `repeat` test runs with `args`, from
/// the kernel's run-time statistics (a raw tracepoint test run has no repeat and no timer).
fn run_raw_tracepoint(ebpf: &Ebpf, name: &str, args: [u64; 12], repeat: u32) -> Result<f64> {
    let program: &RawTracePoint = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a raw tracepoint"))?;
    let (time_before, count_before) = stats(ebpf, name)?;
    for _ in 0..repeat {
        let options = RawTracePointRunOptions { args, cpu: None };
        program.test_run(options).with_context(|| format!("test run of {name}"))?;
    }
    let (time_after, count_after) = stats(ebpf, name)?;
    let count = count_after.saturating_sub(count_before);
    if count == 0 {
        bail!("{name}: the kernel counted no runs (BPF statistics off?)");
    }
    Ok(time_after.saturating_sub(time_before) as f64 / count as f64)
}

/// Section 1.
fn per_packet(report: &mut Report) -> Result<()> {
    let sizes = report.sizes;
    let mut text = per_packet_method(sizes);
    let mut drop_rows = String::new();
    let mut worst_at_10k = (0.0f64, 0.0f64);
    let mut tunnel_at_1 = 0.0f64;
    let mut unrelated_at_10k = 0.0f64;
    let peer_counts = per_packet_peer_counts()?;
    for &peers in &peer_counts {
        let (mut ebpf, capacity) = load(peers)?;
        fill(&mut ebpf, peers)?;
        let peer = peers / 2;
        for case in cases(peer) {
            let measured = measure(&ebpf, &case, peer, sizes)?;
            // The targets are per packet: a GSO skb's cost is shared by its segments.
            let added = measured.added_ns / f64::from(case.segments);
            if peers == 1 && case.path == PathKind::Tunnel {
                tunnel_at_1 = tunnel_at_1.max(added);
            }
            if peers == 10_000 && !case.related {
                unrelated_at_10k = unrelated_at_10k.max(added);
            }
            if peers == 10_000 {
                match case.path {
                    PathKind::Underlay => worst_at_10k.0 = worst_at_10k.0.max(added),
                    PathKind::Tunnel => worst_at_10k.1 = worst_at_10k.1.max(added),
                }
            }
            let _ = writeln!(
                text,
                "| {peers} | {} / {} | `{}` | {} | {:.0} | {:.0} | {:.0} | {} | {added:.1} | {:.2} | {} |",
                capacity.peers,
                capacity.allowed_ips,
                case.program,
                case.what,
                measured.program_ns,
                measured.baseline_ns,
                measured.added_ns,
                case.segments,
                measured.ratio,
                hit_text(&case, measured.counted, sizes),
            );
        }
        drop_rows.push_str(&kfree_skb_rows(&ebpf, peers, sizes)?);
        eprintln!("bench: per-packet cost with {peers} peers done");
    }
    // Held to the targets only when measured (`WGTEL_BENCH_PEERS` may leave a count out).
    if peer_counts.contains(&10_000) {
        report.added_at_10k = Some(worst_at_10k);
        report.unrelated_at_10k = Some(unrelated_at_10k);
    }
    if peer_counts.contains(&1) {
        report.tunnel_at_1 = Some(tunnel_at_1);
    }
    text.push_str(
        "\n### The kfree_skb filter\n\nA raw tracepoint test run takes no repeat and reports no \
         time, so these figures come from the kernel's BPF statistics (`BPF_ENABLE_STATS`, \
         run_time_ns / run_cnt, which add the same two clock reads to both programs) over \
         `repeat` single test runs of `kfree_skb` and of the empty `baseline_raw_tracepoint`, \
         alternated within each of the runs. The test-run `skb` argument cannot be a real \
         `sk_buff` (no kernel data address is known to user space here), so the packet is an \
         \"unrelated drop\" whose first kernel read fails: reason `NO_SOCKET`-like (2), skb = \
         0x1000. The second table attaches both programs to the live `kfree_skb` tracepoint and \
         measures real unrelated drops (UDP to a closed port on loopback, this host's \
         namespace, device not watched): the full early-exit path, four kernel reads and the \
         `WATCHED` lookup.\n\n| peers | case | kfree_skb ns | baseline ns | added ns | ratio |\n| --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    text.push_str(&drop_rows);
    text.push_str(&live_drops(sizes)?);
    report.text.push_str(&text);
    Ok(())
}

/// The heading, method and table header of section 1.
fn per_packet_method(sizes: Sizes) -> String {
    let mut text = String::from("\n## 1. Per-packet cost of the eBPF programs\n\n");
    let _ = writeln!(
        text,
        "Method: `BPF_PROG_TEST_RUN` (aya `TestRun`) with repeat {repeat}, on the loaded object \
         of the release build; the kernel times the repeat loop and reports whole ns per run. \
         Each figure is the median of {runs} runs; in every run the program and the empty \
         `baseline_classifier` run back to back on the same packet, and *added* is program minus \
         baseline **within that run** (the median of those differences), *ratio* the median of \
         program / baseline within each run. The maps are filled as a gateway with N peers \
         (one /32 AllowedIP each on the test skb's interface, loopback, ifindex 1; one endpoint \
         each; listen port {WG_PORT}) and sized for them as the daemon sizes them \
         (`MapCapacity::for_host(N, N)`: N and half as many again, never below the built-in \
         16,384 peers and 65,536 AllowedIPs; *map capacity* column), so every row holds all N \
         peers, AllowedIPs and endpoints. The packet concerns the peer in the middle of the map; \
         after the runs its counters in `PEER_COUNTERS` are read back to prove \
         the lookups hit: *hit* says yes when they grew by exactly segments × runs × repeat. \
         Tunnel packets start at the IP header (L3, as on a WireGuard interface).\n",
        repeat = sizes.repeat,
        runs = sizes.runs,
    );
    let _ = writeln!(
        text,
        "GSO rows: one skb that stands for *segments* messages (underlay: a UDP GSO or GRO skb, \
         each segment one WireGuard message) or packets (tunnel: a TCP GSO skb). The skb's \
         `gso_size` and `gso_segs` are set through the test run's context (`ctx_in`): a zeroed \
         `struct __sk_buff` ({SK_BUFF_SIZE} bytes) with `gso_segs` at byte {SK_BUFF_GSO_SEGS} and \
         `gso_size` at byte {SK_BUFF_GSO_SIZE} (offsets from the kernel's BTF), fields a test run \
         of an skb program takes non-zero. *program*, *baseline* and *added* are per skb; \
         *added per message/packet* is added / segments (for single packets, added). A test-run \
         skb is linear and at most {TEST_RUN_DATA_MAX} bytes (a page less `NET_SKB_PAD` and \
         `struct skb_shared_info`): the last message's header, which the underlay programs read \
         with `bpf_skb_load_bytes` at its offset, is in the linear area here where a real GSO or \
         GRO skb has it in a page fragment; and three full TCP segments do not fit, so the \
         third is shorter (the programs read headers only; with `gso_segs` 0 they count the \
         payload / `gso_size` rounded up: 3 packets).\n"
    );
    let _ = writeln!(
        text,
        "| peers | map capacity (peers / AllowedIPs) | program | packet | program ns | baseline ns | added ns | segments | added ns per message/packet | ratio | hit |\n| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    text
}

/// The figures of one case at one peer count: medians over the runs, per skb.
struct Measured {
    /// ns of the program.
    program_ns: f64,
    /// ns of `baseline_classifier` on the same skb.
    baseline_ns: f64,
    /// Program minus baseline within each run.
    added_ns: f64,
    /// Program / baseline within each run.
    ratio: f64,
    /// What the peer's counter grew by over all runs.
    counted: u64,
}

/// Runs `case` and the baseline `sizes.runs` times each, back to back, on maps where the case
/// concerns `peer`.
fn measure(ebpf: &Ebpf, case: &Case, peer: u32, sizes: Sizes) -> Result<Measured> {
    let before = counted(ebpf, case, peer)?;
    let mut program_ns = Vec::new();
    let mut baseline_ns = Vec::new();
    let mut added = Vec::new();
    let mut ratio = Vec::new();
    for _ in 0..sizes.runs {
        let base = run_classifier(ebpf, "baseline_classifier", case, sizes.repeat)?;
        let prog = run_classifier(ebpf, case.program, case, sizes.repeat)?;
        program_ns.push(prog);
        baseline_ns.push(base);
        added.push(prog - base);
        ratio.push(if base > 0.0 { prog / base } else { f64::NAN });
    }
    let after = counted(ebpf, case, peer)?;
    Ok(Measured {
        program_ns: median(&program_ns),
        baseline_ns: median(&baseline_ns),
        added_ns: median(&added),
        ratio: median(&ratio),
        counted: after.saturating_sub(before),
    })
}

/// The *hit* cell: whether the peer's counter grew by exactly what the case stands for,
/// segments × runs × repeat (unrelated traffic: by nothing expected).
fn hit_text(case: &Case, counted: u64, sizes: Sizes) -> String {
    if !case.related {
        return format!("n/a ({counted} counted for the peer)");
    }
    let expected = u64::from(case.segments) * sizes.runs as u64 * u64::from(sizes.repeat);
    if counted == expected {
        format!("yes ({counted} = {} × {} × {})", case.segments, sizes.runs, sizes.repeat)
    } else {
        format!("**NO** ({counted} counted, {expected} expected)")
    }
}

/// The peer counts of section 1: `WGTEL_BENCH_PEERS` (comma-separated), else 1, 1k, 10k, 100k.
fn per_packet_peer_counts() -> Result<Vec<u32>> {
    let Ok(list) = std::env::var("WGTEL_BENCH_PEERS") else {
        return Ok(vec![1, 1000, 10_000, 100_000]);
    };
    list.split(',')
        .map(|count| {
            count
                .trim()
                .parse()
                .with_context(|| format!("WGTEL_BENCH_PEERS: {count:?} is no count"))
        })
        .collect()
}

/// The kfree_skb test-run rows for one peer count.
fn kfree_skb_rows(ebpf: &Ebpf, peers: u32, sizes: Sizes) -> Result<String> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF stats")?;
    let mut args = [0u64; 12];
    args[0] = 0x1000;
    args[2] = 2;
    let mut prog = Vec::new();
    let mut base = Vec::new();
    let mut added = Vec::new();
    let mut ratio = Vec::new();
    for _ in 0..sizes.runs {
        let b = run_raw_tracepoint(ebpf, "baseline_raw_tracepoint", args, sizes.repeat / 4)?;
        let p = run_raw_tracepoint(ebpf, "kfree_skb", args, sizes.repeat / 4)?;
        prog.push(p);
        base.push(b);
        added.push(p - b);
        ratio.push(p / b);
    }
    Ok(format!(
        "| {peers} | test run, unrelated drop (skb read fails), {} runs each | {:.1} | {:.1} | {:.1} | {:.2} |\n",
        sizes.repeat / 4,
        median(&prog),
        median(&base),
        median(&added),
        median(&ratio)
    ))
}

/// kfree_skb and the baseline attached to the live tracepoint, measured on real drops.
fn live_drops(sizes: Sizes) -> Result<String> {
    let inode = netns_inode()?;
    let mut loader = EbpfLoader::new();
    loader.override_global("NETNS_INODE", &inode, true);
    wgtel::ebpf::quiet(&mut loader);
    let mut ebpf = loader.load(wgtel::ebpf::object()).context("loading the object")?;
    {
        let mut watched: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(ebpf.map_mut("WATCHED").context("no WATCHED")?)?;
        watched.insert(WG_IFINDEX, 1, 0).context("filling WATCHED")?;
    }
    let mut links = Vec::new();
    for name in ["kfree_skb", "baseline_raw_tracepoint"] {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a raw tracepoint"))?;
        program.load().with_context(|| format!("loading {name}"))?;
        links.push(program.attach("kfree_skb").with_context(|| format!("attaching {name}"))?);
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF stats")?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    // A port nobody listens on: every datagram is a NO_SOCKET drop.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    let target = closed.local_addr()?;
    drop(closed);
    let datagrams = (sizes.repeat / 10).max(10_000);
    let mut rows = String::new();
    let mut prog = Vec::new();
    let mut base = Vec::new();
    let mut added = Vec::new();
    let mut ratio = Vec::new();
    let mut drops = Vec::new();
    for _ in 0..sizes.runs {
        let p0 = stats(&ebpf, "kfree_skb")?;
        let b0 = stats(&ebpf, "baseline_raw_tracepoint")?;
        for _ in 0..datagrams {
            let _refused = socket.send_to(b"bench", target);
        }
        let p1 = stats(&ebpf, "kfree_skb")?;
        let b1 = stats(&ebpf, "baseline_raw_tracepoint")?;
        let p_count = p1.1.saturating_sub(p0.1).max(1);
        let b_count = b1.1.saturating_sub(b0.1).max(1);
        let p = p1.0.saturating_sub(p0.0) as f64 / p_count as f64;
        let b = b1.0.saturating_sub(b0.0) as f64 / b_count as f64;
        prog.push(p);
        base.push(b);
        added.push(p - b);
        ratio.push(p / b);
        drops.push(p_count as f64);
    }
    let _ = writeln!(
        rows,
        "\n| case | invocations per run (median) | kfree_skb ns | baseline ns | added ns | ratio |\n| --- | ---: | ---: | ---: | ---: | ---: |\n| live tracepoint, {datagrams} UDP datagrams to a closed loopback port per run | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} |",
        median(&drops),
        median(&prog),
        median(&base),
        median(&added),
        median(&ratio)
    );
    drop(links);
    Ok(rows)
}

/// Inode of this process's network namespace.
fn netns_inode() -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = fs::metadata("/proc/self/ns/net").context("stat /proc/self/ns/net")?.ino();
    u32::try_from(inode).context("namespace inode beyond u32")
}

// ---------------------------------------------------------------------------------------------
// 2. Throughput
// ---------------------------------------------------------------------------------------------

/// The daemon in the gateway namespace.
struct Daemon {
    child: Option<Child>,
    namespace: String,
}

impl Daemon {
    /// Starts `wgtel run --interval 1s` and waits until its API answers and it has collected.
    fn start(lab: &Lab, log: &Path) -> Result<Self> {
        Self::start_with(lab, log, &[], &[])
    }

    /// [`Daemon::start`] with more flags and environment variables.
    fn start_with(lab: &Lab, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let bin = std::env::var_os("WGTEL_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/wgtel"),
            PathBuf::from,
        );
        let log_file = fs::File::create(log).context("creating the daemon log")?;
        let child = Lab::command(&lab.gateway().namespace, &bin)
            .args(["run", "--interval", "1s"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let daemon = Self { child: Some(child), namespace: lab.gateway().namespace.clone() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((_, body, _)) = daemon.get("/healthz")
                && !body.starts_with("starting")
            {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not become healthy in 60 s: {}", fs::read_to_string(log)?);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/api/v1/peers` lists `peers` peers (at most 120 s), then 3 s more for the
    /// collections to settle.
    fn wait_for_peers(&self, peers: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body, _) = self.get("/api/v1/peers")?;
            let seen = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|json| json.as_array().map(Vec::len))
                .unwrap_or(0);
            if seen >= peers {
                break;
            }
            if Instant::now() > deadline {
                bail!("the daemon saw {seen} of {peers} peers after 120 s");
            }
            thread::sleep(Duration::from_millis(500));
        }
        thread::sleep(Duration::from_secs(3));
        Ok(())
    }

    /// The daemon's pid (`ip netns exec` execs it).
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// GET `path`: status, body and the time to the last byte.
    fn get(&self, path: &str) -> Result<(u16, String, Duration)> {
        let path = path.to_owned();
        lab::in_namespace(&self.namespace, move || http_get(&path))?
    }

    /// Stops it with SIGTERM (it detaches everything) and waits.
    fn stop(mut self) {
        if let Some(child) = self.child.take() {
            lab::stop_child(child);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            lab::stop_child(child);
        }
    }
}

/// A plain HTTP/1.0 GET on [`API`] in the current namespace.
fn http_get(path: &str) -> Result<(u16, String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(API).context("connecting to the daemon")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned(), elapsed))
}

/// One iperf3 TCP run from the gateway to peer1 through the tunnel: bits per second received.
fn iperf(lab: &Lab, server: Ipv4Addr, seconds: u32) -> Result<f64> {
    let out = command_text(Lab::command(&lab.gateway().namespace, "iperf3").args([
        "-c",
        &server.to_string(),
        "-J",
        "-t",
        &seconds.to_string(),
    ]))?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no end.sum_received.bits_per_second")
}

/// Section 2.
fn throughput(report: &mut Report) -> Result<()> {
    let sizes = report.sizes;
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() })?;
    lab.wait_for_handshakes(Duration::from_secs(20))?;
    let peer = lab.peer("peer1").context("the lab has no peer1")?.clone();
    let mut server = Lab::command(&peer.namespace, "iperf3")
        .args(["-s", "-B", &peer.tunnel_v4.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 server")?;
    thread::sleep(Duration::from_millis(500));
    let log = lab.dir().join("bench-daemon-throughput.log");
    let mut rows = String::new();
    let mut ratios = Vec::new();
    let mut off_all = Vec::new();
    let mut on_all = Vec::new();
    let result = (|| -> Result<()> {
        // One warm-up run: the first is often slower (page cache, CPU frequency).
        iperf(&lab, peer.tunnel_v4, 1)?;
        for pair in 1..=sizes.pairs {
            // Alternate which comes first, so that a drift in either direction cancels.
            let attached = |lab: &Lab| -> Result<f64> {
                let daemon = Daemon::start(lab, &log)?;
                // Past its start-up (program loads, first cycles) before measuring.
                thread::sleep(Duration::from_secs(2));
                let on = iperf(lab, peer.tunnel_v4, sizes.iperf_seconds)?;
                daemon.stop();
                Ok(on)
            };
            let (off, on) = if pair % 2 == 1 {
                let off = iperf(&lab, peer.tunnel_v4, sizes.iperf_seconds)?;
                (off, attached(&lab)?)
            } else {
                let on = attached(&lab)?;
                (iperf(&lab, peer.tunnel_v4, sizes.iperf_seconds)?, on)
            };
            ratios.push(on / off);
            off_all.push(off);
            on_all.push(on);
            let _ =
                writeln!(rows, "| {pair} | {:.0} | {:.0} | {:.4} |", off / 1e6, on / 1e6, on / off);
            eprintln!("bench: throughput pair {pair}: {off:.0} / {on:.0} bit/s");
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;
    let ratio = median(&ratios);
    report.throughput_ratio = Some(ratio);
    report.throughput_spread = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let _ = write!(
        report.text,
        "\n## 2. Throughput through a wireguard-go tunnel\n\nMethod: a lab (network namespaces \
         on one bridge, wireguard-go on both ends, tunnel MTU 1420); iperf3 TCP, one stream, \
         {s} s per run, from the gateway to peer1 over the tunnel, the receiver's rate. Each \
         pair runs without the daemon and with `wgtel run --interval 1s` attached (tunnel \
         programs on the gateway's wireguard-go interface, underlay programs on its NIC, \
         kfree_skb, started 2 s before the run), in alternating order (odd pairs \
         unobserved first, even pairs attached first); the ratio is taken within each pair, the figure is the median \
         ratio.\n\n| pair | not attached Mbit/s | attached Mbit/s | ratio |\n| ---: | ---: | ---: | ---: |\n{rows}\n\
         **Median ratio: {:.4}** ({:.2} %); median rates {:.0} vs {:.0} Mbit/s. The pair \
         ratios range from {:.3} to {:.3}: see Targets.\n",
        ratio,
        ratio * 100.0,
        median(&off_all) / 1e6,
        median(&on_all) / 1e6,
        report.throughput_spread.0,
        report.throughput_spread.1,
        s = sizes.iperf_seconds,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Collection cost, 4. export cost
// ---------------------------------------------------------------------------------------------

/// A base64 public key made from `index` (any 32 bytes are a valid-looking key).
fn fake_key(index: usize) -> String {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(index as u64).to_le_bytes());
    bytes[8..16]
        .copy_from_slice(&0x9e37_79b9_7f4a_7c15u64.wrapping_mul(index as u64 + 1).to_le_bytes());
    bytes[31] = 0x42;
    base64(&bytes)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Adds peers `from..to` to the gateway with `wg addconf`: one /128 AllowedIP and a distinct
/// endpoint each.
fn add_peers(lab: &Lab, from: usize, to: usize) -> Result<()> {
    let mut config = String::from("[Interface]\n");
    for index in from..to {
        let [_, _, high, low] = u32::try_from(index)?.to_be_bytes();
        let _ = writeln!(
            config,
            "[Peer]\nPublicKey = {}\nAllowedIPs = fd00:19:ffff::{high:x}{low:02x}/128\nEndpoint = 198.18.{}.250:{}\n",
            fake_key(index),
            lab.number(),
            20_000 + index
        );
    }
    let path = lab.dir().join(format!("bench-peers-{from}-{to}.conf"));
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    command_text(
        Lab::command(&lab.gateway().namespace, "wg")
            .args(["addconf", &lab.gateway().interface])
            .arg(&path),
    )?;
    Ok(())
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = f64::from(u32::try_from(rustix::param::clock_ticks_per_second())?);
    Ok((utime + stime) / ticks)
}

/// VmRSS of `pid` in MB.
fn rss_mb(pid: u32) -> Result<f64> {
    status_mb(pid, "VmRSS:")
}

/// The peak resident set size (`VmHWM`) of `pid`, MB.
fn peak_rss_mb(pid: u32) -> Result<f64> {
    status_mb(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`, MB.
fn status_mb(pid: u32, field: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).context("no such field")?;
    let kb: f64 = line.split_whitespace().nth(1).context("odd status field")?.parse()?;
    Ok(kb / 1024.0)
}

/// A sample of a metric without labels in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Median seconds per `wg show all dump` in the gateway namespace, and its output size.
fn wg_dump(lab: &Lab, runs: usize) -> Result<(f64, usize)> {
    lab::in_namespace(&lab.gateway().namespace, || -> Result<(f64, usize)> {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let out = Command::new("wg").args(["show", "all", "dump"]).output()?;
            times.push(started.elapsed().as_secs_f64());
            if !out.status.success() {
                bail!("wg show all dump failed");
            }
            // `wg show all` lists every socket in /var/run/wireguard, whatever namespace its
            // interface is in: an interface not of this lab would be timed (and scraped) too.
            let text = String::from_utf8_lossy(&out.stdout);
            let ours: Vec<&str> = std::iter::once(lab.gateway())
                .chain(lab.peers())
                .map(|node| node.interface.as_str())
                .collect();
            if let Some(other) = text.lines().find_map(|line| {
                line.split('\t').next().filter(|interface| !ours.contains(interface))
            }) {
                bail!(
                    "wg show all dump lists {other}, not of the lab ({ours:?}): remove its \
                     socket from /var/run/wireguard, it would be counted in every row"
                );
            }
            size = out.stdout.len();
        }
        Ok((median(&times), size))
    })?
}

/// Times prometheus_wireguard_exporter answering scrapes, if it is installed in .cache.
fn exporter_scrape(lab: &Lab, runs: usize) -> Result<Option<(f64, usize)>> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/tools/bin/prometheus_wireguard_exporter");
    if !bin.exists() {
        return Ok(None);
    }
    let mut child = Lab::command(&lab.gateway().namespace, &bin)
        .args(["-l", "127.0.0.1", "-p", "9586"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting prometheus_wireguard_exporter")?;
    thread::sleep(Duration::from_secs(1));
    let result = lab::in_namespace(&lab.gateway().namespace, || -> Result<(f64, usize)> {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let mut stream = TcpStream::connect("127.0.0.1:9586")?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(stream, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            times.push(started.elapsed().as_secs_f64());
            size = response.len();
            if !String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200")
                && !String::from_utf8_lossy(&response).starts_with("HTTP/1.0 200")
            {
                bail!(
                    "the exporter answered {}",
                    String::from_utf8_lossy(&response[..response.len().min(200)])
                );
            }
        }
        Ok((median(&times), size))
    });
    let _ = child.kill();
    let _ = child.wait();
    Ok(Some(result??))
}

/// Section 3 and 4.
/// An OTLP/HTTP sink in `namespace` on [`OTLP_SINK`]: counts the bytes of the request bodies it
/// receives and answers each with 200 at once.
struct OtlpSink {
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Where the bench's OTLP sink listens, inside the gateway's namespace.
const OTLP_SINK: &str = "127.0.0.1:4399";

impl OtlpSink {
    fn start(namespace: &str) -> Result<Self> {
        let listener = lab::in_namespace(namespace, || std::net::TcpListener::bind(OTLP_SINK))??;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&received);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = std::sync::Arc::clone(&counter);
                thread::spawn(move || Self::serve(stream, &counter));
            }
        });
        Ok(Self { received })
    }

    /// Serves one keep-alive connection: every request's body is read whole and counted.
    fn serve(stream: TcpStream, received: &std::sync::atomic::AtomicU64) {
        let mut reader = std::io::BufReader::new(stream);
        loop {
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                match std::io::BufRead::read_line(&mut reader, &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            received.fetch_add(length as u64, std::sync::atomic::Ordering::Relaxed);
            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
            if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// OTLP export and `/metrics` at `peers` peers under each cardinality setting: table rows.
fn cardinality(
    lab: &Lab,
    log: &Path,
    peers: usize,
    sizes: Sizes,
    otlp_full: &mut Vec<(&'static str, f64, f64)>,
) -> Result<String> {
    let sink = OtlpSink::start(&lab.gateway().namespace)?;
    let endpoint = format!("http://{OTLP_SINK}");
    let allowlist: Vec<String> = (0..10).map(|index| fake_key(index * 97)).collect();
    let mut allowlist_args = vec![];
    for key in &allowlist {
        allowlist_args.extend(["--peer-allowlist", key.as_str()]);
    }
    let settings: [(&str, Vec<&str>, usize); 5] = [
        ("every peer (default)", vec![], peers),
        ("`--top-peers 1000`", vec!["--top-peers", "1000"], 1000.min(peers)),
        ("`--top-peers 100`", vec!["--top-peers", "100"], 100.min(peers)),
        ("`--peer-allowlist` × 10", allowlist_args, 10),
        ("`--top-peers 0` (per-interface sums only)", vec!["--top-peers", "0"], 0),
    ];
    let mut rows = String::new();
    let mut baseline: Option<(f64, usize)> = None;
    for (name, flags, own) in settings {
        let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
        args.extend(flags);
        let daemon = Daemon::start_with(
            lab,
            log,
            &args,
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        )?;
        daemon.wait_for_peers(peers)?;
        let ExportWindow {
            cpu_per_cycle,
            sent_per_cycle: otlp_per_cycle,
            rss,
            peak,
            walls,
            metrics,
        } = export_window(&daemon, sizes, &|| sink.received())?;
        daemon.stop();
        if !metrics.contains("wgtel_otlp_exports_total{outcome=\"failure\"} 0") {
            bail!("OTLP exports to the bench's sink failed ({name})");
        }
        let series = metrics.lines().filter(|line| !line.starts_with('#')).count();
        let (otlp_all, metrics_all) = *baseline.get_or_insert((otlp_per_cycle, metrics.len()));
        let saved = |now: f64, all: f64| format!("{:.1} %", 100.0 * (1.0 - now / all));
        let _ = writeln!(
            rows,
            "| {name} | {own} | {} kB | {} | {} | {} | {series} | {} kB | {} | {rss:.1} | {peak:.1} |",
            (otlp_per_cycle / 1024.0).round(),
            saved(otlp_per_cycle, otlp_all),
            ms(median(&walls)),
            ms(cpu_per_cycle),
            metrics.len() / 1024,
            saved(metrics.len() as f64, metrics_all as f64),
        );
        eprintln!("bench: cardinality {name} done");
    }
    drop(sink);
    for (protocol, endpoint) in [
        ("http/protobuf", format!("http://{}", wgtel_tests::ROTEL_HTTP)),
        ("grpc", format!("http://{}", wgtel_tests::ROTEL_GRPC)),
    ] {
        let (row, cpu, peak) = full_export_to_rotel(lab, log, peers, sizes, protocol, &endpoint)?;
        rows.push_str(&row);
        otlp_full.push((protocol, cpu, peak));
    }
    Ok(rows)
}

/// What an exporting daemon did over a window of `sizes.cycles` collections without requests,
/// then `sizes.runs` scrapes one cycle apart.
struct ExportWindow {
    cpu_per_cycle: f64,
    /// What `sent` grew by over the window, per cycle.
    sent_per_cycle: f64,
    rss: f64,
    peak: f64,
    /// `wgtel_otlp_export_duration_seconds` of each scrape.
    walls: Vec<f64>,
    /// The last scrape's `/metrics`.
    metrics: String,
}

fn export_window(daemon: &Daemon, sizes: Sizes, sent: &dyn Fn() -> u64) -> Result<ExportWindow> {
    let pid = daemon.pid();
    let cpu_before = cpu_seconds(pid)?;
    let sent_before = sent();
    let started = Instant::now();
    thread::sleep(Duration::from_secs(u64::from(sizes.cycles)));
    let cycles = started.elapsed().as_secs_f64().round().max(1.0);
    let cpu_per_cycle = (cpu_seconds(pid)? - cpu_before) / cycles;
    let sent_per_cycle = (sent() - sent_before) as f64 / cycles;
    let rss = rss_mb(pid)?;
    let peak = peak_rss_mb(pid)?;
    let mut walls = Vec::new();
    let mut metrics = String::new();
    for _ in 0..sizes.runs {
        thread::sleep(Duration::from_secs(1));
        metrics = daemon.get("/metrics")?.1;
        walls.extend(metric(&metrics, "wgtel_otlp_export_duration_seconds"));
    }
    Ok(ExportWindow { cpu_per_cycle, sent_per_cycle, rss, peak, walls, metrics })
}

/// Every peer exported over OTLP (`protocol` to `endpoint`) to rotel (a real receiver; its
/// blackhole exporter): the table row, CPU s per cycle and peak RSS MB.
fn full_export_to_rotel(
    lab: &Lab,
    log: &Path,
    peers: usize,
    sizes: Sizes,
    protocol: &'static str,
    endpoint: &str,
) -> Result<(String, f64, f64)> {
    let rotel =
        wgtel_tests::Rotel::start_quiet(lab, wgtel_tests::ROTEL_GRPC, wgtel_tests::ROTEL_HTTP);
    let daemon = Daemon::start_with(
        lab,
        log,
        &["--otlp-endpoint", endpoint],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)],
    )?;
    daemon.wait_for_peers(peers)?;
    let ExportWindow { cpu_per_cycle: cpu, rss, peak, walls, metrics, .. } =
        export_window(&daemon, sizes, &|| 0)?;
    daemon.stop();
    drop(rotel);
    if !metrics.contains("wgtel_otlp_exports_total{outcome=\"failure\"} 0") {
        bail!("OTLP exports to rotel failed");
    }
    let row = format!(
        "| every peer, OTLP {protocol} to rotel | {peers} | — | — | {} | {} | — | — | — | {rss:.1} | {peak:.1} |\n",
        ms(median(&walls)),
        ms(cpu),
    );
    eprintln!("bench: full export to rotel over {protocol} done");
    Ok((row, cpu, peak))
}

fn collection(report: &mut Report) -> Result<()> {
    let sizes = report.sizes;
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() })?;
    lab.wait_for_handshakes(Duration::from_secs(20))?;
    let log = lab.dir().join("bench-daemon-collection.log");
    let mut rows = String::new();
    let mut export_rows = String::new();
    let mut cardinality_rows = String::new();
    let mut have = 1usize;
    for &peers in sizes.collection_peers {
        add_peers(&lab, have - 1, peers - 1)?;
        have = peers;
        let (dump, dump_size) = wg_dump(&lab, sizes.runs)?;
        let daemon = Daemon::start(&lab, &log)?;
        daemon.wait_for_peers(peers)?;
        let pid = daemon.pid();
        // CPU over a window without requests, so that it is collection's alone.
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        thread::sleep(Duration::from_secs(u64::from(sizes.collection_cycles)));
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu_before;
        let cpu_per_cycle = cpu / elapsed.round().max(1.0);
        let rss = rss_mb(pid)?;
        // Then one scrape per cycle: the last cycle's wall time, and the cost of serving.
        let mut walls = Vec::new();
        let mut metric_times = Vec::new();
        let mut metric_size = 0;
        let mut api_times = Vec::new();
        let mut api_size = 0;
        for _ in 0..sizes.runs {
            thread::sleep(Duration::from_secs(1));
            let (_, body, took) = daemon.get("/metrics")?;
            metric_times.push(took.as_secs_f64());
            metric_size = body.len();
            if let Some(wall) = metric(&body, "wgtel_collection_duration_seconds") {
                walls.push(wall);
            }
            let (_, body, took) = daemon.get("/api/v1/peers")?;
            api_times.push(took.as_secs_f64());
            api_size = body.len();
        }
        let rss_after_scrapes = rss_mb(pid)?;
        daemon.stop();
        if Some(&peers) == sizes.collection_peers.last() {
            cardinality_rows = cardinality(&lab, &log, peers, sizes, &mut report.otlp_full)?;
        }
        let wall = (!walls.is_empty()).then(|| median(&walls));
        let exporter = exporter_scrape(&lab, sizes.runs).unwrap_or_else(|error| {
            eprintln!("bench: prometheus_wireguard_exporter: {error:#}");
            None
        });
        if peers == 1_000 {
            report.collection_at_1k = Some((cpu_per_cycle, exporter.map(|(seconds, _)| seconds)));
        }
        if peers == 10_000 {
            report.collection_at_10k = Some((wall, cpu_per_cycle, rss, dump));
            report.exporter_scrape = exporter.map(|(seconds, _)| seconds);
            report.sizes_at_10k = (dump_size, metric_size);
        }
        let wall_text = wall.map_or_else(|| "not exposed".into(), ms);
        let exporter_text = exporter.map_or_else(
            || "not installed".into(),
            |(seconds, size)| format!("{} ({} kB)", ms(seconds), size / 1024),
        );
        let cycle = wall.unwrap_or(cpu_per_cycle);
        let exporter_ratio =
            exporter.map_or_else(|| "—".into(), |(seconds, _)| format!("{:.1}×", seconds / cycle));
        let _ = writeln!(
            rows,
            "| {peers} | {wall_text} | {} | {rss:.1} ({rss_after_scrapes:.1}) | {} ({} kB) | {:.1}× | {exporter_text} | {exporter_ratio} |",
            ms(cpu_per_cycle),
            ms(dump),
            dump_size / 1024,
            dump / cycle,
        );
        let _ = writeln!(
            export_rows,
            "| {peers} | {} kB | {} | {} kB | {} |",
            metric_size / 1024,
            ms(median(&metric_times)),
            api_size / 1024,
            ms(median(&api_times)),
        );
        eprintln!("bench: collection with {peers} peers done");
    }
    let _ = write!(
        report.text,
        "\n## 3. Collection cost\n\nMethod: a lab gateway (wireguard-go) given N peers with \
         `wg addconf` (generated public keys, one /128 AllowedIP and a distinct endpoint each; \
         no traffic), `wgtel run --interval 1s` started on it, waited until `/api/v1/peers` lists \
         all N and 3 s more, then: *CPU per cycle* is the daemon's utime+stime \
         (`/proc/PID/stat`) over {cc} s without any request, divided by the {cc} cycles in it; RSS \
         is `VmRSS` at the end of that window (in brackets: after the scrapes of section 4, which \
         build the whole `/metrics` text); *cycle wall* is the median of \
         `wgtel_collection_duration_seconds` (the last cycle's wall time) read from {r} scrapes \
         one cycle apart. In the same run, on the same interface, `wg show all dump` is timed ({r} calls, \
         median, process start included: that is what an exporter that shells out to it pays). \
         prometheus_wireguard_exporter shells out to `wg show all dump` too, so it works with \
         wireguard-go as well as the kernel module; it is timed answering a scrape when \
         `.cache/tools/bin/prometheus_wireguard_exporter` exists (`cargo install \
         prometheus_wireguard_exporter --root .cache/tools`).\n\n| peers | cycle wall | CPU per cycle | RSS MB | `wg show all dump` per call | dump / cycle | prometheus_wireguard_exporter scrape | scrape / cycle |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{rows}\n\
         ## 4. Export cost\n\nMethod: after the CPU window of section 3, {r} GETs each of \
         `/metrics` and `/api/v1/peers`, one cycle apart (HTTP/1.0 from the same namespace; time to the last \
         byte, median).\n\n| peers | /metrics size | /metrics time | /api/v1/peers size | /api/v1/peers time |\n| ---: | ---: | ---: | ---: | ---: |\n{export_rows}\n\
         ### OTLP export and the cardinality controls, at {top} peers\n\nMethod: the same gateway; \
         `wgtel run --interval 1s` exporting OTLP over HTTP/protobuf to a sink in the bench (it \
         reads each request whole and answers 200 at once), once per setting below. Waited \
         until every peer is listed and 3 s more; then over {c} s without requests: the request \
         bodies the sink received (uncompressed protobuf; per cycle = bytes over the window / \
         cycles) and the daemon's CPU per cycle (collection and export together); then {r} \
         scrapes one cycle apart: the median of `wgtel_otlp_export_duration_seconds` (encoding \
         the snapshot, sending every request and the sink's answers) and the `/metrics` size and \
         series; RSS at the end of the window and the peak (`VmHWM`) over the daemon's life. \
         *Saved* compares with every peer exported. The last rows send every peer over HTTP/protobuf and over gRPC to \
         rotel (a real OTLP receiver, its blackhole exporter) instead of the sink.\n\n\
         | setting | peers with own series | OTLP per cycle | OTLP saved | export wall | CPU per cycle | /metrics series | /metrics size | /metrics saved | RSS MB | peak RSS MB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{cardinality_rows}\n\
         The request is encoded straight from the snapshot through the metric table (no SDK \
         aggregation), on a thread of its own (`otlp-encode`), in requests of at most 512 KiB \
         each sent as soon as it is complete; the CPU per cycle column is collection and export \
         together, to set against section 3 (no OTLP).\n",
        top = sizes.collection_peers.last().copied().unwrap_or(0),
        c = sizes.cycles,
        cc = sizes.collection_cycles,
        r = sizes.runs,
    );
    Ok(())
}
