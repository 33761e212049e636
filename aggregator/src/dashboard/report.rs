//! What the dashboard's data calls answer: periods in a time zone, the
//! metrics of a set of rollups, and the overview, table, series, alerts
//! and health answers built from them (`API.md` beside the assets).
//!
//! Every answer is computed under one store lock from the same
//! `Query::group_rollups` the Flight `rollups` answer uses, so the page,
//! Flight and Flight SQL cannot disagree. Money stays exact: `i128` sums,
//! written as decimal strings.

use std::collections::BTreeMap;

use edgetally_protocol::Currency;
use edgetally_protocol::batch::RollupCounts;
use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

use super::rates::{ExchangeRates, Overflow};
use crate::alerts::Alert;
use crate::query::{Granularity, GroupBy, GroupColumn, GroupKey, GroupTotals, Query, TimeBuckets};
use crate::store::{MoneyTotals, Store};

/// The most buckets a series may have: a month of hours (744) with room;
/// minutes only for a day or two.
pub(crate) const SERIES_BUCKETS_MAX: usize = 3_000;

/// The most alert rows an answer holds, newest first.
pub(crate) const ALERT_ROWS_MAX: usize = 1_000;

/// An edge is `lagging` once it has sent nothing for this long: it seals
/// four times a second, so 5 s is twenty missed flushes.
pub(crate) const EDGE_LAGGING_MS: i64 = 5_000;

/// A period a viewer can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeriodName {
    Today,
    Yesterday,
    Days7,
    Days30,
    Month,
}

/// A half-open range of rollup minutes, in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Period {
    pub(crate) name: &'static str,
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    pub(crate) tz: String,
}

/// One currency's money in an answer.
#[derive(Debug, Serialize)]
struct MoneyJson {
    currency: String,
    exponent: u8,
    revenue_minor: String,
    commission_minor: String,
    parent_commission_minor: String,
    payable_minor: String,
    margin_minor: String,
    epc_minor: Option<f64>,
}

/// The totals converted into the reporting currency.
#[derive(Debug, Serialize)]
struct ReportingJson {
    currency: String,
    exponent: u8,
    revenue_minor: String,
    payable_minor: String,
    margin_minor: String,
    epc_minor: Option<f64>,
    unconverted: Vec<String>,
}

/// The metrics of a set of rollups (`Metrics` of API.md).
#[derive(Debug, Serialize)]
pub(crate) struct Metrics {
    impressions: u64,
    clicks: u64,
    unique_clicks: u64,
    leads: u64,
    sales: u64,
    conversions: u64,
    duplicates: u64,
    /// Accepted events an edge's fraud rule set apart (in no other count).
    flagged: u64,
    conversion_rate: Option<f64>,
    money: Vec<MoneyJson>,
    reporting: Option<ReportingJson>,
}

#[derive(Debug, Serialize)]
struct Row {
    id: u32,
    #[serde(flatten)]
    metrics: Metrics,
}

#[derive(Debug, Serialize)]
struct BucketJson {
    start_ms: i64,
    end_ms: i64,
    #[serde(flatten)]
    metrics: Metrics,
}

/// What to read: a period, optional filters, and the rates to convert with.
pub(crate) struct Selection<'a> {
    pub(crate) period: Period,
    pub(crate) previous: Period,
    /// The zone of the period, for series buckets.
    pub(crate) zone: &'a TimeBuckets,
    pub(crate) affiliate_id: Option<u32>,
    pub(crate) campaign_id: Option<u32>,
    pub(crate) rates: Option<&'a ExchangeRates>,
}

