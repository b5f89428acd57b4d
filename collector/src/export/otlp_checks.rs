//! The synthetic checks over OTLP: `wireguard.check.up` (observable gauge, read from the
//! latest snapshot) and `wireguard.check.duration` (histogram, seconds, each run recorded
//! once: the runs a check gained since the previous export, from its latest durations).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter},
};

use crate::{
    checks::{CheckResult, DURATION_BOUNDS},
    model::Snapshot,
};

/// The attributes of a check's series: its name and kind, and the peer that carries it.
fn attributes(check: &CheckResult) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("wireguard.check.name", check.name.clone()),
        KeyValue::new("wireguard.check.kind", check.kind.clone()),
    ];
    if let Some(interface) = &check.interface {
        attributes.push(KeyValue::new("wireguard.interface", interface.clone()));
    }
    if let Some(key) = check.peer_public_key {
        attributes.push(KeyValue::new("wireguard.peer.public_key", key.to_string()));
    }
    if let Some(name) = &check.peer_name {
        attributes.push(KeyValue::new("wireguard.peer.name", name.clone()));
    }
    attributes
}

/// Registers `wireguard.check.up`: 1 when a check's latest run succeeded, 0 when it failed,
/// nothing before its first run.
pub fn register_up(meter: &Meter, current: &Arc<Mutex<Arc<Snapshot>>>) {
    let current = Arc::clone(current);
    meter
        .u64_observable_gauge("wireguard.check.up")
        .with_unit("1")
        .with_description("1 when the check's latest run succeeded, 0 when it failed")
        .with_callback(move |observer| {
            let snapshot = current.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for check in &snapshot.checks {
                if let Some(up) = check.up {
                    observer.observe(u64::from(up), &attributes(check));
                }
            }
        })
        .build();
}

/// `wireguard.check.duration`, and how many runs of each check it has recorded.
#[derive(Debug)]
pub struct CheckDurations {
    histogram: Histogram<f64>,
    recorded: HashMap<String, u64>,
}

impl CheckDurations {
    /// The histogram on `meter` (a delta-temporality provider: a removed check stops).
    pub fn new(meter: &Meter) -> Self {
        let histogram = meter
            .f64_histogram("wireguard.check.duration")
            .with_unit("s")
            .with_description("How long each run of the check took (a failed run: until it failed)")
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build();
        Self { histogram, recorded: HashMap::new() }
    }

    /// Records the runs each check gained since the previous call (at most the durations its
    /// result still holds).
    pub fn record(&mut self, snapshot: &Snapshot) {
        let mut recorded = HashMap::with_capacity(snapshot.checks.len());
        for check in &snapshot.checks {
            let before = self.recorded.get(&check.name).copied().unwrap_or(0);
            let new = usize::try_from(check.runs.saturating_sub(before)).unwrap_or(usize::MAX);
            let skip = check.recent_durations.len().saturating_sub(new);
            let attributes = attributes(check);
            for seconds in check.recent_durations.iter().skip(skip) {
                self.histogram.record(*seconds, &attributes);
            }
            recorded.insert(check.name.clone(), check.runs);
        }
        self.recorded = recorded;
    }
}
