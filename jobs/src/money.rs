//! Exact money: integer minor units tagged with an ISO 4217 currency, and the one place where
//! fractional arithmetic (quantities, tax rates, late fees) is rounded back to minor units.
//!
//! DESIGN.md rule 3: amounts are `i64` minor units; anything fractional goes through
//! `rust_decimal` and is rounded exactly once, half away from zero. The rounding points are:
//! - a line amount: `quantity × unit price`, rounded once per line ([`line_amount`]);
//! - tax: per distinct rate, over the sum of that rate's (already rounded) line amounts,
//!   rounded once per rate ([`compute_totals`]);
//! - a percentage of an amount, such as a late fee, rounded once ([`percent_of`]).
//!
//! Nothing here ever touches `f64`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use thiserror::Error;

/// Most decimal places a quantity or a tax rate may carry. Generous for metered usage, and
/// small enough that the string always converts to a `Decimal` without silent rounding.
const MAX_FRACTION_DIGITS: usize = 12;

/// Why an amount, a rate, a quantity or a currency was refused, or why arithmetic failed.
///
/// The messages are sentences meant for an operator or an API client, so they name the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MoneyError {
    #[error("the amount is empty; expected a decimal string such as \"19.99\"")]
    Empty,
    #[error("\"{input}\" is not a decimal amount; expected digits such as \"19.99\" or \"-3.00\"")]
    NotANumber { input: String },
    #[error("{input} has more decimal places than {currency} allows ({allowed})")]
    TooManyDecimals {
        input: String,
        currency: &'static str,
        allowed: u32,
    },
    #[error("{input} is too large to represent in {currency}")]
    OutOfRange {
        input: String,
        currency: &'static str,
    },
    #[error("the {what} is too large to represent")]
    Overflow { what: &'static str },
    #[error("cannot combine an amount in {left} with an amount in {right}")]
    CurrencyMismatch {
        left: &'static str,
        right: &'static str,
    },
    #[error("\"{input}\" is not a supported ISO 4217 currency code")]
    UnknownCurrency { input: String },
    #[error("tax rate \"{input}\" is not valid: {reason}")]
    InvalidRate { input: String, reason: &'static str },
    #[error("quantity \"{input}\" is not valid: {reason}")]
    InvalidQuantity { input: String, reason: &'static str },
}

/// An ISO 4217 currency and the number of decimal places of its minor unit.
///
/// Only currencies Stripe can charge are known, with the exponents Stripe uses for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
    /// The code and a space: the display prefix for currencies without a well-known symbol,
    /// built at compile time so `symbol()` can stay `&'static str`.
    code_prefix: &'static str,
}

macro_rules! cur {
    ($code:literal, $exponent:literal) => {
        Currency {
            code: $code,
            exponent: $exponent,
            code_prefix: concat!($code, " "),
        }
    };
}

/// Sorted by code so lookups can binary-search; a unit test keeps it sorted.
static CURRENCIES: &[Currency] = &[
    cur!("AED", 2),
    cur!("AFN", 2),
    cur!("ALL", 2),
    cur!("AMD", 2),
    cur!("ANG", 2),
    cur!("AOA", 2),
    cur!("ARS", 2),
    cur!("AUD", 2),
    cur!("AWG", 2),
    cur!("AZN", 2),
    cur!("BAM", 2),
    cur!("BBD", 2),
    cur!("BDT", 2),
    cur!("BGN", 2),
    cur!("BHD", 3),
    cur!("BIF", 0),
    cur!("BMD", 2),
    cur!("BND", 2),
    cur!("BOB", 2),
    cur!("BRL", 2),
    cur!("BSD", 2),
    cur!("BWP", 2),
    cur!("BYN", 2),
    cur!("BZD", 2),
    cur!("CAD", 2),
    cur!("CDF", 2),
    cur!("CHF", 2),
    cur!("CLP", 0),
    cur!("CNY", 2),
    cur!("COP", 2),
    cur!("CRC", 2),
    cur!("CVE", 2),
    cur!("CZK", 2),
    cur!("DJF", 0),
    cur!("DKK", 2),
    cur!("DOP", 2),
    cur!("DZD", 2),
    cur!("EGP", 2),
    cur!("ETB", 2),
    cur!("EUR", 2),
    cur!("FJD", 2),
    cur!("FKP", 2),
    cur!("GBP", 2),
    cur!("GEL", 2),
    cur!("GIP", 2),
    cur!("GMD", 2),
    cur!("GNF", 0),
    cur!("GTQ", 2),
    cur!("GYD", 2),
    cur!("HKD", 2),
    cur!("HNL", 2),
    cur!("HTG", 2),
    cur!("HUF", 2),
    cur!("IDR", 2),
    cur!("ILS", 2),
    cur!("INR", 2),
    cur!("ISK", 2),
    cur!("JMD", 2),
    cur!("JOD", 3),
    cur!("JPY", 0),
    cur!("KES", 2),
    cur!("KGS", 2),
    cur!("KHR", 2),
    cur!("KMF", 0),
    cur!("KRW", 0),
    cur!("KWD", 3),
    cur!("KYD", 2),
    cur!("KZT", 2),
    cur!("LAK", 2),
    cur!("LBP", 2),
    cur!("LKR", 2),
    cur!("LRD", 2),
    cur!("LSL", 2),
    cur!("MAD", 2),
    cur!("MDL", 2),
    cur!("MGA", 0),
    cur!("MKD", 2),
    cur!("MMK", 2),
    cur!("MNT", 2),
    cur!("MOP", 2),
    cur!("MUR", 2),
    cur!("MVR", 2),
    cur!("MWK", 2),
    cur!("MXN", 2),
    cur!("MYR", 2),
    cur!("MZN", 2),
    cur!("NAD", 2),
    cur!("NGN", 2),
    cur!("NIO", 2),
    cur!("NOK", 2),
    cur!("NPR", 2),
    cur!("NZD", 2),
    cur!("OMR", 3),
    cur!("PAB", 2),
    cur!("PEN", 2),
    cur!("PGK", 2),
    cur!("PHP", 2),
    cur!("PKR", 2),
    cur!("PLN", 2),
    cur!("PYG", 0),
    cur!("QAR", 2),
    cur!("RON", 2),
    cur!("RSD", 2),
    cur!("RUB", 2),
    cur!("RWF", 0),
    cur!("SAR", 2),
    cur!("SBD", 2),
    cur!("SCR", 2),
    cur!("SEK", 2),
    cur!("SGD", 2),
    cur!("SHP", 2),
    cur!("SLE", 2),
    cur!("SLL", 2),
    cur!("SOS", 2),
    cur!("SRD", 2),
    cur!("STD", 2),
    cur!("SZL", 2),
    cur!("THB", 2),
    cur!("TJS", 2),
    cur!("TND", 3),
    cur!("TOP", 2),
    cur!("TRY", 2),
    cur!("TTD", 2),
    cur!("TWD", 2),
    cur!("TZS", 2),
    cur!("UAH", 2),
    cur!("UGX", 0),
    cur!("USD", 2),
    cur!("UYU", 2),
    cur!("UZS", 2),
    cur!("VND", 0),
    cur!("VUV", 0),
    cur!("WST", 2),
    cur!("XAF", 0),
    cur!("XCD", 2),
    cur!("XOF", 0),
    cur!("XPF", 0),
    cur!("YER", 2),
    cur!("ZAR", 2),
    cur!("ZMW", 2),
];

impl Currency {
    pub const USD: Currency = cur!("USD", 2);
    pub const EUR: Currency = cur!("EUR", 2);
    pub const GBP: Currency = cur!("GBP", 2);
    pub const JPY: Currency = cur!("JPY", 0);
    pub const KWD: Currency = cur!("KWD", 3);

    /// Looks a code up case-insensitively ("usd" and "USD" are the same currency), because
    /// Stripe sends lower case and people type either.
    pub fn parse(s: &str) -> Result<Currency, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency {
            input: s.to_string(),
        };
        if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(unknown());
        }
        let upper = s.to_ascii_uppercase();
        CURRENCIES
            .binary_search_by(|c| c.code.cmp(upper.as_str()))
            .map(|i| CURRENCIES[i])
            .map_err(|_| unknown())
    }

    /// Every supported currency, sorted by code.
    pub fn all() -> &'static [Currency] {
        CURRENCIES
    }

    /// The upper-case ISO 4217 code.
    pub fn code(self) -> &'static str {
        self.code
    }

    /// Decimal places of the minor unit: JPY 0, USD 2, KWD 3.
    pub fn exponent(self) -> u32 {
        self.exponent
    }

    /// What a person sees before the amount. Plain "$" is reserved for USD so that other
    /// dollars are never mistaken for it; unknown symbols fall back to the code and a space.
    pub fn symbol(self) -> &'static str {
        match self.code {
            "USD" => "$",
            "EUR" => "€",
            "GBP" => "£",
            "JPY" => "¥",
            "CNY" => "CN¥",
            "INR" => "₹",
            "KRW" => "₩",
            "CAD" => "CA$",
            "AUD" => "A$",
            "NZD" => "NZ$",
            "HKD" => "HK$",
            "MXN" => "MX$",
            "TWD" => "NT$",
            "BRL" => "R$",
            "ILS" => "₪",
            "NGN" => "₦",
            "PHP" => "₱",
            "VND" => "₫",
            "THB" => "฿",
            "TRY" => "₺",
            "UAH" => "₴",
            "RUB" => "₽",
            _ => self.code_prefix,
        }
    }

    fn scale_factor(self) -> u64 {
        10u64.pow(self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

/// An exact amount: an integer number of minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

/// The pieces of a plain decimal string. Parsing is done by hand, rather than by
/// `Decimal::from_str` or `str::parse`, because those accept forms the API must refuse:
/// exponents, a leading '+', underscores, and more digits than they can hold (silently rounded).
struct DecimalParts<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

/// Accepts `-?[0-9]+(\.[0-9]+)?` and nothing else.
fn split_decimal(s: &str) -> Option<DecimalParts<'_>> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return None;
            }
            (int, frac)
        }
        None => (rest, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    Some(DecimalParts {
        negative,
        int,
        frac,
    })
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    pub fn zero(currency: Currency) -> Money {
        Money { minor: 0, currency }
    }

    /// Parses a decimal string in major units ("19.99" USD is 1999 minor units).
    ///
    /// Decimal places are counted as written, so "1.500" is refused for USD even though it is
    /// 1.50: an amount that claims more precision than the currency has is treated as a
    /// mistake, not quietly accepted.
    pub fn parse(s: &str, currency: Currency) -> Result<Money, MoneyError> {
        if s.is_empty() {
            return Err(MoneyError::Empty);
        }
        let parts = split_decimal(s).ok_or_else(|| MoneyError::NotANumber {
            input: s.to_string(),
        })?;
        let exp = currency.exponent as usize;
        if parts.frac.len() > exp {
            return Err(MoneyError::TooManyDecimals {
                input: s.to_string(),
                currency: currency.code,
                allowed: currency.exponent,
            });
        }
        let out_of_range = || MoneyError::OutOfRange {
            input: s.to_string(),
            currency: currency.code,
        };
        // The digits of the minor amount are the integer digits, the fraction digits, and
        // zeros padding the fraction to the currency's exponent.
        let padding = std::iter::repeat_n(b'0', exp - parts.frac.len());
        let mut magnitude: u128 = 0;
        for digit in parts.int.bytes().chain(parts.frac.bytes()).chain(padding) {
            magnitude = magnitude
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(out_of_range)?;
        }
        let signed = i128::try_from(magnitude).map_err(|_| out_of_range())?;
        let signed = if parts.negative { -signed } else { signed };
        let minor = i64::try_from(signed).map_err(|_| out_of_range())?;
        Ok(Money { minor, currency })
    }

    /// The canonical decimal string, the inverse of [`Money::parse`]: always exactly the
    /// currency's number of decimal places ("19.99", "1000" for JPY, "1.500" for KWD, "-0.50").
    pub fn to_decimal_string(&self) -> String {
        let (int, frac) = self.split_major_minor();
        let sign = if self.minor < 0 { "-" } else { "" };
        match frac {
            Some(frac) => format!("{sign}{int}.{frac}"),
            None => format!("{sign}{int}"),
        }
    }

    /// For people, not machines: "$1,234.50", "¥1,000", "-$5.00", "CHF 12.00", "KWD 1.500".
    /// Exactly the currency's decimal places: a yen amount never shows ".00".
    pub fn display(&self) -> String {
        let sign = if self.minor < 0 { "-" } else { "" };
        format!("{sign}{}{}", self.currency.symbol(), self.grouped())
    }

    /// The amount followed by the code ("1,000 JPY", "1.500 KWD", "-19.99 USD"), for places that
    /// cannot show every symbol (the PDF's standard fonts) or where the code must be explicit.
    pub fn display_with_code(&self) -> String {
        let sign = if self.minor < 0 { "-" } else { "" };
        format!("{sign}{} {}", self.grouped(), self.currency.code)
    }

    /// The absolute amount with thousands separators and the currency's decimal places.
    fn grouped(&self) -> String {
        let (int, frac) = self.split_major_minor();
        let digits = int.to_string();
        let mut grouped = String::with_capacity(digits.len() + digits.len() / 3 + 4);
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if let Some(frac) = frac {
            grouped.push('.');
            grouped.push_str(&frac);
        }
        grouped
    }

    /// Integer major units and the zero-padded fraction digits (None for zero-decimal
    /// currencies), both of the absolute value so `i64::MIN` needs no special case.
    fn split_major_minor(&self) -> (u64, Option<String>) {
        let abs = self.minor.unsigned_abs();
        let factor = self.currency.scale_factor();
        let int = abs / factor;
        let exp = self.currency.exponent as usize;
        let frac = (exp > 0).then(|| format!("{:0exp$}", abs % factor));
        (int, frac)
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow { what: "sum" })?;
        Ok(Money::new(minor, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow { what: "difference" })?;
        Ok(Money::new(minor, self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency.code,
                right: other.currency.code,
            })
        }
    }
}

