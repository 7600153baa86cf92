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

/// The shortest admin (and metrics) token accepted: 32 characters, as `openssl rand -hex 16` makes.
pub const MIN_TOKEN_LEN: usize = 32;

/// One entry of `admin.tokens`: a bare token (the old form, named `token-N` by its place) or a
/// table `{name, token | token_file}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    Bare(Secret),
    Named(NamedToken),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    pub name: String,
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: String,
}

/// An admin token with the name admin actions are logged under.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub secret: Secret,
}

impl Config {
    /// Every configured admin token with its name: named entries by their name, unnamed ones
    /// (bare strings in `admin.tokens`, lines of `admin.tokens_file`) as `token-1`, `token-2`, ...
    /// in that order. A named token shorter than [`MIN_TOKEN_LEN`] is an error naming it, never
    /// printing it; an unnamed one is accepted with a warning, as the plain list always was.
    pub fn admin_tokens(&self) -> anyhow::Result<Vec<AdminToken>> {
        let mut tokens = Vec::new();
        let mut unnamed = 0;
        let mut next_name = || {
            unnamed += 1;
            format!("token-{unnamed}")
        };
        for entry in &self.admin.tokens {
            match entry {
                TokenEntry::Bare(s) if s.is_empty() => {}
                TokenEntry::Bare(s) => tokens.push(AdminToken {
                    name: next_name(),
                    secret: s.clone(),
                }),
                TokenEntry::Named(n) => {
                    let secret = if n.token_file.is_empty() {
                        n.token.clone()
                    } else {
                        read_secret_lines(&n.token_file)?
                            .into_iter()
                            .next()
                            .with_context(|| {
                                format!(
                                    "admin.tokens {:?}: token_file {} holds no token",
                                    n.name,
                                    resolve_credential_path(&n.token_file).display()
                                )
                            })?
                    };
                    tokens.push(AdminToken {
                        name: n.name.clone(),
                        secret,
                    });
                }
            }
        }
        for secret in read_secret_lines(&self.admin.tokens_file)? {
            tokens.push(AdminToken {
                name: next_name(),
                secret,
            });
        }
        for t in &tokens {
            if t.secret.expose().chars().count() >= MIN_TOKEN_LEN {
                continue;
            }
            let named = self
                .admin
                .tokens
                .iter()
                .any(|e| matches!(e, TokenEntry::Named(n) if n.name == t.name));
            // Named tokens (`[[admin.tokens]]`) must be long enough; the plain list and
            // `tokens_file` keep the contract's meaning (any bearer string), with a warning.
            if named {
                anyhow::bail!(
                    "admin.tokens: the token named {:?} is shorter than {MIN_TOKEN_LEN} characters \
                     (make one with `openssl rand -hex 32`)",
                    t.name
                );
            }
            tracing::warn!(
                token = %t.name,
                "an admin token is shorter than {MIN_TOKEN_LEN} characters; a longer one (`openssl rand -hex 32`) is much harder to guess"
            );
        }
        Ok(tokens)
    }

    /// The token `/metrics` requires, when one is configured (inline or in `metrics_token_file`).
    pub fn metrics_token(&self) -> anyhow::Result<Option<Secret>> {
        let mut token = self.server.metrics_token.clone();
        if !self.server.metrics_token_file.is_empty() {
            token = read_secret_lines(&self.server.metrics_token_file)?
                .into_iter()
                .next()
                .unwrap_or_default();
        }
        if token.is_empty() {
            return Ok(None);
        }
        if token.expose().chars().count() < MIN_TOKEN_LEN {
            anyhow::bail!(
                "server.metrics_token: shorter than {MIN_TOKEN_LEN} characters \
                 (make one with `openssl rand -hex 32`)"
            );
        }
        Ok(Some(token))
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
        let from_file = read_secret_lines(&src.secrets_file)?;
        for (n, s) in from_file.iter().enumerate() {
            if !s.expose().starts_with("whsec_") || standard_key(s.expose()).is_none() {
                anyhow::bail!(
                    "standard_webhooks.sources.{source}.secrets_file: line {} of {} is not \
                     whsec_ followed by base64",
                    n + 1,
                    resolve_credential_path(&src.secrets_file).display()
                );
            }
        }
        secrets.extend(from_file);
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

/// A bare credential name is looked up in `$CREDENTIALS_DIRECTORY` (systemd's LoadCredential=),
/// else, outside the unit (an operator's command as root on the daemon's host), in the
/// `credentials/` folder beside the system config (`/etc/settled/credentials/`), where the
/// unit's LoadCredential= lines read them from.
pub fn resolve_credential_path(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() || path.contains('/') {
        return p.to_path_buf();
    }
    if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(p);
        if candidate.exists() {
            return candidate;
        }
    }
    if let Some(folder) = super::system_config_path().parent() {
        let candidate = folder.join("credentials").join(p);
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

/// A URL as it may be printed: any password replaced by `***` (`postgres://u:***@host/db`).
/// Text that does not parse as a URL still has whatever sits between `://user:` and `@` hidden.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.password().is_some()
        && parsed.set_password(Some("***")).is_ok()
    {
        return parsed.to_string();
    }
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            );
        }
    }
    url.to_string()
}
