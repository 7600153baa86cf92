//! The command line: `serve` runs the daemon; the other commands are the operator's tools against
//! the database the config names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{self, Config};

/// Exit codes that mean something to scripts and systemd.
pub mod exit {
    pub const OK: u8 = 0;
    /// The daemon or a command failed at run time.
    pub const FAILURE: u8 = 1;
    /// The configuration is invalid.
    pub const CONFIG: u8 = 78;
}

#[derive(Parser, Debug)]
#[command(
    name = "settled",
    version,
    about = "Runs a business's receivables: recurring invoices, auto-charge, webhooks, credits, email.",
    after_help = "Examples:\n  settled serve                       # embedded defaults: SQLite in ./data, mail into ./data/mail\n  settled --config /etc/settled/settled.toml check-config\n  SETTLED__DATABASE__URL=postgres://postgres@127.0.0.1/settled settled migrate"
)]
pub struct Cli {
    /// Config file (TOML). Default: $SETTLED_CONFIG, or /etc/settled/settled.toml under systemd,
    /// or none (embedded defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

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
    /// Apply the database migrations and exit.
    Migrate,
    /// Validate the configuration and exit non-zero on any problem.
    #[command(after_help = "Example:\n  settled --config /etc/settled/settled.toml check-config")]
    CheckConfig {
        /// Print the embedded, commented defaults instead.
        #[arg(long)]
        print_defaults: bool,
    },
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    if let Some(p) = &cli.config {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("SETTLED_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // Under systemd (INVOCATION_ID is set for every unit) the system config is the default.
    let system = PathBuf::from(config::SYSTEM_CONFIG);
    if std::env::var_os("INVOCATION_ID").is_some() && system.exists() {
        return Some(system);
    }
    None
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig {
        print_defaults: true,
    } = cli.command
    {
        print!("{}", config::DEFAULTS);
        return ExitCode::from(exit::OK);
    }
    let path = config_path(&cli);
    let mut config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("settled: {e:#}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    crate::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("settled: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig { .. } => {
                // Secrets given as files must be readable too.
                config.admin_tokens()?;
                config.stripe_api_key()?;
                config.stripe_webhook_secrets()?;
                config.smtp_password()?;
                println!(
                    "configuration is valid{}",
                    path.map(|p| format!(" ({})", p.display()))
                        .unwrap_or_default()
                );
                Ok(())
            }
            Command::Migrate => {
                let db = crate::store::Db::open(&config)?;
                db.migrate().await?;
                println!("migrations applied ({})", db.backend());
                Ok(())
            }
            Command::Serve { no_migrate } => {
                if no_migrate {
                    config.database.migrate_on_start = false;
                }
                serve(config).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "settled failed");
            eprintln!("settled: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received");
        token.cancel();
    });
    app.run_until_stopped(shutdown).await
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
