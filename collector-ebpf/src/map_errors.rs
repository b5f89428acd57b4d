//! Counts the inserts into the programs' maps that failed, by map: a full map (a hash map at
//! its `max_entries`, or an LRU map whose every slot is busy on other CPUs) loses the entry,
//! and the collector exports the count as `wgtel_ebpf_map_errors_total{map}`.

use collector_common::maps::MapId;

use crate::maps::MAP_ERRORS;

/// Counts one failed insert into `map`.
#[inline(always)]
pub(crate) fn map_error(map: MapId) {
    if let Some(count) = MAP_ERRORS.get_ptr_mut(map as u32) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
        unsafe { *count += 1 };
    }
}
