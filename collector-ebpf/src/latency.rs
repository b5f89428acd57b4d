//! Latency samples into the kernel's histograms, shared by the tunnel and underlay programs.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use collector_common::{
    latency::{LatencyKey, PendingStart, SUM_BUCKET, bucket},
    maps::MapId,
};

use crate::{map_errors::map_error, maps::LATENCY};

/// Now, in `bpf_ktime_get_ns` nanoseconds.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// What opening a round trip remembers.
#[inline(always)]
pub(crate) fn start(peer: u32, kind: u32) -> PendingStart {
    PendingStart { started_ns: now(), peer, kind }
}

/// Adds the round trip that `start` opened, closed now, to its peer's histogram.
#[inline(always)]
pub(crate) fn record(start: &PendingStart) {
    let nanoseconds = now().saturating_sub(start.started_ns);
    add(LatencyKey { peer: start.peer, kind: start.kind, bucket: bucket(nanoseconds) }, 1);
    add(LatencyKey { peer: start.peer, kind: start.kind, bucket: SUM_BUCKET }, nanoseconds);
}

#[inline(always)]
fn add(key: LatencyKey, value: u64) {
    match LATENCY.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
        Some(count) => unsafe { *count += value },
        None => {
            if LATENCY.insert(&key, &value, 0).is_err() {
                map_error(MapId::Latency);
            }
        }
    }
}
