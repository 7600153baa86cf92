//! Signature checks for webhook intake: Stripe's `Stripe-Signature` and the Standard Webhooks
//! scheme. Pure functions of (headers, body, secrets, now) so they are tested with fixed vectors;
//! every comparison of a signature is constant time (`Mac::verify_slice`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused; the variant names are the metric's `reason` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or malformed signature headers, or no signature that matches a configured secret.
    Signature(String),
    /// The signed timestamp is outside the tolerance (either way) of the real wall clock.
    Timestamp(String),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Signature(_) => "signature",
            Refusal::Timestamp(_) => "timestamp",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Signature(m) | Refusal::Timestamp(m) => m,
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac
}

fn check_tolerance(timestamp: i64, now: i64, tolerance: i64) -> Result<(), Refusal> {
    let skew = now.saturating_sub(timestamp);
    if skew > tolerance {
        return Err(Refusal::Timestamp(format!(
            "the signed timestamp is {skew} s old; at most {tolerance} s are accepted"
        )));
    }
    if -skew > tolerance {
        return Err(Refusal::Timestamp(format!(
            "the signed timestamp is {} s in the future; at most {tolerance} s are accepted",
            -skew
        )));
    }
    Ok(())
}

/// Verifies a `Stripe-Signature` header (`t=<unix seconds>`, one or more `v1=<hex>`; other schemes
/// such as `v0` are ignored) against every secret, keyed with the whole `whsec_...` string as
/// Stripe does, over `"{t}.{body}"`. The timestamp is checked after the signature, so a forged
/// header cannot learn anything about the clock.
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
    tolerance: i64,
) -> Result<(), Refusal> {
    let header = header
        .ok_or_else(|| Refusal::Signature("the Stripe-Signature header is missing".into()))?;
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            // A v1 entry that is not hex can match nothing; skip it like any unknown entry.
            "v1" => {
                if let Ok(sig) = hex::decode(value) {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = timestamp
        .ok_or_else(|| Refusal::Signature("the Stripe-Signature header has no t=".into()))?;
    let t_value: i64 = t.parse().map_err(|_| {
        Refusal::Signature("the Stripe-Signature header's t= is not a Unix timestamp".into())
    })?;
    if signatures.is_empty() {
        return Err(Refusal::Signature(
            "the Stripe-Signature header has no v1= signature".into(),
        ));
    }
    let matched = secrets.iter().any(|secret| {
        let expected = mac(secret.as_bytes(), &[t.as_bytes(), b".", body]);
        signatures
            .iter()
            .any(|sig| expected.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(Refusal::Signature(
            "no v1 signature matches a configured webhook secret".into(),
        ));
    }
    check_tolerance(t_value, now, tolerance)
}

pub use crate::config::standard_key;

/// Verifies the Standard Webhooks headers: `webhook-signature` is a space-separated list of
/// `v1,<base64>` (other versions are ignored) over `"{webhook-id}.{webhook-timestamp}.{body}"`.
pub fn verify_standard(
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    keys: &[Vec<u8>],
    now: i64,
    tolerance: i64,
) -> Result<(), Refusal> {
    let id = id
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Refusal::Signature("the webhook-id header is missing".into()))?;
    let ts = timestamp
        .ok_or_else(|| Refusal::Signature("the webhook-timestamp header is missing".into()))?;
    let t_value: i64 = ts.parse().map_err(|_| {
        Refusal::Signature("the webhook-timestamp header is not a Unix timestamp".into())
    })?;
    let header = signature
        .ok_or_else(|| Refusal::Signature("the webhook-signature header is missing".into()))?;
    let signatures: Vec<Vec<u8>> = header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| BASE64.decode(sig).ok())
        .collect();
    if signatures.is_empty() {
        return Err(Refusal::Signature(
            "the webhook-signature header has no v1 signature".into(),
        ));
    }
    let matched = keys.iter().any(|key| {
        let expected = mac(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        signatures
            .iter()
            .any(|sig| expected.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(Refusal::Signature(
            "no v1 signature matches a configured secret of this source".into(),
        ));
    }
    check_tolerance(t_value, now, tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stripe's own vector, from stripe-dotnet `src/StripeTests/Services/Events/EventUtilityTest.cs`
    /// with its fixture `src/StripeTests/Resources/event_test_signature.json` (the trailing newline
    /// is part of the signed body).
    const STRIPE_BODY: &str = "{\n  \"id\": \"evt_123\",\n  \"object\": \"event\",\n  \"account\": \"acct_123\",\n  \"api_version\": \"2017-05-25\",\n  \"created\": 1533204620,\n  \"data\": {\n    \"object\": {\n      \"id\": \"cus_123\",\n      \"object\": \"customer\",\n      \"created\": 123456789,\n      \"email\": \"test@stripe.com\",\n      \"livemode\": false,\n      \"metadata\": {}\n    }\n  },\n  \"livemode\": false,\n  \"pending_webhooks\": 1,\n  \"request\": {\n    \"id\": \"req_123\",\n    \"idempotency_key\": \"idempotency-key-123\"\n  },\n  \"type\": \"customer.created\"\n}\n";
    const STRIPE_HEADER: &str = "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";

    #[test]
    fn stripes_published_vector_verifies() {
        let now = 1533204620 + 100;
        assert_eq!(
            verify_stripe(
                Some(STRIPE_HEADER),
                STRIPE_BODY.as_bytes(),
                &["webhook_secret"],
                now,
                300
            ),
            Ok(())
        );
        // One changed byte, a wrong secret, or an old timestamp is refused.
        let mut tampered = STRIPE_BODY.to_string();
        tampered.push(' ');
        let r = verify_stripe(
            Some(STRIPE_HEADER),
            tampered.as_bytes(),
            &["webhook_secret"],
            now,
            300,
        );
        assert_eq!(r.unwrap_err().reason(), "signature");
        let r = verify_stripe(
            Some(STRIPE_HEADER),
            STRIPE_BODY.as_bytes(),
            &["other"],
            now,
            300,
        );
        assert_eq!(r.unwrap_err().reason(), "signature");
        let r = verify_stripe(
            Some(STRIPE_HEADER),
            STRIPE_BODY.as_bytes(),
            &["webhook_secret"],
            1533204620 + 301,
            300,
        );
        assert_eq!(r.unwrap_err().reason(), "timestamp");
        let r = verify_stripe(
            Some(STRIPE_HEADER),
            STRIPE_BODY.as_bytes(),
            &["webhook_secret"],
            1533204620 - 301,
            300,
        );
        assert_eq!(r.unwrap_err().reason(), "timestamp");
    }

    #[test]
    fn any_configured_secret_and_any_v1_entry_may_match() {
        let header = format!(
            "t=1533204620,v1={},{}",
            "ab".repeat(32),
            &STRIPE_HEADER[13..]
        );
        assert_eq!(
            verify_stripe(
                Some(&header),
                STRIPE_BODY.as_bytes(),
                &["old", "webhook_secret"],
                1533204620,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn malformed_stripe_headers_are_signature_refusals() {
        for header in [
            "",
            "t",
            ",,",
            "t=,v1=",
            "t=abc,v1=00",
            "v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7",
            "t=1533204620",
            "t=1533204620,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef",
        ] {
            let r = verify_stripe(
                Some(header),
                STRIPE_BODY.as_bytes(),
                &["webhook_secret"],
                1533204620,
                300,
            );
            assert_eq!(r.unwrap_err().reason(), "signature", "{header:?}");
        }
        let r = verify_stripe(None, b"{}", &["s"], 0, 300);
        assert_eq!(r.unwrap_err().reason(), "signature");
    }

    /// The Standard Webhooks reference vector, from standard-webhooks/standard-webhooks
    /// `libraries/go/webhook_test.go` (`TestWebhookSign`).
    #[test]
    fn standard_webhooks_reference_vector_verifies() {
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let check = |sig: &str, now: i64| {
            verify_standard(
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(sig),
                body,
                std::slice::from_ref(&key),
                now,
                300,
            )
        };
        assert_eq!(check(sig, 1614265330), Ok(()));
        let several = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {sig}");
        assert_eq!(check(&several, 1614265330), Ok(()));
        assert_eq!(
            check(
                "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                1614265330
            )
            .unwrap_err()
            .reason(),
            "signature"
        );
        assert_eq!(
            check(sig, 1614265330 + 301).unwrap_err().reason(),
            "timestamp"
        );
    }

    #[test]
    fn standard_secrets_are_base64_after_the_prefix() {
        assert_eq!(standard_key("whsec_Zmlyc3Q="), Some(b"first".to_vec()));
        assert_eq!(standard_key("whsec_!!"), None);
        assert_eq!(standard_key("whsec_"), None);
    }
}
