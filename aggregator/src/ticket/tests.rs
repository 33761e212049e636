//! Ticket parsing: good tickets give their query; every bad one is
//! refused as `invalid_argument` with a message that names the problem.

use tonic::Code;

use super::*;
use crate::flight_service::into_status;
use crate::query::{Granularity, GroupColumn};

fn query(
    dataset: Dataset,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    affiliate_id: Option<u32>,
    group_by: &[GroupColumn],
) -> Query {
    let mut columns = GroupBy::NONE;
    for &column in group_by {
        columns.insert(column);
    }
    Query {
        dataset,
        from_ms,
        to_ms,
        affiliate_id,
        campaign_id: None,
        sub1: None,
        group_by: columns,
        buckets: TimeBuckets::utc(Granularity::Minute),
        follow: false,
    }
}

/// `granularity` buckets in `zone`, which must exist.
fn buckets(granularity: Granularity, zone: &str) -> TimeBuckets {
    TimeBuckets::new(granularity, zone).unwrap_or_else(|| panic!("zone {zone}"))
}

#[track_caller]
fn check(ticket: &str, expect: Query) {
    let actual = parse(ticket.as_bytes()).unwrap_or_else(|error| panic!("{ticket}: {error}"));
    assert_eq!(actual, expect, "{ticket}");
    // Rendering and parsing again gives the same query.
    assert_eq!(parse(&render(&actual)).unwrap(), actual, "{ticket}");
}

#[track_caller]
fn check_error(ticket: &[u8], expect_message: &str) {
    let error = parse(ticket).expect_err(&String::from_utf8_lossy(ticket));
    let status = into_status(error.into());
    assert_eq!(status.code(), Code::InvalidArgument, "{}", String::from_utf8_lossy(ticket));
    assert!(
        status.message().contains(expect_message),
        "{}: {:?} does not contain {expect_message:?}",
        String::from_utf8_lossy(ticket),
        status.message()
    );
}

