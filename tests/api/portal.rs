//! The customer portal's rules over HTTP: a signed invoice link opens its invoice until it
//! expires and nothing else; forms need their CSRF token; another customer's data is 404; sign-in
//! answers alike for unknown addresses, works once and is rate-limited; a pay form sent twice
//! charges once.

use serde_json::json;

use crate::both;
use crate::portal_support::*;

both!(
    an_invoice_link_opens_its_invoice_until_it_expires_and_nothing_else,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let cus = p.customer("Acme Corp", &["ap@acme.example"], &[]).await;
        let inv = p.invoice(&cus, "100.00").await;
        let (id, number) = (inv["id"].as_str().unwrap(), inv["number"].as_str().unwrap());
        let text = p.email_text(number, "ap@acme.example").await;
        let url = link(&text, "/portal/i/");
        assert!(url.starts_with(&d.base), "{url}");
        assert!(url.contains(&format!("/portal/i/{id}?expires=")), "{url}");

        // Without the link: nothing but the way to sign in.
        let b = Browser::new(d);
        let page = b.get(&format!("/portal/invoices/{id}")).await;
        assert_eq!(page.status, 303);
        assert_eq!(page.location.as_deref(), Some("/portal/sign-in"));

        // An id alone, a changed signature, another invoice's id: 404.
        let (base_url, query) = url.split_once('?').unwrap();
        let sig = query.rsplit_once("signature=").unwrap().1;
        let forged = url.replace(sig, &"0".repeat(64));
        let other = p.invoice(&cus, "5.00").await;
        let swapped = url.replace(id, other["id"].as_str().unwrap());
        for bad in [base_url.to_string(), forged, swapped] {
            let page = b.get(&bad).await;
            assert_eq!(page.status, 404, "{bad}");
            assert!(page.set_cookies.is_empty());
        }

        // The link: a session for that invoice, its page, its PDF as attached.
        let page = b.get(&url).await;
        assert_eq!(page.status, 303, "{}", page.text());
        assert_eq!(
            page.location.as_deref(),
            Some(format!("/portal/invoices/{id}").as_str())
        );
        let cookie = page
            .set_cookies
            .iter()
            .find(|c| c.starts_with("settled_portal="))
            .expect("a session cookie");
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/portal"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        assert!(!cookie.contains("Secure"), "loopback: {cookie}");
        let page = b.follow(&page).await;
        assert_eq!(page.status, 200);
        let html = page.text();
        for needle in [number, "$100.00", "Consulting", WIRE, "Pay now"] {
            assert!(html.contains(needle), "{needle} not on the page:\n{html}");
        }
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self' http://127.0.0.1:")
                && csp.contains("default-src 'none'")
                && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!html.contains("<script>"), "no inline script");
        let pdf = b.get(&format!("/portal/invoices/{id}/pdf")).await;
        assert_eq!(pdf.status, 200);
        assert_eq!(pdf.body, p.invoice_pdf_attachment(number).await);
        // The invoice link opens that invoice only.
        let page = b
            .get(&format!(
                "/portal/invoices/{}",
                other["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(page.status, 404);
        assert_eq!(
            b.get("/portal/").await.location.as_deref(),
            Some("/portal/sign-in")
        );

        // Thirty days on (portal.invoice_link_days), the link has expired.
        d.advance("2027-01-31T00:00:01Z").await;
        let page = Browser::new(d).get(&url).await;
        assert_eq!(page.status, 410, "{}", page.text());
        assert!(page.text().contains("expired"));
    }
);

both!(
    forms_need_their_csrf_token_and_another_customers_data_is_404,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let ours = p
            .customer("Acme Corp", &["ap@acme.example"], &["pm_card_visa"])
            .await;
        let theirs = p
            .customer("Other Inc", &["ap@other.example"], &["pm_card_visa"])
            .await;
        let inv = p.invoice(&ours, "50.00").await;
        let foreign = p.invoice(&theirs, "70.00").await;
        let (id, fid) = (inv["id"].as_str().unwrap(), foreign["id"].as_str().unwrap());
        // Their invoice paid, so it has a receipt.
        let (status, _) = d
            .post(&format!("/v1/invoices/{fid}/charge"), json!({}))
            .await;
        assert_eq!(status, 200);
        let (_, pays) = d.get(&format!("/v1/payments?invoice_id={fid}")).await;
        let their_payment = pays["data"][0]["id"].as_str().unwrap().to_string();

        let text = p
            .email_text(inv["number"].as_str().unwrap(), "ap@acme.example")
            .await;
        let b = Browser::new(d);
        let page = b.follow(&b.get(&link(&text, "/portal/i/")).await).await;
        let html = page.text();
        let (csrf, nonce) = (field(&html, "csrf"), field(&html, "nonce"));
        let card = first_option(&html, "payment_method");
        let pay = format!("/portal/invoices/{id}/pay");
        let before = p.gateway.payment_intent_count();
        for form in [
            vec![("nonce", nonce.as_str()), ("amount", "10.00")],
            vec![
                ("csrf", "wrong"),
                ("nonce", nonce.as_str()),
                ("amount", "10.00"),
            ],
            vec![("csrf", ""), ("nonce", nonce.as_str())],
        ] {
            let page = b.post(&pay, &form).await;
            assert_eq!(page.status, 403, "{form:?}: {}", page.text());
        }
        assert_eq!(p.gateway.payment_intent_count(), before, "nothing charged");

        // Another customer's invoice, its PDF, paying it, its receipt: as if they did not exist.
        for path in [
            format!("/portal/invoices/{fid}"),
            format!("/portal/invoices/{fid}/pdf"),
            format!("/portal/payments/{their_payment}/receipt.pdf"),
            "/portal/invoices/in_does_not_exist".to_string(),
        ] {
            let page = b.get(&path).await;
            assert_eq!(page.status, 404, "{path}");
        }
        let page = b
            .post(
                &format!("/portal/invoices/{fid}/pay"),
                &[
                    ("csrf", &csrf),
                    ("nonce", &nonce),
                    ("payment_method", &card),
                ],
            )
            .await;
        assert_eq!(page.status, 404);
        assert_eq!(p.gateway.payment_intent_count(), before);
        let (_, theirs_now) = d.get(&format!("/v1/invoices/{fid}")).await;
        assert_eq!(theirs_now["amount_due"], "0.00");
        let (_, ours_now) = d.get(&format!("/v1/invoices/{id}")).await;
        assert_eq!(ours_now["amount_due"], "50.00");
    }
);

