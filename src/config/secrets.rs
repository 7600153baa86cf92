//! Secrets in the configuration: API keys, webhook signing secrets, admin tokens and the SMTP
//! password, given inline, in the environment, or in files (a bare file name is a systemd
//! credential). They are wrapped so `Debug` never prints them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::Config;

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

impl Config {
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

    /// The portal's link-signing key as configured (inline or in `portal.signing_secret_file`);
    /// empty when neither is set (the daemon then keeps a generated one).
    pub fn portal_signing_secret(&self) -> anyhow::Result<Secret> {
        if !self.portal.signing_secret_file.is_empty() {
            let mut lines = read_secret_lines(&self.portal.signing_secret_file)?;
            if let Some(first) = lines.drain(..).next() {
                return Ok(first);
            }
        }
        Ok(self.portal.signing_secret.clone())
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

/// A Standard Webhooks secret `whsec_<base64>` as the HMAC key (the bytes the base64 names).
pub fn standard_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|k| !k.is_empty())
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
