//! Running the daemon at 3 a.m.: metrics on a private ops listener behind a token, read from the
//! database at most every few seconds; build, process, outbox, gateway and mail figures; admin
//! actions logged with the name of the token that made them, whether sent with curl or with the
//! CLI over `--url`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::StripeGateway;

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef0123";
const ALICE: &str = "alice-admin-token-0123456789abcdef01";
const BARE: &str = "bare-admin-token-0123456789abcdef0123";

/// The value of one series in a Prometheus text page (None when absent).
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn line_with<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

both!(
    metrics_live_on_the_ops_listener_behind_a_token_and_are_not_queried_per_scrape,
    |backend| async move {
        let gateway = StripeGateway::start().await;
        let options = DaemonOptions::default()
            .env("SETTLED__SERVER__OPS_LISTEN", "127.0.0.1:0")
            .env("SETTLED__SERVER__METRICS_TOKEN", METRICS_TOKEN)
            .env("SETTLED__STRIPE__API_KEY", "sk_test_ops_metrics")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url());
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let ops = d.ops_base.clone().expect("an ops listener");
        // The public listener serves no metrics any more; health and readiness stay.
        let r = d.http.get(d.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(
            d.http.get(d.url("/readyz")).send().await.unwrap().status(),
            200
        );
        // The ops listener: health, readiness, metrics (with the token), and nothing else.
        for path in ["/healthz", "/readyz"] {
            let r = d.http.get(format!("{ops}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
        let r = d
            .http
            .get(format!("{ops}/v1/customers"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = d.http.get(format!("{ops}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = d
            .http
            .get(format!("{ops}/metrics"))
            .bearer_auth("wrong-token-0123456789abcdef0123456")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // Something for the gateway and the mail transport to do: a card, an invoice emailed.
        let customer = d.customer("USD").await;
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{customer}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        let (status, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": customer, "items": [{"description": "Work", "unit_amount": "5.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{inv}");
        d.wait_clock_ready(Duration::from_secs(30)).await;

        let scrape = || async {
            let r = d
                .http
                .get(format!("{ops}/metrics"))
                .bearer_auth(METRICS_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        };
        let first = scrape().await;
        let build = line_with(&first, "settled_build_info{").expect("build info");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && build.ends_with(" 1"),
            "{build}"
        );
        assert!(series(&first, "process_resident_memory_bytes").unwrap() > 1e6);
        assert!(series(&first, "process_open_fds").unwrap() >= 3.0);
        assert!(series(&first, "process_cpu_seconds_total").unwrap() >= 0.0);
        assert!(series(&first, "process_start_time_seconds").unwrap() > 1.6e9);
        assert!(
            series(&first, "settled_outbox_pending").is_some(),
            "{first}"
        );
        let since = series(&first, "settled_seconds_since_last_sweep").unwrap();
        assert!((0.0..30.0).contains(&since), "{since}");
        assert!(
            series(
                &first,
                "settled_gateway_request_duration_seconds_count{gateway=\"stripe\",operation=\"payment_method\",outcome=\"ok\"}"
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{first}"
        );
        assert!(
            series(
                &first,
                "settled_smtp_request_duration_seconds_count{transport=\"file\",outcome=\"sent\"}"
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{first}"
        );
        // A second scrape at once shows what the first read: the database was not asked again.
        let read_at = series(&first, "settled_metrics_refreshed_timestamp_seconds").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let second = scrape().await;
        assert_eq!(
            series(&second, "settled_metrics_refreshed_timestamp_seconds").unwrap(),
            read_at
        );
        // After the refresh interval it is read again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let third = scrape().await;
        assert!(series(&third, "settled_metrics_refreshed_timestamp_seconds").unwrap() > read_at);
    }
);

/// The CLI run as an operator with no database credentials: an empty environment, only the
/// daemon's URL and a token.
fn remote_cli(
    base: &str,
    args: &[&str],
    token_env: Option<&str>,
    token_file: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SETTLED_SYSTEM_CONFIG", "/nonexistent/settled.toml")
        .arg("--url")
        .arg(base);
    if let Some(f) = token_file {
        cmd.arg("--token-file").arg(f);
    }
    if let Some(t) = token_env {
        cmd.env("SETTLED_TOKEN", t);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

both!(
    admin_actions_are_logged_with_the_token_name_and_the_cli_works_over_url,
    |backend| async move {
        let options = DaemonOptions {
            with_token: false,
            ..DaemonOptions::default()
        }
        .env(
            "SETTLED__ADMIN__TOKENS",
            format!("[{{name = \"alice\", token = \"{ALICE}\"}}, \"{BARE}\"]"),
        )
        .process();
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{ALICE}\n")).unwrap();
        let token_file = token_file.display().to_string();

        // The CLI over --url, token from a file: no config, no database.
        let (code, out, err) = remote_cli(
            &d.base,
            &[
                "customers",
                "create",
                "--email",
                "ap@acme.example",
                "--name",
                "Acme",
                "--currency",
                "EUR",
                "--json",
            ],
            None,
            Some(&token_file),
        );
        assert_eq!(code, Some(0), "{err}");
        let created: Value = serde_json::from_str(&out).unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        // ... and from the environment, with the old unnamed token.
        let (code, out, err) = remote_cli(&d.base, &["customers", "list"], Some(BARE), None);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&id), "{out}");
        // A wrong token is refused with the API's 401; none at all before any request.
        let (code, _, err) = remote_cli(
            &d.base,
            &["customers", "list"],
            Some("not-the-token-0123456789abcdef012345"),
            None,
        );
        assert_eq!(code, Some(3), "{err}");
        let (code, _, err) = remote_cli(&d.base, &["customers", "list"], None, None);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("SETTLED_TOKEN"), "{err}");
        // Only admin commands go over --url.
        let (code, _, err) = remote_cli(&d.base, &["migrate"], Some(BARE), None);
        assert_eq!(code, Some(2), "{err}");

        // A change made with the bare token, by curl.
        let r = d
            .http
            .patch(d.url(&format!("/v1/customers/{id}")))
            .bearer_auth(BARE)
            .json(&json!({"name": "Acme GmbH"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // The log names who did what, never with the token itself; reads are not actions.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let actions = loop {
            let actions: Vec<Value> = d
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == "admin action")
                .collect();
            if actions.len() >= 2 || std::time::Instant::now() > deadline {
                break actions;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(actions.len(), 2, "{}", d.log_text());
        assert_eq!(actions[0]["admin"], "alice", "{}", actions[0]);
        assert_eq!(actions[0]["status"], 201, "{}", actions[0]);
        assert_eq!(
            actions[0]["span"]["route"], "/v1/customers",
            "{}",
            actions[0]
        );
        assert_eq!(actions[1]["admin"], "token-1", "{}", actions[1]);
        let log = d.log_text();
        assert!(
            !log.contains(ALICE) && !log.contains(BARE),
            "a token is in the log"
        );
    }
);

both!(
    listing_invoices_with_limit_1000_costs_a_bounded_number_of_queries,
    |backend| async move {
        let options = DaemonOptions::default()
            .env("RUST_LOG", "info,sqlx::query=debug")
            .process();
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        for n in 0..30 {
            let (status, inv) = d
                .post(
                    "/v1/invoices",
                    json!({"customer_id": customer, "items": [
                        {"description": format!("Work {n}"), "unit_amount": "5.00"},
                        {"description": "Travel", "unit_amount": "1.00"}]}),
                )
                .await;
            assert_eq!(status, 201, "{inv}");
        }
        let (_, one) = d.get("/v1/invoices?limit=1").await;
        let paid = one["data"][0]["id"].as_str().unwrap().to_string();
        let (status, p) = d
            .post(
                &format!("/v1/invoices/{paid}/payments"),
                json!({"amount": "2.00", "method": "wire", "reference": "W-1"}),
            )
            .await;
        assert_eq!(status, 201, "{p}");
        let (status, page) = d.get("/v1/invoices?limit=1000").await;
        assert_eq!(status, 200);
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 30);
        // Every invoice still carries its own lines and payments.
        assert!(
            data.iter()
                .all(|i| i["lines"].as_array().unwrap().len() == 2)
        );
        let with_payment: Vec<&Value> = data.iter().filter(|i| i["id"] == paid.as_str()).collect();
        assert_eq!(with_payment[0]["payments"].as_array().unwrap().len(), 1);
        assert_eq!(with_payment[0]["amount_paid"], "2.00");
        // The statements the list ran (each logged by the driver inside the request's span).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queries = d
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["target"] == "sqlx::query"
                    && v["span"]["method"] == "GET"
                    && v["span"]["path"] == "/v1/invoices"
            })
            .count();
        // Two lists ran: the one-invoice page and the thirty-invoice page.
        assert!(
            queries >= 2,
            "no statement was logged; the check proves nothing"
        );
        assert!(queries <= 12, "{queries} statements for two pages");
    }
);

/// The watchdog asks the database over a connection of its own: requests that hold every
/// connection of the main pool (here waiting on a table another session has locked) do not
/// withhold its ping, so systemd does not kill a daemon that is merely busy. PostgreSQL only:
/// SQLite has no lock that holds readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_pings_while_the_main_pool_is_saturated() {
    use sqlx::Connection;
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let options = DaemonOptions {
        notify_socket: Some(sock_path.clone()),
        ..Default::default()
    }
    .env("WATCHDOG_USEC", "2000000")
    // Four in all: two for the job queue, two for requests and work.
    .env("SETTLED__DATABASE__MAX_CONNECTIONS", "4");
    let daemon = Daemon::start(dir.path(), &db.url, options).await;
    daemon.customer("USD").await;
    let count_pings = |sock: UnixDatagram, during: Duration| {
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + during;
        let mut pings = 0;
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                pings += String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .filter(|l| *l == "WATCHDOG=1")
                    .count();
            }
        }
        (sock, pings)
    };
    // Healthy first: the runner has swept, the pings come.
    let (sock, before) =
        tokio::task::spawn_blocking(move || count_pings(sock, Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(before >= 2, "{before} pings before the pool was saturated");

    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::Executor::execute(&mut locker, "BEGIN").await.unwrap();
    sqlx::Executor::execute(&mut locker, "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let req = daemon
            .http
            .get(daemon.url("/v1/customers"))
            .bearer_auth(TOKEN)
            .send();
        waiting.push(tokio::spawn(req));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Saturated: a request that needs a connection of its own does not get one in time.
    let starved = daemon
        .http
        .get(daemon.url("/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        starved.is_err() || starved.as_ref().unwrap().status() == 503,
        "the main pool is not saturated: {starved:?}"
    );
    // Within the runner's 10 s of grace since its last sweep (sweeps need the main pool too).
    let (_, pings) = tokio::task::spawn_blocking(move || count_pings(sock, Duration::from_secs(4)))
        .await
        .unwrap();
    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .unwrap();
    // Those that had a connection answer once the lock goes; those that waited for one longer
    // than the pool lets them answer 503 (the client may try again).
    let mut answered = Vec::new();
    for w in waiting {
        answered.push(w.await.unwrap().unwrap().status().as_u16());
    }
    assert!(answered.contains(&200), "{answered:?}");
    assert!(
        answered.iter().all(|s| [200, 503].contains(s)),
        "{answered:?}"
    );
    assert!(
        pings >= 3,
        "{pings} pings while the pool was saturated:\n{}",
        daemon.log_text()
    );
}
