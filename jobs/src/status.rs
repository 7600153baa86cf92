//! The states a stored record can be in, as enums rather than strings, so a typo is a compile
//! error and a match names every case. Each maps to the text the schema's CHECK constraints hold
//! (`as_str`) and back (`parse`).

use std::fmt;

/// Declares a status enum with its stored names.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name stored in the database and shown by the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value a stored name stands for.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Every stored name, in declaration order (for `?status=` validation).
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

stored_enum! {
    /// An invoice's life: `draft` → `open` → `partially_paid` → `paid`, or `past_due`, `void`,
    /// `uncollectible`.
    InvoiceStatus {
        Draft = "draft",
        Open = "open",
        PartiallyPaid = "partially_paid",
        Paid = "paid",
        PastDue = "past_due",
        Void = "void",
        Uncollectible = "uncollectible",
    }
}

impl InvoiceStatus {
    /// The statuses that still expect money.
    pub const COLLECTIBLE: [InvoiceStatus; 3] = [
        InvoiceStatus::Open,
        InvoiceStatus::PartiallyPaid,
        InvoiceStatus::PastDue,
    ];

    pub fn is_collectible(self) -> bool {
        Self::COLLECTIBLE.contains(&self)
    }
}

stored_enum! {
    /// What an invoice is for.
    InvoiceKind {
        /// Goods or services.
        Standard = "standard",
        /// A deposit: once paid, its amount is the customer's retainer balance.
        Retainer = "retainer",
        /// A late fee billed on its own.
        LateFee = "late_fee",
    }
}

stored_enum! {
    /// One gateway charge attempt.
    AttemptStatus {
        /// Scheduled, or sent and waiting for its answer (`started_at` says which).
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Sent, but nobody could read what happened: asked again under the same key.
        Unknown = "unknown",
    }
}

stored_enum! {
    /// A payment after the refunds and disputes that followed it.
    PaymentStatus {
        Succeeded = "succeeded",
        Refunded = "refunded",
        PartiallyRefunded = "partially_refunded",
        Disputed = "disputed",
    }
}

stored_enum! {
    /// A stored gateway event.
    EventStatus {
        Received = "received",
        Processed = "processed",
        Ignored = "ignored",
        Failed = "failed",
    }
}

stored_enum! {
    /// One outbox row.
    EmailStatus {
        Pending = "pending",
        Sent = "sent",
        Failed = "failed",
    }
}

stored_enum! {
    /// The three balances the ledger keeps per customer and currency.
    Account {
        /// What the customer owes: the amount due of its open invoices.
        Receivable = "receivable",
        /// Credit it holds: the remaining amount of its credit notes.
        Credit = "credit",
        /// Unused deposits: the remaining amount of its retainers.
        Retainer = "retainer",
    }
}

stored_enum! {
    /// Where a credit note's credit came from.
    CreditSource {
        /// Issued by an operator.
        Manual = "manual",
        /// The excess of a payment larger than what it paid.
        Overpayment = "overpayment",
        /// A refund kept as credit instead of paid back.
        Refund = "refund",
        /// Given back by a voided invoice.
        Void = "void",
    }
}

stored_enum! {
    /// How money arrived outside a card charge, as an operator records it.
    OfflineMethod {
        Wire = "wire",
        Check = "check",
        Cash = "cash",
        Other = "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        for s in InvoiceStatus::ALL {
            assert_eq!(InvoiceStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(InvoiceStatus::parse("settled"), None);
        assert!(InvoiceStatus::PastDue.is_collectible());
        assert!(!InvoiceStatus::Paid.is_collectible());
        assert!(AttemptStatus::Unknown == "unknown");
        assert_eq!(Account::Receivable.to_string(), "receivable");
    }
}
