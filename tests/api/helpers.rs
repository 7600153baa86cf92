//! Starts the real daemon on port 0 with a fresh database (SQLite file or a new PostgreSQL
//! database) and drives it over HTTP, as an operator or a portal would: in this process (the
//! very `Application` `settled serve` runs) unless a test needs a process boundary (a kill, a
//! signal, systemd's notify socket, the log), or `SETTLED_TEST_PROCESS=1` asks for processes
//! everywhere (each daemon then logs into its test folder).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use (override with SETTLED_TEST_POSTGRES).
pub fn postgres_admin_url() -> String {
    std::env::var("SETTLED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database for one test; PostgreSQL databases are dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("settled.db").display()),
                pg_name: None,
            },
            Backend::Postgres => {
                let name = format!("settled_test_{}", random_suffix());
                let admin = postgres_admin_url();
                let mut conn = connect_admin(&admin).await;
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
                )
                .await
                .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                }
            }
        }
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for the tests and does not answer at {url}: {e}")
    })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let admin = postgres_admin_url();
            // Dropped from a plain thread: Drop may run inside or outside a runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async move {
                        let mut conn = connect_admin(&admin).await;
                        let _ = sqlx::Executor::execute(
                            &mut conn,
                            sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )),
                        )
                        .await;
                    });
                }
            })
            .join();
        }
    }
}

/// Opens the daemon's database directly, as an operator's console would (to break a row on
/// purpose, or to count what a dead daemon left).
async fn open_db(database_url: &str) -> settled::store::Db {
    let config = settled::config::Config::load_from(
        None,
        vec![(
            "SETTLED__DATABASE__URL".to_string(),
            database_url.to_string(),
        )],
    )
    .unwrap();
    settled::store::Db::open(&config).unwrap()
}

/// Runs one statement with one text argument against the database.
pub async fn sql_exec(database_url: &str, sql: &str, arg: &str) {
    let db = open_db(database_url).await;
    let mut tx = db.begin().await.unwrap();
    settled::store::on_tx!(&mut tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(arg).execute(&mut *c).await.unwrap();
    });
    tx.commit().await.unwrap();
    db.close().await;
}

/// The one number a `SELECT COUNT(*) ...` answers.
pub async fn sql_count(database_url: &str, sql: &str) -> i64 {
    let db = open_db(database_url).await;
    let mut tx = db.begin().await.unwrap();
    let n: i64 = settled::store::on_tx!(&mut tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *c).await.unwrap()
    });
    tx.commit().await.unwrap();
    db.close().await;
    n
}

pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

/// How to start a daemon.
pub struct DaemonOptions {
    pub env: Vec<(String, String)>,
    pub manual_clock: Option<String>,
    pub notify_socket: Option<PathBuf>,
    pub database_url: Option<String>,
    pub with_token: bool,
    /// Run the `settled` binary as a child process instead of in this process.
    pub process: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            env: Vec::new(),
            manual_clock: Some("2027-01-01T00:00:00Z".into()),
            notify_socket: None,
            database_url: None,
            with_token: true,
            process: false,
        }
    }
}

impl DaemonOptions {
    /// The daemon as a separate process: for kills, signals, the notify socket and its log.
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    pub fn system_clock(mut self) -> Self {
        self.manual_clock = None;
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

/// How a daemon runs: a child process, or the application on this test's runtime.
enum Run {
    Process(Child),
    InProcess {
        stop: tokio_util::sync::CancellationToken,
    },
}

/// One running daemon.
pub struct Daemon {
    run: Run,
    pub base: String,
    /// The ops listener's base URL, when `server.ops_listen` is set.
    pub ops_base: Option<String>,
    pub http: reqwest::Client,
    pub log: PathBuf,
    pub state_dir: PathBuf,
    pub database_url: String,
    options_env: Vec<(String, String)>,
}

/// The client tests talk to a daemon with. Idle connections are dropped after 5 s, before the
/// daemon's own 10 s header-read timeout closes them, so a request never goes out on a connection
/// the daemon is closing at that moment (as any well-behaved keep-alive client does).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_settled")
}

impl Daemon {
    /// Starts a daemon with its state in `dir` and waits until it serves HTTP.
    pub async fn start(dir: &Path, database_url: &str, options: DaemonOptions) -> Daemon {
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let log = dir.join(format!("daemon-{}.log", random_suffix()));
        let mut env: Vec<(String, String)> = vec![
            ("SETTLED__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
            (
                "SETTLED__DAEMON__STATE_DIR".into(),
                state_dir.display().to_string(),
            ),
            ("SETTLED__DATABASE__URL".into(), database_url.to_string()),
            ("SETTLED__LOG__FORMAT".into(), "json".into()),
            (
                "SETTLED__DAEMON__SHUTDOWN_TIMEOUT_SECONDS".into(),
                "10".into(),
            ),
        ];
        if options.with_token {
            env.push(("SETTLED__ADMIN__TOKENS".into(), format!("[\"{TOKEN}\"]")));
        }
        if let Some(start) = &options.manual_clock {
            env.push(("SETTLED__CLOCK__MODE".into(), "manual".into()));
            env.push(("SETTLED__CLOCK__START".into(), start.clone()));
        }
        env.extend(options.env.iter().cloned());
        let in_process = !options.process
            && options.notify_socket.is_none()
            && std::env::var("SETTLED_TEST_PROCESS").as_deref() != Ok("1");
        if in_process {
            return Self::start_in_process(state_dir, log, database_url, env).await;
        }
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,settled=debug")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(sock) = &options.notify_socket {
            cmd.env("NOTIFY_SOCKET", sock);
        }
        let child = cmd.spawn().expect("start settled");
        let port = wait_for_port(&log, Duration::from_secs(30));
        let base = format!("http://127.0.0.1:{port}");
        let ops_base = env
            .iter()
            .any(|(k, v)| k == "SETTLED__SERVER__OPS_LISTEN" && !v.is_empty())
            .then(|| {
                format!(
                    "http://127.0.0.1:{}",
                    wait_for_logged_port(&log, "ops_port")
                )
            });
        let daemon = Daemon {
            run: Run::Process(child),
            base,
            ops_base,
            http: client(),
            log,
            state_dir,
            database_url: database_url.to_string(),
            options_env: env,
        };
        daemon.wait_ready(Duration::from_secs(30)).await;
        daemon
    }

