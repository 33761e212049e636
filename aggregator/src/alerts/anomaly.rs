//! Anomalies: an affiliate whose last complete hour is far from its own
//! trailing day, by a robust z-score.
//!
//! For each affiliate, the [`BASELINE_HOURS`] UTC hours before the last
//! complete hour are its baseline. The last complete hour's clicks, and
//! its conversion rate (leads and sales per click), are compared with the
//! baseline's median: `z = 0.6745 (x − median) / MAD`, MAD the median
//! absolute deviation, which one burst in the baseline does not move (a
//! mean and standard deviation would). |z| above [`Z_LIMIT`] is a finding.
//! When the MAD is 0 (a steady baseline), the mean absolute deviation
//! stands in (scaled by 1.2533 to match); when that is 0 too, a change of
//! more than the median itself (a doubling, or a drop to nothing) is one.
//!
//! Small numbers are noise: an hour is compared only when it or the
//! baseline's median has at least [`CLICKS_MIN`] clicks, and a conversion
//! rate only from hours with that many clicks, needing [`RATE_HOURS_MIN`]
//! such hours in the baseline.

use std::collections::BTreeMap;

use edgetally_protocol::RollupKey;
use edgetally_protocol::batch::RollupCounts;

use super::{Alert, AlertKind};
use crate::store::Tables;

/// Hours in the trailing baseline: a day, so the daily rhythm is in it.
pub(crate) const BASELINE_HOURS: i64 = 24;
/// The robust z-score past which an hour is an anomaly (Iglewicz and
/// Hoaglin's 3.5).
pub(crate) const Z_LIMIT: f64 = 3.5;
/// Clicks an hour needs before it says anything.
pub(crate) const CLICKS_MIN: u64 = 20;
/// Baseline hours with [`CLICKS_MIN`] clicks a conversion rate needs.
pub(crate) const RATE_HOURS_MIN: usize = 6;

const HOUR_MS: i64 = 3_600_000;

/// Clicks and conversions of one affiliate in one hour.
#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    clicks: u64,
    conversions: u64,
}

/// Which measure an anomaly is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    ClickVolume,
    ConversionRate,
}

/// The anomalies at `now_ms`, in affiliate order.
pub(crate) fn anomalies(tables: &Tables, now_ms: i64) -> Vec<Alert> {
    let hour_ms = now_ms.div_euclid(HOUR_MS) * HOUR_MS - HOUR_MS;
    let from_ms = hour_ms - BASELINE_HOURS * HOUR_MS;
    let lower = RollupKey { minute_ms: from_ms, affiliate_id: 0, campaign_id: 0, sub1: String::new() };
    // Per affiliate: hour index 0..BASELINE_HOURS is the baseline, the
    // last index the hour judged.
    let mut hours: BTreeMap<u32, [Hour; BASELINE_HOURS as usize + 1]> = BTreeMap::new();
    for (key, counts) in tables.rollups.range(lower..) {
        if key.minute_ms >= hour_ms + HOUR_MS {
            break;
        }
        let RollupCounts { clicks, leads, sales, .. } = *counts;
        let hour_idx = ((key.minute_ms - from_ms) / HOUR_MS) as usize;
        let hour = &mut hours.entry(key.affiliate_id).or_default()[hour_idx];
        hour.clicks += clicks;
        hour.conversions += leads + sales;
    }
    let mut alerts = Vec::new();
    for (affiliate_id, hours) in hours {
        let (baseline, judged) = hours.split_at(BASELINE_HOURS as usize);
        let judged = judged[0];
        let clicks: Vec<f64> = baseline.iter().map(|hour| hour.clicks as f64).collect();
        let median_clicks = median(&clicks);
        if (judged.clicks >= CLICKS_MIN || median_clicks >= CLICKS_MIN as f64)
            && let Some(z) = robust_z(judged.clicks as f64, &clicks)
        {
            alerts.push(alert(hour_ms, affiliate_id, Measure::ClickVolume, judged.clicks, z, |_| {
                format!(
                    "affiliate {affiliate_id}: {} clicks in the hour, against a median of {median_clicks} over the {BASELINE_HOURS} hours before",
                    judged.clicks
                )
            }));
        }
        let rate = |hour: &Hour| hour.conversions as f64 / hour.clicks as f64;
        let rates: Vec<f64> = baseline.iter().filter(|hour| hour.clicks >= CLICKS_MIN).map(rate).collect();
        if judged.clicks >= CLICKS_MIN
            && rates.len() >= RATE_HOURS_MIN
            && let Some(z) = robust_z(rate(&judged), &rates)
        {
            let median_rate = median(&rates);
            alerts.push(alert(hour_ms, affiliate_id, Measure::ConversionRate, judged.conversions, z, |_| {
                format!(
                    "affiliate {affiliate_id}: conversion rate {:.2} % in the hour ({} of {} clicks), against a median of {:.2} %",
                    100.0 * rate(&judged),
                    judged.conversions,
                    judged.clicks,
                    100.0 * median_rate
                )
            }));
        }
    }
    alerts
}

fn alert(
    hour_ms: i64,
    affiliate_id: u32,
    measure: Measure,
    count: u64,
    z: f64,
    message: impl FnOnce(()) -> String,
) -> Alert {
    let z_text = if z.is_finite() { format!("{z:+.1}") } else { "past any spread".to_owned() };
    Alert {
        time_ms: hour_ms,
        kind: match measure {
            Measure::ClickVolume => AlertKind::ClickVolume,
            Measure::ConversionRate => AlertKind::ConversionRate,
        },
        edge_id: None,
        affiliate_id: Some(affiliate_id),
        campaign_id: None,
        sub1: None,
        count,
        message: format!("{} (robust z {z_text})", message(())),
    }
}