/// Why an answer could not be computed; the message goes to the viewer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("{0}")]
    Overflow(#[from] Overflow),
    #[error("{0}")]
    Query(#[from] arrow_schema::ArrowError),
    #[error(
        "{n_buckets} buckets of {granularity} in the period, more than {SERIES_BUCKETS_MAX}: choose a coarser granularity"
    )]
    TooManyBuckets { n_buckets: usize, granularity: &'static str },
    #[error("time out of range: {0}")]
    Time(#[from] jiff::Error),
}

// === impl PeriodName ===

impl PeriodName {
    pub(crate) const ALL: [PeriodName; 5] =
        [PeriodName::Today, PeriodName::Yesterday, PeriodName::Days7, PeriodName::Days30, PeriodName::Month];

    pub(crate) fn parse(name: &str) -> Option<PeriodName> {
        PeriodName::ALL.into_iter().find(|period| period.as_str() == name)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PeriodName::Today => "today",
            PeriodName::Yesterday => "yesterday",
            PeriodName::Days7 => "7d",
            PeriodName::Days30 => "30d",
            PeriodName::Month => "month",
        }
    }

    /// The period at `now_ms` in `zone`, and the one of the same length
    /// before it. Days start at local midnight.
    pub(crate) fn resolve(self, zone: &TimeBuckets, now_ms: i64) -> Result<(Period, Period), ReportError> {
        let tz = zone.zone();
        let today = tz.to_datetime(Timestamp::from_millisecond(now_ms)?).date();
        let days_back = |days: u32| -> Result<Date, jiff::Error> {
            let mut date = today;
            for _ in 0..days {
                date = date.yesterday()?;
            }
            Ok(date)
        };
        let (first, end) = match self {
            PeriodName::Today => (today, today.tomorrow()?),
            PeriodName::Yesterday => (today.yesterday()?, today),
            PeriodName::Days7 => (days_back(6)?, today.tomorrow()?),
            PeriodName::Days30 => (days_back(29)?, today.tomorrow()?),
            PeriodName::Month => (today.first_of_month(), today.last_of_month().tomorrow()?),
        };
        let start_ms = |date: Date| -> Result<i64, jiff::Error> {
            Ok(date.to_zoned_datetime(tz.clone())?.timestamp().as_millisecond())
        };
        let (from_ms, to_ms) = (start_ms(first)?, start_ms(end)?);
        let tz_name = zone.zone_name().to_owned();
        let period = Period { name: self.as_str(), from_ms, to_ms, tz: tz_name.clone() };
        let previous = Period { name: "previous", from_ms: from_ms - (to_ms - from_ms), to_ms: from_ms, tz: tz_name };
        Ok((period, previous))
    }
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn of(totals: &GroupTotals, rates: Option<&ExchangeRates>) -> Result<Metrics, Overflow> {
        let counts: &RollupCounts = &totals.counts;
        let clicks = counts.clicks;
        let conversions = counts.leads + counts.sales;
        let per_click = |minor: i128| (clicks > 0).then(|| minor as f64 / clicks as f64);
        let money: Vec<(Currency, &MoneyTotals)> =
            totals.money.iter().filter(|(_, money)| **money != MoneyTotals::default()).map(|(c, m)| (*c, m)).collect();
        let money_json = money
            .iter()
            .map(|(currency, money)| {
                let payable = money.commission_minor + money.parent_commission_minor;
                MoneyJson {
                    currency: currency.code().to_owned(),
                    exponent: currency.exponent(),
                    revenue_minor: money.revenue_minor.to_string(),
                    commission_minor: money.commission_minor.to_string(),
                    parent_commission_minor: money.parent_commission_minor.to_string(),
                    payable_minor: payable.to_string(),
                    margin_minor: (money.revenue_minor - payable).to_string(),
                    epc_minor: per_click(payable),
                }
            })
            .collect();
        let reporting = rates
            .map(|rates| -> Result<ReportingJson, Overflow> {
                let (mut revenue, mut payable) = (0_i128, 0_i128);
                let mut unconverted = Vec::new();
                for (currency, money) in &money {
                    let currency_payable = money.commission_minor + money.parent_commission_minor;
                    match (rates.convert(money.revenue_minor, *currency), rates.convert(currency_payable, *currency)) {
                        (Some(revenue_converted), Some(payable_converted)) => {
                            revenue = revenue.checked_add(revenue_converted?).ok_or(Overflow)?;
                            payable = payable.checked_add(payable_converted?).ok_or(Overflow)?;
                        }
                        _ => unconverted.push(currency.code().to_owned()),
                    }
                }
                let reporting = rates.reporting();
                Ok(ReportingJson {
                    currency: reporting.code().to_owned(),
                    exponent: reporting.exponent(),
                    revenue_minor: revenue.to_string(),
                    payable_minor: payable.to_string(),
                    margin_minor: (revenue - payable).to_string(),
                    epc_minor: per_click(payable),
                    unconverted,
                })
            })
            .transpose()?;
        Ok(Metrics {
            impressions: counts.impressions,
            clicks,
            unique_clicks: counts.unique_clicks,
            leads: counts.leads,
            sales: counts.sales,
            conversions,
            duplicates: counts.duplicates,
            flagged: counts.n_flagged(),
            conversion_rate: (clicks > 0).then(|| conversions as f64 / clicks as f64),
            money: money_json,
            reporting,
        })
    }
}

