//! Recurring invoices on the manual and the system clock.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;

async fn subscribe(
    d: &Daemon,
    customer: &str,
    schedule: Value,
    start_at: &str,
    extra: Value,
) -> Value {
    let mut body = json!({
        "customer_id": customer,
        "items": [
            {"description": "Seat", "quantity": "3", "unit_amount": "19.99", "tax_rate": "0.20"},
            {"description": "Support", "quantity": "0.5", "unit_amount": "33.33"}
        ],
        "schedule": schedule,
        "start_at": start_at,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let (status, sub) = d.post("/v1/subscriptions", body).await;
    assert_eq!(status, 201, "{sub}");
    sub
}

both!(
    manual_clock_advance_runs_the_due_job_and_reports_ready_only_afterwards,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let sub = subscribe(
            d,
            &customer,
            json!({"every": "month"}),
            "2027-01-15T00:00:00Z",
            json!({}),
        )
        .await;
        let (_, clock) = d.get("/v1/clock").await;
        assert_eq!(clock["now"], "2027-01-01T00:00:00Z");
        assert_eq!(clock["status"], "ready");
        assert!(
            d.invoices("").await.is_empty(),
            "nothing is due before the start"
        );

        let (status, _) = d
            .post("/v1/clock/advance", json!({"to": "2027-01-15T00:00:00Z"}))
            .await;
        assert_eq!(status, 202);
        // Whenever the clock says ready, the invoice exists.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, clock) = d.get("/v1/clock").await;
            let invoices = d
                .invoices(&format!("subscription_id={}", sub["id"].as_str().unwrap()))
                .await;
            if clock["status"] == "ready" {
                assert_eq!(invoices.len(), 1, "ready only once the due invoice exists");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        }
        let inv = &d.invoices("").await[0];
        assert_eq!(inv["period_start"], "2027-01-15T00:00:00Z");
        assert_eq!(inv["period_end"], "2027-02-15T00:00:00Z");
        assert_eq!(inv["status"], "open");
        assert_eq!(inv["number"], "INV-2027-000001");
        // 3 × 19.99 = 59.97 (tax 20% = 11.994 → 11.99); 0.5 × 33.33 = 16.665 → 16.67.
        assert_eq!(inv["subtotal"], "76.64");
        assert_eq!(inv["tax"], "11.99");
        assert_eq!(inv["total"], "88.63");
        assert_eq!(inv["amount_due"], "88.63");

        let (status, body) = d
            .post("/v1/clock/advance", json!({"to": "2027-01-01T00:00:00Z"}))
            .await;
        assert_eq!(status, 422, "{body}");
        let (_, clock) = d.get("/v1/clock").await;
        assert_eq!(
            clock["now"], "2027-01-15T00:00:00Z",
            "a refused advance changes nothing"
        );
    }
);

both!(
    a_job_scheduled_one_second_ahead_starts_within_about_a_second,
    |backend| async move {
        let w = World::start_with(backend, DaemonOptions::default().system_clock()).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        // Let the daemon settle so its pollers are idle, as they are in production between jobs.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = chrono::Utc::now() + chrono::Duration::seconds(1);
        let start_s = start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        subscribe(d, &customer, json!({"every": "day"}), &start_s, json!({})).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let created = loop {
            let invoices = d.invoices("").await;
            if let Some(i) = invoices.first() {
                break chrono::DateTime::parse_from_rfc3339(i["created_at"].as_str().unwrap())
                    .unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let lateness = created.with_timezone(&chrono::Utc) - start;
        println!("due at {start_s}, generated {lateness} later");
        // created_at has second precision in the API; the job itself runs within ~1 s of the due time.
        assert!(
            lateness <= chrono::Duration::milliseconds(2000),
            "started {lateness} after it was due"
        );
    }
);

both!(
    a_monthly_subscription_anchored_on_the_31st_bills_twelve_months_without_drift,
    |backend| async move {
        let w = World::start_with(
            backend,
            DaemonOptions {
                manual_clock: Some("2027-01-30T00:00:00Z".into()),
                ..Default::default()
            },
        )
        .await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        subscribe(
            d,
            &customer,
            json!({"every": "month", "anchor": "2027-01-31T00:00:00Z", "timezone": "UTC"}),
            "2027-01-31T00:00:00Z",
            json!({}),
        )
        .await;
        let starts = [
            "2027-01-31",
            "2027-02-28",
            "2027-03-31",
            "2027-04-30",
            "2027-05-31",
            "2027-06-30",
            "2027-07-31",
            "2027-08-31",
            "2027-09-30",
            "2027-10-31",
            "2027-11-30",
            "2027-12-31",
        ];
        for s in starts {
            d.advance(&format!("{s}T00:00:00Z")).await;
        }
        d.advance("2028-01-15T00:00:00Z").await;
        let invoices = d.invoices("").await;
        assert_eq!(invoices.len(), 12);
        for (i, (inv, s)) in invoices.iter().zip(starts).enumerate() {
            assert_eq!(inv["period_start"], format!("{s}T00:00:00Z"));
            let next = starts.get(i + 1).copied().unwrap_or("2028-01-31");
            assert_eq!(inv["period_end"], format!("{next}T00:00:00Z"));
            assert_eq!(inv["number"], format!("INV-2027-{:06}", i + 1));
        }
    }
);

both!(
    catch_up_policies_after_a_three_month_jump,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("EUR").await;
        let mut ids = Vec::new();
        for policy in ["all", "latest", "skip"] {
            let sub = subscribe(
                d,
                &customer,
                json!({"every": "month", "timezone": "UTC"}),
                "2027-01-01T00:00:00Z",
                json!({"catch_up": policy}),
            )
            .await;
            ids.push((policy, sub["id"].as_str().unwrap().to_string()));
        }
        d.advance("2027-01-01T00:00:00Z").await;
        d.advance("2027-04-15T00:00:00Z").await;
        for (policy, id) in &ids {
            // Catch-up creates them at one instant of the clock, so order by period.
            let mut starts: Vec<String> = d
                .invoices(&format!("subscription_id={id}"))
                .await
                .iter()
                .map(|i| i["period_start"].as_str().unwrap().to_string())
                .collect();
            starts.sort();
            let expected: Vec<&str> = match *policy {
                "all" => vec![
                    "2027-01-01T00:00:00Z",
                    "2027-02-01T00:00:00Z",
                    "2027-03-01T00:00:00Z",
                    "2027-04-01T00:00:00Z",
                ],
                "latest" => vec!["2027-01-01T00:00:00Z", "2027-04-01T00:00:00Z"],
                _ => vec!["2027-01-01T00:00:00Z"],
            };
            assert_eq!(starts, expected, "catch_up = {policy}");
            let (_, sub) = d.get(&format!("/v1/subscriptions/{id}")).await;
            assert_eq!(
                sub["next_period_start"], "2027-05-01T00:00:00Z",
                "catch_up = {policy}"
            );
        }
    }
);

both!(
    bad_subscriptions_are_refused_naming_the_field_and_store_nothing,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let item = json!({"description": "Plan", "quantity": "1", "unit_amount": "10.00"});
        let cases = [
            (
                json!({"every": "month", "timezone": "Mars/Olympus"}),
                json!([item]),
                "schedule.timezone",
            ),
            (
                json!({"cron": "not a cron"}),
                json!([item]),
                "schedule.cron",
            ),
            (
                json!({"every": "month", "interval": 0}),
                json!([item]),
                "schedule.interval",
            ),
            // Every second: an invoice (and a charge) a second.
            (
                json!({"cron": "* * * * * *"}),
                json!([item]),
                "schedule.cron",
            ),
            (
                json!({"cron": "0 */10 * * * *"}),
                json!([item]),
                "schedule.cron",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "x", "quantity": "1", "unit_amount": "1000000000000.01"}]),
                "items[0].unit_amount",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "Pl\u{0}an", "quantity": "1", "unit_amount": "1.00"}]),
                "items[0].description",
            ),
            (
                json!({"every": "fortnight"}),
                json!([item]),
                "schedule.every",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "x", "quantity": "-1", "unit_amount": "1.00"}]),
                "items[0].quantity",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "x", "quantity": "1", "unit_amount": "-1.00"}]),
                "items[0].unit_amount",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "x", "quantity": "1", "unit_amount": "1.001"}]),
                "items[0].unit_amount",
            ),
            (
                json!({"every": "month"}),
                json!([{"description": "x", "quantity": "1", "unit_amount": 10}]),
                "items[0].unit_amount",
            ),
        ];
        for (schedule, items, field) in cases {
            let (status, body) = d
                .post(
                    "/v1/subscriptions",
                    json!({"customer_id": customer, "items": items, "schedule": schedule}),
                )
                .await;
            assert_eq!(status, 422, "{field}: {body}");
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.contains(field), "{field} not named in {msg:?}");
        }
        let (status, body) = d
        .post("/v1/subscriptions", json!({"customer_id": customer, "items": [item], "schedule": {"every": "month"}, "start_at": "2026-06-01T00:00:00Z"}))
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("start_at")
        );
        let (_, list) = d.get("/v1/subscriptions").await;
        assert_eq!(list["data"].as_array().unwrap().len(), 0);
        // Hourly is fine, and more often when asked for in so many words.
        for schedule in [
            json!({"cron": "0 0 * * * *"}),
            json!({"cron": "0 */10 * * * *", "allow_frequent": true}),
        ] {
            let (status, body) = d
                .post(
                    "/v1/subscriptions",
                    json!({"customer_id": customer, "items": [item], "schedule": schedule}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }
);

both!(
    preview_shows_the_next_invoices_and_stores_nothing,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("JPY").await;
        let (status, sub) = d
        .post(
            "/v1/subscriptions",
            json!({
                "customer_id": customer,
                "items": [{"description": "Plan", "quantity": "1", "unit_amount": "1000", "tax_rate": "0.10"}],
                "schedule": {"cron": "0 0 9 1 * *", "timezone": "Asia/Tokyo"},
                "start_at": "2027-02-01T00:00:00Z"
            }),
        )
        .await;
        assert_eq!(status, 201, "{sub}");
        let (status, preview) = d
            .get(&format!(
                "/v1/subscriptions/{}/preview?periods=3",
                sub["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200, "{preview}");
        let data = preview["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data[0]["period_start"], "2027-02-01T00:00:00Z");
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(data[0]["period_end"], "2027-03-01T00:00:00Z");
        assert_eq!(data[1]["period_end"], "2027-04-01T00:00:00Z");
        assert_eq!(data[0]["total"], "1100");
        d.wait_clock_ready(Duration::from_secs(10)).await;
        assert!(d.invoices("").await.is_empty(), "a preview stores nothing");
    }
);

both!(
    pause_resume_and_cancel_follow_the_lifecycle,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let sub = subscribe(
            d,
            &customer,
            json!({"every": "month"}),
            "2027-01-01T00:00:00Z",
            json!({"catch_up": "skip"}),
        )
        .await;
        let id = sub["id"].as_str().unwrap();
        d.advance("2027-01-01T00:00:00Z").await;
        let (status, paused) = d
            .post(&format!("/v1/subscriptions/{id}/pause"), json!({}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(paused["status"], "paused");
        d.advance("2027-03-10T00:00:00Z").await;
        assert_eq!(d.invoices("").await.len(), 1, "no invoices while paused");
        let (status, _) = d
            .post(&format!("/v1/subscriptions/{id}/pause"), json!({}))
            .await;
        assert_eq!(status, 409);
        let (status, _) = d
            .post(&format!("/v1/subscriptions/{id}/resume"), json!({}))
            .await;
        assert_eq!(status, 200);
        d.advance("2027-03-11T00:00:00Z").await;
        assert_eq!(
            d.invoices("").await.len(),
            1,
            "skip: no back-billing on resume"
        );
        d.advance("2027-04-01T00:00:00Z").await;
        assert_eq!(d.invoices("").await.len(), 2);
        let (status, canceled) = d
            .post(&format!("/v1/subscriptions/{id}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(canceled["next_period_start"], Value::Null);
        d.advance("2027-07-01T00:00:00Z").await;
        assert_eq!(
            d.invoices("").await.len(),
            2,
            "the current period's invoice stays, no more follow"
        );
    }
);
