//! The command line: `serve` runs the daemon; the other commands are the operator's tools, run
//! against the database the config names (which must exist and be migrated: only `serve` and
//! `migrate` create or migrate one) or, with `--url`, through a running daemon's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{self, Config};

pub mod admin;
pub mod commands;
pub mod ops;
pub mod request;
pub mod table;
pub mod webhooks;

/// Exit codes that mean something to scripts and systemd.
pub mod exit {
    pub const OK: u8 = 0;
    /// The daemon or a command failed at run time.
    pub const FAILURE: u8 = 1;
    /// The request was refused as invalid or conflicting (the message says why).
    pub const REFUSED: u8 = 3;
    /// The object named does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// A `--wait` ran out of time before the work it waited for was done (EX_TEMPFAIL).
    pub const TIMEOUT: u8 = 75;
    /// The configuration is invalid.
    pub const CONFIG: u8 = 78;
}

#[derive(Parser, Debug)]
#[command(
    name = "settled",
    version,
    about = "Runs a business's receivables: recurring invoices, auto-charge, webhooks, credits, email.",
    after_help = "Examples:\n  settled serve                       # embedded defaults: SQLite in ./data, mail into ./data/mail\n  settled --config /etc/settled/settled.toml check-config --connect\n  SETTLED__DATABASE__URL=postgres://postgres@127.0.0.1/settled settled migrate\n  settled customers list --json\n  SETTLED_TOKEN=... settled --url http://127.0.0.1:8080 invoices list\n\nExit codes: 0 ok, 1 failure, 2 bad command line, 3 refused (invalid or conflicting), 4 not found,\n75 a --wait ran out of time, 78 invalid configuration."
)]
pub struct Cli {
    /// Config file (TOML). Default: $SETTLED_CONFIG, else the system config
    /// /etc/settled/settled.toml (or $SETTLED_SYSTEM_CONFIG) when it exists, else none
    /// (embedded defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Send admin commands to a running daemon's admin API at URL (e.g. http://127.0.0.1:8080)
    /// instead of opening the database: no database credentials needed, no config read. The
    /// token comes from --token-file or $SETTLED_TOKEN. $SETTLED_URL sets it for the admin
    /// commands (the others ignore it).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,

    /// With --url: a file holding the admin token (its first line).
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Print JSON (as the admin API answers) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: HTTP (webhooks, admin API, health, metrics) and the job workers.
    #[command(after_help = "Example:\n  settled serve --config /etc/settled/settled.toml")]
    Serve {
        /// Do not apply migrations at start (run `settled migrate` separately).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply the database migrations and exit (a progress bar on a terminal, a log line per
    /// migration otherwise).
    #[command(
        after_help = "Examples:\n  settled migrate\n  settled migrate --status\n  settled --config /etc/settled/settled.toml migrate"
    )]
    Migrate {
        /// List every migration and whether it is applied; change nothing.
        #[arg(long)]
        status: bool,
    },
    /// Customers and their balances.
    #[command(subcommand)]
    Customers(commands::CustomersCommand),
    /// Saved payment methods (gateway tokens; brand, last 4 and expiry only).
    #[command(subcommand)]
    PaymentMethods(commands::PaymentMethodsCommand),
    /// Subscriptions (recurring invoice profiles).
    #[command(subcommand)]
    Subscriptions(commands::SubscriptionsCommand),
    /// Invoices.
    #[command(subcommand)]
    Invoices(commands::InvoicesCommand),
    /// Credit notes: credit a customer holds, applied to its next invoices.
    #[command(subcommand)]
    CreditNotes(commands::CreditNotesCommand),
    /// Payments received (card, webhook, offline).
    #[command(subcommand)]
    Payments(commands::PaymentsCommand),
    /// The job queue: what ran, what failed, retry by id.
    #[command(subcommand)]
    Jobs(commands::JobsCommand),
    /// The email outbox: what was sent to whom, what failed, retry by id.
    #[command(subcommand)]
    Emails(commands::EmailsCommand),
    /// Stored gateway webhook events: list, show, replay.
    #[command(subcommand)]
    Webhooks(commands::WebhooksCommand),
    /// The manual clock (clock.mode = "manual").
    #[command(subcommand)]
    Clock(commands::ClockCommand),
    /// Print the OpenAPI 3.1 document of the HTTP API (admin API, webhooks, health) as JSON; the
    /// daemon serves the same at `GET /v1/openapi.json`.
    #[command(after_help = "Example:\n  settled openapi > openapi.json")]
    Openapi,
    /// Validate the configuration and exit non-zero (78) on any problem.
    #[command(
        after_help = "Examples:\n  settled --config /etc/settled/settled.toml check-config\n  settled check-config --connect     # also try the database, the Stripe key and SMTP\n  settled check-config --print-defaults > settled.toml"
    )]
    CheckConfig {
        /// Print the embedded, commented defaults instead.
        #[arg(long)]
        print_defaults: bool,
        /// Also try the database, the Stripe key (GET /v1/balance, read-only) and the mail
        /// transport (SMTP: connect, EHLO, TLS, AUTH; no message); exit 1 when one fails.
        #[arg(long)]
        connect: bool,
    },
    /// Prune what retention says is past its age: stored webhook bodies and email snapshots
    /// (the rows and their outcomes stay; a pruned webhook event can no longer be replayed).
    #[command(
        after_help = "Examples:\n  settled prune --dry-run\n  settled prune\n\nAges: retention.webhook_body_days, retention.email_body_days (0 keeps for ever)."
    )]
    Prune {
        /// Count what would be pruned; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy a SQLite database to PATH while the daemon runs (PostgreSQL: use pg_dump, as the
    /// README shows).
    #[command(after_help = "Example:\n  settled backup /var/backups/settled-$(date +%F).db")]
    Backup { path: PathBuf },
}

