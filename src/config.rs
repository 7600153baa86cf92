//! Configuration: embedded defaults, then a TOML file, then `SETTLED__SECTION__KEY` env, then
//! validation, so an operator learns about a typo before the daemon starts rather than at 3 a.m.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

/// The commented defaults shipped inside the binary; `settled check-config --print-defaults` shows them.
pub const DEFAULTS: &str = include_str!("default_config.toml");

/// Where `serve` looks for a config file when started by systemd and none is named.
pub const SYSTEM_CONFIG: &str = "/etc/settled/settled.toml";

/// A secret value: compared and used, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub admin: AdminConfig,
    pub clock: ClockConfig,
    pub stripe: StripeConfig,
    pub standard_webhooks: StandardWebhooksConfig,
    pub billing: BillingConfig,
    pub email: EmailConfig,
    pub business: BusinessConfig,
    pub jobs: JobsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    All,
    Http,
    Worker,
}

impl Role {
    pub fn runs_http(self) -> bool {
        matches!(self, Role::All | Role::Http)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub state_dir: String,
    pub role: Role,
    pub shutdown_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub migrate_on_start: bool,
    pub max_connections: u32,
    pub connect_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub tokens: Vec<Secret>,
    pub tokens_file: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    System,
    Manual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    pub mode: ClockMode,
    pub start: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    pub api_key: Secret,
    pub api_key_file: String,
    pub api_base: String,
    pub request_timeout_seconds: u64,
    pub webhook_secrets: Vec<Secret>,
    pub webhook_secrets_file: String,
    pub webhook_tolerance_seconds: i64,
    pub webhook_max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    pub tolerance_seconds: i64,
    pub max_body_bytes: usize,
    #[serde(default)]
    pub sources: BTreeMap<String, StandardWebhookSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhookSource {
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub secrets_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    pub retry_days: Vec<u32>,
    pub net_days: u32,
    pub draft_minutes: u32,
    pub number_format: String,
    pub late_fee_amount: String,
    pub late_fee_percent: String,
    pub late_fee_days: u32,
    pub refunds: String,
}

impl BillingConfig {
    /// The configured late fee for `currency`, or None when late fees are off. The fixed amount
    /// is rounded to the currency's minor unit, half away from zero (¥ has none).
    pub fn late_fee(
        &self,
        currency: settled_jobs::money::Currency,
    ) -> Option<settled_jobs::dunning::LateFee> {
        use rust_decimal::Decimal;
        use std::str::FromStr;
        if self.late_fee_amount.is_empty() && self.late_fee_percent.is_empty() {
            return None;
        }
        let fixed = Decimal::from_str(&self.late_fee_amount).unwrap_or_default();
        let scaled = fixed * Decimal::from(10i64.pow(currency.exponent()));
        let fixed_minor = scaled
            .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
            .try_into()
            .unwrap_or(0i64);
        let rate =
            Decimal::from_str(&self.late_fee_percent).unwrap_or_default() / Decimal::from(100);
        Some(settled_jobs::dunning::LateFee { fixed_minor, rate })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_url: String,
    pub smtp_username: String,
    pub smtp_password: Secret,
    pub smtp_password_file: String,
    pub from: String,
    pub reminder_days: u32,
    pub templates_dir: String,
    pub smtp_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessConfig {
    pub name: String,
    pub address: String,
    pub support_email: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    pub max_attempts: u32,
    pub sweep_cron: String,
    pub heartbeat_seconds: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// Which database the url names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// Layers defaults, the optional file and the environment, then validates.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Env values are read as TOML literals so lists and numbers work
        // (SETTLED__BILLING__RETRY_DAYS=[1,2]); anything else is a string.
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SETTLED__"))
            .collect();
        figment = if vars.is_empty() {
            figment
        } else {
            let mut overrides = String::new();
            for (key, value) in &vars {
                let path: Vec<String> = key["SETTLED__".len()..]
                    .split("__")
                    .map(|p| p.to_ascii_lowercase())
                    .collect();
                let parsed = toml_value_literal(value);
                overrides.push_str(&format!("{} = {}\n", dotted(&path), parsed));
            }
            figment.merge(Toml::string(&overrides))
        };
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value whose type alone does not say it is usable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.listen_addr().is_err() {
            problems.push(format!(
                "server.listen: {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if let Err(e) = self.database_kind() {
            problems.push(format!("database.url: {e}"));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be at least 1".into());
        }
        if self.clock.mode == ClockMode::Manual
            && !self.clock.start.is_empty()
            && DateTime::parse_from_rfc3339(&self.clock.start).is_err()
        {
            problems.push(format!(
                "clock.start: {:?} is not an RFC 3339 instant like 2027-01-01T00:00:00Z",
                self.clock.start
            ));
        }
        if url::Url::parse(&self.stripe.api_base).is_err() {
            problems.push(format!(
                "stripe.api_base: {:?} is not a URL",
                self.stripe.api_base
            ));
        }
        if self.stripe.webhook_tolerance_seconds <= 0 {
            problems.push("stripe.webhook_tolerance_seconds: must be positive".into());
        }
        if self.standard_webhooks.tolerance_seconds <= 0 {
            problems.push("standard_webhooks.tolerance_seconds: must be positive".into());
        }
        if self.stripe.webhook_max_body_bytes == 0 {
            problems.push("stripe.webhook_max_body_bytes: must be at least 1".into());
        }
        if self.standard_webhooks.max_body_bytes == 0 {
            problems.push("standard_webhooks.max_body_bytes: must be at least 1".into());
        }
        if self.stripe.request_timeout_seconds == 0 {
            problems.push("stripe.request_timeout_seconds: must be positive".into());
        }
        for (key, value) in [
            ("billing.late_fee_amount", &self.billing.late_fee_amount),
            ("billing.late_fee_percent", &self.billing.late_fee_percent),
        ] {
            let ok = value.is_empty()
                || <rust_decimal::Decimal as std::str::FromStr>::from_str(value)
                    .is_ok_and(|d| d.is_sign_positive() && !d.is_zero());
            if !ok {
                problems.push(format!(
                    "{key}: {value:?} must be empty or a positive decimal string such as \"5.00\""
                ));
            }
        }
        if !["reopen", "credit"].contains(&self.billing.refunds.as_str()) {
            problems.push(format!(
                "billing.refunds: {:?} must be \"reopen\" or \"credit\"",
                self.billing.refunds
            ));
        }
        if self.billing.retry_days.contains(&0) {
            problems.push("billing.retry_days: every delay must be at least 1 day".into());
        }
        if !self.billing.number_format.contains("{seq") {
            problems.push(format!(
                "billing.number_format: {:?} must contain {{seq}} or {{seq:0N}}",
                self.billing.number_format
            ));
        }
        if !self.email.smtp_url.is_empty() && url::Url::parse(&self.email.smtp_url).is_err() {
            problems.push(format!(
                "email.smtp_url: {:?} is not a URL like smtp://127.0.0.1:25",
                self.email.smtp_url
            ));
        }
        problems.extend(self.email_problems());
        if self.jobs.concurrency == 0 {
            problems.push("jobs.concurrency: must be at least 1".into());
        }
        if self.jobs.poll_interval_ms == 0 || self.jobs.poll_interval_ms > 60_000 {
            problems.push("jobs.poll_interval_ms: must be between 1 and 60000".into());
        }
        if self.jobs.heartbeat_seconds == 0 || self.jobs.heartbeat_seconds > 300 {
            problems.push("jobs.heartbeat_seconds: must be between 1 and 300".into());
        }
        if self.jobs.max_attempts == 0 {
            problems.push("jobs.max_attempts: must be at least 1".into());
        }
        if let Err(e) = self.jobs.sweep_cron.parse::<cron::Schedule>() {
            problems.push(format!(
                "jobs.sweep_cron: {:?} is not a cron expression with seconds: {e}",
                self.jobs.sweep_cron
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        for (name, source) in &self.standard_webhooks.sources {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "standard_webhooks.sources.{name}: a source name may hold only letters, digits, - and _"
                ));
            }
            if !source.secrets_file.is_empty() {
                let resolved = resolve_credential_path(&source.secrets_file);
                if let Err(e) = std::fs::metadata(&resolved) {
                    problems.push(format!(
                        "standard_webhooks.sources.{name}.secrets_file: cannot read {}: {e}",
                        resolved.display()
                    ));
                }
            }
            if name == "stripe" {
                problems.push(
                    "standard_webhooks.sources.stripe: the name is taken by /webhooks/stripe"
                        .into(),
                );
            }
            for s in &source.secrets {
                if !s.expose().starts_with("whsec_")
                    || crate::events::signature::standard_key(s.expose()).is_none()
                {
                    problems.push(format!(
                        "standard_webhooks.sources.{name}.secrets: every secret must be whsec_ followed by base64"
                    ));
                }
            }
        }
        for (key, path) in [
            ("admin.tokens_file", &self.admin.tokens_file),
            ("stripe.api_key_file", &self.stripe.api_key_file),
            (
                "stripe.webhook_secrets_file",
                &self.stripe.webhook_secrets_file,
            ),
            ("email.smtp_password_file", &self.email.smtp_password_file),
        ] {
            if !path.is_empty() {
                let resolved = resolve_credential_path(path);
                if let Err(e) = std::fs::metadata(&resolved) {
                    problems.push(format!("{key}: cannot read {}: {e}", resolved.display()));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
        }
    }

    fn email_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Ok(url) = url::Url::parse(&self.email.smtp_url) {
            let tls = url
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            // smtp:// is not a "special" scheme to the url crate, so an IP comes back as text.
            let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            match (url.scheme(), tls.as_deref()) {
                ("smtps", None) | ("smtp", Some("required" | "opportunistic" | "none")) => {}
                ("smtp", None) if loopback => {}
                ("smtp", None) => problems.push(format!(
                    "email.smtp_url: {:?} would send mail (and any password) unencrypted to a remote \
                     host; use smtps:// (implicit TLS), ?tls=required (STARTTLS), or ?tls=none to \
                     accept plain SMTP",
                    self.email.smtp_url
                )),
                _ => problems.push(format!(
                    "email.smtp_url: {:?} must be smtp:// or smtps://, with tls=required, \
                     opportunistic or none",
                    self.email.smtp_url
                )),
            }
        }
        if self.email.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!(
                "email.from: {:?} is not an address like \"Billing <billing@example.com>\"",
                self.email.from
            ));
        }
        if !self.business.support_email.is_empty()
            && self
                .business
                .support_email
                .parse::<lettre::Address>()
                .is_err()
        {
            problems.push(format!(
                "business.support_email: {:?} is not an email address",
                self.business.support_email
            ));
        }
        if self.email.reminder_days > 365 {
            problems.push("email.reminder_days: at most 365 (0 turns reminders off)".into());
        }
        if self.email.smtp_timeout_seconds == 0 || self.email.smtp_timeout_seconds > 600 {
            problems.push("email.smtp_timeout_seconds: must be between 1 and 600".into());
        }
        if !self.email.templates_dir.is_empty() && !Path::new(&self.email.templates_dir).is_dir() {
            problems.push(format!(
                "email.templates_dir: {:?} is not a folder",
                self.email.templates_dir
            ));
        }
        problems
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server
            .listen
            .parse()
            .with_context(|| format!("server.listen {:?}", self.server.listen))
    }

    /// The state directory: config, then `$STATE_DIRECTORY` (systemd), then ./data.
    pub fn state_dir(&self) -> PathBuf {
        if !self.daemon.state_dir.is_empty() {
            return PathBuf::from(&self.daemon.state_dir);
        }
        if let Ok(dir) = std::env::var("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories; the first is ours.
            if let Some(first) = dir.split(':').next().filter(|d| !d.is_empty()) {
                return PathBuf::from(first);
            }
        }
        PathBuf::from("data")
    }

    pub fn database_kind(&self) -> anyhow::Result<DatabaseKind> {
        let url = self.database.url.trim();
        if url.is_empty() {
            return Ok(DatabaseKind::Sqlite(self.state_dir().join("settled.db")));
        }
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() {
                bail!("a sqlite url needs a path, like sqlite:///var/lib/settled/settled.db");
            }
            return Ok(DatabaseKind::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if rest.is_empty() {
                bail!("a sqlite url needs a path, like sqlite:///var/lib/settled/settled.db");
            }
            return Ok(DatabaseKind::Sqlite(PathBuf::from(rest)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url::Url::parse(url).context("not a valid postgres url")?;
            return Ok(DatabaseKind::Postgres(url.to_string()));
        }
        bail!("{url:?} must start with sqlite:// or postgres://")
    }

    /// The manual clock's start, if the config names one.
    pub fn clock_start(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.clock.start)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    pub fn admin_tokens(&self) -> anyhow::Result<Vec<Secret>> {
        let mut tokens: Vec<Secret> = self
            .admin
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        tokens.extend(read_secret_lines(&self.admin.tokens_file)?);
        Ok(tokens)
    }

    pub fn stripe_api_key(&self) -> anyhow::Result<Secret> {
        if !self.stripe.api_key_file.is_empty() {
            let mut lines = read_secret_lines(&self.stripe.api_key_file)?;
            if let Some(first) = lines.drain(..).next() {
                return Ok(first);
            }
        }
        Ok(self.stripe.api_key.clone())
    }

    pub fn stripe_webhook_secrets(&self) -> anyhow::Result<Vec<Secret>> {
        let mut secrets: Vec<Secret> = self
            .stripe
            .webhook_secrets
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        secrets.extend(read_secret_lines(&self.stripe.webhook_secrets_file)?);
        Ok(secrets)
    }

    /// A Standard Webhooks source's signing secrets: inline ones plus those in its `secrets_file`.
    pub fn standard_webhook_secrets(&self, source: &str) -> anyhow::Result<Vec<Secret>> {
        let Some(src) = self.standard_webhooks.sources.get(source) else {
            return Ok(Vec::new());
        };
        let mut secrets: Vec<Secret> = src
            .secrets
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        secrets.extend(read_secret_lines(&src.secrets_file)?);
        Ok(secrets)
    }

    pub fn smtp_password(&self) -> anyhow::Result<Secret> {
        if !self.email.smtp_password_file.is_empty() {
            let mut lines = read_secret_lines(&self.email.smtp_password_file)?;
            if let Some(first) = lines.drain(..).next() {
                return Ok(first);
            }
        }
        Ok(self.email.smtp_password.clone())
    }
}

/// A bare credential name is looked up in `$CREDENTIALS_DIRECTORY` (systemd's LoadCredential=).
pub fn resolve_credential_path(path: &str) -> PathBuf {
    let p = Path::new(path);
    if !p.is_absolute()
        && !path.contains('/')
        && let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY")
    {
        let candidate = Path::new(&dir).join(p);
        if candidate.exists() {
            return candidate;
        }
    }
    p.to_path_buf()
}

fn read_secret_lines(path: &str) -> anyhow::Result<Vec<Secret>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let resolved = resolve_credential_path(path);
    let text = std::fs::read_to_string(&resolved)
        .with_context(|| format!("cannot read secret file {}", resolved.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect())
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// An env value is a TOML literal when it parses as one (numbers, booleans, lists), else a string.
fn toml_value_literal(value: &str) -> String {
    let probe = format!("v = {value}");
    if value.trim().is_empty() {
        return "\"\"".into();
    }
    // Dates stay strings (config keys hold instants as RFC 3339 text, not TOML datetimes).
    match probe
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("v").cloned())
    {
        Some(toml::Value::Datetime(_)) | None => toml::Value::String(value.to_string()).to_string(),
        Some(_) => value.to_string(),
    }
}

fn describe_figment_error(err: figment::Error) -> anyhow::Error {
    let whole = err.to_string();
    let mut lines = Vec::new();
    for e in err {
        let key = if e.path.is_empty() {
            String::from("(top level)")
        } else {
            e.path.join(".")
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        lines.push(format!("{key}: {}{source}", e.kind));
    }
    if lines.is_empty() {
        lines.push(whole);
    }
    anyhow::anyhow!("invalid configuration:\n  - {}", lines.join("\n  - "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let config = Config::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(config.billing.retry_days, vec![1, 3, 5, 7]);
        assert_eq!(config.clock.mode, ClockMode::System);
    }

    #[test]
    fn env_overrides_the_defaults_with_typed_values() {
        let config = Config::load_from(
            None,
            env(&[
                ("SETTLED__SERVER__LISTEN", "127.0.0.1:0"),
                ("SETTLED__BILLING__RETRY_DAYS", "[2, 4]"),
                ("SETTLED__CLOCK__MODE", "manual"),
                ("SETTLED__CLOCK__START", "2027-01-01T00:00:00Z"),
                ("SETTLED__ADMIN__TOKENS", "[\"abc\"]"),
            ]),
        )
        .expect("loads");
        assert_eq!(config.server.listen, "127.0.0.1:0");
        assert_eq!(config.billing.retry_days, vec![2, 4]);
        assert_eq!(config.clock.mode, ClockMode::Manual);
        assert_eq!(config.clock.start, "2027-01-01T00:00:00Z");
        assert_eq!(config.admin_tokens().unwrap()[0].expose(), "abc");
    }

    #[test]
    fn a_typo_in_a_key_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlistn = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(format!("{err}").contains("listn"), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_problem() {
        let err =
            Config::load_from(None, env(&[("SETTLED__DATABASE__URL", "mysql://x")])).unwrap_err();
        let text = format!("{err}");
        assert!(text.contains("database.url"), "{text}");
        let err = Config::load_from(None, env(&[("SETTLED__JOBS__CONCURRENCY", "\"many\"")]))
            .unwrap_err();
        assert!(format!("{err}").contains("jobs.concurrency"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::load_from(
            None,
            env(&[("SETTLED__STRIPE__API_KEY", "sk_test_supersecret")]),
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("supersecret"));
        assert_eq!(
            config.stripe_api_key().unwrap().expose(),
            "sk_test_supersecret"
        );
    }

    #[test]
    fn standard_webhook_secrets_come_inline_and_from_a_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bank-secrets");
        std::fs::write(&file, "# rotated 2027-01\nwhsec_c2Vjb25k\n").unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[standard_webhooks.sources.bank]\nsecrets = [\"whsec_Zmlyc3Q=\"]\nsecrets_file = {:?}\n",
                file.display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load_from(Some(&path), env(&[])).unwrap();
        let secrets: Vec<String> = config
            .standard_webhook_secrets("bank")
            .unwrap()
            .iter()
            .map(|s| s.expose().to_string())
            .collect();
        assert_eq!(secrets, vec!["whsec_Zmlyc3Q=", "whsec_c2Vjb25k"]);
        assert!(config.standard_webhook_secrets("other").unwrap().is_empty());
        std::fs::remove_file(&file).unwrap();
        let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(
            format!("{err}").contains("standard_webhooks.sources.bank.secrets_file"),
            "{err}"
        );
    }

    #[test]
    fn plain_smtp_is_for_the_local_machine_unless_asked_for() {
        for ok in [
            "smtp://127.0.0.1:2525",
            "smtp://localhost",
            "smtp://[::1]:25",
            "smtps://mail.example.com",
            "smtp://mail.example.com:587?tls=required",
            "smtp://relay.internal:25?tls=none",
        ] {
            Config::load_from(None, env(&[("SETTLED__EMAIL__SMTP_URL", ok)]))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "smtp://mail.example.com:25",
            "smtp://x?tls=sometimes",
            "http://x",
        ] {
            let err =
                Config::load_from(None, env(&[("SETTLED__EMAIL__SMTP_URL", bad)])).unwrap_err();
            assert!(format!("{err}").contains("email.smtp_url"), "{bad}: {err}");
        }
        let err = Config::load_from(None, env(&[("SETTLED__EMAIL__FROM", "not an address")]))
            .unwrap_err();
        assert!(format!("{err}").contains("email.from"), "{err}");
    }

    #[test]
    fn standard_webhook_sources_need_base64_secrets_and_a_free_name() {
        let err = Config::load_from(
            None,
            env(&[(
                "SETTLED__STANDARD_WEBHOOKS__SOURCES__BANK__SECRETS",
                "[\"whsec_not base64!\"]",
            )]),
        )
        .unwrap_err();
        assert!(
            format!("{err}").contains("standard_webhooks.sources.bank.secrets"),
            "{err}"
        );
        let err = Config::load_from(
            None,
            env(&[(
                "SETTLED__STANDARD_WEBHOOKS__SOURCES__STRIPE__SECRETS",
                "[\"whsec_Zmlyc3Q=\"]",
            )]),
        )
        .unwrap_err();
        assert!(
            format!("{err}").contains("standard_webhooks.sources.stripe"),
            "{err}"
        );
    }

    #[test]
    fn sqlite_is_the_default_database_in_the_state_dir() {
        let config =
            Config::load_from(None, env(&[("SETTLED__DAEMON__STATE_DIR", "/tmp/x")])).unwrap();
        assert_eq!(
            config.database_kind().unwrap(),
            DatabaseKind::Sqlite(PathBuf::from("/tmp/x/settled.db"))
        );
    }
}
