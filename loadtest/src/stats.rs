//! How sure a figure is: percentiles with a 95 % confidence interval, and
//! verdicts that can be "inconclusive".
//!
//! The interval of a percentile is distribution-free: of `n` samples, the
//! rank of the true `q`-quantile lies within `nq ± 1.96·√(nq(1−q))` with 95 %
//! probability (the normal approximation of the binomial), so the values at
//! those ranks bound it. When the upper rank is past the last sample the
//! upper bound is unknown: with 100 samples, the p99 is one request, and no
//! run can pass a limit on it. Hence the smallest sample counts below; a run
//! with fewer cannot pass a gate on that percentile.

use hdrhistogram::{Counter, Histogram};
use serde::{Deserialize, Serialize};

/// z of a two-sided 95 % interval.
const Z: f64 = 1.96;

/// A percentile of the samples, with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    /// 50, 95, 99, 99.9, ...
    pub percentile: f64,
    pub ms: f64,
    pub low_ms: f64,
    /// `None` when there are too few samples to bound it from above.
    pub high_ms: Option<f64>,
    pub samples: u64,
}

impl Estimate {
    pub fn of<T: Counter>(histogram: &Histogram<T>, percentile: f64) -> Self {
        let n = histogram.len();
        if n == 0 {
            return Self {
                percentile,
                ms: 0.0,
                low_ms: 0.0,
                high_ms: None,
                samples: 0,
            };
        }
        let q = percentile / 100.0;
        let (low_rank, high_rank) = rank_interval(n, q);
        let at_rank = |rank: u64| ms(histogram.value_at_quantile(rank as f64 / n as f64));
        Self {
            percentile,
            ms: ms(histogram.value_at_quantile(q)),
            low_ms: if low_rank == 0 {
                0.0
            } else {
                at_rank(low_rank)
            },
            high_ms: (high_rank <= n).then(|| at_rank(high_rank)),
            samples: n,
        }
    }

    /// Judges "this percentile is under `limit`".
    pub fn under(&self, limit: f64) -> Verdict {
        match self.high_ms {
            Some(high) if high < limit => Verdict::Pass,
            _ if self.low_ms >= limit && self.samples > 0 => Verdict::Fail,
            _ => Verdict::Inconclusive,
        }
    }

    /// Half-widths of the interval below and above the estimate
    /// (`None` above when unbounded).
    fn spread(&self) -> (f64, Option<f64>) {
        (
            self.ms - self.low_ms,
            self.high_ms.map(|high| high - self.ms),
        )
    }

    /// A short "p95 12.34 ms [11.90–12.80]" for tables and gate lines.
    pub fn describe(&self) -> String {
        let high = self
            .high_ms
            .map_or_else(|| "?".to_owned(), |h| format!("{h:.2}"));
        format!(
            "{} {:.2} ms [{:.2}–{high}]",
            percentile_name(self.percentile),
            self.ms,
            self.low_ms
        )
    }
}

/// `p95`, `p99.9`.
pub fn percentile_name(percentile: f64) -> String {
    format!("p{percentile}")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The 1-based ranks that bound the `q`-quantile of `n` samples at 95 %; the
/// lower is 0 when it falls before the first sample, the upper past `n` when
/// it falls after the last.
fn rank_interval(n: u64, q: f64) -> (u64, u64) {
    let n_f = n as f64;
    let spread = Z * (n_f * q * (1.0 - q)).sqrt();
    let low = (n_f * q - spread).floor().max(0.0) as u64;
    let high = (n_f * q + spread).ceil() as u64 + 1;
    (low, high)
}

/// The fewest samples whose interval for the `percentile` is bounded above:
/// 110 for p95, 563 for p99, 5,640 for p99.9.
pub fn samples_needed(percentile: f64) -> u64 {
    let q = percentile / 100.0;
    let mut n = 1u64;
    // The bound is monotone in n; a doubling search, then a bisection.
    while rank_interval(n, q).1 > n {
        n *= 2;
    }
    let (mut low, mut high) = (n / 2, n);
    while low + 1 < high {
        let mid = (low + high) / 2;
        if rank_interval(mid, q).1 > mid {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// How much larger a sample would make an inconclusive comparison of
/// `estimate` with `limit` conclusive: the interval narrows with √n.
pub fn growth_needed(estimate: &Estimate, limit: f64) -> f64 {
    let needed = samples_needed(estimate.percentile) as f64;
    let Some(high) = estimate.high_ms else {
        return (needed / estimate.samples.max(1) as f64).max(1.0) * 1.5;
    };
    let distance = (estimate.ms - limit).abs().max(1e-9);
    let half_width = if limit >= estimate.ms {
        high - estimate.ms
    } else {
        estimate.ms - estimate.low_ms
    };
    ((half_width / distance).powi(2) * 1.5).max(1.2)
}

/// A gate's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Too few samples, or an interval that straddles the limit.
    Inconclusive,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Fail => "FAIL",
        }
    }

    /// The verdict of several: any fail fails, else any inconclusive.
    pub fn all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts.into_iter().max().unwrap_or(Verdict::Pass)
    }
}

/// Judges "`after` exceeds `before` by at most `max(budget × before,
/// floor)`", the degradation and regression rule, from the two estimates'
/// intervals. The increase's interval combines the two half-widths in
/// quadrature (independent samples).
pub fn increase_within(before: &Estimate, after: &Estimate, budget: f64, floor_ms: f64) -> Verdict {
    let allowed = (budget * before.ms).max(floor_ms);
    let increase = after.ms - before.ms;
    let (before_below, before_above) = before.spread();
    let (after_below, after_above) = after.spread();
    // Unbounded above, `before` may be as slow as `after`: no fail.
    if let Some(above) = before_above
        && increase - (after_below.powi(2) + above.powi(2)).sqrt() > allowed
    {
        return Verdict::Fail;
    }
    match after_above {
        Some(above) if increase + (above.powi(2) + before_below.powi(2)).sqrt() <= allowed => {
            Verdict::Pass
        }
        _ => Verdict::Inconclusive,
    }
}

