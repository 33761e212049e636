//! Exact money: an `i64` count of a currency's minor units and its ISO 4217
//! code.
//!
//! Amounts travel as decimal strings in major units (`12.34` USD, `1500` JPY,
//! `1.250` BHD) and are parsed without floats. A sign, an exponent, more
//! decimal places than the currency has, or a value past [`AMOUNT_MINOR_MAX`]
//! is rejected with that reason.

use std::fmt;

/// The largest amount accepted in minor units. A single conversion of more
/// than ten billion major units is far beyond any real order, and keeping
/// single amounts this small leaves sums of millions of them far from
/// `i64::MAX`.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Longest accepted amount text: enough for [`AMOUNT_MINOR_MAX`] with a
/// decimal point and three decimals.
pub const AMOUNT_TEXT_LEN_MAX: usize = 24;

/// Currencies EdgeTally accepts, with their ISO 4217 minor-unit exponent.
/// Funds codes, precious metals and testing codes are deliberately absent.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency: {0:?} is not an accepted ISO 4217 code")]
    UnknownCurrency(String),
    #[error("malformed amount: {0}")]
    Malformed(&'static str),
    #[error("too many decimals: {currency} has {exponent}, amount has {decimals}")]
    TooManyDecimals { currency: Currency, exponent: u8, decimals: usize },
    #[error("amount out of bounds: limit is {AMOUNT_MINOR_MAX} minor units")]
    OutOfBounds,
}

/// An ISO 4217 currency code from the accepted table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

// === impl Currency ===

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(known, _)| Currency::of_table(known))
            .ok_or_else(|| MoneyError::UnknownCurrency(code.chars().take(8).collect()))
    }

    /// The least accepted currency in `Ord` order: the lower bound of a
    /// range scan over keys that end in a currency.
    pub fn least() -> Currency {
        CURRENCIES.iter().map(|(code, _)| Currency::of_table(code)).min().expect("the currency table is not empty")
    }

    /// Every accepted currency, in code order.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES.iter().map(|(code, _)| Currency::of_table(code))
    }

    /// A code of the table, every one three ASCII letters.
    fn of_table(code: &str) -> Currency {
        let bytes = code.as_bytes();
        Currency([bytes[0], bytes[1], bytes[2]])
    }

    pub fn code(&self) -> &str {
        // The three bytes always come from the ASCII table above.
        std::str::from_utf8(&self.0).expect("currency codes are ASCII")
    }

    /// The number of decimal places of the minor unit (USD 2, JPY 0, BHD 3).
    pub fn exponent(&self) -> u8 {
        CURRENCIES
            .iter()
            .find(|(known, _)| known.as_bytes() == self.0)
            .map(|(_, exponent)| *exponent)
            .expect("a Currency is only built from the table")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An exact amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor_units: i64,
    pub currency: Currency,
}

// === impl Money ===

impl Money {
    /// Parses a decimal string in major units into minor units exactly.
    pub fn parse(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Malformed("empty amount"));
        }
        if text.len() > AMOUNT_TEXT_LEN_MAX {
            return Err(MoneyError::OutOfBounds);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        if whole.is_empty() {
            return Err(MoneyError::Malformed("no digits before the decimal point"));
        }
        if text.contains('.') && fraction.is_empty() {
            return Err(MoneyError::Malformed("no digits after the decimal point"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MoneyError::Malformed("only digits and one decimal point are allowed"));
        }
        let exponent = currency.exponent();
        if fraction.len() > usize::from(exponent) {
            return Err(MoneyError::TooManyDecimals { currency, exponent, decimals: fraction.len() });
        }
        let mut minor_units: i64 = 0;
        let padding = usize::from(exponent) - fraction.len();
        let digits = whole.bytes().chain(fraction.bytes()).chain(std::iter::repeat_n(b'0', padding));
        for digit in digits {
            minor_units = minor_units
                .checked_mul(10)
                .and_then(|value| value.checked_add(i64::from(digit - b'0')))
                .ok_or(MoneyError::OutOfBounds)?;
        }
        if minor_units > AMOUNT_MINOR_MAX {
            return Err(MoneyError::OutOfBounds);
        }
        Ok(Money { minor_units, currency })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = u32::from(self.currency.exponent());
        let scale = 10i64.pow(exponent);
        let sign = if self.minor_units < 0 { "-" } else { "" };
        let magnitude = self.minor_units.unsigned_abs();
        let scale = scale.unsigned_abs();
        if exponent == 0 {
            write!(f, "{sign}{magnitude} {}", self.currency)
        } else {
            let width = exponent as usize;
            write!(f, "{sign}{}.{:0width$} {}", magnitude / scale, magnitude % scale, self.currency)
        }
    }
}

