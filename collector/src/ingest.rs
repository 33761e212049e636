//! Turns request data into [`RawEvent`]s: query strings of pixels, and
//! `POST /v1/events` bodies (one JSON object, a JSON array, or NDJSON)
//! parsed with simd-json.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetally_protocol::event::{RawEvent, SUB_FIELDS};
use simd_json::{BorrowedValue, StaticNode};

/// Most items accepted in one `POST /v1/events` body. Each item answers
/// with a result line, so this also bounds the response size.
pub const BATCH_ITEMS_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid json: {0}")]
    Json(String),
    #[error("too many items: {n_items}, limit is {BATCH_ITEMS_MAX}")]
    TooManyItems { n_items: usize },
    #[error("empty body: expected a JSON object, a JSON array or NDJSON")]
    Empty,
}

/// What one item of a body turned into before validation.
// Nearly every item is an event; boxing it would cost an allocation per event
// to shrink the rare invalid case.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Item<'a> {
    Event(RawEvent<'a>),
    Invalid { reason: &'static str, detail: String },
}

/// Reads the query string of a pixel, click or postback. Unknown parameters
/// (cache busters) are ignored; a repeated parameter keeps its last value.
pub fn parse_query(query: &str) -> RawEvent<'_> {
    let mut raw = RawEvent::default();
    for (name, value) in query_pairs(query) {
        let slot = match name.as_ref() {
            "aff" => &mut raw.affiliate_id,
            "cmp" => &mut raw.campaign_id,
            "kind" => &mut raw.kind,
            "eid" => &mut raw.event_id,
            "ts" => &mut raw.time,
            "click_id" => &mut raw.click_id,
            "amount" => &mut raw.amount,
            "currency" => &mut raw.currency,
            "order_id" => &mut raw.order_id,
            "sub1" => &mut raw.subs[0],
            "sub2" => &mut raw.subs[1],
            "sub3" => &mut raw.subs[2],
            "sub4" => &mut raw.subs[3],
            "sub5" => &mut raw.subs[4],
            _ => continue,
        };
        *slot = Some(value);
    }
    raw
}

/// The name/value pairs of a query string, as `application/x-www-form-urlencoded`
/// reads them (`form_urlencoded::parse`). A pair with nothing to decode
/// (no `%`, no `+`) is borrowed as it is: the query is UTF-8 already, so
/// that is what decoding would give, without checking it again.
pub fn query_pairs(query: &str) -> QueryPairs<'_> {
    QueryPairs { rest: query }
}

/// The iterator of [`query_pairs`]: one pass over each pair's bytes finds
/// its end, its `=` and whether it needs decoding.
#[derive(Debug, Clone)]
pub struct QueryPairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for QueryPairs<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (mut end, mut equals, mut escaped) = (self.rest.len(), None, false);
            for (idx, byte) in self.rest.bytes().enumerate() {
                match byte {
                    b'&' => {
                        end = idx;
                        break;
                    }
                    b'=' if equals.is_none() => equals = Some(idx),
                    b'%' | b'+' => escaped = true,
                    _ => {}
                }
            }
            // `&` and `=` are ASCII, so both splits are on character
            // boundaries.
            let pair = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            if pair.is_empty() {
                continue;
            }
            if escaped {
                return form_urlencoded::parse(pair.as_bytes()).next();
            }
            let (name, value) = equals.map_or((pair, ""), |idx| (&pair[..idx], &pair[idx + 1..]));
            return Some((Cow::Borrowed(name), Cow::Borrowed(value)));
        }
        None
    }
}

/// The JSON event a pixel carries in its `d` parameter (base64url, as
/// browser trackers send structured events through an image request), if
/// any. `Err` holds the rejection reason.
pub fn pixel_payload(query: &str) -> Option<Result<Vec<u8>, &'static str>> {
    if !(query.starts_with("d=") || query.contains("&d=")) {
        return None;
    }
    let (_, encoded) = query_pairs(query).find(|(name, _)| name == "d")?;
    let encoded = encoded.trim_end_matches('=');
    Some(URL_SAFE_NO_PAD.decode(encoded.as_bytes()).map_err(|_| "bad_payload"))
}