// === impl Selection ===

impl Selection<'_> {
    /// The rollups query of `period`, grouped by `group_by`.
    fn query(&self, period: &Period, group_by: GroupBy, buckets: TimeBuckets) -> Query {
        let mut query = Query::whole(crate::query::Dataset::Rollups);
        query.from_ms = Some(period.from_ms);
        query.to_ms = Some(period.to_ms);
        query.affiliate_id = self.affiliate_id;
        query.campaign_id = self.campaign_id;
        query.group_by = group_by;
        query.buckets = buckets;
        query
    }

    fn ungrouped(&self, period: &Period) -> Query {
        self.query(period, GroupBy::NONE, TimeBuckets::utc(Granularity::Minute))
    }

    /// `{"version", "period", "previous", "current", "previous_metrics"}`.
    pub(crate) fn overview(&self, store: &Store) -> Result<serde_json::Value, ReportError> {
        let (current, previous) = (self.ungrouped(&self.period), self.ungrouped(&self.previous));
        let (version, groups) = store.read_versioned(|tables| {
            Ok::<_, ReportError>((current.group_rollups(tables)?, previous.group_rollups(tables)?))
        });
        let (current, previous) = groups?;
        let total = |groups: BTreeMap<GroupKey, GroupTotals>| Metrics::of(&sum(groups), self.rates);
        Ok(serde_json::json!({
            "version": version,
            "period": self.period,
            "previous": self.previous,
            "current": total(current)?,
            "previous_metrics": total(previous)?,
        }))
    }

    /// One row per affiliate or campaign of the period, by id.
    pub(crate) fn table(&self, store: &Store, by: GroupColumn) -> Result<(u64, Vec<(u32, GroupTotals)>), ReportError> {
        let mut group_by = GroupBy::NONE;
        group_by.insert(by);
        let query = self.query(&self.period, group_by, TimeBuckets::utc(Granularity::Minute));
        let (version, groups) = store.read_versioned(|tables| query.group_rollups(tables));
        let rows = groups?
            .into_iter()
            .map(|((_, affiliate_id, campaign_id, _), totals)| {
                let id = if by == GroupColumn::AffiliateId { affiliate_id } else { campaign_id };
                (id.unwrap_or_default(), totals)
            })
            .collect();
        Ok((version, rows))
    }

    pub(crate) fn table_json(
        &self,
        store: &Store,
        by: GroupColumn,
        q: Option<&str>,
    ) -> Result<serde_json::Value, ReportError> {
        let (version, rows) = self.table(store, by)?;
        let rows = rows
            .into_iter()
            .filter(|(id, _)| q.is_none_or(|q| id.to_string().contains(q)))
            .map(|(id, totals)| Ok(Row { id, metrics: Metrics::of(&totals, self.rates)? }))
            .collect::<Result<Vec<Row>, Overflow>>()?;
        let by = if by == GroupColumn::AffiliateId { "affiliate" } else { "campaign" };
        Ok(serde_json::json!({"version": version, "period": self.period, "by": by, "rows": rows}))
    }

    /// Every bucket of the period, empty ones too.
    pub(crate) fn series(&self, store: &Store, granularity: Granularity) -> Result<serde_json::Value, ReportError> {
        let buckets = TimeBuckets::new(granularity, self.zone.zone_name()).expect("the zone was found by name before");
        let mut starts = Vec::new();
        let mut start_ms = self.period.from_ms;
        while start_ms < self.period.to_ms {
            let bucket = buckets.bucket(start_ms)?;
            starts.push((bucket.start_ms.max(self.period.from_ms), bucket.end_ms.min(self.period.to_ms)));
            if starts.len() > SERIES_BUCKETS_MAX {
                let n_buckets =
                    ((self.period.to_ms - self.period.from_ms) / (bucket.end_ms - bucket.start_ms)) as usize;
                return Err(ReportError::TooManyBuckets { n_buckets, granularity: granularity.as_str() });
            }
            start_ms = bucket.end_ms;
        }
        let mut group_by = GroupBy::NONE;
        group_by.insert(GroupColumn::Minute);
        let query = self.query(&self.period, group_by, buckets);
        let (version, groups) = store.read_versioned(|tables| query.group_rollups(tables));
        let mut groups: BTreeMap<i64, GroupTotals> =
            groups?.into_iter().filter_map(|((start_ms, ..), totals)| Some((start_ms?, totals))).collect();
        let buckets = starts
            .into_iter()
            .map(|(start_ms, end_ms)| {
                let totals = groups.remove(&start_ms).unwrap_or_default();
                Ok(BucketJson { start_ms, end_ms, metrics: Metrics::of(&totals, self.rates)? })
            })
            .collect::<Result<Vec<_>, Overflow>>()?;
        Ok(serde_json::json!({
            "version": version,
            "period": self.period,
            "granularity": granularity.as_str(),
            "buckets": buckets,
        }))
    }
}

