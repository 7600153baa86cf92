//! The operator's CLI beside a running daemon: payment methods, bulk replays and a clock advance
//! that waits for the catch-up, with progress lines when there is no terminal, and exit codes
//! scripts can rely on.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::StripeGateway;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    /// The progress lines the command logged (JSON, as stderr is not a terminal).
    fn progress(&self, task: &str) -> Vec<Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "settled::progress" && v["task"] == task)
            .collect()
    }
}

/// Runs the CLI against the daemon's database with the daemon's settings.
fn cli(d: &Daemon, args: &[&str]) -> Run {
    let out = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(d.env().iter().cloned())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

both!(
    payment_methods_are_listed_added_made_default_and_removed_from_the_cli,
    |backend| async move {
        let gateway = StripeGateway::start().await;
        let options = DaemonOptions::default()
            .env("SETTLED__STRIPE__API_KEY", "sk_test_cli")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url());
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;

        let visa = cli(
            d,
            &[
                "payment-methods",
                "add",
                "--customer",
                &customer,
                "--token",
                "pm_card_visa",
                "--json",
            ],
        );
        assert_eq!(visa.code, Some(0), "{}", visa.stderr);
        let visa = visa.json();
        assert_eq!(visa["brand"], "visa");
        assert_eq!(visa["last4"], "4242");
        assert_eq!(visa["default"], true);
        let master = cli(
            d,
            &[
                "payment-methods",
                "add",
                "--customer",
                &customer,
                "--token",
                "pm_card_mastercard",
                "--no-default",
                "--json",
            ],
        );
        assert_eq!(master.code, Some(0), "{}", master.stderr);
        let master = master.json();
        assert_eq!(master["default"], false);
        let master_id = master["id"].as_str().unwrap();

        let list = cli(d, &["payment-methods", "list", "--customer", &customer]);
        assert_eq!(list.code, Some(0), "{}", list.stderr);
        assert!(
            list.stdout.starts_with("ID") && list.stdout.contains("LAST4"),
            "{}",
            list.stdout
        );
        assert!(
            list.stdout.contains("4242") && list.stdout.contains("4444"),
            "{}",
            list.stdout
        );

        let made = cli(
            d,
            &[
                "payment-methods",
                "default",
                "--customer",
                &customer,
                master_id,
                "--json",
            ],
        );
        assert_eq!(made.code, Some(0), "{}", made.stderr);
        assert_eq!(made.json()["default"], true);
        let (_, methods) = d
            .get(&format!("/v1/customers/{customer}/payment_methods"))
            .await;
        let defaults: Vec<&str> = methods["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["default"] == true)
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(defaults, vec![master_id], "{methods}");

        let removed = cli(
            d,
            &[
                "payment-methods",
                "remove",
                "--customer",
                &customer,
                visa["id"].as_str().unwrap(),
            ],
        );
        assert_eq!(removed.code, Some(0), "{}", removed.stderr);
        let (_, methods) = d
            .get(&format!("/v1/customers/{customer}/payment_methods"))
            .await;
        assert_eq!(methods["data"].as_array().unwrap().len(), 1, "{methods}");

        let missing = cli(
            d,
            &[
                "payment-methods",
                "remove",
                "--customer",
                &customer,
                "spm_missing",
            ],
        );
        assert_eq!(missing.code, Some(4), "{}", missing.stderr);
        let card = cli(
            d,
            &[
                "payment-methods",
                "add",
                "--customer",
                &customer,
                "--token",
                "4242424242424242",
            ],
        );
        assert_eq!(card.code, Some(3), "refused: {}", card.stderr);
        assert!(card.stderr.contains("token"), "{}", card.stderr);
    }
);

both!(
    failed_events_are_replayed_in_bulk_with_progress_lines,
    |backend| async move {
        const SECRET: &str = "whsec_cli_replay_3b9d";
        let options = DaemonOptions::default().env(
            "SETTLED__STRIPE__WEBHOOK_SECRETS",
            format!("[\"{SECRET}\"]"),
        );
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let mut ids = Vec::new();
        for n in 0..12 {
            let body = json!({
                "id": format!("evt_cli_{n}"), "object": "event", "api_version": "2024-06-20",
                "created": now_secs(), "type": "customer.created", "livemode": false,
                "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
                "data": {"object": {"id": "cus_gw_cli", "object": "customer"}}
            })
            .to_string();
            let signature = crate::support::sha256::stripe_header(SECRET, now_secs(), &body);
            let r = d
                .http
                .post(d.url("/webhooks/stripe"))
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let answer: Value = r.json().await.unwrap();
            ids.push(answer["id"].as_str().unwrap().to_string());
        }
        d.wait_clock_ready(Duration::from_secs(30)).await;
        // Ten of them failed under an earlier release (the error is what it recorded).
        let config = settled::config::Config::load_from(
            None,
            vec![("SETTLED__DATABASE__URL".to_string(), d.database_url.clone())],
        )
        .unwrap();
        let db = settled::store::Db::open(&config).unwrap();
        for id in &ids[..10] {
            settled::store::on_db!(&db, p => {
                sqlx::query("UPDATE webhook_events SET status = 'failed', error = 'boom' WHERE id = $1")
                    .bind(id)
                    .execute(p)
                    .await
                    .unwrap();
            });
        }
        db.close().await;

        // A dry run names the ten and replays none of them.
        let dry = cli(
            d,
            &[
                "webhooks",
                "replay",
                "--status",
                "failed",
                "--dry-run",
                "--json",
            ],
        );
        assert_eq!(dry.code, Some(0), "{}", dry.stderr);
        let dry = dry.json();
        assert_eq!(dry["selected"], 10, "{dry}");
        assert_eq!(dry["replayed"], 0, "{dry}");
        assert_eq!(dry["ids"].as_array().unwrap().len(), 10, "{dry}");
        let (_, first) = d.get(&format!("/v1/webhook_events/{}", ids[0])).await;
        assert_eq!(first["status"], "failed", "{first}");
        let run = cli(
            d,
            &[
                "webhooks", "replay", "--status", "failed", "--wait", "--json",
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let summary = run.json();
        assert_eq!(summary["selected"], 10, "{summary}");
        assert_eq!(summary["replayed"], 10, "{summary}");
        assert_eq!(summary["refused"], json!([]), "{summary}");
        assert_eq!(summary["outcomes"], json!({"ignored": 10}), "{summary}");
        let replaying = run.progress("replaying");
        assert!(!replaying.is_empty(), "{}", run.stderr);
        let last = replaying.last().unwrap();
        assert_eq!(
            (last["done"].as_u64(), last["total"].as_u64()),
            (Some(10), Some(10))
        );
        assert!(!run.progress("processing").is_empty(), "{}", run.stderr);
        for id in &ids {
            let (_, event) = d.get(&format!("/v1/webhook_events/{id}")).await;
            assert_eq!(event["status"], "ignored", "{event}");
            let replays = if ids[..10].contains(id) { 1 } else { 0 };
            assert_eq!(event["replays"], replays, "{event}");
        }
        let none = cli(d, &["webhooks", "replay", "--status", "failed", "--json"]);
        assert_eq!(none.code, Some(0), "{}", none.stderr);
        assert_eq!(none.json()["selected"], 0);
        let bad = cli(d, &["webhooks", "replay", "--status", "bogus"]);
        assert_eq!(bad.code, Some(3), "{}", bad.stderr);
        let usage = cli(d, &["webhooks", "replay"]);
        assert_eq!(usage.code, Some(2), "{}", usage.stderr);
    }
);

both!(
    a_clock_advance_waits_for_the_catch_up_and_gives_up_with_exit_75,
    |backend| async move {
        let w = World::start_with(backend, DaemonOptions::default().process()).await;
        let d = &w.daemon;
        let customer = d.customer("EUR").await;
        let (status, sub) = d
            .post(
                "/v1/subscriptions",
                json!({"customer_id": customer, "schedule": {"every": "month"},
                       "start_at": "2027-01-01T00:00:00Z",
                       "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        let run = cli(
            d,
            &[
                "clock",
                "advance",
                "2027-12-01T00:00:00Z",
                "--wait",
                "--json",
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(run.json()["status"], "ready");
        // Ready means done: all twelve periods are billed when the command returns.
        assert_eq!(d.invoices("").await.len(), 12);
        let lines = run.progress("catching up");
        assert!(!lines.is_empty(), "{}", run.stderr);
        let last = lines.last().unwrap();
        assert!(
            last["message"].as_str().unwrap().starts_with("ready"),
            "{last}"
        );
        // The first period starts at the subscription's creation, so the daemon may have billed
        // it before the command began counting: eleven or twelve were done while it waited.
        assert!(last["done"].as_u64().unwrap() >= 11, "{last}");

        // Nobody runs the work: the wait gives up with its own exit code.
        let env = d.env().to_vec();
        let World { dir, db, daemon } = w;
        daemon.stop(Duration::from_secs(20));
        let out = Command::new(binary())
            .args([
                "clock",
                "advance",
                "2028-03-01T00:00:00Z",
                "--wait",
                "--timeout",
                "2",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(75),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is a daemon with workers running"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(db);
        drop(dir);
    }
);
