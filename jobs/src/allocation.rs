//! How an amount is spread over things in an order, and how it is taken back. Pure: the caller
//! reads the rows in the order the rule wants (invoices oldest due first, credit notes and
//! deposits oldest first, a payment's allocations newest first) and writes what comes back.
//!
//! - A payment pays the invoice it names, or the customer's open invoices oldest due first; what
//!   is left over becomes credit.
//! - Credit and retainer are spent oldest first, up to what the invoice owes.
//! - A refund takes back from the invoices its payment paid, newest allocation first (they reopen);
//!   what is left was credit (the payment's excess) and is taken back from there.

/// One part of a spread: `amount` of it went to (or came back from) `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub id: String,
    pub amount: i64,
}

/// The result of [`fill`]: the parts, in order, and what did not fit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spread {
    pub parts: Vec<Part>,
    pub rest: i64,
}

impl Spread {
    /// How much went into parts.
    pub fn placed(&self) -> i64 {
        self.parts.iter().map(|p| p.amount).sum()
    }
}

/// Fills `slots` (id, room) in the given order with up to `amount`, each up to its room; slots
/// with no room are skipped. Amounts are minor units; a negative amount or room counts as zero.
pub fn fill<'a>(amount: i64, slots: impl IntoIterator<Item = (&'a str, i64)>) -> Spread {
    let mut left = amount.max(0);
    let mut parts = Vec::new();
    for (id, room) in slots {
        if left == 0 {
            break;
        }
        let take = left.min(room.max(0));
        if take > 0 {
            parts.push(Part {
                id: id.to_string(),
                amount: take,
            });
            left -= take;
        }
    }
    Spread { parts, rest: left }
}

/// What a refund of `amount` of a payment does under the business's refund policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reversal {
    /// The invoices stay settled; the customer gets `amount` as credit.
    ToCredit { amount: i64 },
    /// The invoices the payment paid reopen by these parts (newest allocation first); `from_credit`
    /// is what is taken back from the credit the payment's excess became.
    Reopen { parts: Vec<Part>, from_credit: i64 },
}

/// Decides how a refund of `amount` is undone. `allocations_newest_first` are the payment's
/// allocations (invoice id, amount still allocated), newest due first.
pub fn reverse<'a>(
    amount: i64,
    to_credit: bool,
    allocations_newest_first: impl IntoIterator<Item = (&'a str, i64)>,
) -> Reversal {
    if to_credit {
        return Reversal::ToCredit { amount };
    }
    let spread = fill(amount, allocations_newest_first);
    Reversal::Reopen {
        parts: spread.parts,
        from_credit: spread.rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_fills_the_oldest_first_and_keeps_the_rest() {
        let s = fill(250, [("a", 100), ("b", 0), ("c", 100)]);
        assert_eq!(
            s.parts,
            vec![
                Part {
                    id: "a".into(),
                    amount: 100
                },
                Part {
                    id: "c".into(),
                    amount: 100
                }
            ]
        );
        assert_eq!((s.placed(), s.rest), (200, 50));
    }

    #[test]
    fn a_refund_reopens_newest_first_then_takes_back_credit() {
        match reverse(150, false, [("new", 100), ("old", 30)]) {
            Reversal::Reopen { parts, from_credit } => {
                assert_eq!(parts.iter().map(|p| p.amount).sum::<i64>(), 130);
                assert_eq!(parts[0].id, "new");
                assert_eq!(from_credit, 20);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reverse(40, true, [("a", 100)]),
            Reversal::ToCredit { amount: 40 }
        );
    }
}