/// Parts per million in one percent: percentages are kept as integer ppm
/// so that `7.5%` is exactly 75,000 and arithmetic never touches a float.
pub const PPM_PER_PERCENT: u32 = 10_000;

/// The largest percentage accepted: a commission or an override is at most
/// the whole amount.
pub const PERCENT_PPM_MAX: u32 = 100 * PPM_PER_PERCENT;

/// Most decimal places of a percentage: four (0.0001%, one ppm).
const PERCENT_DECIMALS_MAX: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("malformed percent {0:?}: expected digits with at most one decimal point")]
    Malformed(String),
    #[error("percent {0:?} has more than {PERCENT_DECIMALS_MAX} decimals")]
    TooManyDecimals(String),
    #[error("percent {0:?} is above 100")]
    AboveHundred(String),
}

/// An exact percentage from 0 to 100 with up to four decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent {
    ppm: u32,
}

// === impl Percent ===

impl Percent {
    /// Parses `"7.5"` (meaning 7.5%) exactly.
    pub fn parse(text: &str) -> Result<Percent, PercentError> {
        let malformed = || PercentError::Malformed(text.chars().take(16).collect());
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 3 || !digits_only(whole) || !digits_only(fraction) {
            return Err(malformed());
        }
        if text.contains('.') && fraction.is_empty() {
            return Err(malformed());
        }
        if fraction.len() > PERCENT_DECIMALS_MAX {
            return Err(PercentError::TooManyDecimals(text.to_owned()));
        }
        let padding = PERCENT_DECIMALS_MAX - fraction.len();
        let digits = whole.bytes().chain(fraction.bytes()).chain(std::iter::repeat_n(b'0', padding));
        // At most 3 + 4 digits: fits in u32 without checks.
        let ppm = digits.fold(0u32, |value, digit| value * 10 + u32::from(digit - b'0'));
        if ppm > PERCENT_PPM_MAX {
            return Err(PercentError::AboveHundred(text.to_owned()));
        }
        Ok(Percent { ppm })
    }

    pub fn from_ppm(ppm: u32) -> Option<Percent> {
        (ppm <= PERCENT_PPM_MAX).then_some(Percent { ppm })
    }

    pub fn ppm(self) -> u32 {
        self.ppm
    }

    /// This percentage of `minor_units`, rounded half to even (banker's
    /// rounding: 0.5 goes to the even neighbour, so rounding errors cancel
    /// over many conversions instead of always favouring one side).
    ///
    /// Exact: the product is formed in `i128`, and since the percentage is
    /// at most 100 the result is never larger in magnitude than the input.
    pub fn of(self, minor_units: i64) -> i64 {
        let denominator = i128::from(PERCENT_PPM_MAX);
        let product = i128::from(minor_units) * i128::from(self.ppm);
        let quotient = product.div_euclid(denominator);
        let remainder = product.rem_euclid(denominator);
        let rounded = match (remainder * 2).cmp(&denominator) {
            std::cmp::Ordering::Less => quotient,
            std::cmp::Ordering::Greater => quotient + 1,
            std::cmp::Ordering::Equal => quotient + (quotient & 1),
        };
        // |rounded| <= |minor_units| because ppm <= 100%.
        i64::try_from(rounded).expect("a percentage of at most 100 of an i64 fits in an i64")
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.ppm / PPM_PER_PERCENT;
        let fraction = self.ppm % PPM_PER_PERCENT;
        if fraction == 0 {
            return write!(f, "{whole}%");
        }
        let text = format!("{fraction:04}");
        write!(f, "{whole}.{}%", text.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests;
