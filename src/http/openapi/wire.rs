//! The API's wire types as the OpenAPI document names them: amounts as decimal strings, instants,
//! currencies, prefixed ids, the names of every status, and the error body. Each is a schema the
//! views and inputs refer to (`#[schema(value_type = Amount)]`); the names of statuses and kinds
//! are read from the enums the daemon itself parses them with, so the document cannot list a
//! value the daemon does not know.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

/// A string schema with a pattern, a description and an example.
fn text(description: &str, pattern: Option<&str>, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .examples([serde_json::Value::from(example)])
        .into()
}

/// A string schema holding one of `names`.
fn one_of(description: &str, names: Vec<&str>) -> RefOr<Schema> {
    let example = names.first().copied().unwrap_or_default().to_string();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .examples([serde_json::Value::from(example)])
        .into()
}

/// Declares a documentation-only type whose schema `$body` builds.
macro_rules! schema_type {
    ($(#[$meta:meta])* $name:ident => $body:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $body
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// An id the daemon made: its prefix, an underscore and 24 letters or digits.
macro_rules! id_type {
    ($name:ident, $prefix:literal, $what:literal) => {
        schema_type!(
            #[doc = concat!("The id of ", $what, " (`", $prefix, "_...`).")]
            $name => text(
                concat!("The id of ", $what, ": `", $prefix, "_` and 24 letters or digits."),
                Some(concat!("^", $prefix, "_[0-9A-Za-z]{24}$")),
                concat!($prefix, "_01HZX3K9Q7V2M8N4P6R5T0W1Y3"),
            )
        );
    };
}

/// The pattern of every amount the API takes or shows.
pub const AMOUNT_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?$";

schema_type!(
    /// An amount: a decimal string in the currency's major unit.
    Amount => text(
        "An amount as a decimal string in the currency's major unit, with at most the \
         currency's number of decimal places (\"19.99\" USD, \"1000\" JPY, \"1.500\" KWD). \
         Never a JSON number. Amounts taken are at most 1000000000000 in absolute value.",
        Some(AMOUNT_PATTERN),
        "19.99",
    )
);

schema_type!(
    /// A non-negative decimal string: a quantity or a tax rate.
    Decimal => text(
        "A non-negative decimal string (\"1\", \"2.5\"); a tax rate is a fraction between 0 \
         and 1 (\"0.20\" for 20 %).",
        Some(r"^[0-9]+(\.[0-9]+)?$"),
        "1",
    )
);

schema_type!(
    /// An instant as the API shows it.
    Timestamp => ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("An RFC 3339 instant in UTC, to the second."))
        .examples([serde_json::Value::from("2027-01-31T00:00:00Z")])
        .into()
);

schema_type!(
    /// An instant as the API takes it.
    Instant => ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("An RFC 3339 instant (any offset; stored in UTC)."))
        .examples([serde_json::Value::from("2027-01-31T00:00:00Z")])
        .into()
);

schema_type!(
    /// An ISO 4217 code as the API shows it.
    Currency => text(
        "An ISO 4217 currency code in upper case.",
        Some("^[A-Z]{3}$"),
        "USD",
    )
);

schema_type!(
    /// An ISO 4217 code as the API takes it.
    CurrencyInput => text(
        "An ISO 4217 currency code the daemon knows (either case).",
        Some("^[A-Za-z]{3}$"),
        "USD",
    )
);

id_type!(CustomerId, "cus", "a customer");
id_type!(SubscriptionId, "sub", "a subscription");
id_type!(InvoiceId, "in", "an invoice");
id_type!(LineId, "il", "an invoice line");
id_type!(PaymentId, "pay", "a payment");
id_type!(PaymentMethodId, "spm", "a saved payment method");
id_type!(CreditNoteId, "cn", "a credit note");
id_type!(RetainerId, "ret", "a retainer deposit");
id_type!(RefundId, "re", "a refund");
id_type!(WebhookEventId, "whe", "a stored webhook event");
id_type!(EmailId, "em", "an email");
id_type!(ChargeAttemptId, "ca", "a charge attempt");

schema_type!(
    /// Work set aside after a failure, by its kind and its item.
    JobId => text(
        "A set-aside item of work: `{kind}:{item id}`.",
        Some("^[a-z_]+:.+$"),
        "charge_invoice:ca_01HZX3K9Q7V2M8N4P6R5T0W1Y3",
    )
);

use settled_jobs::status;

schema_type!(InvoiceStatus => one_of("An invoice's status.", status::InvoiceStatus::names()));
schema_type!(InvoiceKind => one_of("What an invoice is for.", status::InvoiceKind::names()));
schema_type!(PaymentStatus => one_of("A payment's status after its refunds and disputes.", status::PaymentStatus::names()));
schema_type!(EventStatus => one_of("A stored webhook event's status.", status::EventStatus::names()));
schema_type!(OfflineMethod => one_of("How an offline payment was made.", status::OfflineMethod::names()));
schema_type!(EmailTemplate => one_of("The kind of email.", settled_jobs::template::Template::names()));
schema_type!(EmailStatus => one_of("An email's status.", crate::store::emails::EMAIL_STATUSES.to_vec()));
schema_type!(CreditSource => one_of("Where a credit note's credit came from.", status::CreditSource::names()));
schema_type!(SubscriptionStatus => one_of(
    "A subscription's status.",
    crate::http::subscriptions::STATUSES.to_vec()
));
schema_type!(CatchUp => one_of(
    "What periods missed while nobody billed become: `all` (one invoice each), `latest` (the \
     most recent only) or `skip` (none).",
    vec!["all", "latest", "skip"]
));
schema_type!(Unit => one_of("A schedule's unit.", vec!["day", "week", "month", "year"]));
schema_type!(WorkKind => one_of(
    "A kind of work.",
    settled_jobs::job::WorkKind::ALL.iter().map(|k| k.name()).collect()
));

/// `{"error": {"code", "message"}}`: every refusal and failure.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// A snake_case code a program can match on (`not_found`, `invalid_request`, ...).
    #[schema(pattern = "^[a-z][a-z0-9_]*$")]
    pub code: String,
    /// A sentence for people; for an invalid field it starts with the field's path.
    pub message: String,
    /// The gateway's decline code, on `card_declined` answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub decline_code: Option<String>,
}