/// The robust z-score of `x` against `baseline` when it is past
/// [`Z_LIMIT`]; `None` when `x` is ordinary.
fn robust_z(x: f64, baseline: &[f64]) -> Option<f64> {
    let median = median(baseline);
    let deviations: Vec<f64> = baseline.iter().map(|value| (value - median).abs()).collect();
    let mad = median_of(deviations.clone());
    let distance = x - median;
    let z = if mad > 0.0 {
        0.6745 * distance / mad
    } else {
        let mean_deviation = deviations.iter().sum::<f64>() / deviations.len() as f64;
        if mean_deviation > 0.0 {
            distance / (1.2533 * mean_deviation)
        } else if distance.abs() > median {
            // A steady baseline, and a change larger than it.
            distance.signum() * f64::INFINITY
        } else {
            0.0
        }
    };
    (z.abs() > Z_LIMIT).then_some(z)
}

fn median(values: &[f64]) -> f64 {
    median_of(values.to_vec())
}

fn median_of(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour boundary, and "now" half an hour into the hour after the
    /// one judged.
    const HOUR0: i64 = 1_795_514_400_000 - 1_795_514_400_000 % HOUR_MS;
    const NOW: i64 = HOUR0 + (BASELINE_HOURS + 1) * HOUR_MS + HOUR_MS / 2;

    /// Tables where affiliate `affiliate_id` had `clicks[h]` clicks and
    /// `conversions[h]` conversions in hour `h` (0..=24, 24 judged).
    fn add(tables: &mut Tables, affiliate_id: u32, clicks: &[u64], conversions: &[u64]) {
        for (hour_idx, (&clicks, &sales)) in clicks.iter().zip(conversions).enumerate() {
            let key = RollupKey {
                minute_ms: HOUR0 + hour_idx as i64 * HOUR_MS + 5 * 60_000,
                affiliate_id,
                campaign_id: 1,
                sub1: String::new(),
            };
            tables.rollups.insert(key, RollupCounts { clicks, sales, ..RollupCounts::default() });
        }
    }

    fn summary(alerts: &[Alert]) -> Vec<(&'static str, Option<u32>, u64, i64)> {
        alerts.iter().map(|alert| (alert.kind.as_str(), alert.affiliate_id, alert.count, alert.time_ms)).collect()
    }

    /// A day of clicks around 100 an hour, with one burst, then `last`.
    fn day_then(last: u64) -> Vec<u64> {
        let mut clicks: Vec<u64> = (0..BASELINE_HOURS as u64).map(|hour| 90 + (hour * 7) % 21).collect();
        clicks[5] = 900;
        clicks.push(last);
        clicks
    }

    #[test]
    fn a_burst_or_a_collapse_of_clicks_is_found_and_ordinary_hours_are_not() {
        let mut tables = Tables::default();
        let none = vec![0; BASELINE_HOURS as usize + 1];
        add(&mut tables, 1, &day_then(104), &none);
        add(&mut tables, 2, &day_then(950), &none);
        add(&mut tables, 3, &day_then(0), &none);
        let judged_ms = HOUR0 + BASELINE_HOURS * HOUR_MS;
        assert_eq!(
            summary(&anomalies(&tables, NOW)),
            [("click_volume", Some(2), 950, judged_ms), ("click_volume", Some(3), 0, judged_ms)]
        );
        // The burst in the baseline (hour 5) moves neither the median nor
        // the spread: the burst judged is still found.
        let alerts = anomalies(&tables, NOW);
        assert!(alerts[0].message.contains("950 clicks in the hour, against a median of 97 "), "{}", alerts[0].message);
    }

    #[test]
    fn a_conversion_rate_far_from_its_baseline_is_found() {
        let mut tables = Tables::default();
        let clicks = vec![200; BASELINE_HOURS as usize + 1];
        // About 2 % converting, then 30 %: click fraud's opposite, or an
        // affiliate stuffing conversions.
        let mut steady: Vec<u64> = (0..BASELINE_HOURS as u64).map(|hour| 3 + hour % 3).collect();
        steady.push(60);
        add(&mut tables, 7, &clicks, &steady);
        let mut ordinary: Vec<u64> = (0..BASELINE_HOURS as u64).map(|hour| 3 + hour % 3).collect();
        ordinary.push(5);
        add(&mut tables, 8, &clicks, &ordinary);
        assert_eq!(
            summary(&anomalies(&tables, NOW)),
            [("conversion_rate", Some(7), 60, HOUR0 + BASELINE_HOURS * HOUR_MS)]
        );
    }

    #[test]
    fn small_affiliates_and_short_histories_say_nothing() {
        let mut tables = Tables::default();
        // Tiny: 1 click an hour, then 15.
        let mut tiny = vec![1; BASELINE_HOURS as usize];
        tiny.push(15);
        add(&mut tables, 4, &tiny, &vec![0; BASELINE_HOURS as usize + 1]);
        assert_eq!(summary(&anomalies(&tables, NOW)), []);
        // A steady baseline: a doubling is found, a small change is not.
        let mut steady = vec![50; BASELINE_HOURS as usize];
        steady.push(101);
        add(&mut tables, 5, &steady, &vec![0; BASELINE_HOURS as usize + 1]);
        let mut steady = vec![50; BASELINE_HOURS as usize];
        steady.push(60);
        add(&mut tables, 6, &steady, &vec![0; BASELINE_HOURS as usize + 1]);
        assert_eq!(summary(&anomalies(&tables, NOW)).iter().map(|row| row.1).collect::<Vec<_>>(), [Some(5)]);
        assert!(anomalies(&tables, NOW)[0].message.contains("past any spread"));
    }
}
