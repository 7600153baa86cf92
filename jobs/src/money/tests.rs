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
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ] {
        assert_eq!(Currency::parse(code).unwrap().exponent(), 0, "{code}");
    }
    for code in ["BHD", "JOD", "KWD", "OMR", "TND"] {
        assert_eq!(Currency::parse(code).unwrap().exponent(), 3, "{code}");
    }
    for code in ["USD", "EUR", "GBP", "CHF", "HUF", "MGA", "TWD", "ZAR"] {
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
fn input_is_capped_so_sums_cannot_overflow() {
    assert!(Money::parse_input("1000000000000.00", Currency::USD).is_ok());
    let err = Money::parse_input("1000000000000.01", Currency::USD).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1000000000000.01 is more than the largest amount accepted (1000000000000.00)"
    );
    assert!(Money::parse_input("-1000000000000.01", Currency::USD).is_err());
    assert!(Money::parse_input("92233720368547758.07", Currency::USD).is_err());
    // Ninety thousand of the largest still add up.
    assert!(MAX_INPUT_MINOR.checked_mul(90_000).is_some());
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
        "abc", "1e5", "+1", " 1", "1 ", "1,000", "1.", ".5", "-", "--1", "1.2.3", "1_000", "0x10",
        "NaN", "-.5", "١",
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
    let via_decimal =
        (q * Decimal::from(3)).round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
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
