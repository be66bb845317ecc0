//! Billing arithmetic, pure: per started second at a flat hourly rate, money kept exact until it is
//! displayed. The rules a customer checks against are written out in `docs/metering.md`.
//!
//! Units: a rate is integer micro-dollars per hour (`$4.50/h` = `4_500_000`). An [`Amount`] is the
//! exact product `rate × billed seconds`, i.e. in units of 1/3600 micro-dollar. No decimal unit is
//! exact here (one second at 1 µUSD/h is 277.77… picodollars, 3600 has a factor 9), so the division
//! by 3600 happens once, when an amount is displayed; sums of amounts never drift.

use serde::{Deserialize, Serialize};

/// The default flat rate: $4.50 per hour.
pub const DEFAULT_RATE_MICROUSD_PER_HOUR: u64 = 4_500_000;

/// One [`Amount`] unit is 1/3600 µUSD, so a dollar is this many units.
const UNITS_PER_USD: u128 = 3_600 * 1_000_000;
/// A cent in [`Amount`] units.
const UNITS_PER_CENT: u128 = UNITS_PER_USD / 100;
/// A picodollar is 1/277.77… units: `units × PICO_NUM / PICO_DEN` picodollars.
const PICO_PER_UNIT_NUM: u128 = 1_000_000;
const PICO_PER_UNIT_DEN: u128 = 3_600;

/// Seconds billed for a session that opened at `start_unix_ms` and ended at `end_unix_ms`.
///
/// Per started second: the elapsed milliseconds are rounded up to whole seconds, and a session that
/// opened is billed at least one second (0 ms → 1 s, 1000 ms → 1 s, 1001 ms → 2 s). An end before
/// the start (the wall clock stepped back) counts as 0 ms elapsed, so it is billed 1 s, never a
/// negative or a wrapped-around duration.
pub fn billed_seconds(start_unix_ms: i64, end_unix_ms: i64) -> u64 {
    let elapsed_ms = (end_unix_ms as i128 - start_unix_ms as i128).max(0) as u128;
    let seconds = elapsed_ms.div_ceil(1000).max(1);
    u64::try_from(seconds).unwrap_or(u64::MAX)
}

/// What `billed_seconds` cost at `rate_microusd_per_hour`, exactly.
pub fn amount(billed_seconds: u64, rate_microusd_per_hour: u64) -> Amount {
    Amount::from_units(billed_seconds as u128 * rate_microusd_per_hour as u128)
}

/// Converts a configured `$/h` rate to integer micro-dollars per hour (rounded to the nearest
/// micro-dollar); `None` for a negative, non-finite or absurd (over $1,000,000/h) rate.
pub fn rate_microusd_per_hour(usd_per_hour: f64) -> Option<u64> {
    (usd_per_hour.is_finite() && (0.0..=1e6).contains(&usd_per_hour)).then(|| (usd_per_hour * 1e6).round() as u64)
}

