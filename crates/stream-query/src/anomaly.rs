//! Anomaly detection behind `AnomalyDetection_SpikeAndDip` and `AnomalyDetection_ChangePoint`:
//! pure, deterministic functions over one partition's history (the values before the current
//! event, oldest first). Each is O(history) per event.
//!
//! **Spikes and dips: adaptive kernel density estimation.** The history's distribution is
//! estimated with Gaussian kernels, one per past value. The global bandwidth is Silverman's rule
//! `h = 1.06 * sd * n^(-1/5)`; each value's kernel is widened or narrowed by its local factor
//! `(f(x_i) / g)^(-1/2)`, where `f(x_i)` is the pilot density at `x_i` when it entered the
//! history and `g` the geometric mean of those pilot densities (Abramson's adaptive estimator;
//! a value in a sparse region gets a wider kernel). The new value's upper and lower tail
//! probabilities under that estimate are `p_up = mean(1 - Phi((x - x_i) / h_i))` and
//! `p_down = mean(Phi((x - x_i) / h_i))`. The score is a p-value, as in ASA (lower is more
//! anomalous): `p_up` for spikes, `p_down` for dips, the smaller of the two for both; the event
//! is an anomaly when the score is at most `1 - confidence` (95 -> 0.05).
//!
//! **Change points: an exchangeability martingale.** For each new value a conformal p-value is
//! computed: its strangeness is its distance from the mean of the history plus itself, and
//! `p = (#{history values at least as strange} + 1) / (n + 1)` (ties count as stranger, so p
//! is never too small; no randomisation, so the result is deterministic). A power martingale
//! bets against exchangeability with `eps * p^(eps - 1)`, `eps = 0.1` (its mean is 1 when p is
//! uniform). Its log is kept from going below 0 (a CUSUM-style restart, so a long calm history
//! does not bury a later change): `log M = max(0, log M + ln(eps) + (eps - 1) ln p)`. While
//! values stay exchangeable (no change), p-values are uniform and the increments have a negative
//! mean, so `M` stays near 1. A level shift gives a run of small p-values and `M` grows; the event
//! where it reaches `1 / (1 - confidence)` (100 at confidence 99) is a change point. Then the
//! martingale restarts and the history keeps only the newest value, so the new level is learnt
//! afresh and one change is reported once. One strange value alone cannot reach the threshold
//! at confidence 99 when the history holds 20 or more values (its p-value is at least
//! `1 / (n + 1)`), so a single spike is not a change point.
//!
//! ChangePoint's score is the martingale value `M` (it grows with the evidence of a change).
//! Both need at least [`MIN_HISTORY`] past values; before that the score is 1 (no evidence) and
//! no event is an anomaly.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Past values needed before a score is given.
pub(crate) const MIN_HISTORY: usize = 5;

/// Which side `AnomalyDetection_SpikeAndDip` watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mode {
    Spikes,
    Dips,
    Both,
}

impl Mode {
    pub(crate) fn parse(s: &str) -> Option<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "spikes" => Some(Mode::Spikes),
            "dips" => Some(Mode::Dips),
            "spikesanddips" => Some(Mode::Both),
            _ => None,
        }
    }
}

/// One past value with the log of its pilot density when it entered the history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Point {
    pub t: i64,
    pub x: f64,
    pub log_pilot: f64,
    /// `exp(-log_pilot / 2)`: the kernel's width factor before the geometric-mean scaling.
    #[serde(default)]
    pub scale: f64,
}

/// A partition's history for the anomaly functions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct History {
    pub points: VecDeque<Point>,
    /// Running sums over `points` (x, x^2, log pilot density) for O(1) mean, sd and g.
    sum: f64,
    sum_sq: f64,
    sum_log_pilot: f64,
    /// Change points: the log of the martingale, kept at 0 or above.
    log_m: f64,
}

