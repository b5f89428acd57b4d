//! `latency_degraded`: inner round trips to a peer take several times their usual time.

use super::{Finding, PeerSample, Window, seconds};
use crate::model::Code;

/// Fewest round trips in the window for a mean worth comparing.
const MIN_ROUND_TRIPS: u64 = 3;

/// The code holds from this many times the baseline on ...
const TIMES_BASELINE: f64 = 4.0;

/// ... when that is also at least this much above it (seconds): sub-millisecond round trips
/// on a LAN vary by more than four times without anyone noticing.
const MIN_INCREASE_SECONDS: f64 = 0.010;

/// How fast a baseline follows round trips slower than itself (seconds of time constant): a
/// path that got longer for good becomes the new usual in about an hour, while an hour of
/// degradation keeps the code.
const RISE_SECONDS: f64 = 3600.0;

/// A peer's usual inner round trip: the fastest window mean seen, rising slowly towards slower
/// ones.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Baseline {
    seconds: Option<f64>,
}

impl Baseline {
    /// Takes `mean` (over `span` seconds) into the baseline; the baseline before it.
    fn learn(&mut self, mean: f64, span: f64) -> Option<f64> {
        let before = self.seconds;
        self.seconds = Some(match before {
            Some(usual) if mean > usual => usual + (mean - usual) * (span / RISE_SECONDS).min(1.0),
            _ => mean,
        });
        before
    }
}

/// `latency_degraded`: the mean inner round trip to the peer over the window is at least
/// [`TIMES_BASELINE`] times its baseline and [`MIN_INCREASE_SECONDS`] above it.
///
/// Signals: the round trips this host opened through the tunnel (ICMP echo to reply, TCP SYN
/// to SYN-ACK: the kernel's latency histograms' counts and exact sums), grown over the window,
/// at least [`MIN_ROUND_TRIPS`] of them; the baseline is the fastest window mean seen since the
/// peer appeared, rising towards slower means with a time constant of [`RISE_SECONDS`]. Delay
/// added on the underlay path (congestion, a reroute, a saturated peer) shows here while
/// packets still arrive.
pub(super) fn degraded(
    baseline: &mut Baseline,
    window: &Window<'_, PeerSample>,
) -> Option<Finding> {
    let count = window.growth(|s| s.round_trips);
    if count < MIN_ROUND_TRIPS {
        return None;
    }
    let mean = (window.now.round_trip_seconds - window.then.round_trip_seconds) / count as f64;
    let usual = baseline.learn(mean, window.seconds)?;
    if mean < usual * TIMES_BASELINE || mean - usual < MIN_INCREASE_SECONDS {
        return None;
    }
    let evidence = format!(
        "{count} inner round trips to the peer in the last {} took {:.1} ms on average, {:.1} \
         times its usual {:.1} ms: delay on the path or at the peer",
        seconds(window.seconds),
        mean * 1e3,
        mean / usual,
        usual * 1e3
    );
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "microseconds")]
    let micros = |seconds: f64| (seconds * 1e6).round() as u64;
    let counters = [
        ("round_trips", count),
        ("round_trip_mean_us", micros(mean)),
        ("round_trip_baseline_us", micros(usual)),
    ];
    Some(Finding::new(Code::LatencyDegraded, evidence, &counters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_drops_at_once_and_rises_slowly() {
        let mut baseline = Baseline::default();
        assert_eq!(baseline.learn(0.002, 1.0), None);
        assert_eq!(baseline.learn(0.001, 1.0), Some(0.002));
        assert_eq!(baseline.learn(0.061, 36.0), Some(0.001));
        // One hundredth of an hour moved it one hundredth of the way.
        assert!((baseline.seconds.unwrap() - 0.0016).abs() < 1e-9, "{baseline:?}");
    }
}
