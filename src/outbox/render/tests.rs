use super::super::snapshot::*;
use super::*;

fn config(env: &[(&str, &str)]) -> Config {
    let mut all = vec![
        ("SETTLED__BUSINESS__NAME", "Example Ltd"),
        ("SETTLED__BUSINESS__ADDRESS", "1 Main Street\nSpringfield"),
        ("SETTLED__BUSINESS__SUPPORT_EMAIL", "help@example.com"),
    ];
    all.extend_from_slice(env);
    Config::load_from(
        None,
        all.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

fn customer(currency: &str, timezone: &str) -> CustomerSnap {
    CustomerSnap {
        id: "cus_1".into(),
        name: "Acme Corp".into(),
        email: "ap@acme.example".into(),
        timezone: timezone.into(),
        currency: currency.into(),
    }
}

fn invoice(currency: &str, total: i64, paid: i64) -> InvoiceSnap {
    InvoiceSnap {
        id: "in_1".into(),
        number: Some("INV-2027-000042".into()),
        kind: "standard".into(),
        status: if paid >= total {
            "paid"
        } else {
            "partially_paid"
        }
        .into(),
        currency: currency.into(),
        period_start: Some(1_801_440_000_000),
        period_end: Some(1_803_859_200_000),
        subtotal: total,
        tax: 0,
        total,
        amount_paid: paid,
        amount_due: total - paid,
        due_at: Some(1_801_440_000_000),
        finalized_at: Some(1_801_440_000_000),
        created_at: 1_801_440_000_000,
        lines: vec![LineSnap {
            description: "Hosting <Pro>".into(),
            quantity: "1".into(),
            unit_amount: total,
            amount: total,
            tax_rate: None,
        }],
        ..InvoiceSnap::default()
    }
}

/// A partial card payment of 40.00 on a 100.00 invoice, paid 2027-02-01T09:30Z.
fn partial_receipt() -> Snapshot {
    Snapshot {
        at: 1_801_474_200_000,
        customer: customer("EUR", "Europe/Berlin"),
        invoice: Some(invoice("EUR", 10_000, 4_000)),
        payment: Some(PaymentSnap {
            id: "pay_1".into(),
            amount: 4_000,
            currency: "EUR".into(),
            gateway: "stripe".into(),
            method: "card".into(),
            reference: None,
            card: Some(CardSnap {
                brand: "visa".into(),
                last4: "4242".into(),
            }),
            at: 1_801_474_200_000,
        }),
        allocations: vec![AllocationSnap {
            invoice_id: "in_1".into(),
            number: Some("INV-2027-000042".into()),
            amount: 4_000,
            amount_due_after: 6_000,
        }],
        outstanding: 6_000,
        ..Snapshot::default()
    }
}

#[test]
fn a_partial_payment_receipt_shows_what_is_left_to_pay() {
    let r = render(&config(&[]), "receipt", &partial_receipt()).unwrap();
    assert_eq!(r.subject, "Receipt for INV-2027-000042");
    for expected in [
        "Amount paid:     €40.00",
        "Invoice:         INV-2027-000042",
        "Paid with:       Visa ending in 4242",
        "Date:            1 February 2027, 10:30 CET",
        "Still to pay:    €60.00",
    ] {
        assert!(r.text.contains(expected), "{expected:?} in:\n{}", r.text);
    }
    assert!(r.html.contains("€60.00") && r.html.contains("Visa ending in 4242"));
    assert!(r.html.contains("Example Ltd") && r.html.contains("1 Main Street"));
    assert_eq!(r.attachments.len(), 1);
    assert_eq!(r.attachments[0].filename, "receipt-INV-2027-000042.pdf");
    assert!(r.attachments[0].bytes.starts_with(b"%PDF-"));
    // The same snapshot renders the same bytes.
    let again = render(&config(&[]), "receipt", &partial_receipt()).unwrap();
    assert_eq!(again.attachments[0].bytes, r.attachments[0].bytes);
    assert_eq!(again.html, r.html);
}

#[test]
fn yen_has_no_decimals_anywhere() {
    let mut snap = partial_receipt();
    snap.customer = customer("JPY", "Asia/Tokyo");
    snap.invoice = Some(invoice("JPY", 3_000, 1_000));
    if let Some(p) = snap.payment.as_mut() {
        p.currency = "JPY".into();
        p.amount = 1_000;
    }
    snap.allocations[0].amount = 1_000;
    snap.allocations[0].amount_due_after = 2_000;
    let r = render(&config(&[]), "receipt", &snap).unwrap();
    assert!(r.text.contains("Amount paid:     ¥1,000\n"), "{}", r.text);
    assert!(r.text.contains("Still to pay:    ¥2,000\n"), "{}", r.text);
    assert!(r.text.contains("18:30 JST"), "{}", r.text);
    assert!(!r.text.contains("¥1,000.00"));
}

#[test]
fn the_html_alternative_escapes_what_customers_typed() {
    let mut snap = partial_receipt();
    snap.customer.name = "<script>alert(1)</script>".into();
    snap.payment = None;
    snap.allocations.clear();
    let r = render(&config(&[]), "invoice", &snap).unwrap();
    assert!(!r.html.contains("<script>"), "{}", r.html);
    assert!(r.html.contains("&lt;script&gt;"));
    assert!(r.html.contains("Hosting &lt;Pro&gt;"));
    assert_eq!(r.subject, "Invoice INV-2027-000042 from Example Ltd");
}

#[test]
fn every_kind_renders_subject_text_and_html() {
    let full = Snapshot {
        refund: Some(RefundSnap {
            id: "re_1".into(),
            amount: 1_500,
            currency: "USD".into(),
            to_credit: false,
            reason: Some("duplicate".into()),
            at: 1_801_474_200_000,
        }),
        credit_note: Some(CreditNoteSnap {
            id: "cn_1".into(),
            amount: 2_500,
            remaining: 2_500,
            currency: "USD".into(),
            source: "manual".into(),
            reason: "Goodwill".into(),
            created_at: 1_801_474_200_000,
        }),
        charge: Some(ChargeSnap {
            subscription_id: "sub_1".into(),
            currency: "USD".into(),
            period_start: 1_803_859_200_000,
            period_end: Some(1_806_537_600_000),
            subtotal: 1_999,
            tax: 0,
            total: 1_999,
            lines: vec![LineSnap {
                description: "Hosting".into(),
                quantity: "1".into(),
                unit_amount: 1_999,
                amount: 1_999,
                tax_rate: None,
            }],
            card: Some(CardSnap {
                brand: "mastercard".into(),
                last4: "4444".into(),
            }),
        }),
        attempt: Some(1),
        next_attempt_at: Some(1_801_656_000_000),
        decline: Some("Your card has insufficient funds.".into()),
        card: Some(CardSnap {
            brand: "visa".into(),
            last4: "0341".into(),
        }),
        ..partial_receipt()
    };
    let mut usd = full.clone();
    usd.customer = customer("USD", "America/New_York");
    usd.invoice = Some(invoice("USD", 1_999, 0));
    let expectations: &[(&str, &str, &[&str])] = &[
        (
            "invoice",
            "Invoice INV-2027-000042 from Example Ltd",
            &[
                "Amount due:      $19.99",
                "Due:             31 January 2027",
            ],
        ),
        (
            "payment_failed",
            "Payment failed for INV-2027-000042",
            &[
                "Visa ending in 0341",
                "Your card has insufficient funds.",
                "We will try again on 3 February 2027.",
            ],
        ),
        (
            "final_notice",
            "Final notice: INV-2027-000042 is past due",
            &["$19.99"],
        ),
        (
            "refund",
            "Refund of $15.00 from Example Ltd",
            &["Refunded:        $15.00", "Reason:          duplicate"],
        ),
        (
            "credit_note",
            "Credit note of $25.00 from Example Ltd",
            &["Amount:          $25.00", "Reason:          Goodwill"],
        ),
        (
            "upcoming_charge",
            "Upcoming charge of $19.99 on 28 February 2027",
            &["Mastercard ending in 4444", "Hosting"],
        ),
    ];
    for (kind, subject, needles) in expectations {
        let r = render(&config(&[]), kind, &usd).unwrap();
        assert_eq!(&r.subject, subject);
        for n in *needles {
            assert!(r.text.contains(n), "{kind}: {n:?} in:\n{}", r.text);
        }
        assert!(r.html.starts_with("<!DOCTYPE html>"), "{kind}");
        assert!(r.html.contains("Example Ltd"), "{kind}");
        assert!(r.text.contains("help@example.com"), "{kind}");
        assert_eq!(
            r.attachments.len(),
            usize::from(*kind == "invoice"),
            "{kind}"
        );
    }
}

fn statement(lines: Vec<StatementLineSnap>, opening: i64) -> Snapshot {
    let closing = lines.last().map_or(opening, |l| l.balance);
    Snapshot {
        at: 1_801_440_000_000,
        customer: customer("EUR", "Europe/Berlin"),
        statement: Some(StatementSnap {
            month: 202701,
            currency: "EUR".into(),
            // January 2027 in Berlin: 2026-12-31T23:00Z to 2027-01-31T23:00Z.
            from: 1_798_758_000_000,
            to: 1_801_436_400_000,
            opening,
            closing,
            lines,
        }),
        ..Snapshot::default()
    }
}

#[test]
fn a_statement_shows_the_month_its_movements_and_both_balances_with_a_csv() {
    let snap = statement(
        vec![
            StatementLineSnap {
                at: 1_800_000_000_000,
                kind: "payment".into(),
                reference: "=HYPERLINK(\"x\")".into(),
                amount: -4_000,
                balance: 6_000,
            },
            StatementLineSnap {
                at: 1_800_500_000_000,
                kind: "invoice".into(),
                reference: "INV-2027-000002".into(),
                amount: 2_500,
                balance: 8_500,
            },
        ],
        10_000,
    );
    let r = render(&config(&[]), "statement", &snap).unwrap();
    assert_eq!(
        r.subject,
        "Your statement for January 2027 from Example Ltd"
    );
    for expected in [
        "for January 2027 (1 January 2027 – 31 January 2027), in EUR",
        "Opening balance: €100.00  (1 January 2027)",
        "15 January 2027  Payment =HYPERLINK(\"x\"): -€40.00 (balance €60.00)",
        "Invoice INV-2027-000002: €25.00 (balance €85.00)",
        "Closing balance: €85.00  (31 January 2027)",
        "You owed €85.00 at the end of the month.",
    ] {
        assert!(r.text.contains(expected), "{expected:?} in:\n{}", r.text);
    }
    assert!(r.html.contains("Closing balance") && r.html.contains("€85.00"));
    assert!(r.html.contains("=HYPERLINK(&quot;x&quot;)"), "{}", r.html);
    assert_eq!(r.attachments.len(), 1);
    let csv = &r.attachments[0];
    assert_eq!(csv.filename, "statement-2027-01.csv");
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        String::from_utf8(csv.bytes.clone()).unwrap(),
        "date,kind,reference,amount,balance\n\
         ,opening,,,100.00\n\
         2027-01-15T08:00:00Z,payment,\"'=HYPERLINK(\"\"x\"\")\",-40.00,60.00\n\
         2027-01-21T02:53:20Z,invoice,INV-2027-000002,25.00,85.00\n\
         ,closing,,,85.00\n"
    );
    let again = render(&config(&[]), "statement", &snap).unwrap();
    assert_eq!(
        again.attachments[0].bytes, csv.bytes,
        "the same bytes on a resend"
    );
    assert_eq!(again.html, r.html);
}

#[test]
fn a_quiet_month_still_shows_the_balance_and_credit_reads_as_credit() {
    let r = render(&config(&[]), "statement", &statement(Vec::new(), 8_500)).unwrap();
    assert!(r.text.contains("No activity this month."), "{}", r.text);
    assert!(r.text.contains("Opening balance: €85.00"), "{}", r.text);
    assert!(r.text.contains("Closing balance: €85.00"), "{}", r.text);
    assert!(r.html.contains("No activity this month."));

    let r = render(&config(&[]), "statement", &statement(Vec::new(), -1_250)).unwrap();
    assert!(
        r.text
            .contains("You held €12.50 in credit at the end of the month"),
        "{}",
        r.text
    );
    assert!(r.html.contains("€12.50 in credit"), "{}", r.html);

    let mut yen = statement(Vec::new(), 3_000);
    yen.customer = customer("JPY", "Asia/Tokyo");
    if let Some(s) = yen.statement.as_mut() {
        s.currency = "JPY".into();
    }
    let r = render(&config(&[]), "statement", &yen).unwrap();
    assert!(r.text.contains("Closing balance: ¥3,000  "), "{}", r.text);
    let csv = String::from_utf8(r.attachments[0].bytes.clone()).unwrap();
    assert!(csv.ends_with(",closing,,,3000\n"), "{csv}");
}

#[test]
fn an_operator_template_replaces_one_file_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("receipt.subject.txt"),
        "Thanks for {{ payment.amount }}, {{ customer.name }}",
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let cfg = config(&[("SETTLED__EMAIL__TEMPLATES_DIR", &d)]);
    let r = render(&cfg, "receipt", &partial_receipt()).unwrap();
    assert_eq!(r.subject, "Thanks for €40.00, Acme Corp");
    assert!(r.text.contains("Still to pay:    €60.00"));

    std::fs::write(
        dir.path().join("receipt.subject.txt"),
        "{{ payment.nonexistent.deeper }}",
    )
    .unwrap();
    let err = render(&cfg, "receipt", &partial_receipt())
        .err()
        .expect("a broken template is an error");
    assert!(err.contains("receipt.subject.txt"), "{err}");
}