both!(
    sign_in_answers_alike_for_unknown_addresses_works_once_and_is_rate_limited,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let acme = p.customer("Acme Corp", &["ap@acme.example"], &[]).await;
        let _globex = p
            .customer(
                "Globex",
                &["billing@globex.example", "ap@acme.example"],
                &[],
            )
            .await;
        let b = Browser::new(d);
        let form = b.get("/portal/sign-in").await;
        assert_eq!(form.status, 200);
        let csrf = field(&form.text(), "csrf");
        // No token, no request.
        let page = b
            .post("/portal/sign-in", &[("email", "ap@acme.example")])
            .await;
        assert_eq!(page.status, 403);

        let ask = |email: &'static str| {
            let (b, csrf) = (&b, csrf.clone());
            async move {
                b.post("/portal/sign-in", &[("csrf", &csrf), ("email", email)])
                    .await
            }
        };
        let known = ask("AP@acme.example").await;
        let unknown = ask("nobody@acme.example").await;
        assert_eq!(known.status, 200);
        assert_eq!(unknown.status, known.status);
        assert_eq!(
            unknown.text().replace("nobody@acme.example", "X"),
            known.text().replace("AP@acme.example", "X"),
            "the same answer whether the address is known or not"
        );
        let text = p.email_text("sign-in link", "ap@acme.example").await;
        let url = link(&text, "/portal/sign-in/");
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        assert!(
            p.smtp
                .accepted()
                .iter()
                .all(|m| !m.rcpt_to.iter().any(|r| r.starts_with("nobody"))),
            "nothing goes to an unknown address"
        );

        // The link shows a button; the button signs in, once.
        let confirm = b.get(&url).await;
        assert_eq!(confirm.status, 200);
        let token_path = url.trim_start_matches(&d.base).to_string();
        let csrf2 = field(&confirm.text(), "csrf");
        let signed = b.post(&token_path, &[("csrf", &csrf2)]).await;
        assert_eq!(signed.status, 303, "{}", signed.text());
        assert_eq!(signed.location.as_deref(), Some("/portal/"));
        let dash = b.follow(&signed).await;
        assert_eq!(dash.status, 200);
        let html = dash.text();
        assert!(
            html.contains("Acme Corp") && html.contains("Globex"),
            "{html}"
        );
        assert!(html.contains(&acme));
        let again = Browser::new(d);
        let c = field(&again.get("/portal/sign-in").await.text(), "csrf");
        let page = again.post(&token_path, &[("csrf", &c)]).await;
        assert_eq!(page.status, 404, "a used link works no more");
        // A forged token: 404 too.
        let page = again.get(&format!("{}x", &token_path)).await;
        assert_eq!(page.status, 404);

        // Five requests an hour per address (one made above for each); then 429 for
        // known and unknown alike, with nothing more sent.
        for _ in 0..4 {
            assert_eq!(ask("ap@acme.example").await.status, 200);
            assert_eq!(ask("nobody@acme.example").await.status, 200);
        }
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        let sent = p.smtp.accepted().len();
        assert_eq!(ask("ap@acme.example").await.status, 429);
        assert_eq!(ask("nobody@acme.example").await.status, 429);
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        assert_eq!(p.smtp.accepted().len(), sent);
        // An hour later it is allowed again, and a link older than 15 minutes has expired.
        d.advance("2027-01-01T01:00:01Z").await;
        assert_eq!(ask("ap@acme.example").await.status, 200);
        let stale = p
            .smtp
            .accepted()
            .iter()
            .filter(|m| m.parsed().subject().is_some_and(|s| s.contains("sign-in")))
            .nth(1)
            .map(|m| link(&m.parsed().body_text(0).unwrap(), "/portal/sign-in/"))
            .unwrap();
        assert_eq!(Browser::new(d).get(&stale).await.status, 404);
    }
);