/// One invoice line as the totals see it. Quantities and rates are expected to come from
/// [`parse_quantity`] and [`parse_rate`]; the arithmetic itself accepts any values (a negative
/// unit amount is a discount line) and only refuses results that do not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    pub quantity: Decimal,
    pub unit_amount_minor: i64,
    pub tax_rate: Option<Decimal>,
}

/// An invoice's amounts, all in minor units of the invoice's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    /// One entry per distinct rate (normalised, so "0.20" and "0.2" are the same rate), in
    /// ascending order of rate, with the tax charged at that rate.
    pub tax_by_rate: Vec<(Decimal, i64)>,
    /// The rounded amount of each input line, in input order.
    pub line_amounts: Vec<i64>,
}

/// `amount × factor`, rounded once to an integer, half away from zero, with no intermediate
/// rounding at all.
///
/// `Decimal::checked_mul` is not used because, when the exact product needs more than 96 bits,
/// it quietly drops low digits to make it fit; a second rounding after that could differ from
/// the exact answer. Instead the product of |amount| (< 2^64) and the mantissa (< 2^96) is formed
/// exactly as a 160-bit number and divided by 10^scale (< 2^94) by long division.
fn mul_round(amount: i64, factor: Decimal) -> Option<i64> {
    let negative = (amount < 0) != factor.is_sign_negative();
    let a = u128::from(amount.unsigned_abs());
    let m = factor.mantissa().unsigned_abs();
    let divisor = 10u128.checked_pow(factor.scale())?;

    // N = a·m = a·m_hi·2^64 + a·m_lo, split into a high part (< 2^32) and a low 128-bit part.
    let m_hi = m >> 64;
    let m_lo = m & u128::from(u64::MAX);
    let p_hi = a * m_hi; // < 2^96
    let p_lo = a * m_lo; // < 2^128
    let (low, carry) = p_lo.overflowing_add(p_hi << 64);
    let high = (p_hi >> 64) + u128::from(carry); // < 2^32 because N < 2^160

    // Long division in 32-bit limbs: the remainder stays below the divisor (< 2^94), so
    // shifting it left by 32 bits never overflows.
    let limbs = [
        high,
        (low >> 96) & 0xFFFF_FFFF,
        (low >> 64) & 0xFFFF_FFFF,
        (low >> 32) & 0xFFFF_FFFF,
        low & 0xFFFF_FFFF,
    ];
    let mut quotient: u128 = 0;
    let mut remainder: u128 = 0;
    for limb in limbs {
        let current = (remainder << 32) | limb;
        quotient = quotient
            .checked_mul(1 << 32)?
            .checked_add(current / divisor)?;
        remainder = current % divisor;
    }
    // Working on magnitudes, rounding the half up is rounding it away from zero.
    if remainder * 2 >= divisor {
        quotient = quotient.checked_add(1)?;
    }
    let magnitude = i128::try_from(quotient).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// `quantity × unit price`, rounded once to a whole minor unit, half away from zero.
pub fn line_amount(quantity: Decimal, unit_amount_minor: i64) -> Result<i64, MoneyError> {
    mul_round(unit_amount_minor, quantity).ok_or(MoneyError::Overflow {
        what: "line amount",
    })
}

/// `amount × rate`, rounded once, half away from zero. Used for late fees and similar charges
/// that are a fraction of an existing amount.
pub fn percent_of(amount_minor: i64, rate: Decimal) -> Result<i64, MoneyError> {
    mul_round(amount_minor, rate).ok_or(MoneyError::Overflow {
        what: "percentage amount",
    })
}

/// Line amounts, subtotal, tax and total of an invoice.
///
/// Tax is computed per distinct rate over the sum of that rate's rounded line amounts and
/// rounded once per rate, so an invoice with many small lines is not overcharged (or
/// undercharged) by per-line rounding. `total` is exactly `subtotal + tax`, and `tax` is exactly
/// the sum of `tax_by_rate`.
pub fn compute_totals(lines: &[LineInput]) -> Result<Totals, MoneyError> {
    let mut line_amounts = Vec::with_capacity(lines.len());
    let mut subtotal: i64 = 0;
    let mut taxable: BTreeMap<Decimal, i64> = BTreeMap::new();
    for line in lines {
        let amount = line_amount(line.quantity, line.unit_amount_minor)?;
        line_amounts.push(amount);
        subtotal = subtotal
            .checked_add(amount)
            .ok_or(MoneyError::Overflow { what: "subtotal" })?;
        if let Some(rate) = line.tax_rate {
            let base = taxable.entry(rate.normalize()).or_insert(0);
            *base = base.checked_add(amount).ok_or(MoneyError::Overflow {
                what: "taxable amount",
            })?;
        }
    }
    let mut tax: i64 = 0;
    let mut tax_by_rate = Vec::with_capacity(taxable.len());
    for (rate, base) in taxable {
        let rate_tax = mul_round(base, rate).ok_or(MoneyError::Overflow { what: "tax" })?;
        tax = tax
            .checked_add(rate_tax)
            .ok_or(MoneyError::Overflow { what: "tax" })?;
        tax_by_rate.push((rate, rate_tax));
    }
    let total = subtotal
        .checked_add(tax)
        .ok_or(MoneyError::Overflow { what: "total" })?;
    Ok(Totals {
        subtotal,
        tax,
        total,
        tax_by_rate,
        line_amounts,
    })
}

/// Parses a non-negative plain decimal with at most [`MAX_FRACTION_DIGITS`] decimal places.
/// The error is the reason, for the caller to wrap in its own variant.
fn parse_unsigned_decimal(s: &str) -> Result<Decimal, &'static str> {
    const SYNTAX: &str = "expected a plain decimal number such as \"0.20\" or \"3\"";
    let parts = split_decimal(s).ok_or(SYNTAX)?;
    if parts.negative {
        return Err("it must not be negative");
    }
    if parts.frac.len() > MAX_FRACTION_DIGITS {
        return Err("it has more than 12 decimal places");
    }
    Decimal::from_str(s).map_err(|_| "it is too large")
}

