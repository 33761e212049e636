//! The event model and its validation rules.
//!
//! Every field arrives as text (a query-string value, or a JSON value the
//! collector renders as text) in a [`RawEvent`], and [`Event::validate`]
//! turns it into a typed [`Event`] or an [`EventError`] that names the field
//! and the rule it broke. The current time is an argument, never read here.

use std::borrow::Cow;

use crate::money::{Currency, Money, MoneyError};

/// Longest sub ID, order ID, click ID or event ID, in bytes.
pub const ID_TEXT_LEN_MAX: usize = 64;

/// How far in the past an event time may lie. Conversions are often posted
/// back days after the click; a week covers the usual attribution windows
/// while refusing replays of ancient traffic.
pub const EVENT_TIME_PAST_MS_MAX: i64 = 7 * 24 * 60 * 60 * 1000;

/// How far in the future an event time may lie: tolerates clock skew between
/// a merchant's server and the edge, and nothing more.
pub const EVENT_TIME_FUTURE_MS_MAX: i64 = 5 * 60 * 1000;

/// Milliseconds in a rollup minute.
pub const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Impression,
    Click,
    Lead,
    Sale,
}

// === impl EventKind ===

impl EventKind {
    /// Every kind, in declaration order (so `kind as usize` indexes it).
    pub const ALL: [EventKind; 4] = [EventKind::Impression, EventKind::Click, EventKind::Lead, EventKind::Sale];

    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "impression" => Some(EventKind::Impression),
            "click" => Some(EventKind::Click),
            "lead" => Some(EventKind::Lead),
            "sale" => Some(EventKind::Sale),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Lead => "lead",
            EventKind::Sale => "sale",
        }
    }

    /// Conversions carry money and ship as rows; the others are counted.
    pub fn is_conversion(&self) -> bool {
        matches!(self, EventKind::Lead | EventKind::Sale)
    }
}

/// A free-form identifier (sub ID, order ID, click ID, event ID): at most
/// [`ID_TEXT_LEN_MAX`] bytes of the URL-unreserved charset, so it is safe in
/// URLs, CSV exports, logs and label values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(String);

// === impl SubId ===

