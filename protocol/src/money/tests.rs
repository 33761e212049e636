//! Amount parsing cases, one line each.

use super::*;

fn check(text: &str, currency: &str, expect: Result<i64, &str>) {
    let currency = Currency::parse(currency).unwrap();
    let actual = Money::parse(text, currency).map(|money| money.minor_units).map_err(|error| error.to_string());
    match expect {
        Ok(minor) => assert_eq!(actual, Ok(minor), "{text} {currency}"),
        Err(fragment) => {
            let message = actual.expect_err(text);
            assert!(message.contains(fragment), "{text}: {message:?} lacks {fragment:?}");
        }
    }
}

#[test]
fn parses_exact_minor_units() {
    check("12.34", "USD", Ok(1234));
    check("12.3", "USD", Ok(1230));
    check("12", "USD", Ok(1200));
    check("0.01", "EUR", Ok(1));
    check("1500", "JPY", Ok(1500));
    check("1.250", "BHD", Ok(1250));
    check("0", "USD", Ok(0));
    check("10000000000000.00", "USD", Ok(AMOUNT_MINOR_MAX));
}

#[test]
fn rejects_with_reason() {
    check("12.345", "USD", Err("too many decimals"));
    check("1500.5", "JPY", Err("too many decimals"));
    check("-1.00", "USD", Err("malformed"));
    check("+1.00", "USD", Err("malformed"));
    check("1e3", "USD", Err("malformed"));
    check("", "USD", Err("empty"));
    check(".5", "USD", Err("no digits before"));
    check("5.", "USD", Err("no digits after"));
    check("1.2.3", "USD", Err("malformed"));
    check("10000000000000.01", "USD", Err("out of bounds"));
    check("99999999999999999999", "USD", Err("out of bounds"));
}

#[test]
fn currency_codes() {
    assert_eq!(Currency::parse("BHD").unwrap().exponent(), 3);
    assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
    assert!(Currency::parse("usd").is_err());
    assert!(Currency::parse("XXX").is_err());
    let money = Money { minor_units: 1250, currency: Currency::parse("BHD").unwrap() };
    assert_eq!(money.to_string(), "1.250 BHD");
    let money = Money { minor_units: 1500, currency: Currency::parse("JPY").unwrap() };
    assert_eq!(money.to_string(), "1500 JPY");
}

fn check_percent(text: &str, expect: Result<u32, &str>) {
    let actual = Percent::parse(text).map(Percent::ppm).map_err(|error| error.to_string());
    match expect {
        Ok(ppm) => assert_eq!(actual, Ok(ppm), "{text}"),
        Err(fragment) => {
            let message = actual.expect_err(text);
            assert!(message.contains(fragment), "{text}: {message:?} lacks {fragment:?}");
        }
    }
}

#[test]
fn parses_percent_exactly() {
    check_percent("7.5", Ok(75_000));
    check_percent("0", Ok(0));
    check_percent("100", Ok(1_000_000));
    check_percent("0.0001", Ok(1));
    check_percent("33.3333", Ok(333_333));
    check_percent("100.0001", Err("above 100"));
    check_percent("999", Err("above 100"));
    check_percent("1000", Err("malformed"));
    check_percent("1.23456", Err("more than 4 decimals"));
    check_percent("", Err("malformed"));
    check_percent("-1", Err("malformed"));
    check_percent("1.", Err("malformed"));
    check_percent(".5", Err("malformed"));
    check_percent("1e2", Err("malformed"));
    check_percent("5%", Err("malformed"));
}

fn check_of(percent: &str, minor_units: i64, expect: i64) {
    assert_eq!(Percent::parse(percent).unwrap().of(minor_units), expect, "{percent}% of {minor_units}");
}

#[test]
fn percent_of_rounds_half_to_even() {
    check_of("50", 1001, 500); // 500.5 -> 500 (even)
    check_of("50", 1003, 502); // 501.5 -> 502 (even)
    check_of("50", 1, 0); // 0.5 -> 0
    check_of("50", 3, 2); // 1.5 -> 2
    check_of("10", 1234, 123); // 123.4 -> 123
    check_of("10", 1236, 124); // 123.6 -> 124
    check_of("7.5", 1999, 150); // 149.925 -> 150
    check_of("0.0001", 4_999_999, 5); // 4.999999 -> 5
    check_of("0.0001", 5_000_000, 5); // exactly 5
    check_of("0.0001", 5_500_000, 6); // 5.5 -> 6 (even)
    check_of("0.0001", 4_500_000, 4); // 4.5 -> 4 (even)
    check_of("100", AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX);
    check_of("100", i64::MAX, i64::MAX);
    check_of("50", -3, -2); // -1.5 -> -2 (even)
    check_of("50", -5, -2); // -2.5 -> -2 (even)
    check_of("0", 123_456, 0);
}

#[test]
fn percent_displays_without_trailing_zeros() {
    for (text, shown) in [("7.5", "7.5%"), ("100", "100%"), ("0.0001", "0.0001%"), ("12.3400", "12.34%")] {
        assert_eq!(Percent::parse(text).unwrap().to_string(), shown);
    }
}
