//! The recent samples of one subject (a peer or an interface), and the windows the rules read
//! over them.
//!
//! A gateway keeps histories per peer, so their size is per peer: at a 1 s interval the
//! 12-second windows keep 13 samples. A peer therefore has two histories, each sample only
//! what its rules read (the few counters of the 12-second windows in one, the rest over the
//! last snapshots in the other), and peer samples hold their counters as their low 32 bits ([`Counter`] for `u32`): growth over a window is exact while a counter grows by
//! less than 2^32 within it, which a packet or message counter of one peer cannot do in the
//! longest window (`WINDOW_SNAPSHOTS` intervals, or 12 s): at the longest interval wgtel
//! takes (1 hour) that is more than 1.1 million packets a second for 3 hours. Totals shown in
//! evidence come from the snapshot, never from a sample. The queue grows one sample at a time,
//! so it holds what the windows need and no spare capacity.

use std::collections::VecDeque;

use super::WINDOW_SNAPSHOTS;

/// Windows that need a minimum span (WireGuard retries a handshake every 5 s) keep samples at
/// most this long (seconds).
pub(super) const LONGEST_WINDOW_SECONDS: f64 = 12.0;

/// A counter in a sample: how much it grew since an earlier reading.
pub(super) trait Counter: Copy {
    /// Growth from `then` to `self`.
    fn since(self, then: Self) -> u64;
}

impl Counter for u64 {
    /// A full counter: a counter that went down (reset) grew by 0.
    fn since(self, then: u64) -> u64 {
        self.saturating_sub(then)
    }
}

impl Counter for u32 {
    /// The low 32 bits of a counter: the growth modulo 2^32 (see the module's note).
    fn since(self, then: u32) -> u64 {
        u64::from(self.wrapping_sub(then))
    }
}

/// The low 32 bits of `counter`, as peer samples keep it.
#[expect(clippy::cast_possible_truncation, reason = "the low 32 bits are what a sample keeps")]
pub(super) fn low32(counter: u64) -> u32 {
    counter as u32
}

/// A value measured at a snapshot, `at` in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
struct Timed<T> {
    at: f64,
    value: T,
}

/// Two samples of one subject: the newest and the one a window before it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window<'a, T> {
    pub(super) then: &'a T,
    pub(super) now: &'a T,
    pub(super) seconds: f64,
}

impl<T> Window<'_, T> {
    /// How much the counter `f` grew over the window.
    pub(super) fn growth<C: Counter>(&self, f: impl Fn(&T) -> C) -> u64 {
        f(self.now).since(f(self.then))
    }
}

/// The recent samples of one subject, newest last.
#[derive(Debug)]
pub(super) struct History<T> {
    samples: VecDeque<Timed<T>>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        Self { samples: VecDeque::new() }
    }
}

impl<T> History<T> {
    /// Adds `value`, taken at `at` (seconds since the Unix epoch), and first forgets the
    /// samples no window reaches any more: windows reach [`WINDOW_SNAPSHOTS`] snapshots back,
    /// and at least `span` seconds.
    pub(super) fn remember(&mut self, at: f64, value: T, span: f64) {
        while self.samples.len() > WINDOW_SNAPSHOTS
            && self.samples.get(1).is_some_and(|second| at - second.at >= span)
        {
            self.samples.pop_front();
        }
        if self.samples.len() == self.samples.capacity() {
            self.samples.reserve_exact(1);
        }
        self.samples.push_back(Timed { at, value });
    }

    /// The window that reaches back [`WINDOW_SNAPSHOTS`] snapshots and at least
    /// `min_seconds`, or as far as the history goes; `None` before two samples.
    pub(super) fn window(&self, min_seconds: f64) -> Option<Window<'_, T>> {
        let now = self.samples.back()?;
        let reach = self.samples.len().checked_sub(1 + WINDOW_SNAPSHOTS);
        let then = reach
            .and_then(|reach| {
                self.samples.range(..=reach).rev().find(|sample| now.at - sample.at >= min_seconds)
            })
            .or_else(|| self.samples.front())?;
        (self.samples.len() >= 2).then(|| Window {
            then: &then.value,
            now: &now.value,
            seconds: (now.at - then.at).max(0.0),
        })
    }

    /// The sample before the newest.
    pub(super) fn previous(&self) -> Option<&T> {
        self.samples.iter().rev().nth(1).map(|sample| &sample.value)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_reach_back_three_snapshots_and_at_least_their_span() {
        let mut history = History::default();
        for second in 0..20_u32 {
            history.remember(f64::from(second), second, LONGEST_WINDOW_SECONDS);
        }
        // 13 samples cover 12 s and the three snapshots before the newest, and no more.
        assert_eq!((history.len(), history.samples.capacity()), (13, 13));
        let window = history.window(0.0).unwrap();
        assert_eq!((*window.then, *window.now, window.seconds), (16, 19, 3.0));
        let window = history.window(12.0).unwrap();
        assert_eq!((*window.then, window.seconds), (7, 12.0));
        assert_eq!(history.previous(), Some(&18));
    }

    #[test]
    fn a_history_without_a_span_keeps_four_samples() {
        let mut history = History::default();
        for second in 0..20_u32 {
            history.remember(f64::from(second), second, 0.0);
        }
        assert_eq!((history.len(), history.samples.capacity()), (4, 4));
        assert_eq!(*history.window(0.0).unwrap().then, 16);
    }

    #[test]
    fn long_intervals_keep_four_samples() {
        let mut history = History::default();
        for n in 0..10_u32 {
            history.remember(f64::from(n) * 60.0, n, LONGEST_WINDOW_SECONDS);
        }
        assert_eq!(history.len(), 4);
        assert_eq!(*history.window(12.0).unwrap().then, 6);
    }

    #[test]
    fn a_short_history_windows_from_its_first_sample() {
        let mut history = History::default();
        assert!(history.window(0.0).is_none());
        history.remember(0.0, 1_u32, LONGEST_WINDOW_SECONDS);
        assert!(history.window(0.0).is_none());
        history.remember(1.0, 5, LONGEST_WINDOW_SECONDS);
        let window = history.window(12.0).unwrap();
        assert_eq!((window.growth(|s| *s), window.seconds), (4, 1.0));
    }

    #[test]
    fn low_32_bits_grow_exactly_across_a_wrap() {
        let then = low32(u64::from(u32::MAX) - 2);
        let now = low32(u64::from(u32::MAX) + 5);
        assert_eq!(now.since(then), 7);
        assert_eq!(5_u64.since(9), 0);
    }
}