/// Judges "`after` is at least `(1 − budget) × before`" for two counts of
/// events over known durations (throughput), with Poisson intervals.
pub fn rate_within(before: (u64, f64), after: (u64, f64), budget: f64) -> Verdict {
    let rate = |(count, secs): (u64, f64)| count as f64 / secs.max(1e-9);
    let spread = |(count, secs): (u64, f64)| Z * (count as f64).sqrt() / secs.max(1e-9);
    let allowed = (1.0 - budget) * rate(before);
    let drop_spread = (spread(before).powi(2) + spread(after).powi(2)).sqrt();
    if rate(after) + drop_spread < allowed {
        Verdict::Fail
    } else if rate(after) - drop_spread >= allowed {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(n: u64, max_us: u64) -> Histogram<u64> {
        let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for i in 1..=n {
            histogram.record(i * max_us / n).unwrap();
        }
        histogram
    }

    #[test]
    fn the_smallest_samples_for_a_bounded_interval() {
        assert_eq!(samples_needed(95.0), 110);
        assert_eq!(samples_needed(99.0), 563);
        assert!((5_500..5_800).contains(&samples_needed(99.9)));
        for p in [95.0, 99.0] {
            let n = samples_needed(p);
            assert!(rank_interval(n, p / 100.0).1 <= n);
            assert!(rank_interval(n - 1, p / 100.0).1 > n - 1);
        }
    }

    #[test]
    fn a_p99_of_100_samples_has_no_upper_bound() {
        let estimate = Estimate::of(&uniform(100, 100_000), 99.0);
        assert_eq!(estimate.samples, 100);
        assert_eq!(estimate.high_ms, None);
        assert_eq!(estimate.under(500.0), Verdict::Inconclusive);
        // Even far over the limit, the lower bound still fails it.
        assert_eq!(estimate.under(10.0), Verdict::Fail);
    }

    #[test]
    fn many_samples_give_a_tight_interval_around_the_percentile() {
        // 100,000 samples spread evenly over 0–100 ms: p95 is 95 ms.
        let estimate = Estimate::of(&uniform(100_000, 100_000), 95.0);
        assert!((estimate.ms - 95.0).abs() < 0.1, "{estimate:?}");
        let high = estimate.high_ms.unwrap();
        assert!(estimate.low_ms < 95.0 && high > 95.0, "{estimate:?}");
        assert!(high - estimate.low_ms < 0.5, "{estimate:?}");
        assert_eq!(estimate.under(96.0), Verdict::Pass);
        assert_eq!(estimate.under(95.0), Verdict::Inconclusive);
        assert_eq!(estimate.under(94.0), Verdict::Fail);
    }

    #[test]
    fn an_empty_histogram_judges_nothing() {
        let estimate = Estimate::of(&uniform(0, 1), 95.0);
        assert_eq!(estimate.under(500.0), Verdict::Inconclusive);
        assert_eq!(estimate.under(0.0), Verdict::Inconclusive);
    }

    fn at(ms: f64, low: f64, high: Option<f64>) -> Estimate {
        Estimate {
            percentile: 95.0,
            ms,
            low_ms: low,
            high_ms: high,
            samples: 1000,
        }
    }

    #[test]
    fn an_increase_is_judged_on_both_intervals() {
        // 10 → 10.5 ms, tight: within 10 % (and the floor).
        let before = at(10.0, 9.9, Some(10.1));
        assert_eq!(
            increase_within(&before, &at(10.5, 10.4, Some(10.6)), 0.10, 0.0),
            Verdict::Pass
        );
        // 10 → 13 ms, tight: a regression.
        assert_eq!(
            increase_within(&before, &at(13.0, 12.9, Some(13.1)), 0.10, 0.0),
            Verdict::Fail
        );
        // 10 → 11.2 ms, but ±2 ms: cannot tell.
        assert_eq!(
            increase_within(&before, &at(11.2, 9.2, Some(13.2)), 0.10, 0.0),
            Verdict::Inconclusive
        );
        // Unbounded above: cannot pass; a `before` unbounded above cannot fail.
        assert_eq!(
            increase_within(&before, &at(10.2, 10.1, None), 0.10, 0.0),
            Verdict::Inconclusive
        );
        assert_eq!(
            increase_within(&at(10.0, 9.9, None), &at(13.0, 12.9, Some(13.1)), 0.10, 0.0),
            Verdict::Inconclusive
        );
        // Under the floor whatever the ratio.
        assert_eq!(
            increase_within(
                &at(1.0, 0.9, Some(1.1)),
                &at(1.5, 1.4, Some(1.6)),
                0.10,
                2.0
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn a_throughput_drop_is_judged_on_poisson_intervals() {
        assert_eq!(
            rate_within((10_000, 10.0), (9_500, 10.0), 0.10),
            Verdict::Pass
        );
        assert_eq!(
            rate_within((10_000, 10.0), (8_000, 10.0), 0.10),
            Verdict::Fail
        );
        assert_eq!(
            rate_within((100, 10.0), (85, 10.0), 0.10),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn the_worst_verdict_wins() {
        use Verdict::*;
        assert_eq!(Verdict::all([Pass, Pass]), Pass);
        assert_eq!(Verdict::all([Pass, Inconclusive]), Inconclusive);
        assert_eq!(Verdict::all([Inconclusive, Fail, Pass]), Fail);
        assert_eq!(Verdict::all([]), Pass);
    }
}
