//! The CLI on the daemon's host: it reads the system config when there is one, refuses a missing
//! or unmigrated database instead of making an empty one, shows the migrations, prunes and backs
//! up, checks the database, the Stripe key and SMTP for real, and never shows a secret it was
//! given in the environment.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::sha256::stripe_header;
use crate::support::smtp::SmtpServer;
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
}

/// The CLI in `cwd` with only `env` (and no system config unless `env` names one).
fn run(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let out = Command::new(binary())
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SETTLED_SYSTEM_CONFIG", cwd.join("no-system-config.toml"))
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

both!(
    admin_commands_refuse_a_missing_or_unmigrated_database_and_create_nothing,
    |backend| async move {
        let dir = tempfile::tempdir().unwrap();
        // No config at all: the embedded default would be ./data/settled.db.
        let r = run(dir.path(), &[], &["customers", "list"]);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(r.stderr.contains("no database at"), "{}", r.stderr);
        assert!(!dir.path().join("data").exists(), "a data folder was made");
        // A database that exists but was never migrated (a fresh PostgreSQL database, an empty
        // SQLite file): refused, and left as it was.
        let db = TestDb::new(backend, dir.path()).await;
        if backend == Backend::Sqlite {
            std::fs::write(dir.path().join("settled.db"), b"").unwrap();
        }
        let env = [("SETTLED__DATABASE__URL", db.url.clone())];
        let r = run(dir.path(), &env, &["invoices", "list"]);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(r.stderr.contains("not migrated"), "{}", r.stderr);
        assert!(r.stderr.contains("settled migrate"), "{}", r.stderr);
        // An exported SETTLED_URL (for the admin commands) does not stand in the way.
        let with_url = [
            env[0].clone(),
            ("SETTLED_URL", "http://127.0.0.1:1".to_string()),
        ];
        let r = run(dir.path(), &with_url, &["migrate", "--status", "--json"]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let status = r.json();
        let pending = status["pending"].as_u64().unwrap();
        assert!(pending > 5, "{status}");
        assert!(!dir.path().join("data").exists(), "a data folder was made");
        // migrate creates it; then the status says so and the command runs.
        let r = run(dir.path(), &env, &["migrate"]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let r = run(dir.path(), &env, &["migrate", "--status"]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert!(r.stdout.contains("up to date"), "{}", r.stdout);
        assert!(!r.stdout.contains("pending"), "{}", r.stdout);
        let r = run(dir.path(), &env, &["customers", "list", "--json"]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(r.json()["data"], json!([]));
        // No token was generated for it.
        assert!(!dir.path().join("data").exists(), "a data folder was made");
    }
);

both!(
    the_cli_on_a_host_with_a_system_config_uses_it,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        // The host's config, with a credential by bare name in credentials/ beside it, as the
        // install steps lay them out.
        let etc = w.dir.path().join("etc-settled");
        std::fs::create_dir_all(etc.join("credentials")).unwrap();
        std::fs::write(
            etc.join("credentials").join("admin-tokens"),
            format!("{TOKEN}\n"),
        )
        .unwrap();
        let system = etc.join("settled.toml");
        std::fs::write(
            &system,
            format!(
                "[daemon]\nstate_dir = {:?}\n[database]\nurl = {:?}\n[admin]\ntokens_file = \"admin-tokens\"\n",
                d.state_dir.display().to_string(),
                d.database_url
            ),
        )
        .unwrap();
        let cwd = tempfile::tempdir().unwrap();
        let out = Command::new(binary())
            .current_dir(cwd.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SETTLED_SYSTEM_CONFIG", &system)
            .args(["customers", "list", "--json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&customer), "{stdout}");
        let out = Command::new(binary())
            .current_dir(cwd.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SETTLED_SYSTEM_CONFIG", &system)
            .arg("check-config")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&system.display().to_string()), "{stdout}");
        assert!(!cwd.path().join("data").exists());
    }
);

const SECRET: &str = "whsec_retention_4c2e";

both!(
    retention_prunes_webhook_bodies_and_email_snapshots_keeping_their_rows,
    |backend| async move {
        let options = DaemonOptions::default()
            .env(
                "SETTLED__STRIPE__WEBHOOK_SECRETS",
                format!("[\"{SECRET}\"]"),
            )
            .env("SETTLED__RETENTION__WEBHOOK_BODY_DAYS", "30")
            .env("SETTLED__RETENTION__EMAIL_BODY_DAYS", "60");
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let now = chrono::Utc::now().timestamp();
        let body = json!({"id": "evt_old_1", "object": "event", "api_version": "2024-06-20",
            "created": now, "type": "customer.created", "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "data": {"object": {"id": "cus_gw_old", "object": "customer"}}})
        .to_string();
        let r = d
            .http
            .post(d.url("/webhooks/stripe"))
            .header("stripe-signature", stripe_header(SECRET, now, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let event: Value = r.json().await.unwrap();
        let event = event["id"].as_str().unwrap().to_string();
        let customer = d.customer("EUR").await;
        let (status, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": customer, "items": [{"description": "Work", "unit_amount": "5.00"}]}),
            )
            .await;
        assert_eq!(status, 201, "{inv}");
        let invoice = inv["id"].as_str().unwrap().to_string();
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(
            d.get(&format!("/v1/webhook_events/{event}")).await.1["status"],
            "ignored"
        );
        let pdf = d
            .http
            .get(d.url(&format!("/v1/invoices/{invoice}/pdf")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(pdf.status(), 200);

        // The event was handled 40 days ago; the invoice email is 90 days old by the clock.
        let forty_days_ago = (now - 40 * 86_400) * 1000;
        sql_exec(
            &d.database_url,
            &format!("UPDATE webhook_events SET received_at = {forty_days_ago}, processed_at = {forty_days_ago} WHERE id = $1"),
            &event,
        )
        .await;
        d.advance("2027-04-01T00:00:00Z").await;

        let cli = |args: &[&str]| {
            let out = Command::new(binary())
                .args(args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("SETTLED_SYSTEM_CONFIG", "/nonexistent/settled.toml")
                .envs(d.env().iter().cloned())
                .output()
                .unwrap();
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            }
        };
        let dry = cli(&["prune", "--dry-run", "--json"]);
        assert_eq!(dry.code, Some(0), "{}", dry.stderr);
        let dry = dry.json();
        assert_eq!(dry["webhook_bodies"], 1, "{dry}");
        assert_eq!(dry["email_snapshots"], 1, "{dry}");
        // A dry run changed nothing.
        let (_, shown) = d.get(&format!("/v1/webhook_events/{event}")).await;
        assert!(shown["payload"].is_object(), "{shown}");

        let done = cli(&["prune"]);
        assert_eq!(done.code, Some(0), "{}", done.stderr);
        assert!(
            done.stdout.contains("pruned 1 webhook bodies"),
            "{}",
            done.stdout
        );
        assert!(
            done.stdout.contains("can no longer be replayed"),
            "{}",
            done.stdout
        );
        // The rows and their outcomes stay; the bodies are gone.
        let (status, shown) = d.get(&format!("/v1/webhook_events/{event}")).await;
        assert_eq!(status, 200);
        assert_eq!(shown["status"], "ignored", "{shown}");
        assert_eq!(shown["type"], "customer.created", "{shown}");
        assert!(shown.get("payload").is_none(), "{shown}");
        let (status, refused) = d
            .post(&format!("/v1/webhook_events/{event}/replay"), json!({}))
            .await;
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["error"]["code"], "event_pruned", "{refused}");
        let (_, emails) = d.get(&format!("/v1/emails?invoice_id={invoice}")).await;
        assert_eq!(emails["data"][0]["status"], "sent", "{emails}");
        let pdf = d
            .http
            .get(d.url(&format!("/v1/invoices/{invoice}/pdf")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(pdf.status(), 404);
        let again = cli(&["prune", "--json"]).json();
        assert_eq!(
            (
                again["webhook_bodies"].as_i64(),
                again["email_snapshots"].as_i64()
            ),
            (Some(0), Some(0))
        );

        // The daemon prunes on its own too: a second event as old, and a daemon starting on
        // the database prunes it at its first sweep.
        let body2 = json!({"id": "evt_old_2", "object": "event", "api_version": "2024-06-20",
            "created": now, "type": "customer.created", "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "data": {"object": {"id": "cus_gw_old", "object": "customer"}}})
        .to_string();
        let r = d
            .http
            .post(d.url("/webhooks/stripe"))
            .header("stripe-signature", stripe_header(SECRET, now, &body2))
            .body(body2)
            .send()
            .await
            .unwrap();
        let second: Value = r.json().await.unwrap();
        let second = second["id"].as_str().unwrap().to_string();
        d.wait_clock_ready(Duration::from_secs(30)).await;
        sql_exec(
            &d.database_url,
            &format!("UPDATE webhook_events SET received_at = {forty_days_ago}, processed_at = {forty_days_ago} WHERE id = $1"),
            &second,
        )
        .await;
        let twin_dir = tempfile::tempdir().unwrap();
        let twin = Daemon::start(
            twin_dir.path(),
            &d.database_url,
            DaemonOptions::default()
                .env(
                    "SETTLED__STRIPE__WEBHOOK_SECRETS",
                    format!("[\"{SECRET}\"]"),
                )
                .env("SETTLED__RETENTION__WEBHOOK_BODY_DAYS", "30"),
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, shown) = twin.get(&format!("/v1/webhook_events/{second}")).await;
            if shown.get("payload").is_none() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never pruned: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
);

both!(
    backup_copies_sqlite_online_and_points_postgres_at_pg_dump,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let target = w.dir.path().join("backup.db");
        let out = Command::new(binary())
            .args(["backup", &target.display().to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SETTLED_SYSTEM_CONFIG", "/nonexistent/settled.toml")
            .envs(d.env().iter().cloned())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match backend {
            Backend::Sqlite => {
                assert_eq!(out.status.code(), Some(0), "{stderr}");
                let copy = format!("sqlite://{}", target.display());
                let n = sql_count(
                    &copy,
                    &format!("SELECT COUNT(*) FROM customers WHERE id = '{customer}'"),
                )
                .await;
                assert_eq!(n, 1);
                // An existing file is never overwritten.
                let again = Command::new(binary())
                    .args(["backup", &target.display().to_string()])
                    .env_clear()
                    .env("SETTLED_SYSTEM_CONFIG", "/nonexistent/settled.toml")
                    .envs(d.env().iter().cloned())
                    .output()
                    .unwrap();
                assert_eq!(again.status.code(), Some(1));
            }
            Backend::Postgres => {
                assert_eq!(out.status.code(), Some(3), "{stderr}");
                assert!(stderr.contains("pg_dump --format=custom"), "{stderr}");
                assert!(!target.exists());
            }
        }
    }
);

both!(
    check_config_connect_tries_the_database_the_stripe_key_and_smtp,
    |backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let gateway = StripeGateway::start().await;
        let smtp = SmtpServer::start().await;
        let base = vec![
            ("SETTLED__DATABASE__URL", db.url.clone()),
            (
                "SETTLED__DAEMON__STATE_DIR",
                dir.path().join("state").display().to_string(),
            ),
            ("SETTLED__STRIPE__API_BASE", gateway.base_url()),
            ("SETTLED__EMAIL__SMTP_URL", smtp.url()),
        ];
        let with = |extra: &[(&'static str, String)]| {
            let mut env = base.clone();
            env.extend(extra.iter().cloned());
            run(dir.path(), &env, &["check-config", "--connect"])
        };
        let ok = with(&[("SETTLED__STRIPE__API_KEY", "sk_test_check_0123".into())]);
        assert_eq!(ok.code, Some(0), "{}\n{}", ok.stdout, ok.stderr);
        for what in ["database", "stripe", "mail"] {
            assert!(
                ok.stdout
                    .lines()
                    .any(|l| l.starts_with(what) && l.contains(" ok ")),
                "{what}: {}",
                ok.stdout
            );
        }
        assert!(ok.stdout.contains("/v1/balance"), "{}", ok.stdout);
        // A key the gateway refuses: named as refused, never printed.
        let bad = with(&[("SETTLED__STRIPE__API_KEY", "pk_wrong_kind_of_key_77".into())]);
        assert_eq!(bad.code, Some(1), "{}", bad.stdout);
        assert!(bad.stdout.contains("stripe    FAILED"), "{}", bad.stdout);
        assert!(
            !bad.stdout.contains("wrong_kind_of_key") && !bad.stderr.contains("wrong_kind"),
            "{}",
            bad.stdout
        );
        // No SMTP server where the config says.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let down = with(&[(
            "SETTLED__EMAIL__SMTP_URL",
            format!("smtp://127.0.0.1:{port}"),
        )]);
        assert_eq!(down.code, Some(1), "{}", down.stdout);
        assert!(down.stdout.contains("mail      FAILED"), "{}", down.stdout);
        assert!(down.stdout.contains("stripe    skipped"), "{}", down.stdout);
    }
);

/// A password given in the environment (as systemd's Environment= or a shell would) never shows
/// up in an error or in the log, however wrong the configuration around it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_environment_never_appears_in_an_error_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("SETTLED__EMAIL__SMTP_PASSWORD", "123456"),
        ("SETTLED__STRIPE__API_KEY", "778899001122"),
    ];
    let needles = ["123456", "778899001122", "pgpw5512", "smtppw7731"];
    let mut env: Vec<(&str, String)> = secrets.iter().map(|(k, v)| (*k, v.to_string())).collect();
    // A numeric password is valid: the configuration loads, and the value is a string.
    let ok = run(dir.path(), &env, &["check-config"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    // A value of the wrong type beside them.
    let mut typo = env.clone();
    typo.push(("SETTLED__JOBS__CONCURRENCY", "many".into()));
    let bad = run(dir.path(), &typo, &["check-config"]);
    assert_eq!(bad.code, Some(78), "{}", bad.stderr);
    assert!(bad.stderr.contains("jobs.concurrency"), "{}", bad.stderr);
    for needle in needles {
        assert!(!bad.stderr.contains(needle), "{needle}: {}", bad.stderr);
    }
    // Wrong around it: a bad URL carrying a password, a bad SMTP URL, a bad number.
    env.push((
        "SETTLED__DATABASE__URL",
        "mysql://settled:pgpw5512@db.example/x".into(),
    ));
    env.push((
        "SETTLED__EMAIL__SMTP_URL",
        "smtp://billing:smtppw7731@mail.example.com:25".into(),
    ));
    let bad = run(dir.path(), &env, &["check-config"]);
    assert_eq!(bad.code, Some(78), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("database.url") && bad.stderr.contains("email.smtp_url"),
        "{}",
        bad.stderr
    );
    for needle in needles {
        assert!(
            !bad.stderr.contains(needle) && !bad.stdout.contains(needle),
            "{needle}: {}",
            bad.stderr
        );
    }
    // The daemon with an unreachable PostgreSQL whose URL holds a password, at debug: it retries
    // and logs, and the log holds none of them.
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(binary())
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("SETTLED_SYSTEM_CONFIG", dir.path().join("none.toml"))
        .env("RUST_LOG", "debug")
        .env("SETTLED__LOG__FORMAT", "json")
        .env("SETTLED__SERVER__LISTEN", "127.0.0.1:0")
        .env("SETTLED__DAEMON__STATE_DIR", dir.path().join("state"))
        .env(
            "SETTLED__DATABASE__URL",
            "postgres://settled:pgpw5512@127.0.0.1:1/settled",
        )
        .env("SETTLED__DATABASE__CONNECT_TIMEOUT_SECONDS", "1")
        .env(
            "SETTLED__EMAIL__SMTP_URL",
            "smtp://billing:smtppw7731@127.0.0.1:1",
        )
        .envs(secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("database not ready").count() >= 2 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.matches("database not ready").count() >= 2, "{text}");
    for needle in needles {
        assert!(!text.contains(needle), "{needle} is in the log:\n{text}");
    }
}
