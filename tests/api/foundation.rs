//! The frame: health, readiness, authentication, configuration errors, the job queue's operator view.

use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::helpers::*;

#[tokio::test]
async fn embedded_default_starts_without_config_and_generates_a_private_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let options = DaemonOptions {
        with_token: false,
        manual_clock: None,
        process: true,
        ..Default::default()
    };
    // An empty database url means the embedded default: SQLite in the state directory.
    let daemon = Daemon::start(dir.path(), "", options).await;
    let r = daemon
        .http
        .get(daemon.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    assert!(daemon.state_dir.join("settled.db").exists());

    let token_file = daemon.state_dir.join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let log = daemon.log_text();
    assert!(log.contains("admin-token"), "the log names the token file");
    assert!(!log.contains(&token), "the log never shows the token");

    let r = daemon
        .http
        .get(daemon.url("/v1/customers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(daemon.stop(Duration::from_secs(15)).code(), Some(0));
}

both!(
    admin_api_refuses_a_missing_or_wrong_token,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let missing = d.http.get(d.url("/v1/customers")).send().await.unwrap();
        assert_eq!(missing.status(), 401);
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let wrong = d
            .http
            .post(d.url("/v1/customers"))
            .bearer_auth("not-the-token")
            .json(&json!({"email": "a@example.com", "name": "A", "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let (status, list) = d.get("/v1/customers").await;
        assert_eq!(status, 200);
        assert_eq!(
            list["data"].as_array().unwrap().len(),
            0,
            "the refused request stored nothing"
        );
        // Public routes need no token.
        let health = d.http.get(d.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
);

#[test]
fn check_config_names_the_bad_key_and_exits_non_zero() {
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .env("SETTLED__BILLING__RETRY_DAYS", "[1, 0]")
        .env("SETTLED__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("billing.retry_days"), "{err}");
    assert!(err.contains("server.listen"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settled.toml");
    std::fs::write(&path, "[database]\nurll = \"sqlite:///tmp/x.db\"\n").unwrap();
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("urll"));

    let out = std::process::Command::new(binary())
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP forwarder the test can switch off and on, standing in for a PostgreSQL outage.
struct Outage {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outage {
    async fn start(target: &str) -> Outage {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = up.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async {
                            while flag.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        } => {}
                    }
                });
            }
        });
        Outage { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_postgres_is_unreachable_and_200_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let url = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let outage = Outage::start(&target).await;
    let mut via_proxy = url.clone();
    via_proxy.set_port(Some(outage.port)).unwrap();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();

    // Start while the database is away: the daemon must serve /healthz, say 503 on /readyz and retry.
    let log = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(binary())
        .arg("serve")
        .env("SETTLED__SERVER__LISTEN", "127.0.0.1:0")
        .env("SETTLED__DAEMON__STATE_DIR", dir.path().join("state"))
        .env("SETTLED__DATABASE__URL", via_proxy.as_str())
        .env("SETTLED__DATABASE__CONNECT_TIMEOUT_SECONDS", "1")
        .env("SETTLED__ADMIN__TOKENS", format!("[\"{TOKEN}\"]"))
        .env("SETTLED__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let http = client();
    let port = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "listening")
                    .then(|| v["port"].as_u64())
                    .flatten()
            });
            if let Some(p) = found {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never listened:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // The admin API and intake say so too, instead of failing on tables not made yet.
    let early = http
        .get(format!("{base}/v1/customers"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 503);
    assert_eq!(early.headers()["retry-after"], "1");
    let early: serde_json::Value = early.json().await.unwrap();
    assert_eq!(early["error"]["code"], "not_ready", "{early}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon keeps running while the database is away"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("database not ready; retrying"), "{text}");

    outage.set(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it works once ready.
    let r = http
        .post(format!("{base}/v1/customers"))
        .bearer_auth(TOKEN)
        .json(&json!({"email": "a@example.com", "name": "A", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The database goes away again while serving: readiness follows it.
    outage.set(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(guard);
    let _ = child.wait();
    drop(db);
}

/// Kills a daemon the test started by hand, even when the test fails half-way.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

both!(
    failed_work_stays_visible_and_can_be_retried,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let (status, sub) = d
            .post(
                "/v1/subscriptions",
                json!({"customer_id": customer, "schedule": {"every": "month"},
                       "start_at": "2027-02-01T00:00:00Z",
                       "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        let sub_id = sub["id"].as_str().unwrap().to_string();
        // Its stored items become unreadable (a hand edit gone wrong): its invoice cannot be
        // written, and nothing else is held up by it.
        let break_it = r#"UPDATE subscriptions SET items = REPLACE(items, '"quantity":"1"', '"quantity":"two"') WHERE id = $1"#;
        let mend_it = r#"UPDATE subscriptions SET items = REPLACE(items, '"quantity":"two"', '"quantity":"1"') WHERE id = $1"#;
        sql_exec(&d.database_url, break_it, &sub_id).await;
        let (status, body) = d
            .post("/v1/clock/advance", json!({"to": "2027-02-01T00:00:00Z"}))
            .await;
        assert_eq!(status, 202, "{body}");

        // Tried a few times, then shown as failed; the clock no longer waits for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let failed = loop {
            let (status, body) = d.get("/v1/jobs?status=failed").await;
            assert_eq!(status, 200, "{body}");
            if let Some(j) = body["data"].as_array().and_then(|a| a.first()).cloned() {
                break j;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never reported failed:\n{}",
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(failed["kind"], "generate_invoice", "{failed}");
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(
            failed["args"]["subscription_id"],
            sub_id.as_str(),
            "{failed}"
        );
        let attempts = failed["attempts"].as_i64().unwrap();
        assert!(attempts >= 3, "{failed}");
        assert!(
            failed["last_error"].as_str().unwrap_or("").contains("two"),
            "{failed}"
        );
        assert!(d.invoices("").await.is_empty());
        // Readiness still says ready (everything else runs) and warns of what keeps failing.
        let (status, ready) = d.get("/readyz").await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["status"], "ready", "{ready}");
        assert_eq!(ready["warnings"][0]["kind"], "generate_invoice", "{ready}");
        assert_eq!(ready["warnings"][0]["failed_items"], 1, "{ready}");
        let id = failed["id"].as_str().unwrap().to_string();
        let (status, shown) = d.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{shown}");
        assert_eq!(shown["id"], id.as_str());

        // Retried while still broken: tried at once, fails again, stays.
        let (status, _) = d.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
        assert_eq!(status, 200);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, job) = d.get(&format!("/v1/jobs/{id}")).await;
            if job["attempts"].as_i64().unwrap_or(0) > attempts {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Mended and retried: the invoice is written and the failure is gone.
        sql_exec(&d.database_url, mend_it, &sub_id).await;
        let (status, _) = d.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
        assert_eq!(status, 200);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = d.get(&format!("/v1/jobs/{id}")).await;
            if status == 404 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let invoices = d.invoices("").await;
        assert_eq!(invoices.len(), 1, "{invoices:?}");
        assert_eq!(invoices[0]["subscription_id"], sub_id.as_str());
        let (_, failed) = d.get("/v1/jobs?status=failed").await;
        assert_eq!(failed["data"].as_array().unwrap().len(), 0, "{failed}");
        let (_, ready) = d.get("/readyz").await;
        assert!(ready.get("warnings").is_none(), "{ready}");

        let (status, body) = d.post("/v1/jobs/nope/retry", json!({})).await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = d.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
        assert_eq!(status, 404, "nothing left to retry: {body}");
        let (status, _) = d.get("/v1/jobs?status=bogus").await;
        assert_eq!(status, 422);
    }
);

both!(
    the_cli_drives_the_same_admin_surface_against_the_configured_database,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let run = |args: &[&str]| {
            let out = std::process::Command::new(binary())
                .args(args)
                .env("SETTLED__DATABASE__URL", &d.database_url)
                .env("SETTLED__DAEMON__STATE_DIR", &d.state_dir)
                .env("SETTLED__ADMIN__TOKENS", format!("[\"{TOKEN}\"]"))
                .env("SETTLED__CLOCK__MODE", "manual")
                .env("SETTLED__CLOCK__START", "2027-01-01T00:00:00Z")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, out, err) = run(&[
            "customers",
            "create",
            "--email",
            "ap@acme.example",
            "--name",
            "Acme",
            "--currency",
            "USD",
            "--json",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let customer: serde_json::Value = serde_json::from_str(&out).unwrap();
        let id = customer["id"].as_str().unwrap();
        let (code, out, err) = run(&[
            "subscriptions",
            "add",
            "--customer",
            id,
            "--item",
            "Hosting|1|49.00|0.20",
            "--every",
            "month",
            "--start-at",
            "2027-02-01T00:00:00Z",
        ]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("active") && out.contains("2027-02-01T00:00:00Z"),
            "{out}"
        );
        let (code, _, err) = run(&[
            "subscriptions",
            "add",
            "--customer",
            id,
            "--item",
            "Hosting|1|49.001",
            "--every",
            "month",
        ]);
        assert_eq!(code, Some(3), "refused: {err}");
        assert!(err.contains("items[0].unit_amount"), "{err}");
        let (code, _, _) = run(&["invoices", "show", "in_missing"]);
        assert_eq!(code, Some(4));
        // The running daemon sees the CLI's subscription and bills it when the clock gets there.
        let (code, _, err) = run(&["clock", "advance", "2027-02-01T00:00:00Z"]);
        assert_eq!(code, Some(0), "{err}");
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while d.invoices("").await.is_empty() {
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, out, _) = run(&["invoices", "list"]);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("INV-2027-000001") && out.contains("58.80"),
            "{out}"
        );
        // A wire recorded and part of it paid back, from the CLI.
        let inv = d.invoices("").await[0]["id"].as_str().unwrap().to_string();
        let (code, out, err) = run(&[
            "payments",
            "record",
            "--invoice",
            &inv,
            "--amount",
            "58.80",
            "--method",
            "wire",
            "--reference",
            "W-1",
            "--json",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let payment: serde_json::Value = serde_json::from_str(&out).unwrap();
        let pay = payment["id"].as_str().unwrap();
        let (code, out, err) = run(&["payments", "refund", pay, "--amount", "8.80", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let refund: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(refund["amount"], "8.80", "{refund}");
        let (_, shown) = d.get(&format!("/v1/invoices/{inv}")).await;
        assert_eq!(shown["amount_due"], "8.80", "{shown}");
        let (code, _, err) = run(&["payments", "refund", pay, "--amount", "100.00"]);
        assert_eq!(code, Some(3), "more than is left is refused: {err}");
    }
);

both!(
    finished_drain_jobs_are_cleaned_up_after_a_week_and_failed_ones_kept,
    |backend| async move {
        let w = World::start(backend).await;
        let config = settled::config::Config::load_from(
            None,
            vec![(
                "SETTLED__DATABASE__URL".to_string(),
                w.daemon.database_url.clone(),
            )],
        )
        .unwrap();
        let db = settled::store::Db::open(&config).unwrap();
        use settled::store::queue;
        // Two rows as an older daemon left them: one done, one failed for good, both long ago.
        let old = settled_jobs::job::Job::SendEmail {
            email_id: "em_old".into(),
        };
        let failed = settled_jobs::job::Job::SendEmail {
            email_id: "em_failed".into(),
        };
        let mut tx = db.begin().await.unwrap();
        queue::enqueue(&mut tx, &old, 1).await.unwrap();
        queue::enqueue(&mut tx, &failed, 1).await.unwrap();
        let eight_days_ago = chrono::Utc::now().timestamp() - 8 * 24 * 3600;
        let (set_done, set_failed, count) = match backend {
            Backend::Sqlite => (
                "UPDATE Jobs SET status = 'Done', done_at = $1 WHERE idempotency_key = 'send_email:em_old'",
                "UPDATE Jobs SET status = 'Killed', done_at = $1 WHERE idempotency_key = 'send_email:em_failed'",
                "SELECT COUNT(*) FROM Jobs WHERE idempotency_key = $1",
            ),
            Backend::Postgres => (
                "UPDATE apalis.jobs SET status = 'Done', done_at = to_timestamp($1) WHERE idempotency_key = 'send_email:em_old'",
                "UPDATE apalis.jobs SET status = 'Killed', done_at = to_timestamp($1) WHERE idempotency_key = 'send_email:em_failed'",
                "SELECT COUNT(*) FROM apalis.jobs WHERE idempotency_key = $1",
            ),
        };
        settled::store::on_tx!(&mut tx, c => {
            sqlx::query(set_done).bind(eight_days_ago).execute(&mut *c).await.unwrap();
            sqlx::query(set_failed).bind(eight_days_ago).execute(&mut *c).await.unwrap();
        });
        tx.commit().await.unwrap();
        // The daemon's own hourly clean-up may get there first; either way the old one goes.
        queue::vacuum(&db, chrono::Utc::now().timestamp() - 7 * 24 * 3600)
            .await
            .unwrap();
        let mut left = Vec::new();
        for key in ["send_email:em_old", "send_email:em_failed"] {
            let mut tx = db.begin().await.unwrap();
            let n: i64 = settled::store::on_tx!(&mut tx, c => {
                sqlx::query_scalar(count).bind(key).fetch_one(&mut *c).await.unwrap()
            });
            tx.commit().await.unwrap();
            left.push(n);
        }
        assert_eq!(left, vec![0, 1], "the done row goes, the failed one stays");
        db.close().await;
    }
);
