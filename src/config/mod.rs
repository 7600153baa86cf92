//! Configuration: embedded defaults, then a TOML file, then `SETTLED__SECTION__KEY` env, then
//! validation, so an operator learns about a typo before the daemon starts rather than at 3 a.m.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

mod secrets;
mod validate;

pub use secrets::{
    AdminToken, MIN_TOKEN_LEN, NamedToken, Secret, TokenEntry, redact_url, resolve_credential_path,
    standard_key,
};

/// The commented defaults shipped inside the binary; `settled check-config --print-defaults` shows them.
pub const DEFAULTS: &str = include_str!("default_config.toml");

/// The system config every command reads when it exists and no other file is named.
pub const SYSTEM_CONFIG: &str = "/etc/settled/settled.toml";

/// Names another path for the system config (a test, a host that keeps configs elsewhere).
pub const SYSTEM_CONFIG_ENV: &str = "SETTLED_SYSTEM_CONFIG";

/// The system config's path: `$SETTLED_SYSTEM_CONFIG` when set, else [`SYSTEM_CONFIG`].
pub fn system_config_path() -> PathBuf {
    std::env::var_os(SYSTEM_CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CONFIG))
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
    pub retention: RetentionConfig,
    pub portal: PortalConfig,
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
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Http => "http",
            Role::Worker => "worker",
        }
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
    pub header_read_timeout_seconds: u64,
    pub body_read_timeout_seconds: u64,
    pub request_timeout_seconds: u64,
    pub max_connections: usize,
    /// A second listener for health, readiness and metrics only (empty: none; then `/metrics`
    /// is served on `listen`).
    pub ops_listen: String,
    pub metrics_token: Secret,
    pub metrics_token_file: String,
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
    pub tokens: Vec<TokenEntry>,
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
    pub max_requests_in_flight: usize,
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
    pub max_sends_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessConfig {
    pub name: String,
    pub address: String,
    pub support_email: String,
    pub payment_instructions: String,
    pub portal_url: String,
}

/// `[portal]`: the customer-facing pages under `/portal/` (see `crate::portal`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    pub enabled: bool,
    pub signing_secret: Secret,
    pub signing_secret_file: String,
    pub invoice_link_days: u32,
    pub sign_in_link_minutes: u32,
    pub session_hours: u32,
    pub sign_in_per_email_per_hour: u32,
    pub sign_in_per_client_per_hour: u32,
    pub client_ip_header: String,
    pub stripe_js_url: String,
    pub stripe_publishable_key: String,
    pub partial_payments: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    pub max_attempts: u32,
    pub batch_size: usize,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days after which a processed (or ignored, or failed) webhook event's stored body is
    /// pruned; 0 keeps bodies for ever.
    pub webhook_body_days: u32,
    /// Days after which a sent (or failed) email's stored snapshot is pruned; 0 keeps them.
    pub email_body_days: u32,
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
        // One value per key, the last given winning, as in a process environment.
        let vars: BTreeMap<String, String> = env
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
                let parsed = match secret_key(&path) {
                    // A secret is what was given, byte for byte: never a number or a boolean.
                    Some(SecretKey::One) => toml::Value::String(value.clone()).to_string(),
                    // A list of secrets is a TOML list when written as one, else one secret.
                    Some(SecretKey::List) => secret_list_literal(value),
                    None => toml_value_literal(value),
                };
                overrides.push_str(&format!("{} = {}\n", dotted(&path), parsed));
            }
            figment.merge(Toml::string(&overrides))
        };
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
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
        bail!(
            "{:?} must start with sqlite:// or postgres://",
            redact_url(url)
        )
    }

    /// The manual clock's start, if the config names one.
    pub fn clock_start(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.clock.start)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
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

/// Whether a key holds a secret (or a URL that may carry one), and of which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretKey {
    One,
    List,
}

fn secret_key(path: &[String]) -> Option<SecretKey> {
    let last = path.last().map(String::as_str).unwrap_or("");
    match (path.first().map(String::as_str), last) {
        (_, "api_key" | "smtp_password" | "metrics_token" | "token" | "url" | "smtp_url") => {
            Some(SecretKey::One)
        }
        (Some("admin"), "tokens") => Some(SecretKey::List),
        (_, "webhook_secrets" | "secrets") => Some(SecretKey::List),
        _ => None,
    }
}

/// `["a", "b"]` (or a list of tables) stays a TOML list; anything else is one secret string.
fn secret_list_literal(value: &str) -> String {
    if value.trim_start().starts_with('[')
        && let Ok(table) = format!("v = {value}").parse::<toml::Table>()
        && let Some(list @ toml::Value::Array(_)) = table.get("v")
    {
        return list.to_string();
    }
    toml::Value::Array(vec![toml::Value::String(value.to_string())]).to_string()
}

/// The problem with one key, its value left out when the key holds a secret or a URL (serde's
/// messages quote the value they found).
fn describe_kind(path: &[String], kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    if path.is_empty()
        && let Kind::Message(text) = kind
    {
        // A file that is not TOML: the parser quotes the offending line, which may hold a
        // secret; keep its words, drop the quoted lines.
        return text
            .lines()
            .filter(|l| {
                !l.trim_start()
                    .starts_with(|c: char| c.is_ascii_digit() || c == '|')
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    if secret_key(path).is_none() {
        return kind.to_string();
    }
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!(
                "wrong type: found {}, expected {expected}",
                actual_type(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid {}, expected {expected}", actual_type(actual))
        }
        Kind::InvalidLength(n, expected) => format!("invalid length {n}, expected {expected}"),
        Kind::Message(_) => "not a valid value (not shown: the key holds a secret)".into(),
        other => other.to_string(),
    }
}

fn actual_type(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}

fn describe_figment_error(err: figment::Error) -> anyhow::Error {
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
        lines.push(format!(
            "{key}: {}{source}",
            describe_kind(&e.path, &e.kind)
        ));
    }
    if lines.is_empty() {
        lines.push("the configuration cannot be read".into());
    }
    anyhow::anyhow!("invalid configuration:\n  - {}", lines.join("\n  - "))
}

#[cfg(test)]
mod tests;
