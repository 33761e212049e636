//! The exchange-rate table of the dashboard: totals per currency converted
//! into one reporting currency.
//!
//! The file (`--exchange-rates`) is JSON:
//! `{"reporting_currency":"EUR","rates":{"USD":"0.92","BHD":"2.43"}}`, each
//! rate the number of reporting-currency units one unit of the currency
//! buys, as a decimal string. Conversion is exact integer arithmetic: a
//! total of `m` minor units becomes `m × rate × 10^(e_r − e_c)` minor units
//! of the reporting currency (`e` the exponents), rounded half to even.
//! The page's `model.js` converts with the same formula, so a total the
//! page updated from deltas equals the one the server computes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgetally_protocol::Currency;
use serde::Deserialize;

/// Decimals a rate may have: enough for any published rate.
const RATE_DECIMALS_MAX: usize = 12;
/// Digits before the point: a unit buying a billion of another is enough.
const RATE_INTEGER_DIGITS_MAX: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum RatesError {
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{}: unknown currency {code:?}", path.display())]
    Currency { path: PathBuf, code: String },
    #[error(
        "{}: rate {text:?} of {code} must be a positive decimal with at most {RATE_INTEGER_DIGITS_MAX} digits before the point and {RATE_DECIMALS_MAX} after",
        path.display()
    )]
    Rate { path: PathBuf, code: String, text: String },
    #[error("{}: the reporting currency {code} may only have rate \"1\"", path.display())]
    ReportingRate { path: PathBuf, code: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesFile {
    reporting_currency: String,
    rates: BTreeMap<String, String>,
}

/// A positive decimal: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate {
    mantissa: i128,
    scale: u32,
}

/// The reporting currency and the rate of every other currency into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRates {
    reporting: Currency,
    rates: BTreeMap<Currency, Rate>,
    /// The rates as the file wrote them, for the page.
    texts: BTreeMap<String, String>,
}

/// A total that does not fit when converted (an `i128` of minor units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a converted amount does not fit: narrow the period")]
pub(crate) struct Overflow;

// === impl Rate ===

impl Rate {
    fn parse(text: &str) -> Option<Rate> {
        let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if integer.is_empty()
            || integer.len() > RATE_INTEGER_DIGITS_MAX
            || fraction.len() > RATE_DECIMALS_MAX
            || (text.contains('.') && fraction.is_empty())
            || !digits(integer)
            || !digits(fraction)
        {
            return None;
        }
        // At most 22 digits: far inside an i128.
        let mantissa: i128 = format!("{integer}{fraction}").parse().ok()?;
        (mantissa > 0).then_some(Rate { mantissa, scale: fraction.len() as u32 })
    }

    const ONE: Rate = Rate { mantissa: 1, scale: 0 };
}

// === impl ExchangeRates ===

impl ExchangeRates {
    pub fn load(path: &Path) -> Result<ExchangeRates, RatesError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RatesError::Read { path: path.to_owned(), source })?;
        let file: RatesFile =
            serde_json::from_str(&text).map_err(|source| RatesError::Parse { path: path.to_owned(), source })?;
        let currency = |code: &str| {
            Currency::parse(code).map_err(|_| RatesError::Currency { path: path.to_owned(), code: code.to_owned() })
        };
        let reporting = currency(&file.reporting_currency)?;
        let mut rates = BTreeMap::new();
        for (code, text) in &file.rates {
            let from = currency(code)?;
            let rate = Rate::parse(text).ok_or_else(|| RatesError::Rate {
                path: path.to_owned(),
                code: code.clone(),
                text: text.clone(),
            })?;
            if from == reporting && rate.mantissa != 10_i128.pow(rate.scale) {
                return Err(RatesError::ReportingRate { path: path.to_owned(), code: code.clone() });
            }
            rates.insert(from, rate);
        }
        rates.insert(reporting, Rate::ONE);
        Ok(ExchangeRates { reporting, rates, texts: file.rates })
    }

    pub(crate) fn reporting(&self) -> Currency {
        self.reporting
    }

    /// The rates as written in the file (the reporting currency only if
    /// the file lists it).
    pub(crate) fn texts(&self) -> &BTreeMap<String, String> {
        &self.texts
    }

    /// `minor` units of `from` in minor units of the reporting currency,
    /// rounded half to even; `None` without a rate for `from`.
    pub(crate) fn convert(&self, minor: i128, from: Currency) -> Option<Result<i128, Overflow>> {
        let rate = self.rates.get(&from)?;
        Some(convert(minor, *rate, from.exponent(), self.reporting.exponent()))
    }
}

