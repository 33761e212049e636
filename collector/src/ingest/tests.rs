//! Query and body parsing cases.

use super::*;

fn kinds(body: &str, ndjson: bool) -> Result<Vec<String>, String> {
    let mut bytes = body.as_bytes().to_vec();
    let items = parse_body(&mut bytes, ndjson).map_err(|error| error.to_string())?;
    Ok(items
        .into_iter()
        .map(|item| match item {
            Item::Event(raw) => format!("event aff={}", raw.affiliate_id.as_deref().unwrap_or("-")),
            Item::Invalid { reason, .. } => format!("invalid {reason}"),
        })
        .collect())
}

fn check(body: &str, ndjson: bool, expect: Result<&[&str], &str>) {
    match (kinds(body, ndjson), expect) {
        (Ok(actual), Ok(expect)) => assert_eq!(actual, expect, "{body}"),
        (Err(actual), Err(fragment)) => assert!(actual.contains(fragment), "{body}: {actual}"),
        (actual, expect) => panic!("{body}: got {actual:?}, expected {expect:?}"),
    }
}

#[test]
fn bodies() {
    check(r#"{"affiliate_id":7}"#, false, Ok(&["event aff=7"]));
    check(r#"{"affiliate_id":"7"}"#, false, Ok(&["event aff=7"]));
    check(r#"[{"affiliate_id":1},{"affiliate_id":2}]"#, false, Ok(&["event aff=1", "event aff=2"]));
    check("{\"affiliate_id\":1}\n\n{\"affiliate_id\":2}\n", false, Ok(&["event aff=1", "event aff=2"]));
    check("{\"affiliate_id\":1}\n{oops\n", false, Ok(&["event aff=1", "invalid invalid_json"]));
    check(r#"{"affiliate_id":1}"#, true, Ok(&["event aff=1"]));
    check(r#"[1, {"affiliate_id":null}]"#, false, Ok(&["invalid not_an_object", "event aff=-"]));
    check(r#"{"amount":12.5}"#, false, Ok(&["invalid bad_amount"]));
    check(r#"{"affiliate_id":1.5}"#, false, Ok(&["invalid bad_type"]));
    check(r#"{"affiliate":1}"#, false, Ok(&["invalid unknown_field"]));
    check(r#"{"affiliate_id":"#, false, Err("invalid json"));
    check("  \n ", false, Err("empty body"));
}

#[test]
fn too_many_items() {
    let body = format!("[{}]", vec!["{}"; BATCH_ITEMS_MAX + 1].join(","));
    check(&body, false, Err("too many items: 10001"));
    let body = vec!["{}"; BATCH_ITEMS_MAX + 1].join("\n");
    check(&body, false, Err("too many items: 10001"));
}

#[test]
fn query_strings() {
    let raw = parse_query("aff=7&cmp=3&sub1=fb%20ads&cb=123&sub5=z&eid=e1");
    assert_eq!(raw.affiliate_id.as_deref(), Some("7"));
    assert_eq!(raw.campaign_id.as_deref(), Some("3"));
    assert_eq!(raw.subs[0].as_deref(), Some("fb ads"));
    assert_eq!(raw.subs[4].as_deref(), Some("z"));
    assert_eq!(raw.event_id.as_deref(), Some("e1"));
    assert!(parse_query("").affiliate_id.is_none());
}

#[test]
fn pixel_payloads() {
    use base64::Engine;
    let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    assert!(pixel_payload("aff=1&cmp=2").is_none());
    assert!(pixel_payload("aff=1&dd=2").is_none());
    let query = format!("cb=1&d={}", encode(r#"{"affiliate_id":7,"campaign_id":3,"sub1":"x"}"#));
    let mut bytes = pixel_payload(&query).unwrap().unwrap();
    match parse_event(&mut bytes) {
        Item::Event(raw) => {
            assert_eq!((raw.affiliate_id.as_deref(), raw.subs[0].as_deref()), (Some("7"), Some("x")));
        }
        Item::Invalid { reason, .. } => panic!("{reason}"),
    }
    // Padded base64url is accepted too.
    let padded = format!("d={}==", encode(r#"{"a":1}"#));
    assert!(pixel_payload(&padded).unwrap().is_ok());
    assert_eq!(pixel_payload("d=%%%"), Some(Err("bad_payload")));
    let mut bytes = pixel_payload(&format!("d={}", encode("{oops"))).unwrap().unwrap();
    assert!(matches!(parse_event(&mut bytes), Item::Invalid { reason: "invalid_json", .. }));
}

proptest::proptest! {
    /// The borrowing pair reader reads what `form_urlencoded` reads, on
    /// any query: separators, escapes, pluses and multibyte characters.
    #[test]
    fn query_pairs_read_as_form_urlencoded(query in "[a&=%+2Fé0-9_]{0,40}") {
        let expect: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
        let actual: Vec<_> = query_pairs(&query).collect();
        proptest::prop_assert_eq!(actual, expect);
    }
}