#[test]
fn good_tickets() {
    use Dataset::{Conversions, Rollups};
    use GroupColumn::{AffiliateId, CampaignId, Minute, Sub1};
    let all = &[Minute, AffiliateId, CampaignId, Sub1];
    check(r#"{"dataset":"rollups"}"#, query(Rollups, None, None, None, all));
    check(r#"{"dataset":"conversions"}"#, query(Conversions, None, None, None, all));
    check(
        r#"{"dataset":"rollups","from":"2026-11-24T10:00:00Z","to":1795518000000,"affiliate_id":7,"group_by":["affiliate_id","campaign_id"]}"#,
        query(Rollups, Some(1_795_514_400_000), Some(1_795_518_000_000), Some(7), &[AffiliateId, CampaignId]),
    );
    check(r#"{"dataset":"rollups","from":0,"to":60000}"#, query(Rollups, Some(0), Some(60_000), None, all));
    check(
        r#"{"dataset":"rollups","from":"2026-11-24T11:00:00+01:00"}"#,
        query(Rollups, Some(1_795_514_400_000), None, None, all),
    );
    check(r#"{"dataset":"rollups","to":"120000"}"#, query(Rollups, None, Some(120_000), None, all));
    // Order given does not matter; output columns are canonical.
    check(r#"{"dataset":"rollups","group_by":["sub1","minute"]}"#, query(Rollups, None, None, None, &[Minute, Sub1]));
    // No group columns: one grand total.
    check(r#"{"dataset":"rollups","group_by":[]}"#, query(Rollups, None, None, None, &[]));
    check(r#"{"affiliate_id":3,"dataset":"conversions","from":-5}"#, query(Conversions, Some(-5), None, Some(3), all));
    check(" {\"dataset\" : \"rollups\"}\n", query(Rollups, None, None, None, all));
    // Follow: filters as usual, never grouped; `false` is the default.
    let follow = |query: Query| Query { follow: true, ..query };
    check(r#"{"dataset":"rollups","follow":true}"#, follow(query(Rollups, None, None, None, all)));
    check(r#"{"dataset":"rollups","follow":false}"#, query(Rollups, None, None, None, all));
    check(
        r#"{"dataset":"conversions","follow":true,"affiliate_id":7,"from":60000}"#,
        follow(query(Conversions, Some(60_000), None, Some(7), all)),
    );
    check(r#"{"dataset":"quarantine","follow":true}"#, follow(query(Dataset::Quarantine, None, None, None, all)));
}

#[test]
fn good_filters() {
    use Dataset::{Conversions, Rollups};
    use GroupColumn::{AffiliateId, CampaignId, Minute, Sub1};
    let all = &[Minute, AffiliateId, CampaignId, Sub1];
    let with = |campaign_id: Option<u32>, sub1: Option<&str>, query: Query| Query {
        campaign_id,
        sub1: sub1.map(str::to_owned),
        ..query
    };
    check(r#"{"dataset":"rollups","campaign_id":3}"#, with(Some(3), None, query(Rollups, None, None, None, all)));
    check(
        r#"{"dataset":"rollups","sub1":"newsletter","group_by":["minute"]}"#,
        with(None, Some("newsletter"), query(Rollups, None, None, None, &[Minute])),
    );
    // The empty sub1 is the rows that came without one.
    check(r#"{"dataset":"rollups","sub1":""}"#, with(None, Some(""), query(Rollups, None, None, None, all)));
    check(
        r#"{"dataset":"rollups","affiliate_id":7,"campaign_id":4294967295,"sub1":"A-z_0.9~"}"#,
        with(Some(u32::MAX), Some("A-z_0.9~"), query(Rollups, None, None, Some(7), all)),
    );
    check(
        r#"{"dataset":"conversions","campaign_id":3,"sub1":"fb","from":0}"#,
        with(Some(3), Some("fb"), query(Conversions, Some(0), None, None, all)),
    );
    let follow = |query: Query| Query { follow: true, ..query };
    check(
        r#"{"dataset":"rollups","follow":true,"campaign_id":3,"sub1":"fb"}"#,
        follow(with(Some(3), Some("fb"), query(Rollups, None, None, None, all))),
    );
    check(
        r#"{"dataset":"conversions","follow":true,"sub1":""}"#,
        follow(with(None, Some(""), query(Conversions, None, None, None, all))),
    );
}

#[test]
fn good_buckets() {
    use Dataset::Rollups;
    use Granularity::{Day, Hour, Minute as Minutes};
    use GroupColumn::{AffiliateId, CampaignId, Minute, Sub1};
    let all = &[Minute, AffiliateId, CampaignId, Sub1];
    let with = |buckets: TimeBuckets, query: Query| Query { buckets, ..query };
    check(
        r#"{"dataset":"rollups","granularity":"hour"}"#,
        with(TimeBuckets::utc(Hour), query(Rollups, None, None, None, all)),
    );
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York","group_by":["minute","campaign_id"]}"#,
        with(buckets(Day, "America/New_York"), query(Rollups, None, None, None, &[Minute, CampaignId])),
    );
    check(
        r#"{"dataset":"rollups","tz":"Asia/Kathmandu","granularity":"hour","from":0,"campaign_id":3}"#,
        Query {
            campaign_id: Some(3),
            ..with(buckets(Hour, "Asia/Kathmandu"), query(Rollups, Some(0), None, None, all))
        },
    );
    // A zone alone only labels the time column; names match in any case
    // and come back as the database spells them.
    check(
        r#"{"dataset":"rollups","tz":"asia/KOLKATA"}"#,
        with(buckets(Minutes, "Asia/Kolkata"), query(Rollups, None, None, None, all)),
    );
    assert_eq!(parse(br#"{"dataset":"rollups","tz":"asia/KOLKATA"}"#).unwrap().buckets.zone_name(), "Asia/Kolkata");
    // The defaults, spelt out, are the defaults.
    check(r#"{"dataset":"rollups","granularity":"minute","tz":"UTC"}"#, query(Rollups, None, None, None, all));
    check(r#"{"dataset":"rollups","tz":"utc"}"#, query(Rollups, None, None, None, all));
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"Pacific/Chatham","group_by":["minute"]}"#,
        with(buckets(Day, "Pacific/Chatham"), query(Rollups, None, None, None, &[Minute])),
    );
}

#[test]
fn render_names_every_key() {
    let ticket = br#"{"dataset":"rollups","from":"2026-11-24T10:00:00Z","to":1795518000000,"affiliate_id":7,"campaign_id":3,"sub1":"fb","group_by":["campaign_id","minute"],"granularity":"hour","tz":"america/new_york"}"#;
    let rendered = render(&parse(ticket).unwrap());
    assert_eq!(
        String::from_utf8(rendered).unwrap(),
        r#"{"affiliate_id":7,"campaign_id":3,"dataset":"rollups","from":1795514400000,"granularity":"hour","group_by":["minute","campaign_id"],"sub1":"fb","to":1795518000000,"tz":"America/New_York"}"#
    );
    // Defaults are left out.
    assert_eq!(
        render(&parse(br#"{"dataset":"rollups","granularity":"minute","tz":"UTC"}"#).unwrap()),
        br#"{"dataset":"rollups"}"#
    );
}

#[test]
fn bad_tickets() {
    check_error(b"", "bad ticket json");
    check_error(b"not json", "bad ticket json");
    check_error(b"\xff\xfe", "bad ticket json");
    check_error(br#"["rollups"]"#, "bad ticket json");
    check_error(br#"{}"#, "missing field `dataset`");
    check_error(br#"{"dataset":"clicks"}"#, "unknown dataset \"clicks\"");
    check_error(br#"{"dataset":"alerts","follow":true}"#, "alerts cannot be followed");
    check_error(br#"{"dataset":"alerts","group_by":["minute"]}"#, "group_by applies to rollups only, not to alerts");
    check_error(br#"{"dataset":"rollups","form":0}"#, "unknown field `form`");
    check_error(br#"{"dataset":"rollups","from":"yesterday"}"#, "bad from time \"yesterday\"");
    check_error(br#"{"dataset":"rollups","to":"2026-11-24"}"#, "bad to time \"2026-11-24\"");
    check_error(br#"{"dataset":"rollups","from":1.5}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","from":5,"to":5}"#, "empty time range: from 5 is not before to 5");
    check_error(br#"{"dataset":"rollups","from":6,"to":5}"#, "empty time range");
    check_error(br#"{"dataset":"rollups","affiliate_id":-1}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","affiliate_id":4294967296}"#, "bad ticket json");
    check_error(
        br#"{"dataset":"rollups","group_by":["hour"]}"#,
        "unknown group_by column \"hour\": expected minute, affiliate_id, campaign_id or sub1 (minute is the time column; granularity sets its length)",
    );
    check_error(br#"{"dataset":"rollups","group_by":["sub1","sub1"]}"#, "duplicate group_by column \"sub1\"");
    check_error(br#"{"dataset":"rollups","group_by":"sub1"}"#, "bad ticket json");
    check_error(
        br#"{"dataset":"conversions","group_by":["minute"]}"#,
        "group_by applies to rollups only, not to conversions",
    );
    check_error(br#"{"dataset":"quarantine","group_by":[]}"#, "group_by applies to rollups only, not to quarantine");
    check_error(
        br#"{"dataset":"quarantine","affiliate_id":7}"#,
        "affiliate_id cannot filter quarantine: rejected input has no trusted affiliate_id",
    );
    check_error(
        br#"{"dataset":"rollups","follow":true,"group_by":["minute"]}"#,
        "group_by cannot be combined with follow",
    );
    check_error(br#"{"dataset":"rollups","follow":true,"group_by":[]}"#, "group_by cannot be combined with follow");
    check_error(br#"{"dataset":"rollups","follow":"yes"}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","follow":true,"from_now":false}"#, "unknown field `from_now`");
    // Filters.
    check_error(
        br#"{"dataset":"quarantine","campaign_id":3}"#,
        "campaign_id cannot filter quarantine: rejected input has no trusted campaign_id",
    );
    check_error(
        br#"{"dataset":"quarantine","sub1":""}"#,
        "sub1 cannot filter quarantine: rejected input has no trusted sub1",
    );
    check_error(br#"{"dataset":"quarantine","follow":true,"sub1":"fb"}"#, "sub1 cannot filter quarantine");
    check_error(br#"{"dataset":"rollups","campaign_id":-1}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","campaign_id":"3"}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","campaign_id":4294967296}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","sub1":7}"#, "bad ticket json");
    check_error(br#"{"dataset":"rollups","sub1":null,"sub_1":"fb"}"#, "unknown field `sub_1`");
    check_error(
        br#"{"dataset":"rollups","sub1":"a b"}"#,
        "bad sub1 filter: bad charset in sub1: allowed are A-Z a-z 0-9 - _ . ~",
    );
    let long_sub1 = format!(r#"{{"dataset":"conversions","sub1":"{}"}}"#, "s".repeat(65));
    check_error(long_sub1.as_bytes(), "bad sub1 filter: sub1 too long: 65 bytes, limit is 64");
    // Granularity and zone.
    check_error(
        br#"{"dataset":"rollups","granularity":"week"}"#,
        "unknown granularity \"week\": expected minute, hour or day",
    );
    check_error(br#"{"dataset":"rollups","granularity":"Hour"}"#, "unknown granularity \"Hour\"");
    check_error(br#"{"dataset":"rollups","granularity":60}"#, "bad ticket json");
    check_error(
        br#"{"dataset":"rollups","tz":"Mars/Olympus_Mons"}"#,
        "unknown time zone \"Mars/Olympus_Mons\": expected an IANA name such as UTC or America/New_York",
    );
    check_error(br#"{"dataset":"rollups","tz":""}"#, "unknown time zone \"\"");
    check_error(br#"{"dataset":"rollups","tz":"+05:30"}"#, "unknown time zone \"+05:30\"");
    check_error(br#"{"dataset":"rollups","tz":"../../../etc/passwd"}"#, "unknown time zone \"../../../etc/passwd\"");
    check_error(br#"{"dataset":"rollups","tz":-5}"#, "bad ticket json");
    check_error(
        br#"{"dataset":"conversions","granularity":"day"}"#,
        "granularity applies to rollups only, not to conversions",
    );
    check_error(
        br#"{"dataset":"quarantine","granularity":"hour"}"#,
        "granularity applies to rollups only, not to quarantine",
    );
    check_error(br#"{"dataset":"conversions","tz":"UTC"}"#, "tz applies to rollups only, not to conversions");
    check_error(
        br#"{"dataset":"rollups","follow":true,"granularity":"day"}"#,
        "granularity cannot be combined with follow",
    );
    check_error(br#"{"dataset":"rollups","follow":true,"tz":"UTC"}"#, "tz cannot be combined with follow");
    check_error(br#"{"dataset":"conversions","follow":true,"tz":"UTC"}"#, "tz cannot be combined with follow");
    check_error(
        br#"{"dataset":"rollups","granularity":"day","group_by":["affiliate_id"]}"#,
        "granularity needs minute in group_by: without the time column it changes nothing",
    );
    check_error(br#"{"dataset":"rollups","tz":"Asia/Kolkata","group_by":[]}"#, "tz needs minute in group_by");
    check_error(
        br#"{"dataset":"rollups","granularity":"day","tz":"Nowhere/Land","group_by":["minute"]}"#,
        "unknown time zone \"Nowhere/Land\"",
    );
    let large = format!(r#"{{"dataset":"rollups","group_by":[{}"sub1"]}}"#, "\"minute\",".repeat(500));
    check_error(large.as_bytes(), "ticket too large: 4541 bytes, limit is 4096");
}