both!(
    a_pay_form_sent_twice_charges_once_and_the_page_says_paid,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let cus = p
            .customer(
                "Acme Corp",
                &["ap@acme.example"],
                &["pm_card_visa", "pm_card_mastercard"],
            )
            .await;
        let inv = p.invoice(&cus, "100.00").await;
        let id = inv["id"].as_str().unwrap();
        let text = p
            .email_text(inv["number"].as_str().unwrap(), "ap@acme.example")
            .await;
        let b = Browser::new(d);
        let html = b
            .follow(&b.get(&link(&text, "/portal/i/")).await)
            .await
            .text();
        let (csrf, nonce) = (field(&html, "csrf"), field(&html, "nonce"));
        let (_, pms) = d.get(&format!("/v1/customers/{cus}/payment_methods")).await;
        let mastercard = pms["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["brand"] == "mastercard")
            .unwrap()
            .clone();
        let second = mastercard["id"].as_str().unwrap().to_string();
        let pay = format!("/portal/invoices/{id}/pay");
        let form = [
            ("csrf", csrf.as_str()),
            ("nonce", nonce.as_str()),
            ("amount", "40.00"),
            ("payment_method", second.as_str()),
        ];
        // A double-click: the same form twice at once, then once more later.
        let (one, two) = tokio::join!(b.post(&pay, &form), b.post(&pay, &form));
        assert_eq!((one.status, two.status), (303, 303));
        let three = b.post(&pay, &form).await;
        assert_eq!(three.status, 303);
        assert!(
            three
                .location
                .as_deref()
                .unwrap()
                .ends_with("notice=submitted")
        );
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        let pis = p.gateway.payment_intents();
        assert_eq!(pis.len(), 1, "charged once: {pis:?}");
        assert_eq!(pis[0]["amount"], 4000);
        assert_eq!(
            pis[0]["payment_method"], mastercard["token"],
            "the chosen card"
        );
        let (_, now) = d.get(&format!("/v1/invoices/{id}")).await;
        assert_eq!(now["status"], "partially_paid");
        assert_eq!(now["amount_due"], "60.00");
        let page = b.get(&format!("/portal/invoices/{id}")).await.text();
        assert!(
            page.contains("Partially paid") && page.contains("$60.00"),
            "{page}"
        );
        assert!(page.contains("Mastercard ending in 4444"), "{page}");

        // A fresh form pays the rest; the page says Paid and offers no Pay button.
        let nonce = field(&page, "nonce");
        let done = b
            .post(
                &pay,
                &[("csrf", &csrf), ("nonce", &nonce), ("amount", "60.00")],
            )
            .await;
        assert!(done.location.as_deref().unwrap().ends_with("notice=paid"));
        let page = b.follow(&done).await.text();
        assert!(
            page.contains("Paid in full") && !page.contains("Pay now"),
            "{page}"
        );
        assert_eq!(p.gateway.payment_intent_count(), 2);
        let (_, ok) = d.get("/v1/ledger/check").await;
        assert_eq!(ok["ok"], true, "{ok}");
    }
);

