//! The kernel's latency histograms and its round trips waiting for an answer: read each
//! interval, and the round trips that waited too long are expired and counted as lost.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use collector_common::{
    latency::{LATENCY_BUCKETS, LatencyKey, LatencyKind, PendingProbe, PendingStart, SUM_BUCKET},
    maps::SessionKey,
};

use super::batch::{BatchedHashMap, PerCpuHashReader};

/// A round trip not answered within this long is lost: well above any sane tunnel RTT, below
/// ping's and TCP's first retry.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A handshake initiation not answered within this long is forgotten (WireGuard retries
/// after `REKEY_TIMEOUT`, 5 s; the unanswered count lives in the underlay counters).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One peer's samples of one kind since its id was given, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelHistogram {
    /// Samples per log2 bucket (bucket `b`: `[2^b, 2^(b+1))` ns).
    pub buckets: Vec<u64>,
    /// Sum of the samples, nanoseconds.
    pub sum_ns: u64,
    /// Round trips of this kind that were never answered.
    pub lost: u64,
}

/// The latency maps (aya opens LRU hash maps as plain hash maps) and the losses counted so
/// far.
pub(super) struct LatencyTable {
    histograms: PerCpuHashMap<MapData, LatencyKey, u64>,
    /// Reads `histograms` in batches.
    reader: PerCpuHashReader<LatencyKey, u64>,
    /// The entries of the last read (the allocation is kept).
    entries: Vec<(LatencyKey, u64)>,
    probes: BpfHashMap<MapData, PendingProbe, PendingStart>,
    handshakes: BpfHashMap<MapData, SessionKey, PendingStart>,
    lost: HashMap<(u32, u32), u64>,
}

impl LatencyTable {
    pub(super) fn new(
        (histograms, reader): BatchedHashMap<LatencyKey, u64>,
        probes: BpfHashMap<MapData, PendingProbe, PendingStart>,
        handshakes: BpfHashMap<MapData, SessionKey, PendingStart>,
    ) -> Self {
        Self { histograms, reader, entries: Vec::new(), probes, handshakes, lost: HashMap::new() }
    }

    /// Expires what waited too long (counting lost probes), then reads every histogram:
    /// peer id -> kind -> histogram.
    pub(super) fn read(&mut self) -> HashMap<u32, BTreeMap<LatencyKind, KernelHistogram>> {
        self.expire();
        self.reader.read_all(&self.histograms, "LATENCY", u64::saturating_add, &mut self.entries);
        let mut read: HashMap<u32, BTreeMap<LatencyKind, KernelHistogram>> = HashMap::new();
        for &(key, total) in &self.entries {
            let Some(kind) = LatencyKind::from_u32(key.kind) else { continue };
            let histogram = read.entry(key.peer).or_default().entry(kind).or_default();
            if key.bucket == SUM_BUCKET {
                histogram.sum_ns = total;
            } else if let Ok(bucket) = usize::try_from(key.bucket) {
                histogram.buckets.resize(LATENCY_BUCKETS as usize, 0);
                if let Some(count) = histogram.buckets.get_mut(bucket) {
                    *count = total;
                }
            }
        }
        for (&(peer, kind), &lost) in &self.lost {
            if let Some(kind) = LatencyKind::from_u32(kind) {
                let histogram = read.entry(peer).or_default().entry(kind).or_default();
                histogram.buckets.resize(LATENCY_BUCKETS as usize, 0);
                histogram.lost = lost;
            }
        }
        read
    }

    /// Forgets everything of the peer ids in `peers` (gone; their ids free for reuse): their
    /// histograms and their round trips still waiting, one walk of each map however many.
    pub(super) fn forget_peers(&mut self, peers: &HashSet<u32>) {
        let stale: Vec<LatencyKey> = self
            .histograms
            .keys()
            .filter_map(Result::ok)
            .filter(|key| peers.contains(&key.peer))
            .collect();
        for key in stale {
            let _gone = self.histograms.remove(&key);
        }
        super::remove_where(&mut self.probes, |_, start| peers.contains(&start.peer));
        super::remove_where(&mut self.handshakes, |_, start| peers.contains(&start.peer));
        self.lost.retain(|(id, _), _| !peers.contains(id));
    }

    fn expire(&mut self) {
        let now = monotonic_ns();
        let old = |start: &PendingStart, timeout: Duration| {
            now.saturating_sub(start.started_ns)
                > u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
        };
        let expired: Vec<(PendingProbe, PendingStart)> = self
            .probes
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, start)| old(start, PROBE_TIMEOUT))
            .collect();
        for (key, start) in expired {
            // Removed by the kernel in the meantime: it was answered after all.
            if self.probes.remove(&key).is_ok() {
                *self.lost.entry((start.peer, start.kind)).or_default() += 1;
            }
        }
        let expired: Vec<SessionKey> = self
            .handshakes
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, start)| old(start, HANDSHAKE_TIMEOUT))
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            let _gone = self.handshakes.remove(&key);
        }
    }
}

impl std::fmt::Debug for LatencyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyTable").field("lost", &self.lost.len()).finish_non_exhaustive()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
