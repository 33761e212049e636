//! Parsing of Flight tickets (and descriptor commands, which use the same
//! format) into a [`Query`].
//!
//! A ticket is UTF-8 JSON:
//!
//! ```json
//! {"dataset":"rollups","from":"2026-11-24T10:00:00Z","to":1795525200000,
//!  "affiliate_id":7,"campaign_id":3,"sub1":"newsletter",
//!  "group_by":["minute","campaign_id"],"granularity":"day","tz":"America/New_York"}
//! ```
//!
//! Only `dataset` is required. An unknown key is an error that names it,
//! so a typo never widens a query silently; so is a key that would change
//! nothing (`granularity` without the time column in `group_by`).
//!
//! - `from` and `to`: instants, RFC 3339 strings (any offset) or integer
//!   Unix milliseconds; the range `[from, to)` selects rollup minutes and
//!   conversion, quarantine and finding times. They do not snap to buckets: a day
//!   bucket that `from` cuts holds only the minutes from `from` on.
//! - `affiliate_id`, `campaign_id` (integers) and `sub1` (exact, `""` for
//!   rows without one): filters on `rollups`, `conversions` and `alerts`
//!   (a finding without those keys passes no such filter), refused on
//!   `quarantine`, whose rejected input has no trusted keys.
//! - `group_by` (rollups only): any of `minute`, `affiliate_id`,
//!   `campaign_id`, `sub1`; all four by default, `[]` for one grand total.
//!   `minute` is the time column, whatever the granularity.
//! - `granularity` (rollups only, with `minute` grouped): `minute` (the
//!   default), `hour` or `day`, the length of the time buckets. The time
//!   column is named after it (`minute`, `hour`, `day`) and holds each
//!   bucket's start instant.
//! - `tz` (rollups only, with `minute` grouped): the IANA zone (default
//!   `UTC`) whose local hours and days cut the buckets: a day runs from
//!   local midnight to local midnight (23 or 25 hours when the clocks
//!   change), and the hour repeated when DST ends is two buckets, one per
//!   offset. The time column is `Timestamp(Millisecond, <tz>)`. Zones come
//!   from the database compiled into the aggregator; an unknown name is
//!   an error that names it.
//!
//! `"follow":true` keeps the `DoGet` stream open and sends what each batch
//! applied from then on brings (`follow.rs`): for `conversions` and
//! `quarantine` its new rows, for `rollups` what the batch changed per
//! rollup key (deltas, not totals: the counters as shipped and the money
//! of the conversions booked; a status change sends the money it moved,
//! negative for a rejection, with zero counters), each filtered by `from`,
//! `to` and the key filters as usual, with an `applied_at` column (ms,
//! UTC) last.
//! `group_by`, `granularity` and `tz` are refused with `follow`, and
//! `alerts` cannot be followed: its findings are derived when asked for. Only
//! changes applied after the follow starts are sent: a client reads the
//! dataset with a normal ticket, then follows (a batch applied between the
//! two is in neither; following first and reading second gives overlap
//! instead of a gap). A follower that falls behind gets `DATA_LOSS` naming
//! how many batches it missed, and reads and follows again.

use edgetally_protocol::event::{EventError, SubId, parse_time_ms};
use serde::Deserialize;

use crate::query::{Dataset, Granularity, GroupBy, GroupColumn, Query, TimeBuckets};

