//! Start-up and shutdown: builds the `Application` (the context, the HTTP listener, the job
//! workers) so `main` and the tests start the very same thing, on port 0 when they like.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use settled_jobs::clock::{Clock, ManualClock, SystemClock};
use settled_jobs::mailer::Mailer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::billing::Billing;
use crate::config::{AdminToken, ClockMode, Config, Secret};
use crate::gateway::Gateways;
use crate::http::AppState;
use crate::runner::Runner;
use crate::store::{Db, settings};

/// Everything the daemon is made of, built once: the money workflows' context, the runner
/// around it, and the HTTP state over both. The CLI builds the same to run an operator's
/// command against exactly what the daemon would.
pub struct Context {
    pub billing: Arc<Billing>,
    pub runner: Arc<Runner>,
    pub http: Arc<AppState>,
}

impl Context {
    /// Opens the database, the clock, the gateways and the mailer.
    pub async fn build(config: Config) -> anyhow::Result<Context> {
        let tokens = admin_tokens(&config)?;
        let portal_key = portal_key(&config, true)?;
        Self::build_with(config, tokens, portal_key).await
    }

    /// As [`Context::build`] for an operator's command on this host: it is let in with a token
    /// of its own (named `cli`, made for this run and never written anywhere), so it needs none
    /// configured and never generates one.
    pub async fn build_for_cli(config: Config) -> anyhow::Result<Context> {
        let tokens = vec![AdminToken {
            name: "cli".into(),
            secret: Secret::new(generate_token()),
        }];
        // The CLI sends no email, so it signs no link: it reads the daemon's key when there is
        // one and writes none.
        let portal_key = portal_key(&config, false)?;
        Self::build_with(config, tokens, portal_key).await
    }

    async fn build_with(
        mut config: Config,
        tokens: Vec<AdminToken>,
        portal_key: Secret,
    ) -> anyhow::Result<Context> {
        config.portal.signing_secret = portal_key;
        let config = Arc::new(config);
        let db = Db::open_sized(&config, Db::pool_shares(&config).0)?;
        let metrics_token = config.metrics_token()?;
        // A signing secret file that cannot be read or decoded stops start-up, naming the file.
        config.stripe_webhook_secrets()?;
        for source in config.standard_webhooks.sources.keys() {
            config.standard_webhook_secrets(source)?;
        }
        let gateways = Gateways::from_config(&config)?;
        let mailer: Arc<dyn Mailer> = Arc::new(crate::mail::LettreMailer::from_config(&config)?);
        let (clock, manual_clock) = make_clock(&config, &db).await;
        let billing = Arc::new(Billing {
            db,
            clock,
            gateways,
            mailer,
            config,
        });
        let runner = Arc::new(Runner::new(billing.clone(), manual_clock.clone()));
        let http = Arc::new(AppState {
            billing: billing.clone(),
            scheduler: runner.scheduler.clone(),
            manual_clock,
            tokens: std::sync::RwLock::new(tokens),
            metrics_token: std::sync::RwLock::new(metrics_token),
            metrics_cache: Default::default(),
            intake: std::sync::OnceLock::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Context {
            billing,
            runner,
            http,
        })
    }
}

pub struct Application {
    context: Context,
    listener: Option<TcpListener>,
    port: u16,
    /// The ops listener (`server.ops_listen`): health, readiness and metrics only.
    ops_listener: Option<TcpListener>,
    ops_port: Option<u16>,
}

impl Application {
    /// Opens everything; applies migrations unless told not to. An unreachable database is retried
    /// in the background rather than failing start-up.
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        // Every role listens: a workers-only daemon serves health, readiness and metrics there.
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let port = bound.port();
        if config.business.portal_url.is_empty() {
            // Links in emails need a base; without one, this daemon's own address.
            config.business.portal_url = format!("http://{bound}");
        }
        let ops_listener = if config.server.ops_listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = config
                .server
                .ops_listen
                .parse()
                .with_context(|| format!("server.ops_listen {:?}", config.server.ops_listen))?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (server.ops_listen)"))?,
            )
        };
        let context = Context::build(config).await?;
        let listener = Some(listener);
        let ops_port = match &ops_listener {
            Some(l) => Some(l.local_addr()?.port()),
            None => None,
        };
        Ok(Application {
            context,
            listener,
            port,
            ops_listener,
            ops_port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ops listener's port, when `server.ops_listen` is set.
    pub fn ops_port(&self) -> Option<u16> {
        self.ops_port
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The HTTP state: the context's parts a request handler (or a test driving the daemon from
    /// inside) reaches.
    pub fn state(&self) -> Arc<AppState> {
        self.context.http.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops intake, lets in-flight jobs finish (bounded
    /// by `daemon.shutdown_timeout_seconds`) and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Context {
            billing,
            runner,
            http: state,
        } = self.context;
        let config = billing.config.clone();
        let ready = crate::notify::Notifier::from_env();
        // HTTP first: /healthz answers and /readyz says 503 while the database is still away.
        let http = self.listener.map(|listener| {
            let addr: Option<SocketAddr> = listener.local_addr().ok();
            if let Some(addr) = addr {
                tracing::info!(%addr, port = addr.port(), role = ?config.daemon.role, "listening");
            }
            let app = if config.daemon.role.runs_http() {
                crate::http::router(state.clone())
            } else {
                crate::http::ops_router(state.clone(), config.server.ops_listen.is_empty())
            };
            let token = shutdown.clone();
            let limits = crate::http::listener::Limits::of(&config.server);
            raise_open_file_limit(limits.max_connections);
            tokio::spawn(crate::http::listener::serve(listener, app, limits, token))
        });
        let ops = self.ops_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, ops_port = addr.port(), "ops listening (health, readiness, metrics)");
            }
            let app = crate::http::ops_router(state.clone(), true);
            let limits = crate::http::listener::Limits::of(&config.server);
            tokio::spawn(crate::http::listener::serve(listener, app, limits, shutdown.clone()))
        });
        prepare_database(&billing, &shutdown).await;
        resume_manual_clock(&state).await;
        state.set_ready();
        let workers = if config.daemon.role.runs_workers() && !shutdown.is_cancelled() {
            Some(crate::runner::start(runner.clone()))
        } else {
            None
        };
        ready.ready();
        let watchdog =
            ready.spawn_watchdog(billing.clone(), runner.scheduler.clone(), shutdown.clone());
        shutdown.cancelled().await;
        ready.stopping();
        tracing::info!("shutting down: intake stopped, waiting for in-flight jobs");
        if let Some(w) = workers {
            w.stop().await;
        }
        if let Some(h) = http {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        if let Some(h) = ops {
            let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        billing.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Raises the soft open-file limit towards the hard one so `server.max_connections` sockets fit
/// beside the database pool and the files the daemon writes (systemd sets the hard limit with
/// `LimitNOFILE=`).
fn raise_open_file_limit(connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = (connections as libc::rlim_t + 256).min(limit.rlim_max);
        if wanted > limit.rlim_cur {
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit; fewer connections fit");
            }
        }
    }
}

