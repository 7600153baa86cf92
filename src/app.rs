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
use crate::config::{ClockMode, Config, Secret};
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
    pub async fn build(mut config: Config) -> anyhow::Result<Context> {
        config.portal.signing_secret = portal_key(&config)?;
        let config = Arc::new(config);
        let db = Db::open_sized(&config, Db::pool_shares(&config).0)?;
        let tokens = admin_tokens(&config)?;
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
        let context = Context::build(config).await?;
        let listener = Some(listener);
        Ok(Application {
            context,
            listener,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
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
                crate::http::ops_router(state.clone())
            };
            let token = shutdown.clone();
            let limits = crate::http::listener::Limits::of(&config.server);
            raise_open_file_limit(limits.max_connections);
            tokio::spawn(crate::http::listener::serve(listener, app, limits, token))
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
    let tokens = admin_tokens(config)?;
    state.reload_secrets(tokens, config);
    Ok(())
}

/// The configured tokens, or one generated into the state directory on first start.
fn admin_tokens(config: &Config) -> anyhow::Result<Vec<Secret>> {
    let tokens = config.admin_tokens()?;
    if !tokens.is_empty() {
        return Ok(tokens);
    }
    let path: PathBuf = config.state_dir().join("admin-token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim();
        if !token.is_empty() {
            tracing::debug!(path = %path.display(), "admin token read from the state directory");
            return Ok(vec![Secret::new(token)]);
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
    Ok(vec![Secret::new(token)])
}

/// The portal's link-signing key: the configured one, or one generated into the state directory
/// on first start (like the admin token), so links survive restarts.
fn portal_key(config: &Config) -> anyhow::Result<Secret> {
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
