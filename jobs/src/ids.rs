//! Object ids: a short type prefix and a random part, like the gateway's own ids, so an id in a log
//! line or a support ticket says what it names.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new id such as `cus_3kTMd9fQ2vX8yLp1aZ0bNc4R` (24 random base62 characters, ~142 bits).
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..24 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// The prefixes of the daemon's own objects.
pub mod prefix {
    pub const CUSTOMER: &str = "cus";
    pub const PAYMENT_METHOD: &str = "spm";
    pub const SUBSCRIPTION: &str = "sub";
    pub const INVOICE: &str = "in";
    pub const INVOICE_LINE: &str = "il";
    pub const PAYMENT: &str = "pay";
    pub const CREDIT_NOTE: &str = "cn";
    pub const RETAINER: &str = "ret";
    pub const WEBHOOK_EVENT: &str = "whe";
    pub const EMAIL: &str = "em";
    pub const CHARGE_ATTEMPT: &str = "ca";
    pub const REFUND: &str = "re";
    pub const LEDGER: &str = "le";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let a = new_id(prefix::CUSTOMER);
        let b = new_id(prefix::CUSTOMER);
        assert!(a.starts_with("cus_"));
        assert_eq!(a.len(), 28);
        assert_ne!(a, b);
    }
}
