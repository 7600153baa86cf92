//! What the portal's tests share: a daemon with SMTP, the test gateway and the portal set up; a
//! browser-like HTTP client that keeps cookies and does not follow redirects; and reading links
//! and form fields out of emails and pages.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::smtp::SmtpServer;
use crate::support::stripe_gateway::StripeGateway;

pub const WIRE: &str = "IBAN DE89 3704 0044 0532 0130 00";

pub struct PortalWorld {
    pub smtp: SmtpServer,
    pub gateway: StripeGateway,
    pub world: World,
}

impl PortalWorld {
    pub async fn start(backend: Backend) -> PortalWorld {
        let smtp = SmtpServer::start().await;
        let gateway = StripeGateway::start().await;
        let options = DaemonOptions::default()
            .env("SETTLED__EMAIL__SMTP_URL", smtp.url())
            .env(
                "SETTLED__EMAIL__FROM",
                "Example Billing <billing@example.com>",
            )
            .env("SETTLED__BUSINESS__NAME", "Example Ltd")
            .env("SETTLED__BUSINESS__ADDRESS", "1 Main Street\nSpringfield")
            .env("SETTLED__BUSINESS__SUPPORT_EMAIL", "help@example.com")
            .env(
                "SETTLED__BUSINESS__PAYMENT_INSTRUCTIONS",
                format!("\"Example Bank\\n{WIRE}\\nReference: your invoice number\""),
            )
            .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
            .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "5")
            .env(
                "SETTLED__PORTAL__STRIPE_JS_URL",
                format!("{}/v3/", gateway.base_url()),
            )
            .env("SETTLED__PORTAL__STRIPE_PUBLISHABLE_KEY", "pk_test_settled");
        let world = World::start_with(backend, options).await;
        PortalWorld {
            smtp,
            gateway,
            world,
        }
    }

    pub fn d(&self) -> &Daemon {
        &self.world.daemon
    }

    /// A customer billed at `emails`, with saved cards (the first the default).
    pub async fn customer(&self, name: &str, emails: &[&str], cards: &[&str]) -> String {
        let d = self.d();
        let (status, body) = d
            .post(
                "/v1/customers",
                json!({"email": emails[0], "name": name, "currency": "USD",
                       "timezone": "UTC", "billing_emails": emails}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        for (i, card) in cards.iter().enumerate() {
            let (status, pm) = d
                .post(
                    &format!("/v1/customers/{id}/payment_methods"),
                    json!({"gateway": "stripe", "token": card, "default": i == 0}),
                )
                .await;
            assert_eq!(status, 201, "{pm}");
        }
        id
    }

    /// A one-off invoice, due at the end of January, not charged by itself.
    pub async fn invoice(&self, customer: &str, amount: &str) -> Value {
        let (status, body) = self
            .d()
            .post(
                "/v1/invoices",
                json!({"customer_id": customer, "due_at": "2027-01-31T00:00:00Z",
                       "items": [{"description": "Consulting", "unit_amount": amount}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// The text of the first accepted message whose subject contains `subject` and that went to
    /// `to`, waiting for it.
    pub async fn email_text(&self, subject: &str, to: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            for m in self.smtp.accepted() {
                let parsed = m.parsed();
                if parsed.subject().is_some_and(|s| s.contains(subject))
                    && m.rcpt_to.iter().any(|r| r == to)
                {
                    return parsed.body_text(0).unwrap_or_default().to_string();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no email {subject:?} to {to}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The attachment of the invoice email of `number`.
    pub async fn invoice_pdf_attachment(&self, number: &str) -> Vec<u8> {
        use mail_parser::MimeHeaders;
        self.email_text(number, &self.smtp_first_rcpt(number)).await;
        for m in self.smtp.accepted() {
            let parsed = m.parsed();
            if parsed.subject().is_some_and(|s| s.contains(number))
                && let Some(a) = parsed
                    .attachments()
                    .find(|a| a.attachment_name().is_some_and(|n| n.ends_with(".pdf")))
            {
                return a.contents().to_vec();
            }
        }
        panic!("no PDF attached to the email of {number}")
    }

    fn smtp_first_rcpt(&self, subject: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self
                .smtp
                .accepted()
                .into_iter()
                .find(|m| m.parsed().subject().is_some_and(|s| s.contains(subject)))
            {
                return m.rcpt_to[0].clone();
            }
            assert!(std::time::Instant::now() < deadline, "no email {subject:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The first URL in `text` containing `marker`.
pub fn link(text: &str, marker: &str) -> String {
    text.split_whitespace()
        .find(|w| w.contains(marker) && w.starts_with("http"))
        .unwrap_or_else(|| panic!("no link with {marker} in:\n{text}"))
        .trim_end_matches(['.', ',', ')'])
        .to_string()
}

/// The value of the first `name="{name}" value="..."` input in a page.
pub fn field(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"))
        + needle.len();
    html[at..].split('"').next().unwrap_or("").to_string()
}

/// The value of the first option of the select named `name`.
pub fn first_option(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no select {name} in:\n{html}"));
    field(
        &html[at..].replacen("<option value=\"", "name=\"o\" value=\"", 1),
        "o",
    )
}

/// A browser without a script engine: keeps cookies, shows redirects instead of following them.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Mutex<BTreeMap<String, String>>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Page {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

impl Browser {
    pub fn new(d: &Daemon) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: d.base.clone(),
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("cookie", cookie)
        };
        let r = req.send().await.expect("request");
        let set_cookies: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                let mut jar = self.cookies.lock().unwrap();
                if v.is_empty() || c.contains("Max-Age=0") {
                    jar.remove(k);
                } else {
                    jar.insert(k.to_string(), v.to_string());
                }
            }
        }
        Page {
            status: r.status().as_u16(),
            location: r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            set_cookies,
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap_or_default().to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    /// Follows a redirect's Location once.
    pub async fn follow(&self, page: &Page) -> Page {
        let to = page.location.as_deref().expect("a redirect");
        self.get(to).await
    }
}
