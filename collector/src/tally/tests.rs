//! Tally counting, bounds and sealing.

use std::borrow::Cow;

use edgetally_protocol::event::RawEvent;
use edgetally_protocol::{EventKind, QuarantineRow};

use super::*;

const NOW_MS: i64 = 1_790_000_000_000;

fn event(kind: &str, affiliate_id: &str, sub1: &str, time_ms: i64) -> Event {
    let mut raw = RawEvent {
        kind: Some(Cow::Borrowed(kind)),
        affiliate_id: Some(Cow::Borrowed(affiliate_id)),
        campaign_id: Some(Cow::Borrowed("5")),
        time: Some(Cow::Owned(time_ms.to_string())),
        ..RawEvent::default()
    };
    raw.subs[0] = Some(Cow::Borrowed(sub1));
    if kind == "sale" {
        raw.amount = Some(Cow::Borrowed("9.99"));
        raw.currency = Some(Cow::Borrowed("EUR"));
    }
    Event::validate(&raw, None, NOW_MS).unwrap()
}

#[test]
fn counts_per_key_and_seals_everything() {
    let tally = Tally::new(TallyLimits::default());
    for _ in 0..3 {
        tally.record(&event("impression", "1", "a", NOW_MS)).unwrap();
    }
    tally.record(&event("click", "1", "a", NOW_MS)).unwrap();
    tally.record(&event("impression", "1", "b", NOW_MS)).unwrap();
    tally.record(&event("impression", "1", "a", NOW_MS - 60_000)).unwrap();
    tally.record(&event("sale", "2", "", NOW_MS)).unwrap();
    assert_eq!(tally.len(), (4, 1, 0));
    let sealed = tally.seal();
    let rows = sealed.rollup_rows();
    let counts: Vec<(u32, &str, i64, RollupCounts)> =
        rows.iter().map(|(key, counts)| (key.affiliate_id, key.sub1.as_str(), key.minute_ms, *counts)).collect();
    let minute = NOW_MS / 60_000 * 60_000;
    assert_eq!(
        counts,
        vec![
            (1, "a", minute - 60_000, RollupCounts { impressions: 1, ..Default::default() }),
            (1, "a", minute, RollupCounts { impressions: 3, clicks: 1, unique_clicks: 1, ..Default::default() }),
            (1, "b", minute, RollupCounts { impressions: 1, ..Default::default() }),
            (2, "", minute, RollupCounts { sales: 1, ..Default::default() }),
        ]
    );
    assert_eq!(sealed.conversions.len(), 1);
    assert_eq!(sealed.conversions[0].kind, EventKind::Sale);
    assert_eq!(sealed.conversions[0].money.unwrap().minor_units, 999);
    assert!(tally.seal().is_empty());
}

#[test]
fn full_tally_refuses_new_keys_but_counts_known_ones() {
    let limits = TallyLimits { rollup_keys_max: 2, conversions_max: 1, batch_rows_max: 10, quarantine_max: 2 };
    let tally = Tally::new(limits);
    tally.record(&event("impression", "1", "", NOW_MS)).unwrap();
    tally.record(&event("impression", "2", "", NOW_MS)).unwrap();
    assert_eq!(tally.record(&event("impression", "3", "", NOW_MS)), Err(TallyError::KeysFull(2)));
    tally.record(&event("impression", "1", "", NOW_MS)).unwrap();
    tally.record(&event("sale", "1", "", NOW_MS)).unwrap();
    assert_eq!(tally.record(&event("sale", "1", "", NOW_MS)), Err(TallyError::ConversionsFull(1)));
    let sealed = tally.seal();
    let impressions: u64 = sealed.rollup_rows().iter().map(|(_, counts)| counts.impressions).sum();
    assert_eq!(impressions, 3);
    assert_eq!(sealed.conversions.len(), 1);
}

#[test]
fn seal_takes_everything() {
    let limits = TallyLimits { rollup_keys_max: 100, conversions_max: 100, batch_rows_max: 2, quarantine_max: 2 };
    let tally = Tally::new(limits);
    for affiliate_id in 1..=5 {
        tally.record(&event("sale", &affiliate_id.to_string(), "", NOW_MS)).unwrap();
    }
    let sizes: Vec<(usize, usize)> = (0..2)
        .map(|_| {
            let sealed = tally.seal();
            (sealed.rollup_rows().len(), sealed.conversions.len())
        })
        .collect();
    assert_eq!(sizes, vec![(5, 5), (0, 0)]);
}

