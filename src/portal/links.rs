//! Signed links. An invoice email links to its hosted page with the invoice id, an expiry and an
//! HMAC-SHA256 over both under the portal's signing key (`portal.signing_secret`, or the key
//! generated into the state directory), so an invoice id alone never opens anything and a link
//! stops working at its expiry. A sign-in link carries a one-time token id and an HMAC of it;
//! the token's row says whether it is still unused. Links are built from the email's own moment
//! (the snapshot's), so a resent email carries the same link.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Config;

type HmacSha256 = Hmac<Sha256>;

/// The path every customer-facing page lives under.
pub const PREFIX: &str = "/portal";

fn mac(config: &Config, message: &str) -> Option<HmacSha256> {
    let key = config.portal.signing_secret.expose();
    if key.is_empty() {
        return None;
    }
    let mut m = HmacSha256::new_from_slice(key.as_bytes()).ok()?;
    m.update(message.as_bytes());
    Some(m)
}

fn sign(config: &Config, message: &str) -> Option<String> {
    mac(config, message).map(|m| hex::encode(m.finalize().into_bytes()))
}

/// Constant-time check of a hex signature over `message`.
fn verify(config: &Config, message: &str, signature: &str) -> bool {
    let (Some(m), Ok(sig)) = (mac(config, message), hex::decode(signature)) else {
        return false;
    };
    m.verify_slice(&sig).is_ok()
}

/// The public base links start with, without a trailing slash.
pub fn base(config: &Config) -> String {
    config.business.portal_url.trim_end_matches('/').to_string()
}

fn invoice_message(invoice_id: &str, expires: i64) -> String {
    format!("invoice:{invoice_id}:{expires}")
}

/// The hosted page link of an invoice emailed at `issued_ms`, valid for
/// `portal.invoice_link_days` from then. None without a portal, a base or a key.
pub fn invoice_url(config: &Config, invoice_id: &str, issued_ms: i64) -> Option<String> {
    if !config.portal.enabled || config.business.portal_url.is_empty() {
        return None;
    }
    let expires = issued_ms / 1000 + i64::from(config.portal.invoice_link_days) * 86_400;
    let signature = sign(config, &invoice_message(invoice_id, expires))?;
    Some(format!(
        "{}{PREFIX}/i/{invoice_id}?expires={expires}&signature={signature}",
        base(config)
    ))
}

/// Why an invoice link does not open its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    /// The signature does not match (a changed id or expiry, a forged link).
    Invalid,
    /// Signed, but past its expiry.
    Expired,
}

/// Checks an invoice link's expiry (seconds since the epoch) and signature at `now_s`.
pub fn check_invoice_link(
    config: &Config,
    invoice_id: &str,
    expires: i64,
    signature: &str,
    now_s: i64,
) -> Result<(), LinkProblem> {
    if !verify(config, &invoice_message(invoice_id, expires), signature) {
        return Err(LinkProblem::Invalid);
    }
    if now_s >= expires {
        return Err(LinkProblem::Expired);
    }
    Ok(())
}

fn sign_in_message(token_id: &str) -> String {
    format!("sign-in:{token_id}")
}

/// The emailed sign-in link of a token.
pub fn sign_in_url(config: &Config, token_id: &str) -> Option<String> {
    let signature = sign(config, &sign_in_message(token_id))?;
    Some(format!(
        "{}{PREFIX}/sign-in/{token_id}.{signature}",
        base(config)
    ))
}

/// The token id of a sign-in link's last segment, when its signature holds.
pub fn check_sign_in(config: &Config, token: &str) -> Option<String> {
    let (id, signature) = token.split_once('.')?;
    verify(config, &sign_in_message(id), signature).then(|| id.to_string())
}

/// A fresh random value for cookies, CSRF tokens, form nonces and token ids: 32 bytes, hex.
pub fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// What is stored of a session cookie's value: its SHA-256, so the table alone opens nothing.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::load_from(
            None,
            [
                (
                    "SETTLED__BUSINESS__PORTAL_URL".to_string(),
                    "https://billing.example.com/".to_string(),
                ),
                (
                    "SETTLED__PORTAL__SIGNING_SECRET".to_string(),
                    "k".repeat(32),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn invoice_links_hold_until_they_expire_and_not_when_changed() {
        let c = config();
        let url = invoice_url(&c, "in_1", 1_000_000).unwrap();
        assert!(url.starts_with("https://billing.example.com/portal/i/in_1?expires="));
        let expires = 1_000 + 30 * 86_400;
        let sig = url.rsplit_once("signature=").unwrap().1;
        assert_eq!(check_invoice_link(&c, "in_1", expires, sig, 1_000), Ok(()));
        assert_eq!(
            check_invoice_link(&c, "in_1", expires, sig, expires),
            Err(LinkProblem::Expired)
        );
        assert_eq!(
            check_invoice_link(&c, "in_2", expires, sig, 1_000),
            Err(LinkProblem::Invalid)
        );
        assert_eq!(
            check_invoice_link(&c, "in_1", expires + 1, sig, 1_000),
            Err(LinkProblem::Invalid)
        );
        assert_eq!(
            check_invoice_link(&c, "in_1", expires, "zz", 1_000),
            Err(LinkProblem::Invalid)
        );
    }

    #[test]
    fn sign_in_links_carry_their_token_and_refuse_a_changed_one() {
        let c = config();
        let url = sign_in_url(&c, "abc").unwrap();
        let token = url.rsplit('/').next().unwrap();
        assert_eq!(check_sign_in(&c, token).as_deref(), Some("abc"));
        let forged = token.replacen("abc", "abd", 1);
        assert_eq!(check_sign_in(&c, &forged), None);
        assert_eq!(check_sign_in(&c, "abc"), None);
    }
}
