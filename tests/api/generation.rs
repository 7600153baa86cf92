//! Invoice generation under pressure: time zones, cron, several daemons, a killed daemon.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;

fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

async fn plan(d: &Daemon, customer: &str, schedule: Value, start_at: &str) -> String {
    let (status, sub) = d
        .post(
            "/v1/subscriptions",
            json!({
                "customer_id": customer,
                "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}],
                "schedule": schedule,
                "start_at": start_at,
            }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    sub["id"].as_str().unwrap().to_string()
}

fn assert_gapless(invoices: &[Value]) {
    let mut numbers: Vec<String> = invoices
        .iter()
        .map(|i| i["number"].as_str().unwrap().to_string())
        .collect();
    numbers.sort();
    let expected: Vec<String> = (1..=invoices.len())
        .map(|n| format!("INV-2027-{n:06}"))
        .collect();
    assert_eq!(numbers, expected, "numbers have no gap and no repeat");
}

both!(
    a_weekly_subscription_in_new_york_keeps_local_midnight_across_both_dst_changes,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        // Monday 2027-01-04 00:00 in New York (EST, UTC-5).
        let id = plan(
            d,
            &customer,
            json!({"every": "week", "timezone": "America/New_York"}),
            "2027-01-04T05:00:00Z",
        )
        .await;
        d.advance("2027-01-04T05:00:00Z").await;
        d.advance("2027-12-31T00:00:00Z").await;
        let mut invoices = d.invoices(&format!("subscription_id={id}")).await;
        invoices.sort_by_key(|i| at(&i["period_start"]));
        assert_eq!(invoices.len(), 52, "{}", d.log_text());
        let ny = chrono_tz::America::New_York;
        for pair in invoices.windows(2) {
            let a = at(&pair[0]["period_start"]).with_timezone(&ny);
            let b = at(&pair[1]["period_start"]).with_timezone(&ny);
            assert_eq!((a.hour(), a.minute()), (0, 0), "local midnight: {a}");
            assert_eq!(
                (b.date_naive() - a.date_naive()).num_days(),
                7,
                "{a} -> {b}"
            );
            assert_eq!(
                at(&pair[0]["period_end"]),
                at(&pair[1]["period_start"]),
                "periods tile"
            );
        }
        // Across the spring change the UTC offset moves from -5 to -4, and back in November.
        let starts: HashSet<String> = invoices
            .iter()
            .map(|i| i["period_start"].as_str().unwrap().to_string())
            .collect();
        assert!(starts.contains("2027-03-08T05:00:00Z"));
        assert!(starts.contains("2027-03-15T04:00:00Z"));
        assert!(starts.contains("2027-11-01T04:00:00Z"));
        assert!(starts.contains("2027-11-08T05:00:00Z"));
        assert_gapless(&invoices);
    }
);

both!(
    a_cron_subscription_bills_at_nine_in_berlin_every_month,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("EUR").await;
        let id = plan(
            d,
            &customer,
            json!({"cron": "0 0 9 1 * *", "timezone": "Europe/Berlin"}),
            "2027-01-01T08:00:00Z",
        )
        .await;
        for month in 1..=12 {
            d.advance(&format!("2027-{month:02}-01T12:00:00Z")).await;
        }
        let mut invoices = d.invoices(&format!("subscription_id={id}")).await;
        invoices.sort_by_key(|i| at(&i["period_start"]));
        assert_eq!(invoices.len(), 12);
        let berlin = chrono_tz::Europe::Berlin;
        for (i, inv) in invoices.iter().enumerate() {
            let start = at(&inv["period_start"]).with_timezone(&berlin);
            assert_eq!(
                (start.month(), start.day(), start.hour()),
                (i as u32 + 1, 1, 9),
                "{start}"
            );
        }
        assert_eq!(invoices[0]["period_start"], "2027-01-01T08:00:00Z");
        assert_eq!(
            invoices[6]["period_start"], "2027-07-01T07:00:00Z",
            "summer time"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_database_make_one_invoice_per_period_without_gaps() {
    // Processes, so each one's log tells what it did.
    let w = World::start_with(Backend::Postgres, DaemonOptions::default().process()).await;
    let a = &w.daemon;
    let b = Daemon::start(w.dir.path(), &w.db.url, DaemonOptions::default().process()).await;
    let customer = a.customer("USD").await;
    let subs = 150;
    for i in 0..subs {
        let d = if i % 2 == 0 { a } else { &b };
        plan(
            d,
            &customer,
            json!({"every": "month"}),
            "2027-02-01T00:00:00Z",
        )
        .await;
    }
    // Both daemons see the same periods fall due at the same moment and sweep concurrently.
    let (ra, rb) = tokio::join!(
        a.post("/v1/clock/advance", json!({"to": "2027-03-01T00:00:00Z"})),
        b.post("/v1/clock/advance", json!({"to": "2027-03-01T00:00:00Z"})),
    );
    assert_eq!((ra.0, rb.0), (202, 202));
    a.wait_clock_ready(Duration::from_secs(120)).await;
    b.wait_clock_ready(Duration::from_secs(120)).await;
    let invoices = a.invoices("").await;
    assert_eq!(invoices.len(), subs * 2, "two periods each (Feb and Mar)");
    let periods: HashSet<(String, String)> = invoices
        .iter()
        .map(|i| {
            (
                i["subscription_id"].as_str().unwrap().to_string(),
                i["period_start"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(periods.len(), subs * 2, "one invoice per period");
    assert_gapless(&invoices);
    // Each invoice was written by one daemon: the counts their logs give add up.
    let written = |d: &Daemon| -> u64 {
        d.log_text()
            .lines()
            .filter(|l| l.contains("\"invoices generated\""))
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["invoices"].as_u64().unwrap()
            })
            .sum()
    };
    assert_eq!(
        written(a) + written(&b),
        subs as u64 * 2,
        "a: {}, b: {}",
        written(a),
        written(&b)
    );
}

both!(
    a_daemon_killed_while_generating_a_thousand_invoices_loses_and_repeats_none,
    |backend| async move {
        // Small batches, so the kill lands between commits with work on both sides of it.
        let options = || DaemonOptions::default().env("SETTLED__JOBS__BATCH_SIZE", "20");
        let w = World::start_with(backend, options().process()).await;
        let customer = w.daemon.customer("USD").await;
        let subs = 1000;
        let d = &w.daemon;
        let bodies: Vec<Value> = (0..subs)
            .map(|_| {
                json!({
                    "customer_id": customer,
                    "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}],
                    "schedule": {"every": "month"},
                    "start_at": "2027-02-01T00:00:00Z",
                })
            })
            .collect();
        for chunk in bodies.chunks(25) {
            let futures = chunk.iter().map(|b| d.post("/v1/subscriptions", b.clone()));
            for (status, body) in futures::future::join_all(futures).await {
                assert_eq!(status, 201, "{body}");
            }
        }
        let (status, _) = d
            .post("/v1/clock/advance", json!({"to": "2027-02-01T00:00:00Z"}))
            .await;
        assert_eq!(status, 202);
        // Kill it mid-way.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, page) = d.get("/v1/invoices?limit=50").await;
            if page["data"].as_array().map(|a| a.len()).unwrap_or(0) >= 50 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let World {
            dir,
            db,
            mut daemon,
        } = w;
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit(Duration::from_secs(10)).expect("killed");
        let generated_before = sql_count(&db.url, "SELECT COUNT(*) FROM invoices").await;
        assert!(
            generated_before < subs as i64,
            "killed before the end ({generated_before})"
        );

        let daemon = Daemon::start(dir.path(), &db.url, options()).await;
        daemon.wait_clock_ready(Duration::from_secs(180)).await;
        let invoices = daemon.invoices("").await;
        assert_eq!(invoices.len(), subs);
        let subs_billed: HashSet<&str> = invoices
            .iter()
            .map(|i| i["subscription_id"].as_str().unwrap())
            .collect();
        assert_eq!(subs_billed.len(), subs);
        assert_gapless(&invoices);
    }
);