#[test]
fn a_journaled_tally_comes_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let open = |spooled| {
        let (journal, replay, _) = crate::journal::Journal::open(dir.path(), 64 * 1024, u64::MAX, spooled).unwrap();
        Tally::with_journal(TallyLimits::default(), journal, replay)
    };
    let record_some = |tally: &Tally, affiliate: &str| {
        tally.record_unless(&event("click", affiliate, "fb", NOW_MS), true, || None, || false).unwrap();
        tally.record_unless(&event("click", affiliate, "fb", NOW_MS), false, || None, || false).unwrap();
        tally.record_unless(&event("sale", affiliate, "", NOW_MS), false, || None, || false).unwrap();
        tally.record_unless(&event("sale", affiliate, "", NOW_MS), false, || None, || true).unwrap();
        tally
            .record_unless(&event("click", affiliate, "fb", NOW_MS), true, || Some(Flag::ClickFlood), || false)
            .unwrap();
        tally.record_unless(&event("lead", affiliate, "", NOW_MS), false, || Some(Flag::NoClickId), || false).unwrap();
        assert!(tally.quarantine(QuarantineRow::new(NOW_MS, "pixel", "bad_id", "bad", "aff=x")));
    };

    // What a tally without a journal would hold.
    let reference = Tally::new(TallyLimits::default());
    record_some(&reference, "1");
    record_some(&reference, "2");
    let expected = reference.seal();

    let tally = open(Through::default());
    record_some(&tally, "1");
    let first = tally.seal();
    assert_eq!(first.through.journal, 1);
    record_some(&tally, "2");
    // Killed: the first seal reached the spool, the rest only the journal.
    drop(tally);
    let tally = open(first.through);
    let second = tally.seal();
    assert_eq!(second.through.journal, 2, "the replayed segment is claimed by the next seal");

    // `restore` puts a seal before what the tally holds: newest first.
    let merged = Tally::new(TallyLimits::default());
    merged.restore(second);
    merged.restore(first);
    let merged = merged.seal();
    assert_eq!(merged.rollup_rows(), expected.rollup_rows());
    assert_eq!(merged.conversions, expected.conversions);
    assert_eq!(merged.quarantine, expected.quarantine);
}

#[test]
fn duplicates_count_apart_from_events() {
    let tally =
        Tally::new(TallyLimits { rollup_keys_max: 1, conversions_max: 10, batch_rows_max: 10, quarantine_max: 2 });
    let sale = event("sale", "1", "", NOW_MS);
    assert_eq!(tally.record_unless(&sale, true, || None, || false), Ok(Recorded::Counted));
    assert_eq!(tally.record_unless(&sale, true, || None, || true), Ok(Recorded::Duplicate));
    assert_eq!(tally.record_unless(&sale, true, || None, || true), Ok(Recorded::Duplicate));
    // No room for a new key: the dedup check is not even asked, so it
    // records nothing for an event that was refused.
    let mut asked = false;
    let refused = tally.record_unless(
        &event("sale", "2", "", NOW_MS),
        true,
        || None,
        || {
            asked = true;
            false
        },
    );
    assert_eq!((refused, asked), (Err(TallyError::KeysFull(1)), false));
    let sealed = tally.seal();
    assert_eq!(sealed.rollup_rows().len(), 1);
    assert_eq!(sealed.rollup_rows()[0].1, RollupCounts { sales: 1, duplicates: 2, ..Default::default() });
    assert_eq!(sealed.conversions.len(), 1);
}