/// The largest ticket accepted. A full ticket, with a 64-byte sub1 and the
/// longest zone name, is under 500 bytes; the limit bounds what a client
/// makes the server parse.
pub(crate) const TICKET_BYTES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TicketError {
    #[error("ticket too large: {len} bytes, limit is {TICKET_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("bad ticket json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown dataset {0:?}: expected rollups, conversions, quarantine or alerts")]
    UnknownDataset(String),
    #[error("bad {field} time {text:?}: expected RFC 3339 or Unix milliseconds")]
    BadTime { field: &'static str, text: String },
    #[error("empty time range: from {from_ms} is not before to {to_ms}")]
    EmptyRange { from_ms: i64, to_ms: i64 },
    #[error(
        "unknown group_by column {0:?}: expected minute, affiliate_id, campaign_id or sub1 (minute is the time column; granularity sets its length)"
    )]
    UnknownGroupColumn(String),
    #[error("duplicate group_by column {0:?}")]
    DuplicateGroupColumn(String),
    #[error("{key} applies to rollups only, not to {dataset}")]
    RollupsOnly { key: &'static str, dataset: &'static str },
    #[error("{key} cannot filter {dataset}: rejected input has no trusted {key}")]
    FilterNotAllowed { key: &'static str, dataset: &'static str },
    #[error("bad sub1 filter: {0}")]
    BadSub1(EventError),
    #[error("{key} cannot be combined with follow: follow streams each applied batch's rollup rows, ungrouped")]
    FollowGrouping { key: &'static str },
    #[error("alerts cannot be followed: findings are derived when asked for, so ask again")]
    FollowAlerts,
    #[error("unknown granularity {0:?}: expected minute, hour or day")]
    UnknownGranularity(String),
    #[error("unknown time zone {0:?}: expected an IANA name such as UTC or America/New_York")]
    UnknownTimeZone(String),
    #[error("{key} needs minute in group_by: without the time column it changes nothing")]
    TimeNotGrouped { key: &'static str },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketJson {
    dataset: String,
    from: Option<TimeBound>,
    to: Option<TimeBound>,
    affiliate_id: Option<u32>,
    campaign_id: Option<u32>,
    sub1: Option<String>,
    group_by: Option<Vec<String>>,
    granularity: Option<String>,
    tz: Option<String>,
    follow: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeBound {
    Millis(i64),
    Text(String),
}

/// Parses a ticket.
pub(crate) fn parse(ticket: &[u8]) -> Result<Query, TicketError> {
    if ticket.len() > TICKET_BYTES_MAX {
        return Err(TicketError::TooLarge { len: ticket.len() });
    }
    let json: TicketJson = serde_json::from_slice(ticket)?;
    let dataset = Dataset::parse(&json.dataset).ok_or(TicketError::UnknownDataset(json.dataset))?;
    let from_ms = json.from.map(|bound| bound.into_ms("from")).transpose()?;
    let to_ms = json.to.map(|bound| bound.into_ms("to")).transpose()?;
    if let (Some(from_ms), Some(to_ms)) = (from_ms, to_ms)
        && from_ms >= to_ms
    {
        return Err(TicketError::EmptyRange { from_ms, to_ms });
    }
    let follow = json.follow.unwrap_or(false);
    if follow && dataset == Dataset::Alerts {
        return Err(TicketError::FollowAlerts);
    }
    // Keys that shape a grouped answer, which follow and the ungrouped
    // datasets do not have.
    let grouping_keys =
        [("group_by", json.group_by.is_some()), ("granularity", json.granularity.is_some()), ("tz", json.tz.is_some())];
    for (key, present) in grouping_keys {
        if present && follow {
            return Err(TicketError::FollowGrouping { key });
        }
        if present && dataset != Dataset::Rollups {
            return Err(TicketError::RollupsOnly { key, dataset: dataset.as_str() });
        }
    }
    if dataset == Dataset::Quarantine {
        let filters = [
            ("affiliate_id", json.affiliate_id.is_some()),
            ("campaign_id", json.campaign_id.is_some()),
            ("sub1", json.sub1.is_some()),
        ];
        if let Some((key, _)) = filters.into_iter().find(|(_, present)| *present) {
            return Err(TicketError::FilterNotAllowed { key, dataset: dataset.as_str() });
        }
    }
    if let Some(sub1) = &json.sub1 {
        // A sub1 no event can carry would match nothing; say why instead.
        SubId::parse("sub1", sub1).map_err(TicketError::BadSub1)?;
    }
    let group_by = match json.group_by {
        None => GroupBy::ALL,
        Some(names) => {
            let mut group_by = GroupBy::NONE;
            for name in names {
                let column = GroupColumn::parse(&name).ok_or_else(|| TicketError::UnknownGroupColumn(name.clone()))?;
                if !group_by.insert(column) {
                    return Err(TicketError::DuplicateGroupColumn(name));
                }
            }
            group_by
        }
    };
    if !group_by.contains(GroupColumn::Minute) {
        let time_keys = [("granularity", json.granularity.is_some()), ("tz", json.tz.is_some())];
        if let Some((key, _)) = time_keys.into_iter().find(|(_, present)| *present) {
            return Err(TicketError::TimeNotGrouped { key });
        }
    }
    let granularity = match json.granularity {
        None => Granularity::Minute,
        Some(name) => Granularity::parse(&name).ok_or(TicketError::UnknownGranularity(name))?,
    };
    let buckets = match json.tz {
        None => TimeBuckets::utc(granularity),
        Some(name) => TimeBuckets::new(granularity, &name).ok_or(TicketError::UnknownTimeZone(name))?,
    };
    Ok(Query {
        dataset,
        from_ms,
        to_ms,
        affiliate_id: json.affiliate_id,
        campaign_id: json.campaign_id,
        sub1: json.sub1,
        group_by,
        buckets,
        follow,
    })
}

/// The ticket JSON of `query`: the inverse of [`parse`].
pub(crate) fn render(query: &Query) -> Vec<u8> {
    let mut json = serde_json::Map::new();
    json.insert("dataset".into(), query.dataset.as_str().into());
    if let Some(from_ms) = query.from_ms {
        json.insert("from".into(), from_ms.into());
    }
    if let Some(to_ms) = query.to_ms {
        json.insert("to".into(), to_ms.into());
    }
    if let Some(affiliate_id) = query.affiliate_id {
        json.insert("affiliate_id".into(), affiliate_id.into());
    }
    if let Some(campaign_id) = query.campaign_id {
        json.insert("campaign_id".into(), campaign_id.into());
    }
    if let Some(sub1) = &query.sub1 {
        json.insert("sub1".into(), sub1.as_str().into());
    }
    if query.dataset == Dataset::Rollups && query.group_by != GroupBy::ALL {
        let names = query.group_by.columns().map(|column| column.as_str().into()).collect();
        json.insert("group_by".into(), serde_json::Value::Array(names));
    }
    if query.buckets.granularity != Granularity::Minute {
        json.insert("granularity".into(), query.buckets.granularity.as_str().into());
    }
    if query.buckets.zone_name() != "UTC" {
        json.insert("tz".into(), query.buckets.zone_name().into());
    }
    if query.follow {
        json.insert("follow".into(), true.into());
    }
    // Serializing a map of strings, integers and arrays cannot fail.
    serde_json::to_vec(&json).expect("ticket json serializes")
}

// === impl TimeBound ===

impl TimeBound {
    fn into_ms(self, field: &'static str) -> Result<i64, TicketError> {
        match self {
            TimeBound::Millis(ms) => Ok(ms),
            TimeBound::Text(text) => parse_time_ms(&text).map_err(|_| TicketError::BadTime { field, text }),
        }
    }
}

#[cfg(test)]
mod tests;
