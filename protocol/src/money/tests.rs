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