#[test]
fn flagged_events_count_apart_and_their_conversions_carry_the_flag() {
    let tally = Tally::new(TallyLimits::default());
    let click = event("click", "1", "", NOW_MS);
    let lead = event("lead", "1", "", NOW_MS);
    assert_eq!(tally.record_unless(&click, true, || None, || false), Ok(Recorded::Counted));
    let bot = tally.record_unless(&click, true, || Some(Flag::BotUserAgent), || false);
    assert_eq!(bot, Ok(Recorded::Flagged(Flag::BotUserAgent)));
    let held = tally.record_unless(&lead, false, || Some(Flag::FastConversion), || false);
    assert_eq!(held, Ok(Recorded::Flagged(Flag::FastConversion)));
    // A repeat is a duplicate, and the rules are not asked about it.
    let repeat = tally.record_unless(&lead, false, || panic!("rules asked about a duplicate"), || true);
    assert_eq!(repeat, Ok(Recorded::Duplicate));
    let sealed = tally.seal();
    let mut flagged = [0; edgetally_protocol::fraud::N_FLAGS];
    flagged[Flag::BotUserAgent.index()] = 1;
    flagged[Flag::FastConversion.index()] = 1;
    let expect = RollupCounts { clicks: 1, unique_clicks: 1, duplicates: 1, flagged, ..Default::default() };
    assert_eq!(sealed.rollup_rows()[0].1, expect);
    assert_eq!(sealed.conversions.iter().map(|row| row.flag).collect::<Vec<_>>(), [Some(Flag::FastConversion)]);
}

#[test]
fn only_unique_clicks_count_as_unique() {
    let tally = Tally::new(TallyLimits::default());
    let click = event("click", "1", "", NOW_MS);
    tally.record_unless(&click, true, || None, || false).unwrap();
    tally.record_unless(&click, false, || None, || false).unwrap();
    tally.record_unless(&event("impression", "1", "", NOW_MS), true, || None, || false).unwrap();
    let sealed = tally.seal();
    assert_eq!(
        sealed.rollup_rows()[0].1,
        RollupCounts { impressions: 1, clicks: 2, unique_clicks: 1, ..Default::default() }
    );
}