impl Command {
    /// The commands that are admin API requests (and so may go over --url).
    fn is_admin(&self) -> bool {
        !matches!(
            self,
            Command::Serve { .. }
                | Command::Migrate { .. }
                | Command::CheckConfig { .. }
                | Command::Prune { .. }
                | Command::Backup { .. }
        )
    }
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    if let Some(p) = &cli.config {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("SETTLED_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // The host's system config, whenever it exists: a command run by hand on the daemon's host
    // sees what the daemon sees.
    let system = config::system_config_path();
    system.exists().then_some(system)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("settled: cannot start the async runtime: {e}");
            ExitCode::from(exit::FAILURE)
        })
}

/// The admin token for --url: the first line of --token-file, else $SETTLED_TOKEN.
fn remote_token(cli: &Cli) -> anyhow::Result<config::Secret> {
    use anyhow::Context as _;
    let token = match &cli.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string(),
        None => std::env::var("SETTLED_TOKEN").unwrap_or_default(),
    };
    anyhow::ensure!(
        !token.is_empty(),
        "--url needs the admin token: --token-file PATH or SETTLED_TOKEN"
    );
    Ok(config::Secret::new(token.trim()))
}

/// An admin command against a running daemon over HTTP: no config, no database.
fn main_remote(cli: Cli, url: String) -> ExitCode {
    if !cli.command.is_admin() {
        eprintln!(
            "settled: --url sends admin commands (customers, invoices, webhooks, ...) to a running \
             daemon; run this command on the daemon's host without --url"
        );
        return ExitCode::from(2);
    }
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,settled::progress=info".into());
    crate::telemetry::init(&config::LogConfig {
        format: config::LogFormat::Auto,
        level,
    });
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        let target = request::Target::remote(&url, remote_token(&cli)?)?;
        let answer = run_admin(&target, cli.command).await?;
        Ok::<u8, anyhow::Error>(print_answer(&answer, json))
    });
    finish(result)
}

/// One admin command: its API requests through `target`.
async fn run_admin(target: &request::Target, command: Command) -> anyhow::Result<request::Answer> {
    Ok(match command {
        Command::Customers(c) => admin::customers(target, c).await?,
        Command::PaymentMethods(c) => admin::payment_methods(target, c).await?,
        Command::Subscriptions(c) => admin::subscriptions(target, c).await?,
        Command::Invoices(c) => admin::invoices(target, c).await?,
        Command::Payments(c) => admin::payments(target, c).await?,
        Command::CreditNotes(c) => admin::credit_notes(target, c).await?,
        Command::Jobs(c) => admin::jobs(target, c).await?,
        Command::Emails(c) => admin::emails(target, c).await?,
        Command::Webhooks(c) => webhooks::webhooks(target, c).await?,
        Command::Clock(c) => admin::clock(target, c).await?,
        other => anyhow::bail!("{other:?} is not an admin command"),
    })
}