/// Signs `b` in as `email` through the sign-in form and the emailed link (the first sign-in email
/// to that address).
async fn sign_in(p: &PortalWorld, b: &Browser, email: &str) {
    let csrf = field(&b.get("/portal/sign-in").await.text(), "csrf");
    let asked = b
        .post("/portal/sign-in", &[("csrf", &csrf), ("email", email)])
        .await;
    assert_eq!(asked.status, 200);
    let url = link(
        &p.email_text("sign-in link", email).await,
        "/portal/sign-in/",
    );
    let path = url.trim_start_matches(&p.d().base).to_string();
    let csrf = field(&b.get(&path).await.text(), "csrf");
    let signed = b.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(
        signed.location.as_deref(),
        Some("/portal/"),
        "{}",
        signed.text()
    );
}

both!(
    the_whole_balance_is_paid_once_from_the_dashboard_and_the_records_download,
    |backend| async move {
        let p = PortalWorld::start(backend).await;
        let d = p.d();
        let cus = p
            .customer("Acme Corp", &["ap@acme.example"], &["pm_card_visa"])
            .await;
        let first = p.invoice(&cus, "30.00").await;
        let second = p.invoice(&cus, "20.00").await;
        let b = Browser::new(d);
        sign_in(&p, &b, "ap@acme.example").await;
        let html = b.get("/portal/").await.text();
        assert!(
            html.contains("$50.00") && html.contains("Pay $50.00 now"),
            "{html}"
        );
        let form = [
            ("csrf", field(&html, "csrf")),
            ("nonce", field(&html, "nonce")),
            ("payment_method", first_option(&html, "payment_method")),
        ];
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (one, two) = tokio::join!(
            b.post("/portal/pay-balance", &form),
            b.post("/portal/pay-balance", &form)
        );
        assert_eq!((one.status, two.status), (303, 303));
        d.wait_clock_ready(std::time::Duration::from_secs(30)).await;
        let pis = p.gateway.payment_intents();
        assert_eq!(pis.len(), 1, "one charge for the balance: {pis:?}");
        assert_eq!(pis[0]["amount"], 5000);
        for inv in [&first, &second] {
            let (_, now) = d
                .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
                .await;
            assert_eq!(now["status"], "paid", "{now}");
        }
        let html = b.get("/portal/").await.text();
        assert!(html.contains("$0.00") && !html.contains("Pay $"), "{html}");

        // Payments made, sortable; the statement as a page, PDF and CSV.
        let page = b.get("/portal/payments?sort=amount&order=asc").await;
        assert_eq!(page.status, 200);
        assert!(page.text().contains("$50.00") && page.text().contains("receipt.pdf"));
        let page = b
            .get("/portal/statement?from=2027-01-01&to=2027-01-31")
            .await;
        let html = page.text();
        for needle in ["Opening balance", "Closing balance", "$50.00"] {
            assert!(html.contains(needle), "{needle}:\n{html}");
        }
        let pdf = b
            .get("/portal/statement?from=2027-01-01&to=2027-01-31&format=pdf")
            .await;
        assert_eq!(pdf.headers["content-type"], "application/pdf");
        assert!(pdf.body.starts_with(b"%PDF-"));
        let csv = b
            .get("/portal/statement?from=2027-01-01&to=2027-01-31&format=csv")
            .await
            .text();
        assert!(
            csv.starts_with("date,kind,reference,amount,balance\n"),
            "{csv}"
        );
        assert!(csv.contains(first["number"].as_str().unwrap()), "{csv}");
        assert!(csv.trim_end().ends_with(",closing,,,0.00"), "{csv}");
        // Signed out, the session is gone.
        let csrf = field(&b.get("/portal/").await.text(), "csrf");
        let out = b.post("/portal/sign-out", &[("csrf", &csrf)]).await;
        assert_eq!(out.location.as_deref(), Some("/portal/sign-in"));
        assert_eq!(b.get("/portal/").await.status, 303);
    }
);