/// The totals of every group together.
fn sum(groups: BTreeMap<GroupKey, GroupTotals>) -> GroupTotals {
    let mut total = GroupTotals::default();
    for group in groups.into_values() {
        total.counts.merge(&group.counts);
        for (currency, money) in group.money {
            total.money.entry(currency).or_default().add(&money);
        }
    }
    total
}

/// One alert as the page lists it.
#[derive(Debug, Serialize)]
pub(crate) struct AlertJson {
    time_ms: i64,
    kind: &'static str,
    severity: &'static str,
    edge_id: Option<u32>,
    affiliate_id: Option<u32>,
    campaign_id: Option<u32>,
    sub1: Option<String>,
    count: u64,
    message: String,
}

/// The newest [`ALERT_ROWS_MAX`] findings first.
pub(crate) fn alert_rows(mut alerts: Vec<Alert>) -> Vec<AlertJson> {
    alerts.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then(a.kind.cmp(&b.kind)));
    alerts.truncate(ALERT_ROWS_MAX);
    alerts
        .into_iter()
        .map(|alert| AlertJson {
            time_ms: alert.time_ms,
            kind: alert.kind.as_str(),
            severity: alert.kind.severity(),
            edge_id: alert.edge_id,
            affiliate_id: alert.affiliate_id,
            campaign_id: alert.campaign_id,
            sub1: alert.sub1,
            count: alert.count,
            message: alert.message,
        })
        .collect()
}

/// How an edge is doing, for the health page.
pub(crate) fn edge_state(age_ms: i64, silent_ms: Option<i64>) -> &'static str {
    if silent_ms.is_some_and(|silent_ms| age_ms >= silent_ms) {
        "silent"
    } else if age_ms >= EDGE_LAGGING_MS {
        "lagging"
    } else {
        "live"
    }
}

// --- CSV ---