/// An exact amount of money: `rate (µUSD/h) × seconds`, in units of 1/3600 µUSD.
///
/// Sums are exact (`amount(a + b, r) == amount(a, r) + amount(b, r)`); the only rounding happens
/// in [`Amount::cents`] and the display functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(u128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// From the raw unit (1/3600 µUSD), as stored in the ledger.
    pub const fn from_units(microusd_seconds_per_hour: u128) -> Amount {
        Amount(microusd_seconds_per_hour)
    }

    /// The raw unit (1/3600 µUSD): `rate_microusd_per_hour × billed_seconds`.
    pub const fn units(self) -> u128 {
        self.0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// Whole cents, rounded half up (a half cent rounds to the next cent). Only for display and
    /// invoices: round a total once, not each part.
    pub fn cents(self) -> u128 {
        (self.0 + UNITS_PER_CENT / 2) / UNITS_PER_CENT
    }

    /// Picodollars, rounded half up: to set an amount beside the gateway's picodollar costs.
    pub fn picousd(self) -> u128 {
        (self.0 * PICO_PER_UNIT_NUM + PICO_PER_UNIT_DEN / 2) / PICO_PER_UNIT_DEN
    }

    /// Dollars as a float, for JSON reports only; sums are made on `Amount`.
    pub fn usd_f64(self) -> f64 {
        self.0 as f64 / UNITS_PER_USD as f64
    }

    /// `$4.50`: rounded half up to the cent.
    pub fn display_usd(self) -> String {
        let cents = self.cents();
        format!("${}.{:02}", cents / 100, cents % 100)
    }

    /// `$0.001250000000`: to the picodollar, rounded half up. Exact whenever the rate is a multiple
    /// of 9 µUSD/h (the default $4.50/h is: one second costs exactly $0.00125).
    pub fn display_usd_full(self) -> String {
        let pico = self.picousd();
        format!("${}.{:012}", pico / 1_000_000_000_000, pico % 1_000_000_000_000)
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, |a, b| a + b)
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Prng;

    const R: u64 = DEFAULT_RATE_MICROUSD_PER_HOUR;

    #[test]
    fn per_started_second_examples() {
        assert_eq!(billed_seconds(0, 0), 1, "a session that opened is billed at least one second");
        assert_eq!(billed_seconds(0, 1), 1);
        assert_eq!(billed_seconds(0, 1000), 1);
        assert_eq!(billed_seconds(0, 1001), 2);
        assert_eq!(billed_seconds(5_000, 4_000), 1, "clock went backwards: 0 elapsed");
        assert_eq!(billed_seconds(i64::MAX, i64::MIN), 1);
        assert_eq!(billed_seconds(i64::MIN, i64::MAX), u64::MAX.div_ceil(1000), "the widest span does not overflow");
        assert_eq!(billed_seconds(1_700_000_000_000, 1_700_000_000_000 + 3_600_000), 3600);
    }

    #[test]
    fn display_rounds_half_up_to_the_cent() {
        assert_eq!(amount(1, R).display_usd_full(), "$0.001250000000");
        assert_eq!(amount(1, R).display_usd(), "$0.00");
        assert_eq!(amount(3, R).display_usd(), "$0.00"); // 0.00375
        assert_eq!(amount(4, R).display_usd(), "$0.01"); // 0.005 exactly: half up
        assert_eq!(amount(12, R).display_usd(), "$0.02"); // 0.015 exactly: half up
        assert_eq!(amount(3600, R).display_usd(), "$4.50");
        assert_eq!(amount(3600 * 1000, R).display_usd(), "$4500.00");
        // $1/h is not a multiple of 9 µUSD/h: one second is 0.000277…, shown to the picodollar.
        assert_eq!(amount(1, 1_000_000).display_usd_full(), "$0.000277777778");
        assert_eq!(amount(3600, 1_000_000).display_usd_full(), "$1.000000000000");
        assert_eq!(rate_microusd_per_hour(4.5), Some(R));
        assert_eq!(rate_microusd_per_hour(-1.0), None);
        assert_eq!(rate_microusd_per_hour(f64::NAN), None);
    }

    #[test]
    fn billed_seconds_properties() {
        let mut rng = Prng(0x5eed_b111);
        for _ in 0..20_000 {
            let start = rng.next_u64() as i64 >> 20; // about ±8.8e12 ms: ±280 years around 1970
            let elapsed = match rng.below(4) {
                0 => rng.below_u64(3_000) as i64,
                1 => rng.below_u64(86_400_000) as i64,
                2 => -(rng.below_u64(10_000_000) as i64), // clock went backwards
                _ => 1000 * rng.below_u64(100_000) as i64 + rng.below_u64(2) as i64,
            };
            let end = start + elapsed;
            let s = billed_seconds(start, end);
            // Never zero, never negative: at least one second.
            assert!(s >= 1);
            // Per started second: covers the elapsed time, and by less than one second.
            let ms = elapsed.max(0) as u128;
            assert!(s as u128 * 1000 >= ms, "{start} {end} → {s}");
            assert!((s as u128 - 1) * 1000 < ms.max(1), "{start} {end} → {s}");
            // Monotonic in the end time.
            let later = end + rng.below_u64(5_000) as i64;
            assert!(billed_seconds(start, later) >= s);
            // Boundaries: exactly k seconds is k, one millisecond more is k + 1.
            let k = 1 + rng.below_u64(100_000) as i64;
            assert_eq!(billed_seconds(start, start + 1000 * k), k as u64);
            assert_eq!(billed_seconds(start, start + 1000 * k + 1), k as u64 + 1);
            // Shifting both ends by the same offset changes nothing.
            let shift = rng.below_u64(1_000_000) as i64;
            assert_eq!(billed_seconds(start + shift, end + shift), s);
        }
    }

    #[test]
    fn amounts_are_exact_and_additive() {
        // Identity that holds: with per-session rounding to started seconds, the total equals the
        // sum of each session's exact amount, which equals the rate times the sum of billed seconds
        // (for one rate). It is NOT the amount of the summed raw durations: rounding up per session
        // makes Σ ceil(d_i) ≥ ceil(Σ d_i). Cents are rounded once on the total; rounding each session
        // instead may differ from that by at most half a cent per session.
        let mut rng = Prng(0xa11_0c8);
        for _ in 0..200 {
            let rate = if rng.below(2) == 0 { R } else { rng.below_u64(1_000_000_000) };
            let n = 1 + rng.below(200);
            let mut total = Amount::ZERO;
            let mut total_seconds = 0u64;
            let mut total_ms = 0u128;
            let mut sum_of_cents = 0u128;
            for _ in 0..n {
                let start = rng.below_u64(4_000_000_000_000) as i64;
                let end = start + rng.below_u64(7_200_000) as i64;
                let s = billed_seconds(start, end);
                let a = amount(s, rate);
                assert_eq!(a.units(), s as u128 * rate as u128);
                assert!(amount(s + 1, rate) >= a, "monotonic in seconds");
                assert!(amount(s, rate + 1) >= a, "monotonic in the rate");
                total = total + a;
                total_seconds += s;
                total_ms += (end - start) as u128;
                sum_of_cents += a.cents();
            }
            assert_eq!(total, amount(total_seconds, rate), "totals equal the sum of sessions, exactly");
            assert!(total_seconds as u128 * 1000 >= total_ms);
            let diff = sum_of_cents.abs_diff(total.cents());
            assert!(diff * 2 <= n as u128, "per-session rounding drifts by at most ½ cent each: {diff} over {n}");
        }
    }

    #[test]
    fn cents_match_an_independent_rounding() {
        // Half up to the cent, cross-checked with exact rational comparison.
        let mut rng = Prng(77);
        for _ in 0..20_000 {
            let a = amount(rng.below_u64(10_000_000), rng.below_u64(100_000_000));
            let c = a.cents();
            // c - 1/2 <= a/cent < c + 1/2, in integers: (2c - 1)·cent <= 2a < (2c + 1)·cent
            let two_a = 2 * a.units();
            assert!(two_a < (2 * c + 1) * UNITS_PER_CENT);
            assert!(c == 0 || (2 * c - 1) * UNITS_PER_CENT <= two_a);
            assert!((a.usd_f64() * 100.0 - c as f64).abs() <= 0.5 + 1e-6);
        }
    }
}