const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The standard normal distribution function. Abramowitz and Stegun 7.1.26 for erf (absolute
/// error below 1.5e-7, one exponential): far below what a confidence threshold looks at, and four
/// times faster than a full-precision erfc, which matters at 600 kernels per event.
fn phi(z: f64) -> f64 {
    // beyond 6 standard deviations the tail is below 1e-9
    if z > 6.0 {
        return 1.0;
    }
    if z < -6.0 {
        return 0.0;
    }
    let x = z.abs() * std::f64::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let tail = 0.5 * poly * (-x * x).exp(); // P(Z > |z|)
    if z >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

impl History {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// Drop values older than `oldest` (LIMIT DURATION).
    pub(crate) fn expire(&mut self, oldest: i64) {
        while self.points.front().is_some_and(|p| p.t < oldest) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(p) = self.points.pop_front() {
            self.sum -= p.x;
            self.sum_sq -= p.x * p.x;
            self.sum_log_pilot -= p.log_pilot;
        }
        if self.points.is_empty() {
            // no drift from repeated subtraction
            self.sum = 0.0;
            self.sum_sq = 0.0;
            self.sum_log_pilot = 0.0;
        }
    }

    /// Add a value, keeping at most `cap` values.
    pub(crate) fn push(&mut self, t: i64, x: f64, cap: usize) {
        let log_pilot = self.pilot_density(x).max(f64::MIN_POSITIVE).ln();
        self.points.push_back(Point {
            t,
            x,
            log_pilot,
            scale: (-0.5 * log_pilot).exp(),
        });
        self.sum += x;
        self.sum_sq += x * x;
        self.sum_log_pilot += log_pilot;
        while self.points.len() > cap {
            self.pop_front();
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.points.len().max(1) as f64
    }

    /// Silverman's bandwidth, with a floor so a constant history still has a scale.
    fn bandwidth(&self) -> f64 {
        let n = self.points.len().max(1) as f64;
        let mean = self.mean();
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let sd = var.sqrt();
        let h = 1.06 * sd * n.powf(-0.2);
        h.max(1e-9 * mean.abs().max(1.0))
    }

    /// Fixed-bandwidth density of the history at `x` (the pilot estimate).
    fn pilot_density(&self, x: f64) -> f64 {
        if self.points.is_empty() {
            return 1.0;
        }
        let h = self.bandwidth();
        let s: f64 = self
            .points
            .iter()
            .map(|p| {
                let z = (x - p.x) / h;
                if z.abs() > 8.0 {
                    0.0
                } else {
                    (-0.5 * z * z).exp()
                }
            })
            .sum();
        s * INV_SQRT_2PI / (h * self.points.len() as f64)
    }

    /// Upper and lower tail probabilities of `x` under the adaptive estimate.
    fn tails(&self, x: f64) -> (f64, f64) {
        let n = self.points.len() as f64;
        let h = self.bandwidth();
        let log_g = self.sum_log_pilot / n;
        // lambda_i = (f(x_i) / g)^(-1/2) = scale_i * g^(1/2)
        let root_g = (0.5 * log_g).exp();
        let (mut up, mut down) = (0.0, 0.0);
        for p in &self.points {
            let scale = if p.scale > 0.0 {
                p.scale
            } else {
                (-0.5 * p.log_pilot).exp() // a checkpoint from before `scale` was kept
            };
            let lambda = (scale * root_g).clamp(0.1, 10.0);
            let c = phi((x - p.x) / (h * lambda));
            down += c;
            up += 1.0 - c;
        }
        (up / n, down / n)
    }

    /// SpikeAndDip's (p-value, is anomaly) for `x` against this history.
    pub(crate) fn spike_and_dip(&self, x: f64, confidence: f64, mode: Mode) -> (f64, bool) {
        if self.points.len() < MIN_HISTORY {
            return (1.0, false);
        }
        let (up, down) = self.tails(x);
        let p = match mode {
            Mode::Spikes => up,
            Mode::Dips => down,
            Mode::Both => up.min(down),
        };
        let p = p.clamp(0.0, 1.0);
        (p, p <= 1.0 - confidence / 100.0)
    }

    /// ChangePoint's (martingale value, is change point) for `x`; updates the martingale. The
    /// caller pushes `x` afterwards, and on a change point calls [`History::restart`] first.
    pub(crate) fn change_point(&mut self, x: f64, confidence: f64) -> (f64, bool) {
        if self.points.len() < MIN_HISTORY {
            return (1.0, false);
        }
        let n = self.points.len();
        let mean = (self.sum + x) / (n + 1) as f64;
        let a = (x - mean).abs();
        let stranger = self
            .points
            .iter()
            .filter(|p| (p.x - mean).abs() >= a)
            .count();
        let p = (stranger + 1) as f64 / (n + 1) as f64;
        const EPS: f64 = 0.1;
        let bet = EPS.ln() + (EPS - 1.0) * p.ln();
        self.log_m = (self.log_m + bet).max(0.0);
        let threshold = (1.0 / (1.0 - confidence / 100.0)).ln();
        (self.log_m.min(700.0).exp(), self.log_m >= threshold)
    }

    /// After a change point: forget the old level and restart the martingale.
    pub(crate) fn restart(&mut self) {
        while !self.points.is_empty() {
            self.pop_front();
        }
        self.log_m = 0.0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1] (a fixed linear congruential sequence).
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // sum of 4 uniforms: roughly normal
                let mut acc = 0.0;
                for k in 0..4 {
                    acc += ((s >> (16 * k)) & 0xffff) as f64 / 65535.0;
                }
                (acc - 2.0) / 2.0
            })
            .collect()
    }

    fn run_spikes(xs: &[f64], conf: f64, hist: usize, mode: Mode) -> Vec<usize> {
        let mut h = History::default();
        let mut hits = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            if h.spike_and_dip(x, conf, mode).1 {
                hits.push(i);
            }
            h.push(i as i64, x, hist);
        }
        hits
    }

    #[test]
    fn one_spike_in_flat_noise_is_the_only_anomaly() {
        let mut xs: Vec<f64> = noise(300, 7).iter().map(|n| 37.0 + 0.1 * n).collect();
        xs[200] = 39.5;
        assert_eq!(run_spikes(&xs, 99.9, 120, Mode::Both), vec![200]);
        assert_eq!(run_spikes(&xs, 99.9, 120, Mode::Spikes), vec![200]);
        // dips-only ignores the spike
        assert!(run_spikes(&xs, 99.9, 120, Mode::Dips).is_empty());
        xs[200] = 34.5;
        assert_eq!(run_spikes(&xs, 99.9, 120, Mode::Dips), vec![200]);
        assert!(run_spikes(&xs, 99.9, 120, Mode::Spikes).is_empty());
    }

    #[test]
    fn level_shift_is_one_change_point_and_a_spike_is_none() {
        let n = noise(400, 11);
        let mut xs: Vec<f64> = n.iter().map(|v| 37.0 + 0.1 * v).collect();
        xs[150] = 39.5; // a spike: not a change point
        for x in xs.iter_mut().skip(250) {
            *x += 1.5; // a level shift at 250
        }
        let mut h = History::default();
        let mut hits = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            let (_, cp) = h.change_point(x, 99.0);
            if cp {
                hits.push(i);
                h.restart();
            }
            h.push(i as i64, x, 100);
        }
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!((250..260).contains(&hits[0]), "{hits:?}");
    }

    #[test]
    fn constant_history_still_scores() {
        let mut h = History::default();
        for i in 0..10 {
            h.push(i, 5.0, 10);
        }
        assert!(!h.spike_and_dip(5.0, 95.0, Mode::Both).1);
        assert!(h.spike_and_dip(6.0, 95.0, Mode::Both).1);
    }

    #[test]
    fn normal_distribution_function() {
        for (z, want) in [
            (0.0, 0.5),
            (1.959_963_985, 0.975),
            (-1.0, 0.158_655_254),
            (-3.0, 0.001_349_898),
            (-5.0, 2.866_515_7e-7),
            (-6.5, 0.0),
            (9.0, 1.0),
        ] {
            assert!(
                (phi(z) - want).abs() < 2e-7,
                "phi({z}) = {} not {want}",
                phi(z)
            );
        }
    }

    #[test]
    fn expiry_keeps_sums_right() {
        let mut h = History::default();
        for i in 0..10 {
            h.push(i, i as f64, 100);
        }
        h.expire(5);
        assert_eq!(h.len(), 5);
        assert!((h.mean() - 7.0).abs() < 1e-9);
    }
}
