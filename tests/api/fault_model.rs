//! The randomized fault test: random sequences of money operations against the real daemon (a
//! separate process) and the test gateway, with the gateway failing in every way it can (the
//! charge made and its answer lost, timeouts, 429, 500, dropped connections, slow answers, an
//! outage) and the daemon killed with SIGKILL at random moments and started again. After each
//! sequence the faults stop, everything is left to settle, and the gateway's books are held
//! against the daemon's:
//!
//! - every PaymentIntent that succeeded at the gateway is exactly one payment of the same amount,
//!   and no payment names a PaymentIntent that did not succeed;
//! - no charge attempt key has more than one succeeded PaymentIntent, and what the daemon charged
//!   for an invoice, less what went back, is never more than the invoice;
//! - every refund that succeeded at the gateway is counted on its payment once;
//! - no attempt is left unresolved, nothing is set aside, no balance is negative, and
//!   `/v1/ledger/check` holds.
//!
//! The seed is printed; `SETTLED_FAULT_SEED=<seed>` repeats a run. `SETTLED_FAULT_SEQUENCES`
//! (default 2) and `SETTLED_FAULT_OPS` (default 30 per sequence) make it longer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::sha256::stripe_header;
use crate::support::stripe_gateway::{FailMode, Fault, StripeGateway};

const SECRET: &str = "whsec_fault_model_4e8a1c";

/// splitmix64: small, fast and the same everywhere, so a seed repeats a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len() as u64) as usize])
        }
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("SETTLED_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            t ^ (std::process::id() as u64) << 32
        })
}

/// "12.34" → 1234.
fn minor(amount: &Value) -> i64 {
    let s = amount.as_str().unwrap_or("0");
    let (whole, frac) = s.split_once('.').unwrap_or((s, "00"));
    let negative = whole.starts_with('-');
    let whole: i64 = whole.trim_start_matches('-').parse().unwrap_or(0);
    let frac: i64 = format!("{frac:0<2}")[..2].parse().unwrap_or(0);
    let v = whole * 100 + frac;
    if negative { -v } else { v }
}

/// What the gateway's succeeded refunds of one PaymentIntent add up to.
fn refunded_at(refunds: &[Value], payment_intent: &str) -> i64 {
    refunds
        .iter()
        .filter(|r| r["payment_intent"] == payment_intent && r["status"] == "succeeded")
        .filter_map(|r| r["amount"].as_i64())
        .sum()
}

fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

struct Customer {
    id: String,
    gateway_id: String,
    /// Card tokens at the gateway, and the daemon's ids for them.
    tokens: Vec<String>,
    methods: Vec<String>,
}

/// One daemon process and where it keeps its state.
struct Node {
    dir: PathBuf,
    daemon: Option<Daemon>,
    env: Vec<(String, String)>,
}

struct Run {
    rng: Rng,
    gateway: StripeGateway,
    db_url: String,
    nodes: Vec<Node>,
    customers: Vec<Customer>,
    invoices: Vec<String>,
    /// Signed event bodies held back to deliver later (out of order), and ones already delivered
    /// (for duplicates).
    held: Vec<String>,
    delivered: Vec<String>,
    /// Lost disputes by PaymentIntent.
    lost_disputes: HashMap<String, i64>,
    disputed: Vec<String>,
    /// The customer's own PaymentIntents whose webhooks are delivered or held.
    portal: std::collections::HashSet<String>,
    outage_ops: u64,
    counts: BTreeMap<&'static str, u64>,
    trace: Vec<String>,
    day: i64,
}

