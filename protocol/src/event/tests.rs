//! Validation cases, one line each.

use super::*;

const NOW_MS: i64 = 1_790_000_000_000;

fn raw<'a>(fields: &[(&str, &'a str)]) -> RawEvent<'a> {
    let mut raw = RawEvent::default();
    for (name, value) in fields {
        let value = Some(Cow::Borrowed(*value));
        match *name {
            "kind" => raw.kind = value,
            "aff" => raw.affiliate_id = value,
            "cmp" => raw.campaign_id = value,
            "sub1" => raw.subs[0] = value,
            "sub2" => raw.subs[1] = value,
            "time" => raw.time = value,
            "amount" => raw.amount = value,
            "currency" => raw.currency = value,
            "order_id" => raw.order_id = value,
            other => panic!("unknown test field {other}"),
        }
    }
    raw
}

fn check(fields: &[(&str, &str)], expect: Result<(), &str>) {
    let actual = Event::validate(&raw(fields), Some(EventKind::Impression), NOW_MS);
    match expect {
        Ok(()) => assert!(actual.is_ok(), "{fields:?}: {actual:?}"),
        Err(reason) => assert_eq!(actual.map(|_| ()).map_err(|error| error.reason()), Err(reason), "{fields:?}"),
    }
}

#[test]
fn accepts_valid_events() {
    check(&[("aff", "7"), ("cmp", "3")], Ok(()));
    check(&[("aff", "4294967295"), ("cmp", "1"), ("sub1", "a-b_c.d~e")], Ok(()));
    check(&[("kind", "sale"), ("aff", "7"), ("cmp", "3"), ("amount", "12.34"), ("currency", "USD")], Ok(()));
    check(&[("kind", "lead"), ("aff", "7"), ("cmp", "3")], Ok(()));
    check(&[("aff", "7"), ("cmp", "3"), ("time", "1789999990000")], Ok(()));
    check(&[("aff", "7"), ("cmp", "3"), ("time", "2026-09-21T15:13:00+02:00")], Ok(()));
}

#[test]
fn rejects_with_reason() {
    check(&[("cmp", "3")], Err("missing_field"));
    check(&[("aff", "0"), ("cmp", "3")], Err("bad_id"));
    check(&[("aff", "+7"), ("cmp", "3")], Err("bad_id"));
    check(&[("aff", "4294967296"), ("cmp", "3")], Err("bad_id"));
    check(&[("aff", "x"), ("cmp", "3")], Err("bad_id"));
    check(&[("kind", "view"), ("aff", "7"), ("cmp", "3")], Err("unknown_kind"));
    check(&[("aff", "7"), ("cmp", "3"), ("sub1", "a b")], Err("bad_charset"));
    check(&[("aff", "7"), ("cmp", "3"), ("sub2", &"x".repeat(65))], Err("too_long"));
    check(&[("aff", "7"), ("cmp", "3"), ("time", "yesterday")], Err("bad_time"));
    check(&[("aff", "7"), ("cmp", "3"), ("time", "1000")], Err("time_out_of_window"));
    check(&[("aff", "7"), ("cmp", "3"), ("amount", "1.00"), ("currency", "USD")], Err("amount_not_allowed"));
    check(&[("kind", "sale"), ("aff", "7"), ("cmp", "3")], Err("missing_field"));
    check(&[("kind", "sale"), ("aff", "7"), ("cmp", "3"), ("amount", "1.001"), ("currency", "USD")], Err("bad_amount"));
    check(&[("kind", "sale"), ("aff", "7"), ("cmp", "3"), ("amount", "1"), ("currency", "XYZ")], Err("bad_currency"));
}

#[test]
fn minute_floors_event_time() {
    let event =
        Event::validate(&raw(&[("aff", "7"), ("cmp", "3"), ("time", "1789999999999")]), Some(EventKind::Click), NOW_MS)
            .unwrap();
    assert_eq!(event.minute_ms(), 1_789_999_980_000);
    assert_eq!(parse_time_ms("2026-09-21T15:13:00+02:00"), Ok(1_789_996_380_000));
}

#[test]
fn kinds_index_their_table() {
    for (kind_idx, kind) in EventKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, kind_idx);
        assert_eq!(EventKind::parse(kind.as_str()), Some(*kind));
    }
}
