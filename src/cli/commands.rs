//! The operator's commands as clap parses them (`settled customers|payment-methods|subscriptions|
//! invoices|credit-notes|payments|jobs|emails|webhooks|clock ...`); `admin` runs them.

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum CustomersCommand {
    /// List customers (optionally those a billing contact receives bills for).
    #[command(
        after_help = "Examples:\n  settled customers list\n  settled customers list --billing-email ap@acme.example --json"
    )]
    List {
        #[arg(long)]
        billing_email: Option<String>,
    },
    /// Show one customer with its balances.
    #[command(after_help = "Example:\n  settled customers show cus_123")]
    Show { id: String },
    /// Create a customer.
    #[command(
        after_help = "Example:\n  settled customers create --email ap@acme.example --name Acme --currency USD --timezone America/New_York"
    )]
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        timezone: Option<String>,
        /// A billing contact; repeat for several.
        #[arg(long = "billing-email")]
        billing_emails: Vec<String>,
        /// Never charge this customer automatically.
        #[arg(long)]
        no_auto_charge: bool,
    },
    /// The statement of account: opening balance, every movement, running and closing balance.
    #[command(
        after_help = "Examples:\n  settled customers statement cus_123 --from 2027-01-01 --to 2027-02-01\n  settled customers statement cus_123 --csv > statement.csv"
    )]
    Statement {
        id: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Charge everything the customer owes in one payment with its default card.
    #[command(after_help = "Example:\n  settled customers charge-balance cus_123")]
    ChargeBalance { id: String },
}

#[derive(Args, Debug)]
pub struct SubscriptionAdd {
    #[arg(long)]
    pub customer: String,
    /// An item as "description|quantity|unit_amount[|tax_rate]"; repeat for several.
    #[arg(long = "item", required = true)]
    pub items: Vec<String>,
    /// day, week, month or year (or give --cron).
    #[arg(long, conflicts_with = "cron")]
    pub every: Option<String>,
    #[arg(long)]
    pub interval: Option<u32>,
    /// RFC 3339 anchor of the schedule (default: the start).
    #[arg(long)]
    pub anchor: Option<String>,
    /// A cron expression with seconds, e.g. "0 0 9 1 * *".
    #[arg(long)]
    pub cron: Option<String>,
    #[arg(long)]
    pub timezone: Option<String>,
    /// RFC 3339 start of the first period (default: now).
    #[arg(long)]
    pub start_at: Option<String>,
    /// all, latest or skip.
    #[arg(long)]
    pub catch_up: Option<String>,
    #[arg(long)]
    pub net_days: Option<u32>,
    #[arg(long)]
    pub no_auto_charge: bool,
}

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Create a subscription (a recurring invoice profile).
    #[command(
        after_help = "Example:\n  settled subscriptions add --customer cus_... --item 'Hosting|1|49.00|0.20' --every month --timezone Europe/Berlin"
    )]
    Add(SubscriptionAdd),
    /// List subscriptions (status: active, paused, canceled).
    #[command(
        after_help = "Examples:\n  settled subscriptions list --customer cus_123\n  settled subscriptions list --status paused --json"
    )]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one subscription with its next period start.
    #[command(after_help = "Example:\n  settled subscriptions show sub_123")]
    Show { id: String },
    /// No invoices for paused periods.
    #[command(after_help = "Example:\n  settled subscriptions pause sub_123")]
    Pause { id: String },
    /// The catch-up policy decides what the paused periods become.
    #[command(after_help = "Example:\n  settled subscriptions resume sub_123")]
    Resume { id: String },
    /// No further invoices; the current period's invoice stays.
    #[command(after_help = "Example:\n  settled subscriptions cancel sub_123")]
    Cancel { id: String },
    /// The next invoices exactly as they would be generated; nothing is stored.
    #[command(after_help = "Example:\n  settled subscriptions preview sub_123 --periods 12")]
    Preview {
        id: String,
        #[arg(long, default_value_t = 3)]
        periods: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum InvoicesCommand {
    /// List invoices, newest first (status: draft, open, partially_paid, paid, past_due, void,
    /// uncollectible).
    #[command(
        after_help = "Examples:\n  settled invoices list --customer cus_123\n  settled invoices list --status past_due --json"
    )]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one invoice with its lines, payments and charge attempts.
    #[command(after_help = "Example:\n  settled invoices show in_123 --json")]
    Show { id: String },
    /// Charge an invoice now with the customer's default card (or --payment-method).
    #[command(
        after_help = "Examples:\n  settled invoices charge in_123\n  settled invoices charge in_123 --amount 40.00"
    )]
    Charge {
        id: String,
        /// Part of the amount due (decimal string); default: all of it.
        #[arg(long)]
        amount: Option<String>,
        /// A saved method of the customer (spm_...).
        #[arg(long)]
        payment_method: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CreditNotesCommand {
    /// Issue a credit note: credit the customer holds, applied to its next invoices.
    #[command(
        after_help = "Example:\n  settled credit-notes create --customer cus_123 --amount 25.00 --currency USD --reason \"Service outage\""
    )]
    Create {
        #[arg(long)]
        customer: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: String,
    },
    /// A customer's credit notes with what remains of each.
    #[command(after_help = "Example:\n  settled credit-notes list --customer cus_123")]
    List {
        #[arg(long)]
        customer: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PaymentsCommand {
    /// Record an offline payment (wire, check, cash, other) for an invoice or, without --invoice,
    /// toward the customer's whole balance.
    #[command(
        after_help = "Examples:\n  settled payments record --invoice in_123 --amount 40.00 --method wire --reference TRX-1\n  settled payments record --customer cus_123 --amount 100.00 --method check"
    )]
    Record {
        #[arg(long, conflicts_with = "customer")]
        invoice: Option<String>,
        #[arg(long, required_unless_present = "invoice")]
        customer: Option<String>,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        method: String,
        #[arg(long)]
        reference: Option<String>,
    },
    /// List payments, oldest first.
    #[command(after_help = "Example:\n  settled payments list --customer cus_123")]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        invoice: Option<String>,
    },
    /// Show one payment with its refunds and allocations.
    #[command(after_help = "Example:\n  settled payments show pay_123")]
    Show { id: String },
    /// Refund all or part of a payment, through its gateway (offline payments: recorded as paid
    /// back by other means). The invoice reopens, or the amount becomes credit with --as-credit.
    #[command(
        after_help = "Examples:\n  settled payments refund pay_123\n  settled payments refund pay_123 --amount 10.00 --reason \"damaged\" --as-credit"
    )]
    Refund {
        id: String,
        /// Decimal string; absent = everything not yet refunded.
        #[arg(long)]
        amount: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        as_credit: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List work set aside after a failure, longest failing first (status: failed, after 3
    /// tries; retrying, before).
    #[command(
        after_help = "Examples:\n  settled jobs list --status failed\n  settled jobs list --status retrying --json"
    )]
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one failing item with its tries, last error and next try.
    #[command(after_help = "Example:\n  settled jobs show generate_invoice:sub_123")]
    Show { id: String },
    /// Try a failing item again at once.
    #[command(after_help = "Example:\n  settled jobs retry generate_invoice:sub_123")]
    Retry { id: String },
}