impl SubId {
    pub fn parse(field: &'static str, text: &str) -> Result<SubId, EventError> {
        if text.len() > ID_TEXT_LEN_MAX {
            return Err(EventError::TooLong { field, len: text.len() });
        }
        let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if !text.bytes().all(safe) {
            return Err(EventError::BadCharset { field });
        }
        Ok(SubId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Field names as they appear in query strings and JSON.
pub const SUB_FIELDS: [&str; 5] = ["sub1", "sub2", "sub3", "sub4", "sub5"];

/// An event as received, each field still text. Empty fields count as absent.
#[derive(Debug, Default, Clone)]
pub struct RawEvent<'a> {
    pub kind: Option<Cow<'a, str>>,
    pub affiliate_id: Option<Cow<'a, str>>,
    pub campaign_id: Option<Cow<'a, str>>,
    pub subs: [Option<Cow<'a, str>>; 5],
    pub time: Option<Cow<'a, str>>,
    pub amount: Option<Cow<'a, str>>,
    pub currency: Option<Cow<'a, str>>,
    pub order_id: Option<Cow<'a, str>>,
    pub click_id: Option<Cow<'a, str>>,
    pub event_id: Option<Cow<'a, str>>,
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub affiliate_id: u32,
    pub campaign_id: u32,
    pub subs: [Option<SubId>; 5],
    /// Event time, Unix milliseconds UTC.
    pub time_ms: i64,
    pub money: Option<Money>,
    pub order_id: Option<SubId>,
    pub click_id: Option<SubId>,
    pub event_id: Option<SubId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("missing field: {field}")]
    Missing { field: &'static str },
    #[error("unknown kind: expected impression, click, lead or sale")]
    UnknownKind,
    #[error("bad {field}: expected a decimal integer from 1 to 4294967295")]
    BadId { field: &'static str },
    #[error("{field} too long: {len} bytes, limit is {ID_TEXT_LEN_MAX}")]
    TooLong { field: &'static str, len: usize },
    #[error("bad charset in {field}: allowed are A-Z a-z 0-9 - _ . ~")]
    BadCharset { field: &'static str },
    #[error("bad time: expected RFC 3339 or Unix milliseconds")]
    BadTime,
    #[error(
        "time out of window: {skew_ms} ms from receive time, window is -{EVENT_TIME_PAST_MS_MAX}..+{EVENT_TIME_FUTURE_MS_MAX} ms"
    )]
    TimeOutOfWindow { skew_ms: i64 },
    #[error("amount not allowed on a {kind}")]
    AmountNotAllowed { kind: &'static str },
    #[error("bad amount: {0}")]
    BadMoney(#[from] MoneyError),
}

// === impl EventError ===

impl EventError {
    /// A short, bounded label for metrics and quarantine rows.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::Missing { .. } => "missing_field",
            EventError::UnknownKind => "unknown_kind",
            EventError::BadId { .. } => "bad_id",
            EventError::TooLong { .. } => "too_long",
            EventError::BadCharset { .. } => "bad_charset",
            EventError::BadTime => "bad_time",
            EventError::TimeOutOfWindow { .. } => "time_out_of_window",
            EventError::AmountNotAllowed { .. } => "amount_not_allowed",
            EventError::BadMoney(MoneyError::UnknownCurrency(_)) => "bad_currency",
            EventError::BadMoney(_) => "bad_amount",
        }
    }
}

// === impl Event ===

impl Event {
    /// Validates a raw event received at `now_ms`. A missing kind defaults to
    /// `default_kind` (pixels are impressions); a missing time is `now_ms`.
    pub fn validate(raw: &RawEvent<'_>, default_kind: Option<EventKind>, now_ms: i64) -> Result<Event, EventError> {
        let kind = match present(&raw.kind) {
            Some(text) => EventKind::parse(text).ok_or(EventError::UnknownKind)?,
            None => default_kind.ok_or(EventError::Missing { field: "kind" })?,
        };
        let affiliate_id = parse_id("affiliate_id", present(&raw.affiliate_id))?;
        let campaign_id = parse_id("campaign_id", present(&raw.campaign_id))?;
        let mut subs: [Option<SubId>; 5] = Default::default();
        for (sub_idx, sub) in subs.iter_mut().enumerate() {
            *sub = present(&raw.subs[sub_idx]).map(|text| SubId::parse(SUB_FIELDS[sub_idx], text)).transpose()?;
        }
        let time_ms = match present(&raw.time) {
            Some(text) => parse_time_ms(text)?,
            None => now_ms,
        };
        let skew_ms = time_ms.saturating_sub(now_ms);
        if !(-EVENT_TIME_PAST_MS_MAX..=EVENT_TIME_FUTURE_MS_MAX).contains(&skew_ms) {
            return Err(EventError::TimeOutOfWindow { skew_ms });
        }
        let money = match (present(&raw.amount), present(&raw.currency)) {
            (None, None) => None,
            (Some(_), None) => return Err(EventError::Missing { field: "currency" }),
            (None, Some(_)) => return Err(EventError::Missing { field: "amount" }),
            (Some(amount), Some(currency)) => {
                if !kind.is_conversion() {
                    return Err(EventError::AmountNotAllowed { kind: kind.as_str() });
                }
                Some(Money::parse(amount, Currency::parse(currency)?)?)
            }
        };
        if kind == EventKind::Sale && money.is_none() {
            return Err(EventError::Missing { field: "amount" });
        }
        let optional = |field: &'static str, value: &Option<Cow<'_, str>>| {
            present(value).map(|text| SubId::parse(field, text)).transpose()
        };
        Ok(Event {
            kind,
            affiliate_id,
            campaign_id,
            subs,
            time_ms,
            money,
            order_id: optional("order_id", &raw.order_id)?,
            click_id: optional("click_id", &raw.click_id)?,
            event_id: optional("event_id", &raw.event_id)?,
        })
    }

    /// The start of the event's minute, Unix milliseconds UTC.
    pub fn minute_ms(&self) -> i64 {
        self.time_ms.div_euclid(MINUTE_MS) * MINUTE_MS
    }

    pub fn sub1(&self) -> &str {
        self.subs[0].as_ref().map_or("", SubId::as_str)
    }
}

fn present<'b>(value: &'b Option<Cow<'_, str>>) -> Option<&'b str> {
    value.as_deref().filter(|text| !text.is_empty())
}

fn parse_id(field: &'static str, text: Option<&str>) -> Result<u32, EventError> {
    let text = text.ok_or(EventError::Missing { field })?;
    // `u32::from_str` accepts a leading `+`; ids are plain digits only.
    if text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EventError::BadId { field });
    }
    match text.parse::<u32>() {
        Ok(0) | Err(_) => Err(EventError::BadId { field }),
        Ok(id) => Ok(id),
    }
}

/// Parses RFC 3339 (any offset) or Unix milliseconds into Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<i64, EventError> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return if text.len() <= 15 { text.parse().map_err(|_| EventError::BadTime) } else { Err(EventError::BadTime) };
    }
    let timestamp: jiff::Timestamp = text.parse().map_err(|_| EventError::BadTime)?;
    Ok(timestamp.as_millisecond())
}

#[cfg(test)]
mod tests;