impl Run {
    fn d(&mut self) -> &Daemon {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].daemon.is_some())
            .collect();
        let i = *self.rng.pick(&alive).expect("a daemon runs");
        self.nodes[i].daemon.as_ref().unwrap()
    }

    fn note(&mut self, what: &'static str, detail: String) {
        *self.counts.entry(what).or_default() += 1;
        self.trace.push(format!("{what} {detail}"));
    }

    fn fail(&self, why: String) -> ! {
        let logs: String = self
            .nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref())
            .map(|d| d.log_text())
            .map(|t| t.lines().rev().take(60).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n");
        panic!(
            "{why}\nlast operations:\n  {}\nlogs (newest first):\n{logs}",
            self.trace
                .iter()
                .rev()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    fn expect(&self, what: &str, status: u16, allowed: &[u16], body: &Value) {
        if !allowed.contains(&status) {
            self.fail(format!(
                "{what}: answered {status}, expected one of {allowed:?}: {body}"
            ));
        }
    }

    async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        let d = self.d();
        d.post(path, body).await
    }

    async fn get(&mut self, path: &str) -> (u16, Value) {
        let d = self.d();
        d.get(path).await
    }

    /// Delivers as Stripe does: again, a little later, after a 503.
    async fn deliver(&mut self, body: &str) {
        for _ in 0..20 {
            let d = self.d();
            let r = d
                .http
                .post(d.url("/webhooks/stripe"))
                .header("stripe-signature", stripe_header(SECRET, now_secs(), body))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if status == 503 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            if status != 200 {
                let text = r.text().await.unwrap_or_default();
                self.fail(format!("webhook answered {status}: {text}"));
            }
            self.delivered.push(body.to_string());
            return;
        }
        self.fail("intake answered 503 twenty times".into());
    }

    async fn open_invoice(&mut self) -> Option<(String, Value)> {
        for _ in 0..4 {
            let id = self.rng.pick(&self.invoices)?.clone();
            let (_, inv) = self.get(&format!("/v1/invoices/{id}")).await;
            if inv["status"] == "open" && minor(&inv["amount_due"]) > 0 {
                return Some((id, inv));
            }
        }
        None
    }

    async fn payments(&mut self, customer: &str) -> Vec<Value> {
        let (_, list) = self
            .get(&format!("/v1/payments?customer_id={customer}&limit=1000"))
            .await;
        list["data"].as_array().cloned().unwrap_or_default()
    }

    async fn start_node(dir: &Path, url: &str, env: Vec<(String, String)>) -> Daemon {
        let mut options = DaemonOptions {
            manual_clock: None,
            with_token: false,
            ..DaemonOptions::default()
        };
        options.env = env;
        Daemon::start(dir, url, options.process()).await
    }

    async fn kill(&mut self) {
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        // Sometimes in the middle of whatever the last operation set going.
        tokio::time::sleep(Duration::from_millis(self.rng.below(400))).await;
        let mut d = self.nodes[i].daemon.take().expect("running");
        d.signal(libc::SIGKILL);
        d.wait_exit(Duration::from_secs(10)).expect("killed");
        let node = &self.nodes[i];
        let (dir, url, env) = (node.dir.clone(), self.db_url.clone(), node.env.clone());
        self.nodes[i].daemon = Some(Self::start_node(&dir, &url, env).await);
        self.note("kill", format!("node {i}"));
    }

    async fn new_customer(&mut self) {
        let body = json!({"email": format!("ap{}@example.com", self.customers.len()),
                          "name": "Fault Co", "currency": "USD",
                          "auto_charge": self.rng.chance(60)});
        let (status, c) = self.post("/v1/customers", body).await;
        self.expect("new customer", status, &[201], &c);
        let id = c["id"].as_str().unwrap().to_string();
        let mut tokens = Vec::new();
        let mut methods = Vec::new();
        for token in ["pm_card_visa", "pm_card_mastercard"] {
            let (status, pm) = self
                .post(
                    &format!("/v1/customers/{id}/payment_methods"),
                    json!({"gateway": "stripe", "token": token}),
                )
                .await;
            self.expect("save a card", status, &[201], &pm);
            tokens.push(pm["token"].as_str().unwrap().to_string());
            methods.push(pm["id"].as_str().unwrap().to_string());
        }
        let (_, c) = self.get(&format!("/v1/customers/{id}")).await;
        self.customers.push(Customer {
            id: id.clone(),
            gateway_id: c["gateway_customer_id"].as_str().unwrap().to_string(),
            tokens,
            methods,
        });
        self.note("new_customer", id);
    }

    fn customer(&mut self) -> usize {
        self.rng.below(self.customers.len() as u64) as usize
    }

    async fn new_invoice(&mut self, kind: &str) {
        let c = self.customer();
        let cus = self.customers[c].id.clone();
        let cents = 500 + self.rng.below(30_000) as i64;
        let auto = kind == "standard" && self.rng.chance(50);
        let (status, inv) = self
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "kind": kind, "auto_charge": auto,
                       "items": [{"description": "Work", "unit_amount": decimal(cents)}]}),
            )
            .await;
        self.expect("new invoice", status, &[201], &inv);
        let id = inv["id"].as_str().unwrap().to_string();
        self.invoices.push(id.clone());
        self.note("new_invoice", format!("{id} {kind} {cents} auto={auto}"));
    }

    async fn manual_charge(&mut self) {
        let Some((id, inv)) = self.open_invoice().await else {
            return;
        };
        let due = minor(&inv["amount_due"]);
        let mut body = json!({});
        if self.rng.chance(30) && due > 100 {
            body["amount"] = json!(decimal(1 + self.rng.below(due as u64 - 1) as i64));
        }
        if self.rng.chance(30) {
            let cus = inv["customer_id"].as_str().unwrap().to_string();
            let c = self.customers.iter().position(|c| c.id == cus).unwrap();
            let m = self.rng.pick(&self.customers[c].methods).unwrap().clone();
            body["payment_method_id"] = json!(m);
        }
        let (status, answer) = self
            .post(&format!("/v1/invoices/{id}/charge"), body.clone())
            .await;
        // 409: another charge of it is in flight or it was settled meanwhile.
        self.expect(
            "manual charge",
            status,
            &[200, 201, 202, 402, 409, 422],
            &answer,
        );
        self.note("manual_charge", format!("{id} {body} -> {status}"));
    }

    async fn balance_charge(&mut self) {
        let c = self.customer();
        let cus = self.customers[c].id.clone();
        let (status, answer) = self
            .post(&format!("/v1/customers/{cus}/charge_balance"), json!({}))
            .await;
        self.expect(
            "balance charge",
            status,
            &[200, 201, 202, 402, 409, 422],
            &answer,
        );
        self.note("balance_charge", format!("{cus} -> {status}"));
    }

    /// A payment made at the gateway (the customer's own "Pay Now"), its webhook delivered now,
    /// twice, or later.
    async fn portal_payment(&mut self) {
        let Some((id, inv)) = self.open_invoice().await else {
            return;
        };
        let due = minor(&inv["amount_due"]);
        let amount = if self.rng.chance(60) {
            due
        } else {
            1 + self.rng.below(due as u64) as i64
        };
        let cus = inv["customer_id"].as_str().unwrap().to_string();
        let c = self.customers.iter().position(|c| c.id == cus).unwrap();
        let token = self.rng.pick(&self.customers[c].tokens).unwrap().clone();
        let form = vec![
            ("amount", amount.to_string()),
            ("currency", "usd".to_string()),
            ("customer", self.customers[c].gateway_id.clone()),
            ("payment_method", token),
            ("confirm", "true".to_string()),
            ("metadata[invoice_id]", id.clone()),
        ];
        // The gateway's fault switches hit the customer's own payment too; a failed one is
        // simply a payment that did not happen (a timeout one may have: the check counts it).
        let pi: Value = match reqwest::Client::new()
            .post(format!("{}/v1/payment_intents", self.gateway.base_url()))
            .bearer_auth("sk_test_portal")
            .timeout(Duration::from_secs(5))
            .form(&form)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let pi = if pi["status"] == "succeeded" {
            pi
        } else {
            // The answer was lost; Stripe still sends the webhook of one that went through.
            match self.gateway.payment_intents().into_iter().find(|p| {
                p["metadata"]["invoice_id"] == id.as_str()
                    && p["metadata"]["attempt"].is_null()
                    && p["status"] == "succeeded"
                    && !self.portal.contains(p["id"].as_str().unwrap_or(""))
            }) {
                Some(p) => p,
                None => {
                    self.note("portal_payment", format!("{id} refused at the gateway"));
                    return;
                }
            }
        };
        self.portal
            .insert(pi["id"].as_str().unwrap_or("").to_string());
        let body = self.gateway.event_json("payment_intent.succeeded", pi);
        match self.rng.below(3) {
            0 => self.held.push(body),
            1 => {
                self.deliver(&body).await;
                self.deliver(&body).await;
            }
            _ => self.deliver(&body).await,
        }
        self.note("portal_payment", format!("{id} {amount}"));
    }

    async fn deliver_late(&mut self) {
        if !self.held.is_empty() && self.rng.chance(70) {
            let i = self.rng.below(self.held.len() as u64) as usize;
            let body = self.held.swap_remove(i);
            self.deliver(&body).await;
            self.note("deliver_late", String::new());
        } else if let Some(body) = self.rng.pick(&self.delivered).cloned() {
            self.deliver(&body).await;
            self.note("deliver_again", String::new());
        }
    }

    async fn a_payment(&mut self, gateway_only: bool) -> Option<Value> {
        let c = self.customer();
        let cus = self.customers[c].id.clone();
        let payments: Vec<Value> = self
            .payments(&cus)
            .await
            .into_iter()
            .filter(|p| p["status"] == "succeeded" || p["status"] == "partially_refunded")
            .filter(|p| !gateway_only || p["gateway"] == "stripe")
            .collect();
        self.rng.pick(&payments).cloned()
    }

    async fn operator_refund(&mut self) {
        let Some(p) = self.a_payment(false).await else {
            return;
        };
        let id = p["id"].as_str().unwrap().to_string();
        let left = minor(&p["amount"]) - minor(&p["amount_refunded"]);
        let mut body = json!({"reason": "requested_by_customer",
                              "as_credit": self.rng.chance(30)});
        if self.rng.chance(50) && left > 1 {
            body["amount"] = json!(decimal(1 + self.rng.below(left as u64 - 1) as i64));
        }
        let (status, answer) = self
            .post(&format!("/v1/payments/{id}/refunds"), body.clone())
            .await;
        self.expect(
            "operator refund",
            status,
            &[200, 201, 202, 409, 422],
            &answer,
        );
        self.note("operator_refund", format!("{id} {body} -> {status}"));
    }

    /// A card payment never disputed, with its PaymentIntent at the gateway: (payment, its
    /// PaymentIntent's id, the PaymentIntent). Stripe refuses to refund or dispute again a
    /// disputed charge.
    async fn undisputed_card_payment(&mut self) -> Option<(Value, String, Value)> {
        let p = self.a_payment(true).await?;
        let pi_id = p["gateway_payment_id"].as_str().unwrap_or("").to_string();
        if self.disputed.contains(&pi_id) {
            return None;
        }
        let pi = self
            .gateway
            .payment_intents()
            .into_iter()
            .find(|pi| pi["id"] == pi_id.as_str())?;
        Some((p, pi_id, pi))
    }

    /// A refund made at the gateway's dashboard, reported by `charge.refunded`.
    async fn gateway_refund(&mut self) {
        let Some((p, pi_id, pi)) = self.undisputed_card_payment().await else {
            return;
        };
        let left = minor(&p["amount"]) - minor(&p["amount_refunded"]);
        if left <= 0 {
            return;
        }
        let amount = 1 + self.rng.below(left as u64) as i64;
        let made_before = refunded_at(&self.gateway.refunds(), &pi_id);
        let r = reqwest::Client::new()
            .post(format!("{}/v1/refunds", self.gateway.base_url()))
            .bearer_auth("sk_test_portal")
            .timeout(Duration::from_secs(5))
            .form(&[
                ("payment_intent", pi_id.clone()),
                ("amount", amount.to_string()),
            ])
            .send()
            .await;
        // A refund fault armed for the daemon may hit this one: an answer lost after the refund
        // was made is still a refund, and Stripe still reports it by webhook.
        if !r.is_ok_and(|r| r.status().is_success())
            && refunded_at(&self.gateway.refunds(), &pi_id) == made_before
        {
            self.note("gateway_refund", format!("{pi_id} refused at the gateway"));
            return;
        }
        let refunds: Vec<Value> = self
            .gateway
            .refunds()
            .into_iter()
            .filter(|r| r["payment_intent"] == pi_id.as_str())
            .collect();
        let total: i64 = refunds.iter().filter_map(|r| r["amount"].as_i64()).sum();
        let charge = json!({"id": pi["latest_charge"], "object": "charge",
            "payment_intent": pi_id, "amount": pi["amount"], "amount_refunded": total,
            "currency": "usd", "refunded": Some(total) == pi["amount"].as_i64(),
            "refunds": {"object": "list", "data": refunds}});
        let body = self.gateway.event_json("charge.refunded", charge);
        if self.rng.chance(30) {
            self.held.push(body);
        } else {
            self.deliver(&body).await;
        }
        self.note("gateway_refund", format!("{pi_id} {amount}"));
    }

    async fn dispute(&mut self) {
        let Some((_, pi_id, pi)) = self.undisputed_card_payment().await else {
            return;
        };
        self.disputed.push(pi_id.clone());
        let dispute_id = format!("du_{}", random_suffix());
        // What is disputed is what was not refunded.
        let refunded = refunded_at(&self.gateway.refunds(), &pi_id);
        let amount = pi["amount_received"].as_i64().unwrap_or(0) - refunded;
        if amount <= 0 {
            return;
        }
        let dispute = |status: &str| {
            json!({"id": dispute_id, "object": "dispute", "charge": pi["latest_charge"],
                   "payment_intent": pi_id, "amount": amount, "currency": "usd",
                   "reason": "fraudulent", "status": status})
        };
        let opened = self
            .gateway
            .event_json("charge.dispute.created", dispute("needs_response"));
        self.deliver(&opened).await;
        let lost = self.rng.chance(50);
        let closed = self.gateway.event_json(
            "charge.dispute.closed",
            dispute(if lost { "lost" } else { "won" }),
        );
        self.deliver(&closed).await;
        if self.rng.chance(30) {
            self.deliver(&closed).await;
        }
        if lost {
            self.lost_disputes.insert(pi_id.clone(), amount);
        }
        self.note("dispute", format!("{pi_id} lost={lost}"));
    }

    async fn credit_note(&mut self) {
        let c = self.customer();
        let cus = self.customers[c].id.clone();
        let cents = 100 + self.rng.below(5_000) as i64;
        let (status, body) = self
            .post(
                "/v1/credit_notes",
                json!({"customer_id": cus, "amount": decimal(cents), "currency": "USD",
                       "reason": "goodwill"}),
            )
            .await;
        self.expect("credit note", status, &[201], &body);
        self.note("credit_note", format!("{cus} {cents}"));
    }

    async fn retainer_apply(&mut self) {
        let Some((id, inv)) = self.open_invoice().await else {
            return;
        };
        let cus = inv["customer_id"].as_str().unwrap().to_string();
        let (status, body) = self
            .post(
                &format!("/v1/customers/{cus}/retainer/apply"),
                json!({"invoice_id": id}),
            )
            .await;
        self.expect("retainer apply", status, &[200, 201, 409, 422], &body);
        self.note("retainer_apply", format!("{id} -> {status}"));
    }

    async fn retainer_refund(&mut self) {
        let c = self.customer();
        let cus = self.customers[c].id.clone();
        let (_, view) = self.get(&format!("/v1/customers/{cus}")).await;
        let held = minor(&view["retainer_balance"]);
        if held <= 0 {
            return;
        }
        let amount = 1 + self.rng.below(held as u64) as i64;
        let (status, body) = self
            .post(
                &format!("/v1/customers/{cus}/retainer/refund"),
                json!({"amount": decimal(amount)}),
            )
            .await;
        self.expect(
            "retainer refund",
            status,
            &[200, 201, 202, 409, 422, 502],
            &body,
        );
        self.note("retainer_refund", format!("{cus} {amount} -> {status}"));
    }

    async fn void(&mut self) {
        let Some((id, _)) = self.open_invoice().await else {
            return;
        };
        let (status, body) = self
            .post(&format!("/v1/invoices/{id}/void"), json!({}))
            .await;
        self.expect("void", status, &[200, 409], &body);
        self.note("void", format!("{id} -> {status}"));
    }

    /// A wire recorded by the operator, the request sent twice under one key now and then.
    async fn offline_payment(&mut self) {
        let Some((id, inv)) = self.open_invoice().await else {
            return;
        };
        let due = minor(&inv["amount_due"]);
        let amount = if self.rng.chance(50) {
            due
        } else {
            1 + self.rng.below(due as u64) as i64
        };
        let key = format!("wire-{}", random_suffix());
        let body = json!({"amount": decimal(amount), "method": "wire", "reference": key});
        let times = if self.rng.chance(30) { 2 } else { 1 };
        let mut first: Option<Value> = None;
        for _ in 0..times {
            let d = self.d();
            let r = d
                .http
                .post(d.url(&format!("/v1/invoices/{id}/payments")))
                .bearer_auth(TOKEN)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            self.expect("offline payment", status, &[201, 409, 422], &answer);
            if status == 201 {
                if let Some(f) = &first
                    && f["id"] != answer["id"]
                {
                    self.fail(format!("one key, two payments: {f} and {answer}"));
                }
                first = Some(answer);
            }
        }
        self.note("offline_payment", format!("{id} {amount} x{times}"));
    }

    async fn advance(&mut self) {
        self.day += 1 + self.rng.below(3) as i64;
        let to = (chrono::DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z").unwrap()
            + chrono::Duration::days(self.day))
        .to_rfc3339();
        let (status, body) = self.post("/v1/clock/advance", json!({"to": to})).await;
        self.expect("advance", status, &[202], &body);
        self.note("advance", to);
    }

    fn fault(&mut self) {
        let mode = match self.rng.below(5) {
            0 => FailMode::Timeout(Duration::from_secs(3)),
            1 => FailMode::ServerError,
            2 => FailMode::Disconnect,
            3 => FailMode::RateLimited,
            _ => FailMode::Timeout(Duration::from_millis(2500)),
        };
        match self.rng.below(4) {
            0 => self.gateway.fail_next_after_charge(mode),
            1 => self.gateway.fail_next_before(mode),
            2 => {
                let f = if self.rng.chance(50) {
                    Fault::After(mode)
                } else {
                    Fault::Before(mode)
                };
                self.gateway.queue_refund_faults(vec![Some(f), None]);
            }
            _ => self
                .gateway
                .set_latency(Duration::from_millis(self.rng.below(400))),
        }
        self.note("fault", format!("{mode:?}"));
    }

    async fn step(&mut self) {
        if self.outage_ops > 0 {
            self.outage_ops -= 1;
            if self.outage_ops == 0 {
                self.gateway.set_outage(None);
            }
        }
        match self.rng.below(100) {
            0..=11 => self.new_invoice("standard").await,
            12..=15 => self.new_invoice("retainer").await,
            16..=23 => self.manual_charge().await,
            24..=27 => self.balance_charge().await,
            28..=37 => self.portal_payment().await,
            38..=43 => self.deliver_late().await,
            44..=49 => self.operator_refund().await,
            50..=53 => self.gateway_refund().await,
            54..=56 => self.dispute().await,
            57..=60 => self.credit_note().await,
            61..=63 => self.retainer_apply().await,
            64..=66 => self.retainer_refund().await,
            67..=69 => self.void().await,
            70..=75 => self.offline_payment().await,
            76..=82 => self.advance().await,
            83..=92 => self.fault(),
            93..=94 => {
                let mode = if self.rng.chance(50) {
                    FailMode::ServerError
                } else {
                    FailMode::Disconnect
                };
                self.gateway.set_outage(Some(mode));
                self.outage_ops = 1 + self.rng.below(3);
                self.note("outage", format!("{mode:?} for {} ops", self.outage_ops));
            }
            _ => self.kill().await,
        }
    }

    /// Faults off, every held event delivered, and everything due done.
    async fn settle(&mut self) {
        self.gateway.set_outage(None);
        self.gateway.set_latency(Duration::ZERO);
        while let Some(body) = self.held.pop() {
            self.deliver(&body).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, events) = self.get("/v1/webhook_events?limit=1000").await;
            let events = events["data"].as_array().cloned().unwrap_or_default();
            let waiting = events.iter().filter(|e| e["status"] == "received").count();
            let (_, clock) = self.get("/v1/clock").await;
            if waiting == 0 && clock["status"] == "ready" {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "never settled: {waiting} events waiting, clock {clock}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn check(&mut self) {
        // Nothing set aside, no event failed for good.
        let (_, jobs) = self.get("/v1/jobs").await;
        if !jobs["data"].as_array().is_some_and(|a| a.is_empty()) {
            self.fail(format!("work set aside after settling: {jobs}"));
        }
        let (_, failed) = self.get("/v1/webhook_events?status=failed").await;
        if !failed["data"].as_array().is_some_and(|a| a.is_empty()) {
            self.fail(format!("events failed: {failed}"));
        }
        let (status, ledger) = self.get("/v1/ledger/check").await;
        if status != 200 || ledger["ok"] != true {
            self.fail(format!("ledger check: {ledger}"));
        }

        let mut payments_by_pi: HashMap<String, Vec<Value>> = HashMap::new();
        let ids: Vec<String> = self.customers.iter().map(|c| c.id.clone()).collect();
        for cus in &ids {
            let (_, view) = self.get(&format!("/v1/customers/{cus}")).await;
            for field in ["credit_balance", "retainer_balance", "outstanding"] {
                if minor(&view[field]) < 0 {
                    self.fail(format!("{cus}: negative {field}: {view}"));
                }
            }
            for p in self.payments(cus).await {
                if let Some(pi) = p["gateway_payment_id"].as_str()
                    && p["gateway"] == "stripe"
                {
                    payments_by_pi.entry(pi.to_string()).or_default().push(p);
                }
            }
        }

        let intents = self.gateway.payment_intents();
        let refunds = self.gateway.refunds();
        let mut per_key: HashMap<String, usize> = HashMap::new();
        let mut charged_for: HashMap<String, i64> = HashMap::new();
        for pi in &intents {
            let id = pi["id"].as_str().unwrap().to_string();
            let succeeded = pi["status"] == "succeeded";
            let recorded = payments_by_pi.remove(&id).unwrap_or_default();
            if !succeeded {
                if !recorded.is_empty() {
                    self.fail(format!("payment recorded for {id}, which did not succeed"));
                }
                continue;
            }
            let received = pi["amount_received"].as_i64().unwrap_or(0);
            if recorded.len() != 1 || minor(&recorded[0]["amount"]) != received {
                self.fail(format!(
                    "{id} received {received} at the gateway; recorded: {recorded:?}"
                ));
            }
            let back = refunded_at(&refunds, &id);
            let lost = self.lost_disputes.get(&id).copied().unwrap_or(0);
            let counted = minor(&recorded[0]["amount_refunded"]);
            if counted != back + lost {
                self.fail(format!(
                    "{id}: {back} refunded at the gateway and {lost} lost in a dispute, \
                     {counted} counted: {}",
                    recorded[0]
                ));
            }
            if let Some(attempt) = pi["metadata"]["attempt"].as_str() {
                let owner = pi["metadata"]["invoice_id"]
                    .as_str()
                    .or(pi["metadata"]["charge_id"].as_str())
                    .unwrap_or("");
                *per_key.entry(format!("{owner}:{attempt}")).or_default() += 1;
                if let Some(inv) = pi["metadata"]["invoice_id"].as_str() {
                    *charged_for.entry(inv.to_string()).or_default() += received - back - lost;
                }
            }
        }
        if !payments_by_pi.is_empty() {
            self.fail(format!(
                "payments naming no PaymentIntent at the gateway: {payments_by_pi:?}"
            ));
        }
        if let Some((key, n)) = per_key.iter().find(|(_, n)| **n > 1) {
            self.fail(format!("attempt {key} succeeded {n} times at the gateway"));
        }
        let invoices = self.invoices.clone();
        for id in &invoices {
            let (_, inv) = self.get(&format!("/v1/invoices/{id}")).await;
            if let Some(a) = inv["attempts"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["outcome"] == "unknown"))
            {
                self.fail(format!("{id}: attempt left unresolved: {a}"));
            }
            let net = charged_for.get(id).copied().unwrap_or(0);
            if net > minor(&inv["total"]) {
                self.fail(format!(
                    "{id}: the daemon charged {net} net for an invoice of {}: {inv}",
                    inv["total"]
                ));
            }
        }
    }
}

