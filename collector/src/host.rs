//! Host metrics following the OpenTelemetry `system.*` semantic conventions.
//!
//! Everything is read from `/proc` through the [`procfs`] crate, except
//! `/proc/net/softnet_stat`, which `procfs` does not parse (it is read by hand here), and the
//! list of processes, the directory `/proc` itself (`procfs` would open each process's
//! directory to list it).
//!
//! Network, UDP and softnet counters come from the network namespace of the collector
//! process itself (`/proc/net/...` is per namespace).
//!
//! # Partial failures
//!
//! A snapshot is made of independent parts (CPU, memory, load average, network interfaces,
//! UDP, softnet, userspace WireGuard processes). When one part cannot be read,
//! [`HostSampler::sample`] still returns `Ok`: that part keeps its `Default` value (empty map,
//! zeros, empty list) and the error is kept in [`HostSampler::problems`] until the next sample.
//! Each part's failure is logged at `warn` once when it starts failing (then at `debug` while it
//! keeps failing) and at `info` when it recovers, so a missing file does not flood the log.
//! `sample` returns `Err` only when every part failed (for instance `/proc` is not mounted);
//! the error is then the first part's.
//!
//! Longer than most modules: a quarter is tests; each `/proc` file's reading and parse sit
//! together.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use procfs::{Current, CurrentSI, ProcError, process::Stat};

/// One reading of the host. Rates/utilizations need two readings: [`HostSampler`] keeps the
/// previous one.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HostSnapshot {
    /// `system.cpu.utilization` by state (`"user"`, `"nice"`, `"system"`, `"idle"`,
    /// `"iowait"`, `"irq"`, `"softirq"`, `"steal"`), fraction 0..1 over the last interval, all
    /// CPUs together (the values sum to 1); empty on the first reading.
    pub cpu_utilization: BTreeMap<&'static str, f64>,
    /// `system.memory.usage` by state (`"used"`, `"free"`, `"cached"`, `"buffers"`), bytes.
    ///
    /// `cached` is `Cached + SReclaimable` and `used` is `MemTotal - free - cached - buffers`
    /// (as `free(1)` and gopsutil compute them), so the four states sum to `MemTotal`.
    pub memory_usage: BTreeMap<&'static str, u64>,
    /// `system.cpu.load_average.1m`, `.5m` and `.15m`.
    pub load_average: [f64; 3],
    /// Per network interface of this network namespace (`/proc/net/dev`), sorted by name:
    /// `system.network.io`, `system.network.packets`, `system.network.errors`,
    /// `system.network.dropped`; cumulative.
    pub network: Vec<NetworkInterfaceCounters>,
    /// UDP counters (`/proc/net/snmp` plus `/proc/net/snmp6` when IPv6 is enabled), cumulative.
    pub udp: UdpCounters,
    /// Softnet backlog counters (`/proc/net/softnet_stat`, summed over CPUs), cumulative.
    pub softnet: SoftnetCounters,
    /// The running wireguard-go and boringtun processes, sorted by pid.
    pub userspace_wireguard: Vec<ProcessUsage>,
}

impl HostSnapshot {
    /// The CPUs' busy fraction over the last interval (neither idle nor iowait), 0..1; `None`
    /// on the first reading, which has no interval yet.
    pub fn cpu_busy(&self) -> Option<f64> {
        if self.cpu_utilization.is_empty() {
            return None;
        }
        let idle: f64 =
            ["idle", "iowait"].iter().filter_map(|state| self.cpu_utilization.get(state)).sum();
        Some((1.0 - idle).max(0.0))
    }
}

/// Cumulative counters of one network interface (`/proc/net/dev`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetworkInterfaceCounters {
    /// Interface name, e.g. `wg0`.
    pub name: String,
    /// Bytes received (`system.network.io`, direction `receive`).
    pub rx_bytes: u64,
    /// Bytes sent (`system.network.io`, direction `transmit`).
    pub tx_bytes: u64,
    /// Packets received (`system.network.packets`, direction `receive`).
    pub rx_packets: u64,
    /// Packets sent (`system.network.packets`, direction `transmit`).
    pub tx_packets: u64,
    /// Receive errors (`system.network.errors`, direction `receive`).
    pub rx_errors: u64,
    /// Transmit errors (`system.network.errors`, direction `transmit`).
    pub tx_errors: u64,
    /// Packets dropped on receive (`system.network.dropped`, direction `receive`).
    pub rx_dropped: u64,
    /// Packets dropped on transmit (`system.network.dropped`, direction `transmit`).
    pub tx_dropped: u64,
}

