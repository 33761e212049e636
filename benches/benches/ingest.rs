//! Parsing and validating what the collector receives: pixel query strings,
//! `POST /v1/events` bodies, and the bot user-agent rule.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use aho_corasick::{AhoCorasickBuilder, MatchKind};
use edgetally_collector::ingest::{Item, parse_body, parse_query, query_pairs};
use edgetally_protocol::fraud::{BOT_USER_AGENT_MARKERS, is_bot_user_agent};
use edgetally_protocol::{Event, EventKind};

const NOW_MS: i64 = 1_790_000_000_000;

fn ingest(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ingest");
    let query = "aff=1234&cmp=56&sub1=newsletter&sub2=banner-3&eid=e-0001&cb=8812371";
    group.throughput(Throughput::Elements(1));
    group.bench_function("pixel_query", |bench| {
        bench.iter(|| Event::validate(&parse_query(query), Some(EventKind::Impression), NOW_MS).unwrap())
    });
    // The query reader against form_urlencoded, which it follows and which
    // it leaves the pairs with escapes to.
    group.bench_function("query_pairs", |bench| bench.iter(|| query_pairs(black_box(query)).count()));
    group.bench_function("query_pairs_form_urlencoded", |bench| {
        bench.iter(|| form_urlencoded::parse(black_box(query).as_bytes()).count())
    });
    // The bot rule runs on every browser request: a browser's user agent
    // is scanned to its end (no marker), a crawler's stops at its marker.
    // The baseline scans the same markers ignoring case, without
    // lowercasing first (the rule's path for user agents over 512 bytes).
    let any_case = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(BOT_USER_AGENT_MARKERS)
        .unwrap();
    for (name, user_agent) in [
        (
            "browser",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ),
        ("crawler", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
    ] {
        group.bench_with_input(BenchmarkId::new("bot_user_agent", name), user_agent, |bench, user_agent| {
            bench.iter(|| is_bot_user_agent(black_box(user_agent.as_bytes())))
        });
        group.bench_with_input(BenchmarkId::new("bot_user_agent_any_case", name), user_agent, |bench, user_agent| {
            bench.iter(|| any_case.is_match(black_box(user_agent.as_bytes())))
        });
    }
    for n_items in [1usize, 100] {
        let item = r#"{"kind":"sale","affiliate_id":1234,"campaign_id":56,"sub1":"newsletter","amount":"49.90","currency":"EUR","order_id":"o-81723","time":1789999990000}"#;
        let body = vec![item; n_items].join("\n");
        group.throughput(Throughput::Elements(n_items as u64));
        group.bench_with_input(BenchmarkId::new("ndjson_events", n_items), &body, |bench, body| {
            bench.iter(|| {
                let mut bytes = body.as_bytes().to_vec();
                let items = parse_body(&mut bytes, true).unwrap();
                items
                    .iter()
                    .filter(|item| matches!(item, Item::Event(raw) if Event::validate(raw, None, NOW_MS).is_ok()))
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
