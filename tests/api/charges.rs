//! Auto-charge, dunning, on-demand and balance charges against the Stripe-compatible test gateway.