#[derive(Subcommand, Debug)]
pub enum EmailsCommand {
    /// List emails, newest first (status: pending, sent, failed).
    #[command(after_help = "Example:\n  settled emails list --status failed")]
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        invoice: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        template: Option<String>,
    },
    /// Show one email: recipients, subject, status, tries and the last error.
    #[command(after_help = "Example:\n  settled emails show em_123")]
    Show { id: String },
    /// Send a failed email again (a running daemon sends it at its next poll).
    #[command(after_help = "Example:\n  settled emails retry em_123")]
    Retry { id: String },
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// List stored events, newest first (status: received, processed, ignored, failed).
    #[command(
        after_help = "Examples:\n  settled webhooks list --status failed\n  settled webhooks list --source bank --json"
    )]
    List {
        #[arg(long)]
        status: Option<String>,
        /// Only this source (stripe, or a Standard Webhooks source name).
        #[arg(long)]
        source: Option<String>,
    },
    /// Show one stored event with its payload.
    #[command(after_help = "Example:\n  settled webhooks show whe_123 --json")]
    Show { id: String },
    /// Process stored events again: one by id, or every event with a status (and source). Their
    /// effects are idempotent; a running daemon processes them.
    #[command(
        after_help = "Examples:\n  settled webhooks replay whe_123\n  settled webhooks replay --status failed\n  settled webhooks replay --status failed --source stripe --wait\n  settled webhooks replay --status failed --dry-run"
    )]
    Replay {
        /// The event to replay.
        #[arg(required_unless_present = "status", conflicts_with = "status")]
        id: Option<String>,
        /// Replay every stored event with this status (received, processed, ignored, failed).
        #[arg(long)]
        status: Option<String>,
        /// With --status: only this source.
        #[arg(long, requires = "status")]
        source: Option<String>,
        /// With --status: wait until a running daemon has processed every replayed event.
        #[arg(long, requires = "status")]
        wait: bool,
        /// Give up waiting after this many seconds (exit 75).
        #[arg(long, default_value_t = 600, requires = "wait")]
        timeout: u64,
        /// With --status: list the events that would be replayed; replay nothing.
        #[arg(long, requires = "status", conflicts_with = "wait")]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClockCommand {
    /// Where the manual clock stands and whether all due work is done.
    #[command(after_help = "Example:\n  settled clock show")]
    Show,
    /// Move the manual clock forward (a running daemon picks it up on its next sweep). With
    /// --wait, wait until every piece of work due by then is done (all missed periods billed,
    /// charged and emailed), showing progress.
    #[command(
        after_help = "Examples:\n  settled clock advance 2027-02-01T00:00:00Z\n  settled clock advance 2028-01-01T00:00:00Z --wait --timeout 900"
    )]
    Advance {
        to: String,
        /// Wait until a running daemon has finished all work due by then.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 75).
        #[arg(long, default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PaymentMethodsCommand {
    /// A customer's saved payment methods (brand, last 4, expiry; the default first).
    #[command(after_help = "Example:\n  settled payment-methods list --customer cus_123")]
    List {
        #[arg(long)]
        customer: String,
    },
    /// Save a gateway payment method token (pm_...) for a customer; card details are read from
    /// the gateway. Card numbers are never accepted.
    #[command(
        after_help = "Examples:\n  settled payment-methods add --customer cus_123 --token pm_1Nx...\n  settled payment-methods add --customer cus_123 --token pm_1Nx... --no-default"
    )]
    Add {
        #[arg(long)]
        customer: String,
        /// The gateway's payment method token.
        #[arg(long)]
        token: String,
        /// The gateway that holds the card.
        #[arg(long, default_value = crate::gateway::stripe::NAME)]
        gateway: String,
        /// Keep the current default (the first method saved is always the default).
        #[arg(long)]
        no_default: bool,
    },
    /// Make a saved method the customer's default (what automatic charges use).
    #[command(
        after_help = "Example:\n  settled payment-methods default --customer cus_123 spm_456"
    )]
    Default {
        #[arg(long)]
        customer: String,
        id: String,
    },
    /// Remove a saved method (detached at the gateway too).
    #[command(after_help = "Example:\n  settled payment-methods remove --customer cus_123 spm_456")]
    Remove {
        #[arg(long)]
        customer: String,
        id: String,
    },
}
