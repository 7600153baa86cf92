//! Every kind of message the daemon sends. The name is the outbox row's `template` column, the
//! stem of its three template files (`NAME.subject.txt`, `NAME.txt`, `NAME.html`) and the metric
//! label; adding a kind is one variant here, its three files, and the call that writes its row
//! (the renderer's table of embedded files matches on this enum, so the compiler asks for them).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Template {
    /// A finalised invoice, to every billing contact.
    Invoice,
    /// A payment was recorded, however it came.
    Receipt,
    /// An automatic charge failed; says when the next attempt is.
    PaymentFailed,
    /// Dunning ended: the invoice is past due.
    FinalNotice,
    /// Money was given back (to the card, or kept as credit).
    Refund,
    /// Credit was issued.
    CreditNote,
    /// A reminder a few days before an automatic charge.
    UpcomingCharge,
    /// The monthly statement of account.
    Statement,
    /// A one-time link to sign in to the customer portal, to the one address that asked.
    SignIn,
}

impl Template {
    pub const ALL: &'static [Template] = &[
        Template::Invoice,
        Template::Receipt,
        Template::PaymentFailed,
        Template::FinalNotice,
        Template::Refund,
        Template::CreditNote,
        Template::UpcomingCharge,
        Template::Statement,
        Template::SignIn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::Invoice => "invoice",
            Template::Receipt => "receipt",
            Template::PaymentFailed => "payment_failed",
            Template::FinalNotice => "final_notice",
            Template::Refund => "refund",
            Template::CreditNote => "credit_note",
            Template::UpcomingCharge => "upcoming_charge",
            Template::Statement => "statement",
            Template::SignIn => "sign_in",
        }
    }

    pub fn parse(name: &str) -> Option<Template> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Every template's name, in declaration order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|t| t.name()).collect()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Template::ALL {
            assert_eq!(Template::parse(t.name()), Some(*t));
        }
        assert_eq!(Template::parse("layout"), None);
    }
}
