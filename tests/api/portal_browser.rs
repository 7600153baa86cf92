//! The portal in a real headless Chromium, as a customer uses it: the link from the invoice email
//! as the SMTP server received it, a partial payment with the second saved card, the rest, a card
//! added through (the stand-in) Stripe.js and made default, auto-charge switched off and the next
//! recurring invoice left uncharged, a receipt PDF downloaded, signing in by emailed link,
//! switching accounts, another customer's invoice (404) and a form without its token (403).
//!
//! With `SETTLED_PORTAL_SCREENSHOTS=DIR` it also saves the invoice page and the dashboard as PNGs
//! into DIR (the README's come from here: `docs/`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::portal_support::*;
use crate::support::webdriver::Chrome;

fn screenshot(name: &str, png: &[u8]) {
    if let Ok(dir) = std::env::var("SETTLED_PORTAL_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

async fn payment_methods(d: &Daemon, customer: &str) -> Vec<Value> {
    let (_, pms) = d
        .get(&format!("/v1/customers/{customer}/payment_methods"))
        .await;
    pms["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_pays_manages_cards_and_auto_charge_in_a_real_browser() {
    let p = PortalWorld::start(Backend::Sqlite).await;
    let d = p.d();
    let acme = p
        .customer(
            "Acme Corp",
            &["ap@acme.example"],
            &["pm_card_visa", "pm_card_mastercard"],
        )
        .await;
    let _globex = p
        .customer(
            "Globex",
            &["billing@globex.example", "ap@acme.example"],
            &[],
        )
        .await;
    let other = p.customer("Other Inc", &["ap@other.example"], &[]).await;
    let foreign = p.invoice(&other, "70.00").await;
    // A monthly subscription, charged automatically: January's invoice is paid at once.
    let (status, sub) = d
        .post(
            "/v1/subscriptions",
            json!({"customer_id": acme, "items": [{"description": "Hosting", "unit_amount": "49.00"}],
                   "schedule": {"every": "month", "interval": 1}, "start_at": "2027-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    d.wait_clock_ready(Duration::from_secs(30)).await;
    let charged_before = p.gateway.payment_intent_count();
    assert_eq!(charged_before, 1, "January's invoice was charged");
    let inv = p.invoice(&acme, "100.00").await;
    let (id, number) = (inv["id"].as_str().unwrap(), inv["number"].as_str().unwrap());
    let email = p.email_text(number, "ap@acme.example").await;

    let chrome = Chrome::start(390, 844).await;
    // The link in the email opens the invoice, no sign-in needed.
    chrome.goto(&link(&email, "/portal/i/")).await;
    chrome.wait_for("form#pay").await;
    let text = chrome.text().await;
    for needle in [number, "$100.00", "Consulting", WIRE, "Pay now"] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    screenshot("portal-invoice.png", &chrome.screenshot().await);

    // Part of it with the second card.
    let amount = chrome.find("#amount").await;
    chrome.clear(&amount).await;
    chrome.type_into(&amount, "40.00").await;
    let mastercard = payment_methods(d, &acme)
        .await
        .into_iter()
        .find(|m| m["brand"] == "mastercard")
        .unwrap();
    let option = chrome
        .find(&format!(
            "#card option[value='{}']",
            mastercard["id"].as_str().unwrap()
        ))
        .await;
    chrome.click(&option).await;
    chrome
        .click(&chrome.find("form#pay button[type=submit]").await)
        .await;
    let text = chrome.wait_text("your payment went through").await;
    assert!(
        text.contains("Partially paid") && text.contains("$60.00"),
        "{text}"
    );
    let (_, now) = d.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(
        (now["status"].as_str(), now["amount_due"].as_str()),
        (Some("partially_paid"), Some("60.00"))
    );
    let last = p.gateway.payment_intents().last().cloned().unwrap();
    assert_eq!(last["amount"], 4000);
    assert_eq!(last["payment_method"], mastercard["token"]);

    // The rest (the amount field holds what is due).
    chrome
        .click(&chrome.find("form#pay button[type=submit]").await)
        .await;
    let text = chrome.wait_text("Paid in full").await;
    assert!(!text.contains("Pay now"));
    assert_eq!(p.gateway.payment_intent_count(), charged_before + 2);

    // Another customer's invoice: 404.
    chrome
        .goto(&d.url(&format!(
            "/portal/invoices/{}",
            foreign["id"].as_str().unwrap()
        )))
        .await;
    assert_eq!(chrome.status().await, 404);
    assert!(chrome.text().await.contains("not yours to see"));

    // Something still open, for the dashboard to show.
    let open = p.invoice(&acme, "25.00").await;
    // Signing in by emailed link.
    chrome.goto(&d.url("/portal/sign-in")).await;
    chrome
        .type_into(&chrome.find("#email").await, "ap@acme.example")
        .await;
    chrome
        .click(&chrome.find("form#sign-in button").await)
        .await;
    chrome.wait_text("Check your email").await;
    let signin = p.email_text("sign-in link", "ap@acme.example").await;
    chrome.goto(&link(&signin, "/portal/sign-in/")).await;
    chrome
        .click(&chrome.wait_for("form#confirm button").await)
        .await;
    chrome.wait_for("#outstanding").await;
    let text = chrome.text().await;
    assert!(
        text.contains("Acme Corp") && text.to_lowercase().contains("last payment"),
        "{text}"
    );
    // Every payment so far was made at the same instant of the manual clock; any is the last.
    assert!(
        ["$40.00", "$60.00", "$49.00"]
            .iter()
            .any(|a| text.contains(a)),
        "the last payment: {text}"
    );
    assert!(text.contains("Pay $25.00 now"), "{text}");
    assert!(text.contains(open["number"].as_str().unwrap()), "{text}");
    screenshot("portal-dashboard.png", &chrome.screenshot().await);

    // A card through Stripe.js: the number goes to the gateway, the daemon gets a token.
    chrome.goto(&d.url("/portal/payment-methods/new")).await;
    let number_field = chrome
        .wait_for("#card-element input[data-stripe=cardnumber]")
        .await;
    chrome.type_into(&number_field, "4000 0566 5566 5556").await;
    chrome
        .type_into(
            &chrome
                .find("#card-element input[data-stripe=exp-date]")
                .await,
            "12 / 34",
        )
        .await;
    chrome
        .type_into(
            &chrome.find("#card-element input[data-stripe=cvc]").await,
            "123",
        )
        .await;
    chrome
        .click(&chrome.find("#card-form button[type=submit]").await)
        .await;
    chrome.wait_text("Your card was saved").await;
    let confirm = p
        .gateway
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/confirm") && r.path.starts_with("/v1/setup_intents/"))
        .expect("Stripe.js confirmed the SetupIntent at the gateway");
    assert!(
        confirm
            .params
            .iter()
            .any(|(k, v)| k == "key" && v == "pk_test_settled")
    );
    let added = payment_methods(d, &acme).await;
    let debit = added
        .iter()
        .find(|m| m["last4"] == "5556")
        .expect("the new card");
    assert_eq!(debit["default"], false);

    // A form without its CSRF token: 403, and nothing changed.
    chrome
        .execute(
            "const f = document.querySelector('#default-5556').form; \
             f.querySelector('input[name=csrf]').remove(); f.submit();",
            json!([]),
        )
        .await;
    chrome.wait_text("Refused").await;
    assert_eq!(chrome.status().await, 403);
    assert!(
        payment_methods(d, &acme)
            .await
            .iter()
            .all(|m| m["last4"] != "5556" || m["default"] == false)
    );

    // Made default, with its token.
    chrome.goto(&d.url("/portal/payment-methods")).await;
    chrome.click(&chrome.wait_for("#default-5556").await).await;
    chrome.wait_text("Your default card was changed").await;
    let cards = payment_methods(d, &acme).await;
    let default = cards.iter().find(|m| m["default"] == true).unwrap();
    assert_eq!(default["last4"], "5556");

    // A receipt, downloaded.
    chrome.goto(&d.url("/portal/payments")).await;
    chrome.click(&chrome.wait_for("a.receipt").await).await;
    let (name, pdf) = chrome.downloaded(".pdf").await;
    assert!(pdf.starts_with(b"%PDF-"), "{name}");
    assert!(name.starts_with("receipt-"), "{name}");

    // Auto-charge off for the subscription.
    chrome.goto(&d.url("/portal/subscriptions")).await;
    chrome
        .click(&chrome.wait_for("form[action$='/auto-charge'] button").await)
        .await;
    let text = chrome.wait_text("Automatic charging is off").await;
    assert!(text.contains("Auto-charge: Disabled"), "{text}");

    // Another account of the same contact.
    let select = chrome.find("#switch-account select").await;
    let globex = chrome.find("#switch-account option:not([selected])").await;
    let _ = select;
    chrome.click(&globex).await;
    chrome
        .wait_text("You are now looking at another account")
        .await;
    let text = chrome.text().await;
    assert!(text.contains("Globex"), "{text}");
    chrome.quit().await;

    // February: the invoice is written and emailed, and not charged.
    d.advance("2027-02-01T00:00:01Z").await;
    let feb = d
        .invoices(&format!("subscription_id={}", sub["id"].as_str().unwrap()))
        .await
        .into_iter()
        .last()
        .unwrap();
    assert_eq!(feb["status"], "open", "{feb}");
    assert_eq!(feb["amount_due"], "49.00");
    assert!(feb["attempts"].as_array().unwrap().is_empty(), "{feb}");
    assert_eq!(p.gateway.payment_intent_count(), charged_before + 2);
}
