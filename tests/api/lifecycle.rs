//! Process lifecycle under systemd: readiness and stop notifications, draining on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::helpers::*;

fn receive_until(sock: &UnixDatagram, wanted: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == wanted);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("{wanted} never arrived; got {seen:?}");
}

both!(
    ready_and_stopping_arrive_on_the_notify_socket,
    |backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let options = DaemonOptions {
            notify_socket: Some(sock_path.clone()),
            ..Default::default()
        };
        let mut daemon = Daemon::start(dir.path(), &db.url, options).await;
        receive_until(&sock, "READY=1", Duration::from_secs(10));
        let status = tokio::task::spawn_blocking(move || {
            daemon.signal(libc::SIGTERM);
            let seen = receive_until(&sock, "STOPPING=1", Duration::from_secs(10));
            let mut daemon = daemon;
            (daemon.wait_exit(Duration::from_secs(15)), seen)
        })
        .await
        .unwrap();
        assert_eq!(
            status.0.and_then(|s| s.code()),
            Some(0),
            "exit 0 after SIGTERM"
        );
    }
);

both!(
    sigterm_with_jobs_in_flight_exits_zero_and_loses_nothing,
    |backend| async move {
        let w = World::start_with(backend, DaemonOptions::default().process()).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let subs = 60;
        for _ in 0..subs {
            let (status, body) = d
                .post(
                    "/v1/subscriptions",
                    json!({
                        "customer_id": customer,
                        "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}],
                        "schedule": {"every": "month", "interval": 1},
                        "start_at": "2027-02-01T00:00:00Z"
                    }),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        // Everything becomes due at once; stop while the generation jobs are running.
        let (status, _) = d
            .post("/v1/clock/advance", json!({"to": "2027-02-01T00:00:00Z"}))
            .await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let env = d.env().to_vec();
        let log_before = d.log_text();
        let World { dir, db, daemon } = w;
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || daemon.stop(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(status.code(), Some(0), "{log_before}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "drain is bounded"
        );

        // After a restart every period has exactly one invoice, numbered without gaps.
        let options = DaemonOptions {
            env: env
                .into_iter()
                .filter(|(k, _)| k.starts_with("SETTLED__BILLING"))
                .collect(),
            ..Default::default()
        };
        let daemon = Daemon::start(dir.path(), &db.url, options).await;
        daemon.wait_clock_ready(Duration::from_secs(60)).await;
        let invoices = daemon.invoices("").await;
        assert_eq!(invoices.len(), subs);
        let mut numbers: Vec<String> = invoices
            .iter()
            .map(|i| i["number"].as_str().unwrap().to_string())
            .collect();
        numbers.sort();
        let expected: Vec<String> = (1..=subs).map(|n| format!("INV-2027-{n:06}")).collect();
        assert_eq!(numbers, expected);
        drop(daemon);
        drop(db);
    }
);

/// Counts WATCHDOG=1 pings on a socket for `during`.
fn count_pings(sock: &UnixDatagram, during: Duration) -> usize {
    let deadline = Instant::now() + during;
    let mut buf = [0u8; 4096];
    let mut pings = 0;
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            pings += String::from_utf8_lossy(&buf[..n])
                .lines()
                .filter(|l| *l == "WATCHDOG=1")
                .count();
        }
    }
    pings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_pings_while_healthy_and_stops_when_the_job_runner_is_stuck() {
    for (stuck, label) in [(false, "healthy"), (true, "stuck")] {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let db = TestDb::new(Backend::Sqlite, dir.path()).await;
        let mut options = DaemonOptions {
            notify_socket: Some(sock_path.clone()),
            ..Default::default()
        }
        .env("WATCHDOG_USEC", "2000000");
        if stuck {
            // A sweep that never fires stands in for a wedged job runner: no sign of life.
            options = options.env("SETTLED__JOBS__SWEEP_CRON", "0 0 0 1 1 * 2099");
        }
        let daemon = Daemon::start(dir.path(), &db.url, options).await;
        let (early, late) = tokio::task::spawn_blocking(move || {
            let early = count_pings(&sock, Duration::from_secs(3));
            // The runner counts as stuck after 10 s without a sweep.
            std::thread::sleep(Duration::from_secs(9));
            let late = count_pings(&sock, Duration::from_secs(4));
            (early, late)
        })
        .await
        .unwrap();
        if stuck {
            assert_eq!(late, 0, "{label}: pings must stop ({early} early)");
        } else {
            assert!(
                early >= 2 && late >= 3,
                "{label}: early {early}, late {late}"
            );
        }
        drop(daemon);
    }
}