async fn sequence(
    backend: Backend,
    daemons: usize,
    seed: u64,
    ops: u64,
) -> BTreeMap<&'static str, u64> {
    let gateway = StripeGateway::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(backend, dir.path()).await;
    let base = DaemonOptions::default()
        .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
        .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
        .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "2")
        .env(
            "SETTLED__STRIPE__WEBHOOK_SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env("SETTLED__JOBS__HEARTBEAT_SECONDS", "1")
        .process();
    let first = Daemon::start(&dir.path().join("a"), &db.url, base).await;
    let env = first.env().to_vec();
    let mut nodes = vec![Node {
        dir: dir.path().join("a"),
        daemon: Some(first),
        env: env.clone(),
    }];
    for i in 1..daemons {
        let node_dir = dir.path().join(format!("n{i}"));
        let d = Run::start_node(&node_dir, &db.url, env.clone()).await;
        nodes.push(Node {
            dir: node_dir,
            daemon: Some(d),
            env: env.clone(),
        });
    }
    let mut run = Run {
        rng: Rng(seed),
        gateway,
        db_url: db.url.clone(),
        nodes,
        customers: Vec::new(),
        invoices: Vec::new(),
        held: Vec::new(),
        delivered: Vec::new(),
        lost_disputes: HashMap::new(),
        disputed: Vec::new(),
        portal: std::collections::HashSet::new(),
        outage_ops: 0,
        counts: BTreeMap::new(),
        trace: Vec::new(),
        day: 0,
    };
    for _ in 0..3 {
        run.new_customer().await;
    }
    for _ in 0..ops {
        run.step().await;
    }
    run.settle().await;
    run.check().await;
    // Once more a day later: dunning retries and late fees run on what was left, then the books
    // must agree again.
    run.advance().await;
    run.settle().await;
    run.check().await;
    run.counts
}

async fn fault_test(backend: Backend, daemons: usize) {
    let seed = seed();
    let sequences = knob("SETTLED_FAULT_SEQUENCES", 2);
    let ops = knob("SETTLED_FAULT_OPS", 30);
    eprintln!(
        "fault test ({backend:?}, {daemons} daemon(s)): seed {seed}; repeat with \
         SETTLED_FAULT_SEED={seed}; {sequences} sequences of {ops} operations"
    );
    let started = Instant::now();
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut rng = Rng(seed);
    for n in 0..sequences {
        let s = rng.next();
        eprintln!("  sequence {n}: seed {s}");
        for (k, v) in sequence(backend, daemons, s, ops).await {
            *totals.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "fault test ({backend:?}, {daemons} daemon(s)): {sequences} sequences, {} operations in {:.0?}: {totals:?}",
        totals.values().sum::<u64>(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_sqlite() {
    fault_test(Backend::Sqlite, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_postgres() {
    fault_test(Backend::Postgres, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_postgres_two_daemons() {
    fault_test(Backend::Postgres, 2).await;
}
