//! Checks every configured value whose type alone does not say it is usable, so an operator
//! learns about a mistake before the daemon starts rather than at 3 a.m.

use std::path::Path;

use anyhow::bail;
use chrono::DateTime;

use super::secrets::{
    MIN_TOKEN_LEN, TokenEntry, redact_url, resolve_credential_path, standard_key,
};
use super::{ClockMode, Config};

impl Config {
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
        let http_url = |u: &str| {
            url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        };
        if !self.business.portal_url.is_empty() && !http_url(&self.business.portal_url) {
            problems.push(format!(
                "business.portal_url: {:?} is not an http(s) URL like https://billing.example.com",
                self.business.portal_url
            ));
        }
        if !http_url(&self.portal.stripe_js_url) {
            problems.push(format!(
                "portal.stripe_js_url: {:?} is not an http(s) URL",
                self.portal.stripe_js_url
            ));
        }
        if self.portal.invoice_link_days == 0
            || self.portal.sign_in_link_minutes == 0
            || self.portal.session_hours == 0
        {
            problems.push(
                "portal: invoice_link_days, sign_in_link_minutes and session_hours must be at least 1"
                    .into(),
            );
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
        if self.email.max_sends_in_flight == 0 {
            problems.push("email.max_sends_in_flight: must be at least 1".into());
        }
        if self.stripe.max_requests_in_flight == 0 {
            problems.push("stripe.max_requests_in_flight: must be at least 1".into());
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
                redact_url(&self.email.smtp_url)
            ));
        }
        if !self.server.ops_listen.is_empty()
            && self
                .server
                .ops_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            problems.push(format!(
                "server.ops_listen: {:?} is not an address like 127.0.0.1:9090 (empty: none)",
                self.server.ops_listen
            ));
        }
        if !self.server.metrics_token.is_empty()
            && self.server.metrics_token.expose().chars().count() < MIN_TOKEN_LEN
        {
            problems.push(format!(
                "server.metrics_token: shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        problems.extend(self.admin_token_problems());
        problems.extend(self.email_problems());
        if self.jobs.concurrency == 0 {
            problems.push("jobs.concurrency: must be at least 1".into());
        }
        if self.jobs.batch_size == 0 || self.jobs.batch_size > 10_000 {
            problems.push("jobs.batch_size: must be between 1 and 10000".into());
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
                if !s.expose().starts_with("whsec_") || standard_key(s.expose()).is_none() {
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
            ("server.metrics_token_file", &self.server.metrics_token_file),
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

    /// Names present, unique and plain; inline tokens long enough (tokens in files are checked
    /// when they are read). No message ever holds a token.
    fn admin_token_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for entry in &self.admin.tokens {
            match entry {
                // The plain list keeps its meaning from the API contract: a shorter token is
                // accepted there with a warning at start (see `Config::admin_tokens`).
                TokenEntry::Bare(_) => {}
                TokenEntry::Named(n) => {
                    let plain = !n.name.is_empty()
                        && n.name.len() <= 64
                        && n.name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
                    if !plain {
                        problems.push(format!(
                            "admin.tokens: the name {:?} must be 1 to 64 letters, digits, . _ - or @",
                            n.name
                        ));
                    }
                    if !names.insert(n.name.clone()) {
                        problems.push(format!(
                            "admin.tokens: the name {:?} is given twice",
                            n.name
                        ));
                    }
                    match (n.token.is_empty(), n.token_file.is_empty()) {
                        (true, true) | (false, false) => problems.push(format!(
                            "admin.tokens {:?}: give exactly one of token and token_file",
                            n.name
                        )),
                        (false, true) if n.token.expose().chars().count() < MIN_TOKEN_LEN => {
                            problems.push(format!(
                                "admin.tokens {:?}: the token is shorter than {MIN_TOKEN_LEN} \
                                 characters (make one with `openssl rand -hex 32`)",
                                n.name
                            ))
                        }
                        (true, false) => {
                            let resolved = resolve_credential_path(&n.token_file);
                            if let Err(e) = std::fs::metadata(&resolved) {
                                problems.push(format!(
                                    "admin.tokens {:?}: cannot read token_file {}: {e}",
                                    n.name,
                                    resolved.display()
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        problems
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
                    redact_url(&self.email.smtp_url)
                )),
                _ => problems.push(format!(
                    "email.smtp_url: {:?} must be smtp:// or smtps://, with tls=required, \
                     opportunistic or none",
                    redact_url(&self.email.smtp_url)
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
}