/// `minor × rate × 10^(to_exponent − from_exponent)`, rounded half to even.
fn convert(minor: i128, rate: Rate, from_exponent: u8, to_exponent: u8) -> Result<i128, Overflow> {
    let mut numerator = minor.checked_mul(rate.mantissa).ok_or(Overflow)?;
    let mut denominator_exponent = rate.scale + u32::from(from_exponent);
    let to_exponent = u32::from(to_exponent);
    // Cancel powers of ten first, so a large total loses no headroom to
    // a scale that only divides out again.
    let common = denominator_exponent.min(to_exponent);
    denominator_exponent -= common;
    numerator = numerator.checked_mul(10_i128.checked_pow(to_exponent - common).ok_or(Overflow)?).ok_or(Overflow)?;
    let denominator = 10_i128.checked_pow(denominator_exponent).ok_or(Overflow)?;
    let quotient = numerator / denominator;
    let remainder = (numerator % denominator).abs();
    let away = match (2 * remainder).cmp(&denominator) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => quotient % 2 != 0,
    };
    if !away {
        return Ok(quotient);
    }
    Ok(if numerator < 0 { quotient - 1 } else { quotient + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        Rate::parse(text).unwrap()
    }

    #[test]
    fn converts_exactly_and_rounds_half_to_even() {
        // 12.345 BHD at 2.43 EUR: 29.99835 EUR, to the cent 30.00.
        assert_eq!(convert(12_345, rate("2.43"), 3, 2), Ok(3_000));
        // 1.25 at 0.1 is 0.125: a tie, to even 0.12; 1.35 → 0.135 → 0.14.
        assert_eq!(convert(125, rate("0.1"), 2, 2), Ok(12));
        assert_eq!(convert(135, rate("0.1"), 2, 2), Ok(14));
        assert_eq!(convert(-125, rate("0.1"), 2, 2), Ok(-12));
        assert_eq!(convert(-135, rate("0.1"), 2, 2), Ok(-14));
        // 500 JPY at 0.0061 EUR: 3.05 EUR.
        assert_eq!(convert(500, rate("0.0061"), 0, 2), Ok(305));
        // 1.00 EUR in JPY at 163.5: 163.5 yen, to even 164.
        assert_eq!(convert(100, rate("163.5"), 2, 0), Ok(164));
        assert_eq!(convert(i128::MAX / 2, rate("3"), 2, 2), Err(Overflow));
    }

    #[test]
    fn rates_must_be_plain_positive_decimals() {
        for bad in ["", "0", "0.000", "-1", "1.", ".5", "1e3", "1,5", " 1", "12345678901", "0.1234567890123"] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Rate::parse("0.92"), Some(Rate { mantissa: 92, scale: 2 }));
        assert_eq!(Rate::parse("163"), Some(Rate { mantissa: 163, scale: 0 }));
    }

    #[test]
    fn the_file_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.json");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            ExchangeRates::load(&path)
        };
        let rates = load(r#"{"reporting_currency":"EUR","rates":{"USD":"0.92","EUR":"1.00"}}"#).unwrap();
        assert_eq!(rates.reporting().code(), "EUR");
        assert_eq!(rates.convert(10_000, Currency::parse("USD").unwrap()), Some(Ok(9_200)));
        assert_eq!(rates.convert(10_000, Currency::parse("EUR").unwrap()), Some(Ok(10_000)));
        assert_eq!(rates.convert(10_000, Currency::parse("GBP").unwrap()), None);
        let error = load(r#"{"reporting_currency":"EUR","rates":{"USD":"0,92"}}"#).unwrap_err().to_string();
        assert!(error.contains("rate \"0,92\" of USD"), "{error}");
        let error = load(r#"{"reporting_currency":"EUR","rates":{"XXX":"1"}}"#).unwrap_err().to_string();
        assert!(error.contains("unknown currency \"XXX\""), "{error}");
        let error = load(r#"{"reporting_currency":"EUR","rates":{"EUR":"2"}}"#).unwrap_err().to_string();
        assert!(error.contains("may only have rate \"1\""), "{error}");
        assert!(matches!(load(r#"{"reporting":"EUR","rates":{}}"#), Err(RatesError::Parse { .. })));
    }
}