/// One receive/transmit pair of a NIC's counters, as the exporters list them.
pub type NicCounter = fn(&NetworkInterfaceCounters) -> (u64, u64);

impl NetworkInterfaceCounters {
    /// The `system.network.*` counters by name, unit and description, with their
    /// (receive, transmit) values.
    pub const COUNTERS: [(&'static str, &'static str, &'static str, NicCounter); 4] = [
        ("io", "By", "Bytes through each interface", |nic| (nic.rx_bytes, nic.tx_bytes)),
        ("packets", "{packet}", "Packets through each interface", |nic| {
            (nic.rx_packets, nic.tx_packets)
        }),
        ("errors", "{error}", "Errors on each interface", |nic| (nic.rx_errors, nic.tx_errors)),
        ("dropped", "{packet}", "Packets each interface dropped", |nic| {
            (nic.rx_dropped, nic.tx_dropped)
        }),
    ];
}

/// Cumulative UDP counters of this network namespace: the IPv4 (`/proc/net/snmp`, `Udp:`) and
/// IPv6 (`/proc/net/snmp6`, `Udp6*`) counters added together.
///
/// An IPv4 datagram received on a dual-stack IPv6 socket is counted in the IPv4 counters only,
/// so the sums count each datagram once. A busy WireGuard host loses packets in
/// [`rcvbuf_errors`](Self::rcvbuf_errors) first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpCounters {
    /// `InDatagrams`: datagrams delivered to (read by) sockets.
    pub in_datagrams: u64,
    /// `OutDatagrams`: datagrams sent.
    pub out_datagrams: u64,
    /// `InErrors`: datagrams that could not be delivered, other than for lack of a socket
    /// (includes `RcvbufErrors` and `InCsumErrors`).
    pub in_errors: u64,
    /// `RcvbufErrors`: datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// `SndbufErrors`: datagrams dropped because a socket's send buffer was full.
    pub sndbuf_errors: u64,
    /// `NoPorts`: datagrams for a port with no socket bound.
    pub no_ports: u64,
    /// `InCsumErrors`: datagrams with a bad checksum.
    pub in_csum_errors: u64,
    /// Whether the IPv6 counters (`/proc/net/snmp6`) were found and added.
    pub includes_ipv6: bool,
}

/// Softnet backlog counters (`/proc/net/softnet_stat`), summed over CPUs, cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SoftnetCounters {
    /// Packets processed by the network receive softirq.
    pub processed: u64,
    /// Packets dropped because a CPU's input backlog queue was full (`netdev_max_backlog`).
    pub dropped: u64,
    /// Times the softirq ran out of budget or time with work left (`netdev_budget`).
    pub time_squeeze: u64,
}

/// Resource usage of one userspace WireGuard process (wireguard-go or boringtun).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessUsage {
    /// Process id.
    pub pid: i32,
    /// Process name (`/proc/<pid>/comm`).
    pub name: String,
    /// The WireGuard interface name from the command line, when it can be told.
    pub interface: Option<String>,
    /// CPU time used over the last interval, as a fraction of one CPU (can exceed 1 for a
    /// multi-threaded process); `None` when the process was not seen by the previous sample.
    pub cpu_utilization: Option<f64>,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// An error reading one part of a [`HostSnapshot`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// procfs could not read or parse a file.
    #[error("reading {what}: {source}")]
    Proc {
        /// What was being read, e.g. `"/proc/stat"`.
        what: &'static str,
        /// The procfs error.
        #[source]
        source: ProcError,
    },
    /// A file read by hand (not covered by procfs) could not be read.
    #[error("reading {what}: {source}")]
    Io {
        /// What was being read, e.g. `"/proc/net/softnet_stat"`.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file read by hand (not covered by procfs) has unexpected contents.
    #[error("parsing {what}, line {line}: {detail}")]
    Parse {
        /// What was being parsed, e.g. `"/proc/net/softnet_stat"`.
        what: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
}

impl HostError {
    fn proc(what: &'static str) -> impl FnOnce(ProcError) -> Self {
        move |source| Self::Proc { what, source }
    }
}

/// CPU time counters (clock ticks) by state, all CPUs together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTicks([u64; 8]);

/// The `system.cpu.utilization` states, in the order of [`CpuTicks`].
const CPU_STATES: [&str; 8] =
    ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];

