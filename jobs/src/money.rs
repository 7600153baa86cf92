//! Exact money: integer minor units tagged with an ISO 4217 currency, and the one place where
//! fractional arithmetic (quantities, tax rates, late fees) is rounded back to minor units.
//!
//! Amounts are `i64` minor units; anything fractional goes through
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
    #[error("{input} is more than the largest amount accepted ({max})")]
    AboveLimit { input: String, max: String },
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
/// Only currencies Stripe can charge are known, each with its ISO 4217 exponent; where Stripe
/// counts one differently (ISK, UGX, MGA), the Stripe adapter converts at its boundary.
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

/// The largest amount accepted from outside, in minor units (10^14: a trillion dollars, a hundred
/// trillion yen). Ninety thousand such amounts still sum within an i64, so totals, balances and
/// the ledger's sums cannot overflow however a customer's records add up.
pub const MAX_INPUT_MINOR: i64 = 100_000_000_000_000;

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

/// An amount in minor units as the API and the emails' figures show it: a decimal string in the
/// currency's major unit ("19.99"); the bare number when the currency is not one we know.
pub fn decimal_text(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => Money::new(minor, c).to_decimal_string(),
        Err(_) => minor.to_string(),
    }
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

    /// [`Money::parse`] for amounts that come from outside: also refuses more than
    /// [`MAX_INPUT_MINOR`] either way, so no sum of what the daemon holds can overflow.
    pub fn parse_input(s: &str, currency: Currency) -> Result<Money, MoneyError> {
        let m = Money::parse(s, currency)?;
        if m.minor.unsigned_abs() > MAX_INPUT_MINOR as u64 {
            return Err(MoneyError::AboveLimit {
                input: s.to_string(),
                max: Money::new(MAX_INPUT_MINOR, currency).to_decimal_string(),
            });
        }
        Ok(m)
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

mod currencies;
use currencies::CURRENCIES;

#[cfg(test)]
mod tests;