#[test]
fn quarantine_is_bounded_and_sealed() {
    let tally = Tally::new(TallyLimits { quarantine_max: 2, ..TallyLimits::default() });
    let row = |reason: &str| QuarantineRow::new(NOW_MS, "pixel", reason, "detail", "aff=x");
    assert!(tally.quarantine(row("a")));
    assert!(tally.quarantine(row("b")));
    assert!(!tally.quarantine(row("c")));
    assert_eq!(tally.len(), (0, 0, 2));
    let sealed = tally.seal();
    assert!(!sealed.is_empty());
    assert_eq!(sealed.quarantine.iter().map(|row| row.reason.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(tally.quarantine(row("d")));
}

#[test]
fn rows_seals_take_conversions_and_a_restart_replays_only_the_rest() {
    let record_some = |tally: &Tally, affiliate: &str| {
        tally.record_unless(&event("click", affiliate, "fb", NOW_MS), true, || None, || false).unwrap();
        tally.record_unless(&event("impression", affiliate, "", NOW_MS), false, || None, || false).unwrap();
        tally.record_unless(&event("sale", affiliate, "", NOW_MS), false, || None, || false).unwrap();
        tally.record_unless(&event("sale", affiliate, "", NOW_MS), false, || None, || true).unwrap();
        tally.record_unless(&event("lead", affiliate, "", NOW_MS), false, || Some(Flag::NoClickId), || false).unwrap();
        assert!(tally.quarantine(QuarantineRow::new(NOW_MS, "pixel", "bad_id", "bad", "aff=x")));
    };
    let reference = Tally::new(TallyLimits::default());
    record_some(&reference, "1");
    record_some(&reference, "2");
    let expected = reference.seal();

    // The restart learns of the rows-only seal from the journal's note (its
    // spool record was acknowledged and deleted), or from the spool record
    // (killed before the note was written).
    for noted in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let open = |spooled| {
            let (journal, replay, recovery) =
                crate::journal::Journal::open(dir.path(), 64 * 1024, u64::MAX, spooled).unwrap();
            (Tally::with_journal(TallyLimits::default(), journal, replay), recovery)
        };
        let (tally, _) = open(Through::default());
        record_some(&tally, "1");
        let rows = tally.seal_rows();
        assert!(rows.rollups.is_empty());
        let mut no_click_id = [0; edgetally_protocol::fraud::N_FLAGS];
        no_click_id[Flag::NoClickId.index()] = 1;
        let key =
            RollupKey { minute_ms: NOW_MS / 60_000 * 60_000, affiliate_id: 1, campaign_id: 5, sub1: String::new() };
        assert_eq!(
            rows.conversion_rollups,
            [(key, RollupCounts { sales: 1, flagged: no_click_id, ..Default::default() })],
            "a conversion's counts ship with its row; its duplicate waits with the traffic"
        );
        assert_eq!((rows.conversions.len(), rows.quarantine.len()), (2, 1));
        assert_eq!(rows.through.journal, 0, "a rows-only seal releases no segment");
        if noted {
            assert!(tally.mark_rows_spooled(rows.through.rows));
        }
        record_some(&tally, "2");
        assert_eq!(tally.len().1, 2, "the second affiliate's conversions wait");
        drop(tally);

        let spooled = if noted { Through::default() } else { rows.through };
        let (tally, recovery) = open(spooled);
        // Two conversions and a quarantine row were spooled; the three
        // other entries of the first affiliate and all six of the second
        // replay.
        assert_eq!((recovery.rows_spooled, recovery.replayed), (3, 9), "noted: {noted}");
        let full = tally.seal();
        let merged = Tally::new(TallyLimits::default());
        merged.restore(full);
        merged.restore(rows);
        let merged = merged.seal();
        assert_eq!(merged.rollup_rows(), expected.rollup_rows(), "noted: {noted}");
        let order_ids = |sealed: &Sealed| {
            let mut ids: Vec<_> = sealed.conversions.iter().map(|row| (row.affiliate_id, row.kind)).collect();
            ids.sort_by_key(|(affiliate_id, kind)| (*affiliate_id, *kind as u8));
            ids
        };
        assert_eq!(order_ids(&merged), order_ids(&expected));
        assert_eq!(merged.quarantine.len(), expected.quarantine.len());
    }
}

#[test]
fn seal_rows_merge_into_one_row_per_key() {
    let tally = Tally::new(TallyLimits::default());
    tally.record(&event("click", "1", "", NOW_MS)).unwrap();
    tally.record(&event("sale", "1", "", NOW_MS)).unwrap();
    tally.record(&event("impression", "3", "", NOW_MS)).unwrap();
    tally.record(&event("sale", "2", "", NOW_MS)).unwrap();
    let sealed = tally.seal();
    let rows: Vec<(u32, RollupCounts)> =
        sealed.rollup_rows().into_iter().map(|(key, counts)| (key.affiliate_id, counts)).collect();
    assert_eq!(
        rows,
        [
            (1, RollupCounts { clicks: 1, unique_clicks: 1, sales: 1, ..Default::default() }),
            (2, RollupCounts { sales: 1, ..Default::default() }),
            (3, RollupCounts { impressions: 1, ..Default::default() }),
        ]
    );
}

/// Keys restored or replayed by value and events recorded by reference
/// meet in one row: the borrowed key hashes and compares as the owned one,
/// so both choose the same table, and the keys spread over every table.
#[test]
fn restored_and_recorded_keys_meet_in_one_row_over_every_table() {
    let tally = Tally::new(TallyLimits::default());
    let events: Vec<Event> =
        (0..2_000).map(|i| event("impression", &(i % 50 + 1).to_string(), &format!("s{}", i / 50), NOW_MS)).collect();
    for event in &events {
        tally.record(event).unwrap();
    }
    let sealed = tally.seal();
    assert_eq!(sealed.rollups.len(), 2_000);
    tally.restore(sealed);
    for event in &events {
        tally.record(event).unwrap();
    }
    assert_eq!(tally.traffic_keys(), 2_000);
    {
        let unsealed = tally.lock();
        let sizes: Vec<usize> = unsealed.rollups.shards.iter().map(HashTable::len).collect();
        assert_eq!(sizes.len(), ROLLUP_SHARDS);
        assert_eq!(sizes.iter().sum::<usize>(), 2_000);
        // About 31 keys a table; the bounds are over five deviations out.
        assert!(sizes.iter().all(|n| (3..=90).contains(n)), "{sizes:?}");
    }
    let rows = tally.seal().rollup_rows();
    assert_eq!(rows.len(), 2_000);
    assert!(rows.iter().all(|(_, counts)| *counts == RollupCounts { impressions: 2, ..Default::default() }));
    assert!(rows.windows(2).all(|pair| pair[0].0 < pair[1].0), "in key order, no key twice");
    assert_eq!(tally.traffic_keys(), 0);
}