impl CpuTicks {
    fn from_procfs(t: &procfs::CpuTime) -> Self {
        // guest and guest_nice are already included in user and nice.
        Self([
            t.user,
            t.nice,
            t.system,
            t.idle,
            t.iowait.unwrap_or(0),
            t.irq.unwrap_or(0),
            t.softirq.unwrap_or(0),
            t.steal.unwrap_or(0),
        ])
    }

    /// Utilization by state between `previous` and `self`, or `None` when no tick elapsed.
    fn utilization_since(&self, previous: &Self) -> Option<BTreeMap<&'static str, f64>> {
        // Counters can go backwards (iowait does, and CPU hotplug): clamp each delta at 0.
        let deltas: Vec<u64> = self
            .0
            .iter()
            .zip(previous.0.iter())
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let total: u64 = deltas.iter().sum();
        if total == 0 {
            return None;
        }
        Some(
            CPU_STATES
                .iter()
                .zip(deltas)
                .map(|(state, delta)| (*state, delta as f64 / total as f64))
                .collect(),
        )
    }
}

/// What the sampler remembers of a process between samples.
#[derive(Clone, Copy, Debug)]
struct ProcessTimes {
    /// Start time (ticks after boot), to tell a reused pid from the same process.
    starttime: u64,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
}

/// How often the list of processes (the directory `/proc`) is read again to find new userspace
/// WireGuard processes; in between, only the ones found are read. Listing `/proc` costs a
/// dentry lookup per process of the host (an eighth of a 100-peer collection on a quiet
/// host), and a new wireguard-go or boringtun is rare: its metrics start within this time.
const PROCESS_LISTING_EVERY: Duration = Duration::from_secs(10);

/// Bytes of a process name the kernel keeps (`TASK_COMM_LEN` less its NUL): a longer
/// executable name is cut to this length in `/proc/PID/stat`.
const COMM_CHARS: usize = 15;