/// A tax rate as a fraction: "0.20" is 20 %. Must be between 0 and 1 inclusive.
pub fn parse_rate(s: &str) -> Result<Decimal, MoneyError> {
    let invalid = |reason| MoneyError::InvalidRate {
        input: s.to_string(),
        reason,
    };
    let rate = parse_unsigned_decimal(s).map_err(invalid)?;
    if rate > Decimal::ONE {
        return Err(invalid(
            "it is a fraction between 0 and 1, so 20 % is written \"0.20\"",
        ));
    }
    Ok(rate)
}

/// A line quantity: greater than 0, at most 12 decimal places (metered usage can be fractional).
pub fn parse_quantity(s: &str) -> Result<Decimal, MoneyError> {
    let invalid = |reason| MoneyError::InvalidQuantity {
        input: s.to_string(),
        reason,
    };
    let quantity = parse_unsigned_decimal(s).map_err(invalid)?;
    if quantity.is_zero() {
        return Err(invalid("it must be greater than 0"));
    }
    Ok(quantity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::RoundingStrategy;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn currency_table_is_sorted_unique_and_complete() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].code < w[1].code));
        for code in [
            "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND",
            "VUV", "XAF", "XOF", "XPF",
        ] {
            assert_eq!(Currency::parse(code).unwrap().exponent(), 0, "{code}");
        }
        for code in ["BHD", "JOD", "KWD", "OMR", "TND"] {
            assert_eq!(Currency::parse(code).unwrap().exponent(), 3, "{code}");
        }
        for code in ["USD", "EUR", "GBP", "CHF", "ISK", "HUF", "ZAR"] {
            assert_eq!(Currency::parse(code).unwrap().exponent(), 2, "{code}");
        }
        for c in Currency::all() {
            assert_eq!(Currency::parse(c.code()).unwrap(), *c);
        }
    }

    #[test]
    fn currency_parse_is_case_insensitive_and_code_is_upper() {
        assert_eq!(Currency::parse("usd").unwrap(), Currency::USD);
        assert_eq!(Currency::parse("Jpy").unwrap().code(), "JPY");
        assert_eq!("kwd".parse::<Currency>().unwrap(), Currency::KWD);
        for bad in ["", "US", "USDX", "XYZ", "U$D", "usd "] {
            let err = Currency::parse(bad).unwrap_err();
            assert!(matches!(err, MoneyError::UnknownCurrency { .. }), "{bad}");
        }
        assert_eq!(
            Currency::parse("XYZ").unwrap_err().to_string(),
            "\"XYZ\" is not a supported ISO 4217 currency code"
        );
    }

    #[test]
    fn symbols() {
        assert_eq!(Currency::USD.symbol(), "$");
        assert_eq!(Currency::EUR.symbol(), "€");
        assert_eq!(Currency::GBP.symbol(), "£");
        assert_eq!(Currency::JPY.symbol(), "¥");
        assert_eq!(Currency::KWD.symbol(), "KWD ");
        assert_eq!(Currency::parse("ZMW").unwrap().symbol(), "ZMW ");
    }

    #[test]
    fn parse_and_format_jpy_usd_kwd() {
        let jpy = Money::parse("1000", Currency::JPY).unwrap();
        assert_eq!(jpy.minor, 1000);
        assert_eq!(jpy.to_decimal_string(), "1000");
        assert_eq!(jpy.display(), "¥1,000");

        let usd = Money::parse("19.99", Currency::USD).unwrap();
        assert_eq!(usd.minor, 1999);
        assert_eq!(usd.to_decimal_string(), "19.99");
        assert_eq!(usd.display(), "$19.99");
        assert_eq!(Money::parse("0.5", Currency::USD).unwrap().minor, 50);
        assert_eq!(Money::parse("1000", Currency::USD).unwrap().minor, 100_000);
        assert_eq!(Money::parse("-3.00", Currency::USD).unwrap().minor, -300);
        assert_eq!(Money::new(-50, Currency::USD).to_decimal_string(), "-0.50");
        assert_eq!(Money::new(123_450, Currency::USD).display(), "$1,234.50");
        assert_eq!(Money::new(-500, Currency::USD).display(), "-$5.00");
        assert_eq!(Money::new(0, Currency::USD).display(), "$0.00");
        assert_eq!(
            Money::new(123_456_789_012, Currency::USD).display(),
            "$1,234,567,890.12"
        );
        assert_eq!(Money::new(1999, Currency::EUR).display(), "€19.99");

        let kwd = Money::parse("1.5", Currency::KWD).unwrap();
        assert_eq!(kwd.minor, 1500);
        assert_eq!(kwd.to_decimal_string(), "1.500");
        assert_eq!(kwd.display(), "KWD 1.500");
        assert_eq!(Money::parse("0.001", Currency::KWD).unwrap().minor, 1);
    }

    #[test]
    fn amounts_with_their_code_keep_the_currency_decimals() {
        assert_eq!(
            Money::new(1000, Currency::JPY).display_with_code(),
            "1,000 JPY"
        );
        assert_eq!(
            Money::new(1500, Currency::KWD).display_with_code(),
            "1.500 KWD"
        );
        assert_eq!(
            Money::new(-1_234_567, Currency::USD).display_with_code(),
            "-12,345.67 USD"
        );
    }

    #[test]
    fn extremes_format_and_parse() {
        for minor in [i64::MIN, i64::MAX, 0, -1, 1] {
            for currency in [Currency::JPY, Currency::USD, Currency::KWD] {
                let m = Money::new(minor, currency);
                assert_eq!(Money::parse(&m.to_decimal_string(), currency).unwrap(), m);
            }
        }
        assert_eq!(
            Money::new(i64::MIN, Currency::USD).to_decimal_string(),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            Money::parse("19.999", Currency::USD)
                .unwrap_err()
                .to_string(),
            "19.999 has more decimal places than USD allows (2)"
        );
        assert!(matches!(
            Money::parse("1.5", Currency::JPY),
            Err(MoneyError::TooManyDecimals { allowed: 0, .. })
        ));
        assert!(matches!(
            Money::parse("1.0000", Currency::KWD),
            Err(MoneyError::TooManyDecimals { allowed: 3, .. })
        ));
        assert_eq!(Money::parse("", Currency::USD), Err(MoneyError::Empty));
        for bad in [
            "abc", "1e5", "+1", " 1", "1 ", "1,000", "1.", ".5", "-", "--1", "1.2.3", "1_000",
            "0x10", "NaN", "-.5", "١",
        ] {
            assert!(
                matches!(
                    Money::parse(bad, Currency::USD),
                    Err(MoneyError::NotANumber { .. })
                ),
                "{bad:?} should be refused"
            );
        }
        assert!(matches!(
            Money::parse("92233720368547758.08", Currency::USD),
            Err(MoneyError::OutOfRange { .. })
        ));
        assert!(matches!(
            Money::parse(
                "99999999999999999999999999999999999999999999",
                Currency::USD
            ),
            Err(MoneyError::OutOfRange { .. })
        ));
        assert_eq!(
            Money::parse("-92233720368547758.08", Currency::USD)
                .unwrap()
                .minor,
            i64::MIN
        );
    }

    #[test]
    fn add_sub_and_mismatch() {
        let a = Money::new(150, Currency::USD);
        let b = Money::new(50, Currency::USD);
        assert_eq!(a.checked_add(b).unwrap().minor, 200);
        assert_eq!(b.checked_sub(a).unwrap().minor, -100);
        let err = a.checked_add(Money::new(1, Currency::EUR)).unwrap_err();
        assert_eq!(
            err,
            MoneyError::CurrencyMismatch {
                left: "USD",
                right: "EUR"
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot combine an amount in USD with an amount in EUR"
        );
        assert!(matches!(
            a.checked_sub(Money::new(1, Currency::JPY)),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert!(matches!(
            Money::new(i64::MAX, Currency::USD).checked_add(Money::new(1, Currency::USD)),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            Money::new(i64::MIN, Currency::USD).checked_sub(Money::new(1, Currency::USD)),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(line_amount(dec("0.5"), 1).unwrap(), 1);
        assert_eq!(line_amount(dec("0.5"), -1).unwrap(), -1);
        assert_eq!(line_amount(dec("1.5"), 1).unwrap(), 2);
        assert_eq!(line_amount(dec("2.5"), 1).unwrap(), 3);
        assert_eq!(line_amount(dec("2.5"), -1).unwrap(), -3);
        assert_eq!(line_amount(dec("0.499999999999"), 1).unwrap(), 0);
        assert_eq!(line_amount(dec("3"), 1999).unwrap(), 5997);
        assert_eq!(line_amount(dec("0.333"), 1000).unwrap(), 333);
        assert_eq!(percent_of(1000, dec("0.015")).unwrap(), 15);
        assert_eq!(percent_of(1050, dec("0.015")).unwrap(), 16); // 15.75
        assert_eq!(percent_of(-100, dec("0.005")).unwrap(), -1); // -0.5
        assert_eq!(percent_of(i64::MAX, Decimal::ONE).unwrap(), i64::MAX);
        assert_eq!(percent_of(i64::MIN, Decimal::ONE).unwrap(), i64::MIN);
    }

    #[test]
    fn no_double_rounding_where_decimal_would_lose_digits() {
        // 3 × 2.8333333333333333333333333333 is exactly 8.4999999999999999999999999999, just
        // below the half, so it rounds to 8. That product needs 29 digits, more than a Decimal
        // mantissa holds, so Decimal arithmetic first rounds it to 8.5 and then to 9.
        let q = dec("2.8333333333333333333333333333");
        assert_eq!(line_amount(q, 3).unwrap(), 8);
        assert_eq!(line_amount(q, -3).unwrap(), -8);
        let via_decimal = (q * Decimal::from(3))
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        assert_eq!(via_decimal, Decimal::from(9));
    }

    #[test]
    fn line_overflow_is_an_error() {
        assert!(matches!(
            line_amount(dec("2"), i64::MAX),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            line_amount(dec("1000000000000"), 100_000_000_000),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn totals_round_tax_once_per_rate() {
        // Three lines of 0.10 at 5 % tax: per-line tax would be 3 × round(0.5) = 3 cents;
        // per-rate tax is round(1.5) = 2 cents.
        let lines = vec![
            LineInput {
                quantity: dec("1"),
                unit_amount_minor: 10,
                tax_rate: Some(dec("0.05")),
            };
            3
        ];
        let totals = compute_totals(&lines).unwrap();
        assert_eq!(totals.line_amounts, vec![10, 10, 10]);
        assert_eq!(totals.subtotal, 30);
        assert_eq!(totals.tax, 2);
        assert_eq!(totals.total, 32);
        assert_eq!(totals.tax_by_rate, vec![(dec("0.05"), 2)]);
    }

    #[test]
    fn totals_group_equal_rates_and_skip_untaxed_lines() {
        let lines = [
            LineInput {
                quantity: dec("2"),
                unit_amount_minor: 1999,
                tax_rate: Some(dec("0.20")),
            },
            LineInput {
                quantity: dec("1.5"),
                unit_amount_minor: 1000,
                tax_rate: Some(dec("0.2")),
            },
            LineInput {
                quantity: dec("1"),
                unit_amount_minor: 500,
                tax_rate: Some(dec("0.07")),
            },
            LineInput {
                quantity: dec("1"),
                unit_amount_minor: 700,
                tax_rate: None,
            },
        ];
        let totals = compute_totals(&lines).unwrap();
        assert_eq!(totals.line_amounts, vec![3998, 1500, 500, 700]);
        assert_eq!(totals.subtotal, 6698);
        // 0.07 × 500 = 35; 0.2 × 5498 = 1099.6 → 1100.
        assert_eq!(
            totals.tax_by_rate,
            vec![(dec("0.07"), 35), (dec("0.2"), 1100)]
        );
        assert_eq!(totals.tax, 1135);
        assert_eq!(totals.total, 7833);
        assert_eq!(compute_totals(&[]).unwrap().total, 0);
    }

    #[test]
    fn rates_and_quantities() {
        assert_eq!(parse_rate("0.20").unwrap(), dec("0.20"));
        assert_eq!(parse_rate("0").unwrap(), Decimal::ZERO);
        assert_eq!(parse_rate("1").unwrap(), Decimal::ONE);
        assert_eq!(parse_rate("1.000").unwrap(), Decimal::ONE);
        for bad in [
            "1.01",
            "-0.1",
            "20%",
            "",
            "0.2e1",
            "+0.2",
            " 0.2",
            "0.1234567890123",
        ] {
            assert!(
                matches!(parse_rate(bad), Err(MoneyError::InvalidRate { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_rate("20").unwrap_err().to_string(),
            "tax rate \"20\" is not valid: it is a fraction between 0 and 1, so 20 % is written \"0.20\""
        );

        assert_eq!(parse_quantity("3").unwrap(), dec("3"));
        assert_eq!(
            parse_quantity("0.000000000001").unwrap(),
            dec("0.000000000001")
        );
        for bad in [
            "0",
            "0.000",
            "-1",
            "1.0000000000001",
            "",
            "1e3",
            "1,5",
            "99999999999999999999999999999999",
        ] {
            assert!(
                matches!(parse_quantity(bad), Err(MoneyError::InvalidQuantity { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_quantity("0").unwrap_err().to_string(),
            "quantity \"0\" is not valid: it must be greater than 0"
        );
    }

    fn currency_strategy() -> impl Strategy<Value = Currency> {
        prop::sample::select(vec![Currency::JPY, Currency::USD, Currency::KWD])
    }

    /// Quantities as `parse_quantity` produces them: up to 12 decimals, bounded size.
    fn quantity_strategy() -> impl Strategy<Value = Decimal> {
        (1i64..=1_000_000_000_000_000, 0u32..=12)
            .prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
    }

    fn rate_strategy() -> impl Strategy<Value = Option<Decimal>> {
        prop::option::of(
            (0i64..=10_000, 0u32..=4).prop_filter_map("rate ≤ 1", |(m, s)| {
                let r = Decimal::new(m, s);
                (r <= Decimal::ONE).then_some(r)
            }),
        )
    }

    proptest! {
        // No regression files: the crate directory is not a place for test artefacts.
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn decimal_string_round_trips(minor in any::<i64>(), currency in currency_strategy()) {
            let m = Money::new(minor, currency);
            let s = m.to_decimal_string();
            prop_assert_eq!(Money::parse(&s, currency).unwrap(), m);
            let frac_len = s.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert_eq!(frac_len as u32, currency.exponent());
        }

        #[test]
        fn display_has_the_same_digits(minor in any::<i64>(), currency in currency_strategy()) {
            let m = Money::new(minor, currency);
            let shown: String = m.display().chars().filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-').collect();
            prop_assert_eq!(shown, m.to_decimal_string());
        }

        #[test]
        fn line_amount_matches_decimal_rounding(
            quantity in quantity_strategy(),
            unit in -1_000_000_000i64..=1_000_000_000,
        ) {
            // In this range Decimal's product is exact, so its rounding is the reference.
            let expected = (quantity * Decimal::from(unit))
                .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
            let got = line_amount(quantity, unit);
            prop_assert_eq!(expected.scale(), 0);
            match i64::try_from(expected.mantissa()) {
                Ok(e) => prop_assert_eq!(got.unwrap(), e),
                Err(_) => prop_assert!(got.is_err()),
            }
        }

        #[test]
        fn totals_add_up(
            lines in prop::collection::vec(
                (quantity_strategy(), -10_000_000i64..=10_000_000, rate_strategy())
                    .prop_map(|(quantity, unit_amount_minor, tax_rate)| LineInput { quantity, unit_amount_minor, tax_rate }),
                0..20,
            )
        ) {
            match compute_totals(&lines) {
                Ok(t) => {
                    prop_assert_eq!(t.line_amounts.len(), lines.len());
                    prop_assert_eq!(t.subtotal, t.line_amounts.iter().sum::<i64>());
                    prop_assert_eq!(t.tax, t.tax_by_rate.iter().map(|(_, x)| x).sum::<i64>());
                    prop_assert_eq!(t.subtotal + t.tax, t.total);
                    prop_assert!(t.tax_by_rate.windows(2).all(|w| w[0].0 < w[1].0));
                    for (line, amount) in lines.iter().zip(&t.line_amounts) {
                        prop_assert_eq!(line_amount(line.quantity, line.unit_amount_minor).unwrap(), *amount);
                    }
                }
                Err(e) => prop_assert!(matches!(e, MoneyError::Overflow { .. }), "{}", e),
            }
        }
    }
}
