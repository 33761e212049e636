//! What each role may read: [`scope`] on parsed tickets.

use super::*;

/// Parses `ticket`, scopes it for `role` and compares the ticket it became
/// (rendered with its keys in order) or the refusal with `expect`.
#[track_caller]
fn check(role: Role, ticket: &str, expect: &str) {
    let mut query = ticket::parse(ticket.as_bytes()).unwrap();
    let actual = match scope(role, &mut query) {
        Ok(()) => String::from_utf8(ticket::render(&query)).unwrap(),
        Err(denied) => denied.to_string(),
    };
    assert_eq!(actual, expect, "{role} asking {ticket}");
}

#[test]
fn admins_read_everything_as_asked() {
    let admin = Role::Admin;
    check(admin, r#"{"dataset":"rollups"}"#, r#"{"dataset":"rollups"}"#);
    check(admin, r#"{"dataset":"rollups","affiliate_id":8}"#, r#"{"affiliate_id":8,"dataset":"rollups"}"#);
    check(admin, r#"{"dataset":"quarantine","follow":true}"#, r#"{"dataset":"quarantine","follow":true}"#);
}

#[test]
fn affiliates_read_their_own_rows() {
    let affiliate = Role::Affiliate(7);
    check(affiliate, r#"{"dataset":"rollups"}"#, r#"{"affiliate_id":7,"dataset":"rollups"}"#);
    check(affiliate, r#"{"dataset":"conversions"}"#, r#"{"affiliate_id":7,"dataset":"conversions"}"#);
    check(
        affiliate,
        r#"{"dataset":"rollups","affiliate_id":7,"from":0,"to":60000,"group_by":["campaign_id"]}"#,
        r#"{"affiliate_id":7,"dataset":"rollups","from":0,"group_by":["campaign_id"],"to":60000}"#,
    );
    check(
        affiliate,
        r#"{"dataset":"conversions","follow":true}"#,
        r#"{"affiliate_id":7,"dataset":"conversions","follow":true}"#,
    );
    check(affiliate, r#"{"dataset":"rollups","affiliate_id":8}"#, "affiliate:7 may not read affiliate 8");
    check(
        affiliate,
        r#"{"dataset":"conversions","affiliate_id":8,"follow":true}"#,
        "affiliate:7 may not read affiliate 8",
    );
    check(
        affiliate,
        r#"{"dataset":"quarantine"}"#,
        "affiliate:7 may not read quarantine: its rows have no trusted affiliate",
    );
    check(
        affiliate,
        r#"{"dataset":"quarantine","follow":true}"#,
        "affiliate:7 may not read quarantine: its rows have no trusted affiliate",
    );
}

#[test]
fn edges_read_nothing() {
    check(Role::Edge, r#"{"dataset":"rollups"}"#, "edge may not read rollups");
    check(Role::Edge, r#"{"dataset":"conversions","affiliate_id":1}"#, "edge may not read conversions");
}