/// Parses one JSON event object, as carried by a pixel's `d` parameter.
pub fn parse_event(bytes: &mut [u8]) -> Item<'_> {
    match simd_json::to_borrowed_value(bytes) {
        Ok(value) => item_from_value(value),
        Err(error) => Item::Invalid { reason: "invalid_json", detail: format!("invalid json: {error}") },
    }
}

/// Splits a body into items. NDJSON is chosen by content type, or when a
/// body that is not an array spans several lines; a bad NDJSON line rejects
/// that item only. A body that is one JSON document must parse as a whole.
pub fn parse_body<'a>(body: &'a mut [u8], ndjson: bool) -> Result<Vec<Item<'a>>, BodyError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).ok_or(BodyError::Empty)?;
    let body = &mut body[start..];
    let trimmed_len = body.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |idx| idx + 1);
    let body = &mut body[..trimmed_len];
    let multi_line = body.contains(&b'\n');
    if ndjson || (body[0] != b'[' && multi_line) {
        let n_items = body.split(|b| *b == b'\n').filter(|line| !line.trim_ascii().is_empty()).count();
        if n_items > BATCH_ITEMS_MAX {
            return Err(BodyError::TooManyItems { n_items });
        }
        let mut items = Vec::with_capacity(n_items);
        for line in body.split_mut(|b| *b == b'\n') {
            if line.trim_ascii().is_empty() {
                continue;
            }
            items.push(match simd_json::to_borrowed_value(line) {
                Ok(value) => item_from_value(value),
                Err(error) => Item::Invalid { reason: "invalid_json", detail: format!("invalid json: {error}") },
            });
        }
        return Ok(items);
    }
    let value = simd_json::to_borrowed_value(body).map_err(|error| BodyError::Json(error.to_string()))?;
    match value {
        BorrowedValue::Array(values) => {
            if values.len() > BATCH_ITEMS_MAX {
                return Err(BodyError::TooManyItems { n_items: values.len() });
            }
            Ok(values.into_iter().map(item_from_value).collect())
        }
        value => Ok(vec![item_from_value(value)]),
    }
}

fn item_from_value(value: BorrowedValue<'_>) -> Item<'_> {
    let BorrowedValue::Object(object) = value else {
        return Item::Invalid { reason: "not_an_object", detail: "item is not a JSON object".into() };
    };
    let mut raw = RawEvent::default();
    for (name, value) in object.into_iter() {
        let slot = match name.as_ref() {
            "kind" => &mut raw.kind,
            "affiliate_id" => &mut raw.affiliate_id,
            "campaign_id" => &mut raw.campaign_id,
            "time" => &mut raw.time,
            "amount" => &mut raw.amount,
            "currency" => &mut raw.currency,
            "order_id" => &mut raw.order_id,
            "click_id" => &mut raw.click_id,
            "event_id" => &mut raw.event_id,
            other => match SUB_FIELDS.iter().position(|sub| *sub == other) {
                Some(sub_idx) => &mut raw.subs[sub_idx],
                None => {
                    return Item::Invalid {
                        reason: "unknown_field",
                        detail: format!("unknown field: {:?}", other.chars().take(64).collect::<String>()),
                    };
                }
            },
        };
        let text = match value {
            BorrowedValue::String(text) => text,
            BorrowedValue::Static(StaticNode::Null) => continue,
            // Amounts are exact decimal strings; a JSON number has passed
            // through a float in many producers and may already be rounded.
            BorrowedValue::Static(_) if name == "amount" => {
                return Item::Invalid {
                    reason: "bad_amount",
                    detail: "bad amount: must be a decimal string such as \"12.34\"".into(),
                };
            }
            BorrowedValue::Static(StaticNode::U64(number)) => Cow::Owned(number.to_string()),
            BorrowedValue::Static(StaticNode::I64(number)) => Cow::Owned(number.to_string()),
            _ => {
                return Item::Invalid {
                    reason: "bad_type",
                    detail: format!("bad type for {name}: expected a string or an integer"),
                };
            }
        };
        *slot = Some(text);
    }
    Item::Event(raw)
}

#[cfg(test)]
mod tests;