    /// The application itself, built from the same settings the binary would read from its
    /// environment, serving on this test's runtime.
    async fn start_in_process(
        state_dir: PathBuf,
        log: PathBuf,
        database_url: &str,
        env: Vec<(String, String)>,
    ) -> Daemon {
        let config = settled::config::Config::load_from(None, env.iter().cloned())
            .unwrap_or_else(|e| panic!("the daemon's configuration is invalid: {e:#}"));
        let app = settled::app::Application::build(config)
            .await
            .unwrap_or_else(|e| panic!("the daemon did not start: {e:#}"));
        let base = format!("http://127.0.0.1:{}", app.port());
        let ops_base = app.ops_port().map(|p| format!("http://127.0.0.1:{p}"));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        let daemon = Daemon {
            run: Run::InProcess { stop },
            base,
            ops_base,
            http: client(),
            log,
            state_dir,
            database_url: database_url.to_string(),
            options_env: env,
        };
        daemon.wait_ready(Duration::from_secs(30)).await;
        daemon
    }

    /// The environment this daemon was started with (to start a twin on the same database).
    pub fn env(&self) -> &[(String, String)] {
        &self.options_env
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("daemon not ready in time; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's log (a process daemon's stderr); an in-process daemon keeps none.
    pub fn log_text(&self) -> String {
        match &self.run {
            Run::Process(_) => std::fs::read_to_string(&self.log).unwrap_or_default(),
            Run::InProcess { .. } => {
                "(the daemon ran in the test process and kept no log; SETTLED_TEST_PROCESS=1 \
                 runs it as a process that logs)"
                    .into()
            }
        }
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process(child) => child,
            Run::InProcess { .. } => {
                panic!("this test needs the daemon as a process: start it with .process()")
            }
        }
    }

    /// One admin request with the test token; answers the status and the JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a customer and returns its id.
    pub async fn customer(&self, currency: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/customers",
                json!({"email": "ada@example.com", "name": "Ada Ltd", "currency": currency, "timezone": "UTC"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Advances the manual clock and waits until all work due by then is done.
    pub async fn advance(&self, to: &str) {
        let (status, body) = self.post("/v1/clock/advance", json!({"to": to})).await;
        assert_eq!(status, 202, "{body}");
        self.wait_clock_ready(Duration::from_secs(60)).await;
    }

    pub async fn wait_clock_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get("/v1/clock").await;
            // 503 means "busy, ask again" (another process holds the SQLite write lock).
            assert!(
                status == 200 || status == 503,
                "{status} {body}\n{}",
                self.log_text()
            );
            if body["status"] == "ready" {
                return;
            }
            if Instant::now() > deadline {
                panic!("clock not ready in time; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every invoice (following pages), oldest first.
    pub async fn invoices(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/invoices?limit=100&{query}");
            if let Some(a) = &after {
                path.push_str(&format!("&starting_after={a}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, 200, "{body}");
            let data = body["data"].as_array().cloned().unwrap_or_default();
            after = data.last().and_then(|i| i["id"].as_str()).map(String::from);
            out.extend(data);
            if body["has_more"] != true {
                return out;
            }
        }
    }

    pub fn signal(&mut self, sig: i32) {
        let pid = self.child().id() as i32;
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child().try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; panics when it does not exit cleanly within `within`.
    pub fn stop(mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(within);
        match status {
            Some(s) => s,
            None => {
                let _ = self.child().kill();
                panic!(
                    "daemon did not stop within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Process(child) => {
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Run::InProcess { stop } => stop.cancel(),
        }
    }
}

/// A port the daemon's log names in a field of a line (the ops listener's `ops_port`).
fn wait_for_logged_port(log: &Path, field: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && let Some(p) = v[field].as_u64()
            {
                return p as u16;
            }
        }
        if Instant::now() > deadline {
            panic!("the daemon never logged {field}; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_port(log: &Path, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut text);
        }
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v["message"] == "listening"
                && let Some(p) = v["port"].as_u64()
            {
                return p as u16;
            }
        }
        if Instant::now() > deadline {
            panic!("daemon did not start listening; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test's world: a temp dir, a fresh database and the daemon on it.
pub struct World {
    pub dir: TempDir,
    pub db: TestDb,
    pub daemon: Daemon,
}

impl World {
    pub async fn start(backend: Backend) -> World {
        Self::start_with(backend, DaemonOptions::default()).await
    }

    pub async fn start_with(backend: Backend, options: DaemonOptions) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TestDb::new(backend, dir.path()).await;
        let url = options
            .database_url
            .clone()
            .unwrap_or_else(|| db.url.clone());
        let daemon = Daemon::start(dir.path(), &url, options).await;
        World { dir, db, daemon }
    }
}

/// Runs the same test body on SQLite and on PostgreSQL: `both!(name, |backend| async move {...})`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}