/// `minor` units with `exponent` decimals, in major units: `-12.50`.
pub(crate) fn major_units(minor: i128, exponent: u8) -> String {
    let digits = minor.unsigned_abs().to_string();
    let sign = if minor < 0 { "-" } else { "" };
    let exponent = usize::from(exponent);
    if exponent == 0 {
        return format!("{sign}{digits}");
    }
    let digits = format!("{digits:0>width$}", width = exponent + 1);
    let (integer, fraction) = digits.split_at(digits.len() - exponent);
    format!("{sign}{integer}.{fraction}")
}

/// The table as CSV: one line per id and currency (one line for an id
/// without money); the counters are on the id's first line only and
/// empty on the others, so a column's sum is exact.
pub(crate) fn table_csv(by: GroupColumn, rows: &[(u32, GroupTotals)], q: Option<&str>) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let id = if by == GroupColumn::AffiliateId { "affiliate_id" } else { "campaign_id" };
    writer.write_record([
        id,
        "impressions",
        "clicks",
        "unique_clicks",
        "leads",
        "sales",
        "conversions",
        "duplicates",
        "flagged",
        "currency",
        "revenue",
        "commission",
        "parent_commission",
        "payable",
        "margin",
    ])?;
    for (id, totals) in rows.iter().filter(|(id, _)| q.is_none_or(|q| id.to_string().contains(q))) {
        let counts = &totals.counts;
        let counters = [
            counts.impressions,
            counts.clicks,
            counts.unique_clicks,
            counts.leads,
            counts.sales,
            counts.leads + counts.sales,
            counts.duplicates,
            counts.n_flagged(),
        ]
        .map(|value| value.to_string());
        let money: Vec<(&Currency, &MoneyTotals)> =
            totals.money.iter().filter(|(_, money)| **money != MoneyTotals::default()).collect();
        if money.is_empty() {
            let mut record = vec![id.to_string()];
            record.extend(counters.iter().cloned());
            record.extend(std::iter::repeat_n(String::new(), 6));
            writer.write_record(&record)?;
        }
        for (line_idx, (currency, money)) in money.into_iter().enumerate() {
            let exponent = currency.exponent();
            let payable = money.commission_minor + money.parent_commission_minor;
            let mut record = vec![id.to_string()];
            if line_idx == 0 {
                record.extend(counters.iter().cloned());
            } else {
                record.extend(std::iter::repeat_n(String::new(), counters.len()));
            }
            record.push(currency.code().to_owned());
            for minor in [
                money.revenue_minor,
                money.commission_minor,
                money.parent_commission_minor,
                payable,
                money.revenue_minor - payable,
            ] {
                record.push(major_units(minor, exponent));
            }
            writer.write_record(&record)?;
        }
    }
    writer.into_inner().map_err(|error| error.into_error().into())
}

/// The alerts as CSV. Text that came from traffic (sub1, messages naming
/// it) is kept from being read as a spreadsheet formula.
pub(crate) fn alerts_csv(rows: &[AlertJson]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "time",
        "kind",
        "severity",
        "edge_id",
        "affiliate_id",
        "campaign_id",
        "sub1",
        "count",
        "message",
    ])?;
    let text = |value: Option<u32>| value.map(|value| value.to_string()).unwrap_or_default();
    for row in rows {
        let time = Timestamp::from_millisecond(row.time_ms).map(|time| time.to_string()).unwrap_or_default();
        writer.write_record([
            time,
            row.kind.to_owned(),
            row.severity.to_owned(),
            text(row.edge_id),
            text(row.affiliate_id),
            text(row.campaign_id),
            no_formula(row.sub1.as_deref().unwrap_or_default()),
            row.count.to_string(),
            no_formula(&row.message),
        ])?;
    }
    writer.into_inner().map_err(|error| error.into_error().into())
}

/// A cell a spreadsheet would run as a formula gets a leading `'`.
fn no_formula(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() }
}

#[cfg(test)]
mod tests;