fn finish(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "settled failed");
            eprintln!("settled: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        // Built from the code alone: no configuration or database is read. A reader that stops
        // early (`| head`) is not an error worth a panic.
        use std::io::Write as _;
        let written = writeln!(std::io::stdout().lock(), "{}", crate::http::openapi::json());
        return ExitCode::from(if written.is_ok() {
            exit::OK
        } else {
            exit::FAILURE
        });
    }
    if let Command::CheckConfig {
        print_defaults: true,
        ..
    } = cli.command
    {
        print!("{}", config::DEFAULTS);
        return ExitCode::from(exit::OK);
    }
    // --url given: the admin API of a running daemon. $SETTLED_URL: the same, for the admin
    // commands only, so an exported one does not stand in the way of `settled migrate`.
    let url = cli.url.clone().or_else(|| {
        std::env::var("SETTLED_URL")
            .ok()
            .filter(|_| cli.command.is_admin())
    });
    if let Some(url) = url.filter(|u| !u.is_empty()) {
        return main_remote(cli, url);
    }
    let path = config_path(&cli);
    let mut config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("settled: {e:#}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Operator commands print their answer; only warnings and errors go to the log there.
    // Progress of long commands is logged at info when there is no terminal for a bar.
    if !matches!(cli.command, Command::Serve { .. }) && std::env::var_os("RUST_LOG").is_none() {
        config.log.level = "warn,settled::progress=info".into();
    }
    crate::telemetry::init(&config.log);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig { connect, .. } => {
                // Secrets given as files must be readable (and decodable) too.
                config.admin_tokens()?;
                config.metrics_token()?;
                config.stripe_api_key()?;
                config.stripe_webhook_secrets()?;
                for source in config.standard_webhooks.sources.keys() {
                    config.standard_webhook_secrets(source)?;
                }
                config.smtp_password()?;
                crate::mail::LettreMailer::from_config(&config)?;
                crate::gateway::Gateways::from_config(&config)?;
                println!(
                    "configuration is valid{}",
                    path.map(|p| format!(" ({})", p.display()))
                        .unwrap_or_default()
                );
                if connect {
                    return ops::check_connect(&config).await;
                }
                Ok(exit::OK)
            }
            Command::Migrate { status: true } => ops::migrate_status(&config, json).await,
            Command::Migrate { status: false } => {
                let db = crate::store::Db::open(&config)?;
                let pending = db.pending_migrations().await.len();
                let mut progress = crate::progress::Progress::new(
                    "migrating",
                    Some(pending as u64),
                    std::time::Duration::ZERO,
                );
                db.migrate_reporting(|m| {
                    progress.inc(&format!(
                        "{} {} {} applied in {} ms",
                        m.history,
                        m.version,
                        m.description,
                        m.took.as_millis()
                    ))
                })
                .await?;
                progress.finish(&format!("{pending} migrations applied"));
                println!("migrations applied ({}, {pending} new)", db.backend());
                db.close().await;
                Ok(exit::OK)
            }
            Command::Serve { no_migrate } => {
                if no_migrate {
                    config.database.migrate_on_start = false;
                }
                serve(config, path.clone()).await.map(|()| exit::OK)
            }
            Command::Prune { dry_run } => ops::prune(config, dry_run, json).await,
            Command::Backup { path } => ops::backup(&config, &path).await,
            admin => {
                let target = ops::open_local(config).await?;
                let answer = run_admin(&target, admin).await?;
                if let Some(state) = target.local() {
                    state.billing.db.close().await;
                }
                Ok(print_answer(&answer, json))
            }
        }
    });
    finish(result)
}

/// Prints an admin answer (a table, or JSON with --json) and picks the exit code.
fn print_answer(answer: &request::Answer, json: bool) -> u8 {
    let ok = (200..300).contains(&answer.status);
    if ok {
        if let Some(csv) = answer.body.get("csv").and_then(|v| v.as_str()) {
            print!("{csv}");
        } else if json {
            let body = answer.body.get("statement").unwrap_or(&answer.body);
            println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
        } else {
            print!("{}", table::render_table(&answer.body));
        }
        return exit::OK;
    }
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or("the request failed");
    if json {
        eprintln!("{}", answer.body);
    } else {
        eprintln!("settled: {message}");
    }
    match answer.status {
        admin::TIMED_OUT => exit::TIMEOUT,
        404 => exit::NOT_FOUND,
        400..=499 => exit::REFUSED,
        _ => exit::FAILURE,
    }
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        token.cancel();
    });
    tokio::spawn(reload_on_hangup(app.state(), path));
    app.run_until_stopped(shutdown).await
}

/// SIGHUP: the configuration is read again (file and environment, as at start) and its admin
/// tokens and webhook signing secrets replace the running ones; work in progress goes on. A
/// configuration that does not load or validate changes nothing and is logged.
async fn reload_on_hangup(state: std::sync::Arc<crate::http::AppState>, path: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reloads need a restart");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let loaded = Config::load(path.as_deref()).and_then(|c| {
            c.validate()?;
            crate::app::reload_secrets(&state, &c)?;
            Ok(())
        });
        match loaded {
            Ok(()) => tracing::info!("reloaded: admin tokens and webhook signing secrets"),
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "reload refused; the running configuration stays"
            ),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
