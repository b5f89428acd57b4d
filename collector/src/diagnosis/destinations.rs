//! The destinations behind `no_peer_route`: which addresses were routed into a tunnel that no
//! peer accepts, most packets first, over the last minute.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, SystemTime},
};

/// How far back the top destinations look.
pub(super) const SPAN: Duration = Duration::from_secs(60);

/// A sample is kept at most this often: twelve a minute bound the memory whatever the
/// interval.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How many destinations the evidence names.
pub(super) const TOP: usize = 5;

/// One interface's destination counts at a few moments of the last minute.
#[derive(Debug, Default)]
pub(super) struct DestinationHistory {
    samples: VecDeque<(SystemTime, HashMap<IpAddr, u64>)>,
}

impl DestinationHistory {
    /// Takes the cumulative counts of `now` at `at`; the destinations whose packets grew
    /// since the oldest sample of the last [`SPAN`], most first (then by address), at most
    /// [`TOP`].
    pub(super) fn observe(&mut self, at: SystemTime, now: &[(IpAddr, u64)]) -> Vec<(IpAddr, u64)> {
        let age = |then: SystemTime| at.duration_since(then).unwrap_or_default();
        while self.samples.len() > 1
            && self.samples.get(1).is_some_and(|(then, _)| age(*then) >= SPAN)
        {
            self.samples.pop_front();
        }
        let base = self.samples.front().map(|(_, counts)| counts);
        let mut grown: Vec<(IpAddr, u64)> = now
            .iter()
            .map(|(address, count)| {
                let before = base.and_then(|counts| counts.get(address)).copied().unwrap_or(0);
                (*address, count.saturating_sub(before))
            })
            .filter(|(_, packets)| *packets > 0)
            .collect();
        grown.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        grown.truncate(TOP);
        if self.samples.back().is_none_or(|(then, _)| age(*then) >= SAMPLE_EVERY) {
            self.samples.push_back((at, now.iter().copied().collect()));
        }
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_top_destinations_are_those_that_grew_in_the_last_minute() {
        let mut history = DestinationHistory::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        // Before wgtel saw anything, 10.0.0.1 had 50 packets: a first sample is all growth.
        assert_eq!(history.observe(at(0), &[(ip("10.0.0.1"), 50)]), [(ip("10.0.0.1"), 50)]);
        let now = [
            (ip("10.0.0.1"), 50),
            (ip("198.19.2.250"), 7),
            (ip("fd00::9"), 7),
            (ip("10.0.0.2"), 9),
        ];
        assert_eq!(
            history.observe(at(30), &now),
            [(ip("10.0.0.2"), 9), (ip("198.19.2.250"), 7), (ip("fd00::9"), 7)]
        );
        // Seventy seconds on, the samples of the first minute are gone: nothing grew since.
        assert_eq!(history.observe(at(100), &now), []);
        assert!(history.samples.len() <= 2, "{history:?}");
    }
}