/// Waits for the database (logging each failure) and applies migrations when configured to.
async fn prepare_database(billing: &Billing, shutdown: &CancellationToken) {
    let mut delay = Duration::from_millis(250);
    loop {
        let result = if billing.config.database.migrate_on_start {
            billing.db.migrate().await
        } else if billing.db.ping().await {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the database does not answer"))
        };
        match result {
            Ok(()) => {
                tracing::info!(backend = billing.db.backend(), "database ready");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "database not ready; retrying"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A manual clock built while the database was away starts at the configured origin; once the
/// database answers, it moves on to where it stood before the restart.
async fn resume_manual_clock(state: &AppState) {
    if let Some(clock) = &state.manual_clock
        && let Some(stored) = stored_clock(&state.billing.db).await
        && stored > clock.now()
    {
        let _ = clock.advance_to(stored);
    }
}

async fn stored_clock(db: &Db) -> Option<DateTime<Utc>> {
    settings::get(db, settings::CLOCK)
        .await
        .ok()
        .flatten()
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc))
}

async fn make_clock(config: &Config, db: &Db) -> (Arc<dyn Clock>, Option<Arc<ManualClock>>) {
    match config.clock.mode {
        ClockMode::System => (Arc::new(SystemClock), None),
        ClockMode::Manual => {
            // A restarted daemon resumes where the clock stood; the config's start is only the origin.
            let start = stored_clock(db)
                .await
                .or_else(|| config.clock_start())
                .unwrap_or_else(|| SystemClock.now());
            let manual = Arc::new(ManualClock::new(start));
            (manual.clone(), Some(manual))
        }
    }
}

/// Re-reads the secrets a running daemon can take without a restart (admin tokens, webhook
/// signing secrets) from `config`, freshly loaded; on an error nothing changes.
pub fn reload_secrets(state: &AppState, config: &Config) -> anyhow::Result<()> {
    config.stripe_webhook_secrets()?;
    for source in config.standard_webhooks.sources.keys() {
        config.standard_webhook_secrets(source)?;
    }
    let tokens = admin_tokens(config)?;
    let metrics_token = config.metrics_token()?;
    state.reload_secrets(tokens, metrics_token, config);
    Ok(())
}

/// The name the token generated into the state directory is logged under.
pub const GENERATED_TOKEN_NAME: &str = "generated";

/// The configured tokens, or one generated into the state directory on first start.
fn admin_tokens(config: &Config) -> anyhow::Result<Vec<AdminToken>> {
    let tokens = config.admin_tokens()?;
    if !tokens.is_empty() {
        return Ok(tokens);
    }
    let path: PathBuf = config.state_dir().join("admin-token");
    let generated = |token: &str| {
        vec![AdminToken {
            name: GENERATED_TOKEN_NAME.into(),
            secret: Secret::new(token),
        }]
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim();
        if !token.is_empty() {
            tracing::debug!(path = %path.display(), "admin token read from the state directory");
            return Ok(generated(token));
        }
    }
    std::fs::create_dir_all(config.state_dir()).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir().display()
        )
    })?;
    let token = generate_token();
    write_private(&path, &format!("{token}\n"))?;
    tracing::warn!(path = %path.display(), "no admin token configured; generated one (read it from this file)");
    Ok(generated(&token))
}

/// The portal's link-signing key: the configured one, or one generated into the state directory
/// on first start (like the admin token), so links survive restarts. Without `generate`, a
/// missing key is a throwaway one for this process, and nothing is written.
fn portal_key(config: &Config, generate: bool) -> anyhow::Result<Secret> {
    let configured = config.portal_signing_secret()?;
    if !configured.is_empty() {
        return Ok(configured);
    }
    let path: PathBuf = config.state_dir().join("portal-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim();
        if !key.is_empty() {
            return Ok(Secret::new(key));
        }
    }
    if !generate {
        return Ok(Secret::new(generate_token()));
    }
    std::fs::create_dir_all(config.state_dir()).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir().display()
        )
    })?;
    let key = generate_token();
    write_private(&path, &format!("{key}\n"))?;
    tracing::info!(path = %path.display(), "generated the portal's link-signing key");
    Ok(Secret::new(key))
}

fn generate_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
