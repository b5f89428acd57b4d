//! Counts by address over a recent span: the destinations behind `no_peer_route` (routed into
//! a tunnel that no peer accepts) and the sources behind `handshake_flood` (of handshake
//! initiations), most first.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::model::InterfaceSnapshot;

/// How many addresses the evidence names.
pub(super) const TOP: usize = 5;

/// One interface's counts by address at a few moments of the recent span.
#[derive(Debug)]
pub(super) struct AddressHistory {
    /// How far back the growth looks.
    span: Duration,
    /// A sample is kept at most this often, which bounds the memory whatever the interval.
    sample_every: Duration,
    samples: VecDeque<(SystemTime, HashMap<IpAddr, u64>)>,
}

impl AddressHistory {
    /// `no_peer_route`'s: the last minute, a sample every 5 s.
    pub(super) fn last_minute() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(5))
    }

    /// `handshake_flood`'s: the last 10 s, a sample every second.
    pub(super) fn last_seconds() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(1))
    }

    fn new(span: Duration, sample_every: Duration) -> Self {
        Self { span, sample_every, samples: VecDeque::new() }
    }

    /// Takes the cumulative counts of `now` at `at`. The addresses whose counts grew since the
    /// oldest sample of the span, most first (then by address), at most [`TOP`], and the
    /// seconds that growth covers (0 at the first sample, which is all growth).
    pub(super) fn observe(
        &mut self,
        at: SystemTime,
        now: &[(IpAddr, u64)],
    ) -> (Vec<(IpAddr, u64)>, f64) {
        let age = |then: SystemTime| at.duration_since(then).unwrap_or_default();
        while self.samples.len() > 1
            && self.samples.get(1).is_some_and(|(then, _)| age(*then) >= self.span)
        {
            self.samples.pop_front();
        }
        let covered = self.samples.front().map_or(0.0, |(then, _)| age(*then).as_secs_f64());
        let base = self.samples.front().map(|(_, counts)| counts);
        let mut grown: Vec<(IpAddr, u64)> = now
            .iter()
            .map(|(address, count)| {
                let before = base.and_then(|counts| counts.get(address)).copied().unwrap_or(0);
                (*address, count.saturating_sub(before))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        grown.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        grown.truncate(TOP);
        if self.samples.back().is_none_or(|(then, _)| age(*then) >= self.sample_every) {
            self.samples.push_back((at, now.iter().copied().collect()));
        }
        (grown, covered)
    }
}

/// What an interface's address counts say over their spans.
#[derive(Debug, Default)]
pub(super) struct RecentAddresses {
    /// The top destinations of `no_peer` packets in the last minute.
    pub(super) destinations: Vec<(IpAddr, u64)>,
    /// The top sources of handshake initiations in the last seconds ...
    pub(super) sources: Vec<(IpAddr, u64)>,
    /// ... and how many seconds those cover.
    pub(super) sources_seconds: f64,
}

/// The address histories of one interface.
#[derive(Debug)]
pub(super) struct InterfaceAddresses {
    destinations: AddressHistory,
    sources: AddressHistory,
}

impl InterfaceAddresses {
    /// Histories that have seen nothing yet.
    pub(super) fn new() -> Self {
        Self {
            destinations: AddressHistory::last_minute(),
            sources: AddressHistory::last_seconds(),
        }
    }

    /// Takes `interface`'s counts at `at`.
    pub(super) fn observe(
        &mut self,
        at: SystemTime,
        interface: &InterfaceSnapshot,
    ) -> RecentAddresses {
        let (destinations, _) = self.destinations.observe(at, &interface.no_peer_destinations);
        let (sources, sources_seconds) = self.sources.observe(at, &interface.initiation_sources);
        RecentAddresses { destinations, sources, sources_seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_top_addresses_are_those_that_grew_in_the_span() {
        let mut history = AddressHistory::last_minute();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        // Before wgtel saw anything, 10.0.0.1 had 50 packets: a first sample is all growth.
        let first = history.observe(at(0), &[(ip("10.0.0.1"), 50)]);
        assert_eq!(first, (vec![(ip("10.0.0.1"), 50)], 0.0));
        let now = [
            (ip("10.0.0.1"), 50),
            (ip("198.19.2.250"), 7),
            (ip("fd00::9"), 7),
            (ip("10.0.0.2"), 9),
        ];
        assert_eq!(
            history.observe(at(30), &now),
            (vec![(ip("10.0.0.2"), 9), (ip("198.19.2.250"), 7), (ip("fd00::9"), 7)], 30.0)
        );
        // Seventy seconds on, the samples of the first minute are gone: nothing grew since.
        assert_eq!(history.observe(at(100), &now), (vec![], 70.0));
        assert!(history.samples.len() <= 2, "{history:?}");
    }
}