/// Reads [`HostSnapshot`]s, keeping what rates and utilizations need from the previous one.
///
/// Memory is bounded: the per-process state only holds the processes found by the last sample.
#[derive(Debug)]
pub struct HostSampler {
    /// CPU ticks of the previous successful `/proc/stat` reading.
    previous_cpu: Option<CpuTicks>,
    /// Userspace WireGuard processes of the previous process scan, by pid.
    previous_processes: HashMap<i32, ProcessTimes>,
    /// When the previous process scan ran.
    previous_process_scan: Option<Instant>,
    /// Listed processes judged not to be userspace WireGuards (not read again).
    not_wireguard: HashSet<i32>,
    /// When `/proc` was last listed.
    listed_at: Option<Instant>,
    /// How often `/proc` is listed ([`PROCESS_LISTING_EVERY`]; tests shorten it).
    listing_every: Duration,
    /// Parts whose last reading failed (to log a failure once, and a recovery).
    failing: BTreeSet<&'static str>,
    /// Errors of the last sample.
    problems: Vec<HostError>,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks_per_second: u64,
    /// Page size, bytes.
    page_size: u64,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSampler {
    /// A sampler with no previous reading: the first sample has no CPU utilizations.
    pub fn new() -> Self {
        Self {
            previous_cpu: None,
            previous_processes: HashMap::new(),
            previous_process_scan: None,
            not_wireguard: HashSet::new(),
            listed_at: None,
            listing_every: PROCESS_LISTING_EVERY,
            failing: BTreeSet::new(),
            problems: Vec::new(),
            ticks_per_second: procfs::ticks_per_second().max(1),
            page_size: procfs::page_size(),
        }
    }

    /// The errors of the last [`sample`](Self::sample), one per part that could not be read
    /// (that part of the snapshot holds its default value).
    pub fn problems(&self) -> &[HostError] {
        &self.problems
    }

    /// Reads the host.
    ///
    /// A part that cannot be read is left at its default value and its error is kept in
    /// [`problems`](Self::problems) (see the module documentation).
    ///
    /// # Errors
    ///
    /// Only when every part failed: the first part's error.
    pub fn sample(&mut self) -> Result<HostSnapshot, HostError> {
        let mut snapshot = HostSnapshot::default();
        let results: [(&'static str, Result<(), HostError>); 7] = [
            ("cpu", self.read_cpu().map(|utilization| snapshot.cpu_utilization = utilization)),
            ("memory", read_memory().map(|usage| snapshot.memory_usage = usage)),
            ("load_average", read_load_average().map(|l| snapshot.load_average = l)),
            ("network", read_network().map(|n| snapshot.network = n)),
            ("udp", read_udp().map(|u| snapshot.udp = u)),
            ("softnet", read_softnet().map(|s| snapshot.softnet = s)),
            (
                "userspace_wireguard",
                self.read_processes().map(|p| snapshot.userspace_wireguard = p),
            ),
        ];

        let parts = results.len();
        self.problems.clear();
        for (part, result) in results {
            match result {
                Ok(()) => {
                    if self.failing.remove(part) {
                        log::info!("host metrics: {part} readable again");
                    }
                }
                Err(error) => {
                    if self.failing.insert(part) {
                        log::warn!("host metrics: {part} left out: {error}");
                    } else {
                        log::debug!("host metrics: {part} still left out: {error}");
                    }
                    self.problems.push(error);
                }
            }
        }
        if self.problems.len() == parts {
            // Every part failed: nothing worth returning.
            let mut problems = std::mem::take(&mut self.problems).into_iter();
            if let Some(first) = problems.next() {
                return Err(first);
            }
        }
        Ok(snapshot)
    }

    /// `system.cpu.utilization` since the previous reading (empty on the first one).
    fn read_cpu(&mut self) -> Result<BTreeMap<&'static str, f64>, HostError> {
        let stats = procfs::KernelStats::current().map_err(HostError::proc("/proc/stat"))?;
        let now = CpuTicks::from_procfs(&stats.total);
        let Some(previous) = self.previous_cpu else {
            self.previous_cpu = Some(now);
            return Ok(BTreeMap::new());
        };
        match now.utilization_since(&previous) {
            Some(utilization) => {
                self.previous_cpu = Some(now);
                Ok(utilization)
            }
            // Less than one tick since the previous reading: keep it, to measure over a longer
            // interval next time.
            None => Ok(BTreeMap::new()),
        }
    }

    /// The userspace WireGuard processes, with their CPU utilization since the previous scan.
    ///
    /// Every [`PROCESS_LISTING_EVERY`] the scan lists `/proc`; in between it reads only the
    /// processes the previous scan found (one that exited is dropped then). A listed process
    /// judged not to be a userspace WireGuard is not read again while its pid stays listed,
    /// once it has run for a second (before, it may still be a shell about to exec one). The
    /// steady cost is the WireGuard processes' `stat` and command line, not two files of every
    /// process on the host.
    fn read_processes(&mut self) -> Result<Vec<ProcessUsage>, HostError> {
        let now = Instant::now();
        let list = self.listed_at.is_none_or(|at| now.duration_since(at) >= self.listing_every);
        let pids = if list {
            let pids = list_processes()?;
            self.not_wireguard.retain(|pid| pids.binary_search(pid).is_ok());
            self.listed_at = Some(now);
            pids
        } else {
            let mut pids: Vec<i32> = self.previous_processes.keys().copied().collect();
            pids.sort_unstable();
            pids
        };
        // Only a listing judges processes (between listings no new one is read): 0 judges none.
        let judged_after = if list {
            let uptime = procfs::Uptime::current().map_err(HostError::proc("/proc/uptime"))?;
            uptime.uptime_duration().as_secs().saturating_sub(1)
        } else {
            0
        };
        let elapsed = self.previous_process_scan.map(|then| now.duration_since(then).as_secs_f64());
        let mut seen = HashMap::new();
        let mut found = Vec::new();
        // A process can exit at any point of the scan: skip those whose files vanished.
        for pid in pids {
            if self.not_wireguard.contains(&pid) {
                continue;
            }
            let Ok(process) = procfs::process::Process::new(pid) else { continue };
            let Ok(stat) = process.stat() else { continue };
            let Some(cmdline) = wireguard_cmdline(&process, &stat) else {
                if stat.starttime / self.ticks_per_second < judged_after {
                    self.not_wireguard.insert(pid);
                }
                continue;
            };
            let times = ProcessTimes {
                starttime: stat.starttime,
                cpu_ticks: stat.utime.saturating_add(stat.stime),
            };
            let cpu_utilization = match (self.previous_processes.get(&stat.pid), elapsed) {
                (Some(previous), Some(elapsed))
                    if previous.starttime == times.starttime && elapsed > 0.0 =>
                {
                    let ticks = times.cpu_ticks.saturating_sub(previous.cpu_ticks);
                    Some(ticks as f64 / self.ticks_per_second as f64 / elapsed)
                }
                _ => None,
            };
            seen.insert(stat.pid, times);
            found.push(ProcessUsage {
                pid: stat.pid,
                interface: interface_from_cmdline(&cmdline),
                name: stat.comm,
                cpu_utilization,
                rss_bytes: stat.rss.saturating_mul(self.page_size),
            });
        }
        found.sort_by_key(|p| p.pid);
        // Exited processes are forgotten here.
        self.previous_processes = seen;
        self.previous_process_scan = Some(now);
        Ok(found)
    }
}

/// The pids of the host's processes, sorted.
fn list_processes() -> Result<Vec<i32>, HostError> {
    let listing = std::fs::read_dir("/proc").map_err(|error| HostError::Proc {
        what: "/proc (the list of processes)",
        source: ProcError::Io(error, Some("/proc".into())),
    })?;
    let mut pids: Vec<i32> =
        listing.flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The command line of `process` if it is a userspace WireGuard: by its name, or, when the
/// kernel cut the name to [`COMM_CHARS`], by its command line's first word.
fn wireguard_cmdline(process: &procfs::process::Process, stat: &Stat) -> Option<Vec<String>> {
    if is_userspace_wireguard(&stat.comm) {
        return Some(process.cmdline().unwrap_or_default());
    }
    if stat.comm.len() < COMM_CHARS {
        // A whole name (the executable's) that is not WireGuard's.
        return None;
    }
    let cmdline = process.cmdline().ok()?;
    let argv0 = cmdline.first()?;
    is_userspace_wireguard(argv0.rsplit('/').next().unwrap_or(argv0)).then_some(cmdline)
}

/// `system.memory.usage` by state.
fn read_memory() -> Result<BTreeMap<&'static str, u64>, HostError> {
    let m = procfs::Meminfo::current().map_err(HostError::proc("/proc/meminfo"))?;
    let cached = m.cached.saturating_add(m.s_reclaimable.unwrap_or(0));
    let used =
        m.mem_total.saturating_sub(m.mem_free).saturating_sub(cached).saturating_sub(m.buffers);
    Ok(BTreeMap::from([
        ("used", used),
        ("free", m.mem_free),
        ("cached", cached),
        ("buffers", m.buffers),
    ]))
}

/// `system.cpu.load_average.*`.
fn read_load_average() -> Result<[f64; 3], HostError> {
    let l = procfs::LoadAverage::current().map_err(HostError::proc("/proc/loadavg"))?;
    Ok([f64::from(l.one), f64::from(l.five), f64::from(l.fifteen)])
}

/// Interface counters of this network namespace, sorted by name.
fn read_network() -> Result<Vec<NetworkInterfaceCounters>, HostError> {
    let devices = procfs::net::dev_status().map_err(HostError::proc("/proc/net/dev"))?;
    let mut interfaces: Vec<_> = devices
        .into_values()
        .map(|d| NetworkInterfaceCounters {
            name: d.name,
            rx_bytes: d.recv_bytes,
            tx_bytes: d.sent_bytes,
            rx_packets: d.recv_packets,
            tx_packets: d.sent_packets,
            rx_errors: d.recv_errs,
            tx_errors: d.sent_errs,
            rx_dropped: d.recv_drop,
            tx_dropped: d.sent_drop,
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

/// UDP counters, IPv4 plus IPv6 when `/proc/net/snmp6` exists (it does not when IPv6 is
/// disabled; any other error reading it is an error of the part).
fn read_udp() -> Result<UdpCounters, HostError> {
    let v4 = procfs::net::snmp().map_err(HostError::proc("/proc/net/snmp"))?;
    let mut udp = UdpCounters {
        in_datagrams: v4.udp_in_datagrams,
        out_datagrams: v4.udp_out_datagrams,
        in_errors: v4.udp_in_errors,
        rcvbuf_errors: v4.udp_rcvbuf_errors,
        sndbuf_errors: v4.udp_sndbuf_errors,
        no_ports: v4.udp_no_ports,
        in_csum_errors: v4.udp_in_csum_errors,
        includes_ipv6: false,
    };
    match procfs::net::snmp6() {
        Ok(v6) => {
            udp.in_datagrams = udp.in_datagrams.saturating_add(v6.udp_in_datagrams);
            udp.out_datagrams = udp.out_datagrams.saturating_add(v6.udp_out_datagrams);
            udp.in_errors = udp.in_errors.saturating_add(v6.udp_in_errors);
            udp.rcvbuf_errors = udp.rcvbuf_errors.saturating_add(v6.udp_rcvbuf_errors);
            udp.sndbuf_errors = udp.sndbuf_errors.saturating_add(v6.udp_sndbuf_errors);
            udp.no_ports = udp.no_ports.saturating_add(v6.udp_no_ports);
            udp.in_csum_errors = udp.in_csum_errors.saturating_add(v6.udp_in_csum_errors);
            udp.includes_ipv6 = true;
        }
        Err(ProcError::NotFound(_)) => {}
        Err(source) => return Err(HostError::Proc { what: "/proc/net/snmp6", source }),
    }
    Ok(udp)
}

/// Path of the softnet statistics (not parsed by procfs).
const SOFTNET_STAT: &str = "/proc/net/softnet_stat";

/// Softnet counters, summed over CPUs.
fn read_softnet() -> Result<SoftnetCounters, HostError> {
    let text = std::fs::read_to_string(SOFTNET_STAT)
        .map_err(|source| HostError::Io { what: SOFTNET_STAT, source })?;
    parse_softnet(&text)
}

/// Parses `/proc/net/softnet_stat`: one line per CPU of hexadecimal columns, the first three
/// being processed, dropped and time_squeeze.
fn parse_softnet(text: &str) -> Result<SoftnetCounters, HostError> {
    let mut total = SoftnetCounters::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut columns = [0u64; 3];
        let mut fields = line.split_whitespace();
        for column in &mut columns {
            let parse_error =
                |detail: String| HostError::Parse { what: SOFTNET_STAT, line: index + 1, detail };
            let field = fields.next().ok_or_else(|| parse_error("fewer than 3 columns".into()))?;
            *column = u64::from_str_radix(field, 16)
                .map_err(|e| parse_error(format!("column {field:?}: {e}")))?;
        }
        let [processed, dropped, time_squeeze] = columns;
        total.processed = total.processed.saturating_add(processed);
        total.dropped = total.dropped.saturating_add(dropped);
        total.time_squeeze = total.time_squeeze.saturating_add(time_squeeze);
    }
    Ok(total)
}

/// Whether a process name (comm, or base name of argv[0]) is a userspace WireGuard.
fn is_userspace_wireguard(name: &str) -> bool {
    crate::wg::Implementation::of_process_name(name).is_some()
}

/// The interface name on a wireguard-go or boringtun command line: the first argument that is
/// neither an option nor an option's value, if it looks like an interface name.
///
/// wireguard-go: `wireguard-go [-f|--foreground] INTERFACE`; boringtun:
/// `boringtun [OPTIONS] INTERFACE`, whose options `-t/--threads`, `-v/--verbosity`, `-l/--log`,
/// `--uapi-fd`, `--tun-fd` take a value.
fn interface_from_cmdline(cmdline: &[String]) -> Option<String> {
    const WITH_VALUE: [&str; 8] =
        ["-t", "--threads", "-v", "--verbosity", "-l", "--log", "--uapi-fd", "--tun-fd"];
    let mut args = cmdline.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            return args.next().filter(|a| is_interface_name(a)).cloned();
        }
        if arg.starts_with('-') {
            if WITH_VALUE.contains(&arg.as_str()) {
                args.next();
            }
            continue;
        }
        return is_interface_name(arg).then(|| arg.clone());
    }
    None
}

/// Whether `name` can be a Linux interface name (1 to 15 bytes, no `/`, no whitespace).
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len()) && !name.contains('/') && !name.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::process::{Child, Command};
    use std::time::Duration;

    fn lo(snapshot: &HostSnapshot) -> NetworkInterfaceCounters {
        snapshot.network.iter().find(|i| i.name == "lo").expect("lo in network").clone()
    }

    /// Sends 1000 datagrams of 100 bytes to a socket bound on 127.0.0.1 and reads them all.
    fn loopback_traffic() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = receiver.local_addr().unwrap();
        let payload = [0x5au8; 100];
        let mut buffer = [0u8; 200];
        for _ in 0..1000 {
            sender.send_to(&payload, target).unwrap();
            let (len, _) = receiver.recv_from(&mut buffer).unwrap();
            assert_eq!(len, 100);
        }
    }

    #[test]
    fn cpu_utilization_sums_to_one_with_user_share() {
        let mut sampler = HostSampler::new();
        let first = sampler.sample().unwrap();
        assert!(first.cpu_utilization.is_empty(), "{first:?}");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let second = sampler.sample().unwrap();
        let sum: f64 = second.cpu_utilization.values().sum();
        assert!((sum - 1.0).abs() < 0.05, "{:?}", second.cpu_utilization);
        assert_eq!(second.cpu_utilization.len(), CPU_STATES.len());
        assert!(second.cpu_utilization["user"] > 0.0, "{:?}", second.cpu_utilization);
        assert!(second.cpu_utilization.values().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn memory_and_load() {
        let mut sampler = HostSampler::new();
        let snapshot = sampler.sample().unwrap();
        let total = procfs::Meminfo::current().unwrap().mem_total;
        let m = &snapshot.memory_usage;
        assert!(m["used"] > 0, "{m:?}");
        assert!(m["used"] + m["free"] + m["cached"] + m["buffers"] <= total, "{m:?} {total}");
        assert!(snapshot.load_average.iter().all(|l| *l >= 0.0));
        assert!(sampler.problems().is_empty(), "{:?}", sampler.problems());
    }

    #[test]
    fn loopback_and_udp_counters_increase() {
        let mut sampler = HostSampler::new();
        let before = sampler.sample().unwrap();
        loopback_traffic();
        let after = sampler.sample().unwrap();
        let (lo_before, lo_after) = (lo(&before), lo(&after));
        assert!(lo_after.rx_bytes - lo_before.rx_bytes >= 100_000, "{lo_before:?} {lo_after:?}");
        assert!(lo_after.rx_packets - lo_before.rx_packets >= 1000, "{lo_before:?} {lo_after:?}");
        assert!(
            after.udp.in_datagrams - before.udp.in_datagrams >= 1000,
            "{:?} {:?}",
            before.udp,
            after.udp
        );
        assert!(after.udp.out_datagrams - before.udp.out_datagrams >= 1000);
        assert!(after.softnet.processed >= before.softnet.processed);
    }

    /// Kills the fake process even when an assertion fails.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_process_that_is_no_wireguard_is_judged_once_while_it_is_listed() {
        let mut sampler = HostSampler::new();
        sampler.listing_every = Duration::ZERO;
        sampler.sample().unwrap();
        // pid 1 has run for long and is no userspace WireGuard: not read again.
        assert!(sampler.not_wireguard.contains(&1));
        // A pid no longer listed is forgotten (it may come back as another process).
        sampler.not_wireguard.insert(i32::MAX);
        sampler.sample().unwrap();
        assert!(!sampler.not_wireguard.contains(&i32::MAX));
        assert!(sampler.not_wireguard.contains(&1));
    }

    /// A copy of `sleep` named `wireguard-go` in a directory of the test's own, so that the
    /// process looks like a userspace WireGuard to the scan.
    fn fake_wireguard_binary(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wgtel-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("wireguard-go");
        std::fs::copy("/bin/sleep", &binary).unwrap();
        binary
    }

    /// Starts `binary 600`, once its exec is done (`comm` is then its name).
    fn spawn_fake_wireguard(binary: &std::path::Path) -> (KillOnDrop, i32) {
        // Another test thread forking while the copy was open for writing can make exec fail
        // with ETXTBSY for a moment: retry.
        let mut attempts = 0;
        let child = loop {
            match Command::new(binary).arg("600").spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(26) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn {binary:?}: {e}"),
            }
        };
        let pid = i32::try_from(child.id()).unwrap();
        let child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "wireguard-go\n" {
            assert!(Instant::now() < deadline, "{pid} did not exec {binary:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        (child, pid)
    }

    /// Samples until `pid` is listed with its memory mapped; returns it.
    fn sample_until_found(sampler: &mut HostSampler, pid: i32) -> ProcessUsage {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let snapshot = sampler.sample().unwrap();
            if let Some(p) = snapshot.userspace_wireguard.iter().find(|p| p.pid == pid)
                && p.rss_bytes > 0
            {
                return p.clone();
            }
            assert!(Instant::now() < deadline, "{pid} not found: {snapshot:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids of the userspace WireGuard processes a new sample lists.
    fn sampled_pids(sampler: &mut HostSampler) -> Vec<i32> {
        sampler.sample().unwrap().userspace_wireguard.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn finds_userspace_wireguard_and_forgets_it() {
        let binary = fake_wireguard_binary("host-test");
        let (mut child, pid) = spawn_fake_wireguard(&binary);
        let mut sampler = HostSampler::new();
        sampler.listing_every = Duration::ZERO;
        let found = sample_until_found(&mut sampler, pid);
        assert_eq!(found.name, "wireguard-go");
        assert_eq!(found.interface.as_deref(), Some("600"));
        let again = sampler.sample().unwrap();
        let found = again.userspace_wireguard.iter().find(|p| p.pid == pid).unwrap();
        let cpu = found.cpu_utilization.unwrap();
        assert!((0.0..0.5).contains(&cpu), "{found:?}");
        assert!(sampler.previous_processes.contains_key(&pid));

        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let after = sampler.sample().unwrap();
        assert!(after.userspace_wireguard.iter().all(|p| p.pid != pid), "{after:?}");
        assert!(!sampler.previous_processes.contains_key(&pid));
        drop(child);
        std::fs::remove_dir_all(binary.parent().unwrap()).unwrap();
    }

    #[test]
    fn between_listings_only_the_processes_found_are_read() {
        let binary = fake_wireguard_binary("host-listing");
        let (mut first, first_pid) = spawn_fake_wireguard(&binary);
        let mut sampler = HostSampler::new();
        sampler.listing_every = Duration::ZERO;
        sample_until_found(&mut sampler, first_pid);
        // From now on no listing: the process found is still read at every sample...
        sampler.listing_every = Duration::from_secs(3600);
        assert!(sampled_pids(&mut sampler).contains(&first_pid));
        let listed_at = sampler.listed_at;
        assert!(sampled_pids(&mut sampler).contains(&first_pid));
        assert_eq!(sampler.listed_at, listed_at, "listed again");
        // ...one started since is not (it would need a listing)...
        let (second, second_pid) = spawn_fake_wireguard(&binary);
        assert!(!sampled_pids(&mut sampler).contains(&second_pid));
        // ...and one that exited is dropped at once.
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let pids = sampled_pids(&mut sampler);
        assert!(!pids.contains(&first_pid) && !pids.contains(&second_pid), "{pids:?}");
        // The next listing finds the new one.
        sampler.listed_at = None;
        let pids = sampled_pids(&mut sampler);
        assert!(pids.contains(&second_pid) && !pids.contains(&first_pid), "{pids:?}");
        drop((first, second));
        std::fs::remove_dir_all(binary.parent().unwrap()).unwrap();
    }

    #[test]
    fn parses_softnet_stat() {
        let text = "018486c9 00000002 0000000a 0\n00000001 00000001 00000001 0\n";
        let s = parse_softnet(text).unwrap();
        assert_eq!(s, SoftnetCounters { processed: 0x018486ca, dropped: 3, time_squeeze: 11 });
        assert!(matches!(parse_softnet("12 34\n"), Err(HostError::Parse { line: 1, .. })));
        assert!(matches!(parse_softnet("1 2 3\nzz 1 1\n"), Err(HostError::Parse { line: 2, .. })));
        // The real file parses.
        read_softnet().unwrap();
    }

    #[test]
    fn interface_names_from_command_lines() {
        let cmd = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(interface_from_cmdline(&cmd(&["wireguard-go", "wg0"])).as_deref(), Some("wg0"));
        assert_eq!(
            interface_from_cmdline(&cmd(&["/usr/bin/wireguard-go", "-f", "wg1"])).as_deref(),
            Some("wg1")
        );
        assert_eq!(
            interface_from_cmdline(&cmd(&["boringtun-cli", "-t", "4", "--log", "/x", "utun3"]))
                .as_deref(),
            Some("utun3")
        );
        assert_eq!(
            interface_from_cmdline(&cmd(&["boringtun", "--threads=4", "--", "wg2"])).as_deref(),
            Some("wg2")
        );
        assert_eq!(interface_from_cmdline(&cmd(&["wireguard-go"])), None);
        assert_eq!(interface_from_cmdline(&cmd(&["wireguard-go", "a/b"])), None);
        assert!(is_userspace_wireguard("boringtun-cli"));
        assert!(!is_userspace_wireguard("wireguard"));
    }

    #[test]
    fn serializes() {
        let snapshot = HostSampler::new().sample().unwrap();
        let _ = format!("{snapshot:?}");
        // Serialize is derived; check it is usable through serde's trait.
        fn is_serialize<T: serde::Serialize>(_: &T) {}
        is_serialize(&snapshot);
    }
}
