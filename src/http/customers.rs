//! Customers, their billing contacts and saved payment methods.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use settled_jobs::gateway::GatewayError;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::money::Currency;

use super::extract::{ApiBytes, ApiJson, ApiQuery, parse};
use super::format::{amount, rfc3339_ms};
use super::openapi::wire::{
    self, Amount, CurrencyInput, CustomerId, ErrorBody, PaymentMethodId, Timestamp,
};
use super::{ApiError, AppState, ListResponse, Paging};
use crate::store::customers::{self as store, Customer, CustomerPatch, NewCustomer};
use crate::store::payment_methods::{self, PaymentMethodRow};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/customers", post(create).get(list))
        .route("/customers/{id}", get(show).patch(update))
        .route(
            "/customers/{id}/payment_methods",
            post(add_payment_method).get(list_payment_methods),
        )
        .route(
            "/customers/{id}/payment_methods/{pm}",
            get(show_payment_method).delete(remove_payment_method),
        )
        .route(
            "/customers/{id}/payment_methods/{pm}/default",
            post(make_default),
        )
}

/// A customer with its balances.
#[derive(Serialize, ToSchema)]
#[schema(as = Customer)]
pub struct CustomerView {
    #[schema(value_type = CustomerId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^customer$")]
    pub object: &'static str,
    pub email: String,
    pub name: String,
    #[schema(value_type = wire::Currency)]
    pub currency: String,
    /// The IANA time zone its schedules and statements are read in.
    pub timezone: String,
    /// Who receives its invoices and receipts.
    pub billing_emails: Vec<String>,
    pub auto_charge: bool,
    pub apply_retainer: bool,
    pub statement_emails: bool,
    /// The customer at the gateway (`cus_...`), when there is one.
    #[schema(required = true)]
    pub gateway_customer_id: Option<String>,
    /// Credit held, applied to its next invoices.
    #[schema(value_type = Amount)]
    pub credit_balance: String,
    /// Retainer deposits paid and not yet applied or refunded.
    #[schema(value_type = Amount)]
    pub retainer_balance: String,
    /// What its open invoices still owe.
    #[schema(value_type = Amount)]
    pub outstanding: String,
    #[schema(value_type = Timestamp)]
    pub created_at: String,
}

impl From<Customer> for CustomerView {
    fn from(c: Customer) -> Self {
        let cur = c.row.currency.clone();
        CustomerView {
            credit_balance: amount(c.credit_balance, &cur),
            retainer_balance: amount(c.retainer_balance, &cur),
            outstanding: amount(c.outstanding, &cur),
            created_at: rfc3339_ms(c.row.created_at),
            id: c.row.id,
            object: "customer",
            email: c.row.email,
            name: c.row.name,
            currency: c.row.currency,
            timezone: c.row.timezone,
            billing_emails: c.billing_emails,
            auto_charge: c.row.auto_charge,
            apply_retainer: c.row.apply_retainer,
            statement_emails: c.row.statement_emails,
            gateway_customer_id: c.row.gateway_customer_id,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCustomer {
    /// The customer's address; the default billing contact.
    email: String,
    /// 1 to 200 characters.
    name: String,
    #[schema(value_type = CurrencyInput)]
    currency: String,
    /// An IANA time zone; default `UTC`.
    timezone: Option<String>,
    /// 1 to 20 addresses; default `[email]`.
    billing_emails: Option<Vec<String>>,
    /// Default true.
    auto_charge: Option<bool>,
    /// Default false.
    apply_retainer: Option<bool>,
    /// Default false.
    statement_emails: Option<bool>,
    /// The customer at the gateway, `cus_...`.
    gateway_customer_id: Option<String>,
}

/// A pragmatic address check: one @, a non-empty local part, a dotted domain, no spaces or
/// angle brackets, and an address the mailer can put on an envelope. Deliverability is the mail
/// server's call.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.parse::<lettre::Address>().is_ok()
        && !local.is_empty()
        && local.len() <= 64
        && domain.len() >= 3
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

fn check_email(field: &str, s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if valid_email(s) {
        Ok(s.to_string())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{s:?} is not an email address"),
        ))
    }
}

fn check_billing_emails(list: &[String]) -> Result<Vec<String>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::invalid(
            "billing_emails",
            "must hold at least one address",
        ));
    }
    if list.len() > 20 {
        return Err(ApiError::invalid("billing_emails", "at most 20 addresses"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let e = check_email(&format!("billing_emails[{i}]"), e)?;
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&e)) {
            out.push(e);
        }
    }
    Ok(out)
}

fn check_timezone(tz: &str) -> Result<String, ApiError> {
    tz.parse::<chrono_tz::Tz>()
        .map(|t| t.name().to_string())
        .map_err(|_| {
            ApiError::invalid(
                "timezone",
                format!("{tz:?} is not an IANA time zone like Europe/Berlin"),
            )
        })
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.len() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    Ok(n.to_string())
}

fn check_gateway_customer(id: &str) -> Result<String, ApiError> {
    if id.starts_with("cus_") && id.len() > 4 && id.len() <= 255 {
        Ok(id.to_string())
    } else {
        Err(ApiError::invalid(
            "gateway_customer_id",
            "must be a gateway customer id like cus_...",
        ))
    }
}

#[utoipa::path(post, path = "/v1/customers", tag = "customers", operation_id = "create_customer",
    request_body = CreateCustomer,
    responses((status = 201, description = "The customer, created.", body = CustomerView)))]
async fn create(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let email = check_email("email", &body.email)?;
    let name = check_name(&body.name)?;
    let currency = Currency::parse(&body.currency)
        .map_err(|e| ApiError::invalid("currency", e))?
        .code()
        .to_string();
    let timezone = check_timezone(body.timezone.as_deref().unwrap_or("UTC"))?;
    let billing_emails = match &body.billing_emails {
        Some(list) => check_billing_emails(list)?,
        None => vec![email.clone()],
    };
    let gateway_customer_id = body
        .gateway_customer_id
        .as_deref()
        .map(check_gateway_customer)
        .transpose()?;
    let new = NewCustomer {
        id: new_id(prefix::CUSTOMER),
        email,
        name,
        currency,
        timezone,
        billing_emails,
        auto_charge: body.auto_charge.unwrap_or(true),
        apply_retainer: body.apply_retainer.unwrap_or(false),
        statement_emails: body.statement_emails.unwrap_or(false),
        gateway_customer_id,
    };
    let mut tx = state.billing.db.begin().await?;
    store::insert(&mut tx, &new, state.billing.now()).await?;
    tx.commit().await?;
    tracing::info!(customer_id = %new.id, "customer created");
    let customer = store::get(&state.billing.db, &new.id)
        .await?
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("customer vanished after insert")))?;
    Ok((StatusCode::CREATED, Json(customer.into())))
}

#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers", operation_id = "get_customer",
    params(("id" = CustomerId, Path, description = "The customer.")),
    responses((status = 200, description = "The customer with its balances.", body = CustomerView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    store::get(&state.billing.db, &id)
        .await?
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::not_found("customer", &id))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CustomerQuery {
    /// Only the customers this address receives bills for.
    billing_email: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/customers", tag = "customers", operation_id = "list_customers",
    params(CustomerQuery, Paging),
    responses((status = 200, description = "A page of customers, oldest first.",
        body = ListResponse<CustomerView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<CustomerQuery>,
) -> Result<Json<ListResponse<CustomerView>>, ApiError> {
    let limit = q.paging.limit()?;
    let items = store::list(
        &state.billing.db,
        q.billing_email.as_deref().map(str::trim),
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    Ok(Json(ListResponse::page(
        items.into_iter().map(CustomerView::from).collect(),
        limit,
    )))
}

/// Only the fields given change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateCustomer {
    name: Option<String>,
    email: Option<String>,
    billing_emails: Option<Vec<String>>,
    auto_charge: Option<bool>,
    apply_retainer: Option<bool>,
    statement_emails: Option<bool>,
    timezone: Option<String>,
    gateway_customer_id: Option<String>,
}

#[utoipa::path(patch, path = "/v1/customers/{id}", tag = "customers", operation_id = "update_customer",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body = UpdateCustomer,
    responses((status = 200, description = "The customer as it is now.", body = CustomerView)))]
async fn update(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateCustomer>,
) -> Result<Json<CustomerView>, ApiError> {
    let patch = CustomerPatch {
        name: body.name.as_deref().map(check_name).transpose()?,
        email: body
            .email
            .as_deref()
            .map(|e| check_email("email", e))
            .transpose()?,
        timezone: body.timezone.as_deref().map(check_timezone).transpose()?,
        auto_charge: body.auto_charge,
        apply_retainer: body.apply_retainer,
        statement_emails: body.statement_emails,
        billing_emails: body
            .billing_emails
            .as_deref()
            .map(check_billing_emails)
            .transpose()?,
        gateway_customer_id: body
            .gateway_customer_id
            .as_deref()
            .map(check_gateway_customer)
            .transpose()?,
    };
    let mut tx = state.billing.db.begin().await?;
    if !store::update(&mut tx, &id, &patch, state.billing.now()).await? {
        return Err(ApiError::not_found("customer", &id));
    }
    tx.commit().await?;
    show(AxState(state), Path(id)).await
}

/// A saved card: the gateway's token with brand, last 4 digits and expiry; never the number.
#[derive(Serialize, ToSchema)]
#[schema(as = PaymentMethod)]
pub struct PaymentMethodView {
    #[schema(value_type = PaymentMethodId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^payment_method$")]
    pub object: &'static str,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    pub gateway: String,
    /// The gateway's payment method token (`pm_...`).
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub default: bool,
    #[schema(value_type = Timestamp)]
    pub created_at: String,
}

impl From<PaymentMethodRow> for PaymentMethodView {
    fn from(p: PaymentMethodRow) -> Self {
        PaymentMethodView {
            created_at: rfc3339_ms(p.created_at),
            id: p.id,
            object: "payment_method",
            customer_id: p.customer_id,
            gateway: p.gateway,
            token: p.token,
            brand: p.brand,
            last4: p.last4,
            exp_month: p.exp_month,
            exp_year: p.exp_year,
            default: p.is_default,
        }
    }
}

/// A card tokenized at the gateway. A body carrying a card number or security code anywhere is
/// refused (422 `card_data_refused`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddPaymentMethod {
    /// The gateway's name: `stripe`.
    gateway: String,
    /// The gateway's payment method token, `pm_...`.
    token: String,
    /// Make it the default one (the first saved method is the default anyway).
    default: Option<bool>,
}

/// What `DELETE` answers.
#[derive(Serialize, ToSchema)]
#[schema(as = DeletedPaymentMethod)]
pub struct DeletedView {
    #[schema(value_type = PaymentMethodId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^payment_method$")]
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}

/// Keys that would carry raw card data. Their presence refuses the request outright, and the body
/// is never logged.
const CARD_FIELDS: &[&str] = &[
    "number",
    "card_number",
    "cardnumber",
    "pan",
    "cvc",
    "cvv",
    "cvc2",
    "cvv2",
    "card",
    "exp",
    "security_code",
];

#[utoipa::path(post, path = "/v1/customers/{id}/payment_methods", tag = "payment_methods",
    operation_id = "add_payment_method",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body = AddPaymentMethod,
    responses(
        (status = 201, description = "The saved method; card details read from the gateway.",
            body = PaymentMethodView),
        (status = 409, description = "No payment gateway is configured (`gateway_not_configured`).",
            body = ErrorBody),
        (status = 502, description = "The gateway did not answer (`gateway_error`); try again.",
            body = ErrorBody),
    ))]
async fn add_payment_method(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiBytes(body): ApiBytes,
) -> Result<(StatusCode, Json<PaymentMethodView>), ApiError> {
    // Read as a number-preserving value only to look: a card number sent as a JSON number must
    // not reach the typed parse, whose error would echo it.
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::Malformed("the body is not valid JSON".into()))?;
    if crate::http::extract::holds_card_data(&value, CARD_FIELDS) {
        return Err(ApiError::Invalid {
                code: "card_data_refused",
                message: "card numbers and security codes are never accepted; tokenize the card with the gateway and send its payment method token (pm_...)".into(),
            });
    }
    let req: AddPaymentMethod = parse(&body)?;
    if !crate::gateway::supports(&req.gateway) {
        return Err(ApiError::invalid(
            "gateway",
            format!(
                "must be one of {}",
                crate::gateway::SUPPORTED
                    .iter()
                    .map(|g| format!("\"{g}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if !req.token.starts_with("pm_") || req.token.len() > 255 {
        return Err(ApiError::invalid(
            "token",
            "must be a gateway payment method token like pm_...",
        ));
    }
    let row = crate::billing::customers::add_payment_method(
        &state.billing,
        &id,
        &req.gateway,
        &req.token,
        req.default,
    )
    .await
    .map_err(payment_method_error)?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// A gateway's refusal of a card is a 422 here (no charge was attempted), not a 402.
fn payment_method_error(e: crate::billing::Error) -> ApiError {
    match e {
        crate::billing::Error::Gateway(g) => gateway_error(g),
        other => other.into(),
    }
}

fn gateway_error(e: GatewayError) -> ApiError {
    match e {
        GatewayError::Invalid { message, param } => ApiError::Invalid {
            code: "gateway_refused",
            message: match param {
                Some(p) => format!("the gateway refused {p}: {message}"),
                None => format!("the gateway refused the request: {message}"),
            },
        },
        GatewayError::Declined { message, .. } => ApiError::Invalid {
            code: "card_declined",
            message,
        },
        GatewayError::NotConfigured => {
            ApiError::conflict("gateway_not_configured", "no payment gateway is configured")
        }
        GatewayError::Unknown(m) => {
            tracing::warn!(error = %m, "gateway call failed");
            ApiError::Gateway("the payment gateway did not answer; try again".into())
        }
    }
}

#[utoipa::path(get, path = "/v1/customers/{id}/payment_methods", tag = "payment_methods",
    operation_id = "list_payment_methods",
    params(("id" = CustomerId, Path, description = "The customer.")),
    responses((status = 200, description = "Every saved method of the customer (one page).",
        body = ListResponse<PaymentMethodView>)))]
async fn list_payment_methods(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ListResponse<PaymentMethodView>>, ApiError> {
    if store::get_row(&state.billing.db, &id).await?.is_none() {
        return Err(ApiError::not_found("customer", &id));
    }
    let items: Vec<PaymentMethodView> = payment_methods::list(&state.billing.db, &id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    let limit = items.len() as i64;
    Ok(Json(ListResponse::page(items, limit)))
}

#[utoipa::path(get, path = "/v1/customers/{id}/payment_methods/{pm}", tag = "payment_methods",
    operation_id = "get_payment_method",
    params(("id" = CustomerId, Path, description = "The customer."),
        ("pm" = PaymentMethodId, Path, description = "The saved method.")),
    responses((status = 200, description = "The saved method.", body = PaymentMethodView)))]
async fn show_payment_method(
    AxState(state): AxState<Arc<AppState>>,
    Path((id, pm)): Path<(String, String)>,
) -> Result<Json<PaymentMethodView>, ApiError> {
    payment_methods::get(&state.billing.db, &id, &pm)
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::not_found("payment method", &pm))
}

#[utoipa::path(post, path = "/v1/customers/{id}/payment_methods/{pm}/default", tag = "payment_methods",
    operation_id = "make_default_payment_method",
    params(("id" = CustomerId, Path, description = "The customer."),
        ("pm" = PaymentMethodId, Path, description = "The saved method.")),
    responses((status = 200, description = "The method, now the default one.",
        body = PaymentMethodView)))]
async fn make_default(
    AxState(state): AxState<Arc<AppState>>,
    Path((id, pm)): Path<(String, String)>,
) -> Result<Json<PaymentMethodView>, ApiError> {
    if !payment_methods::set_default(&state.billing.db, &id, &pm).await? {
        return Err(ApiError::not_found("payment method", &pm));
    }
    show_payment_method(AxState(state), Path((id, pm))).await
}

#[utoipa::path(delete, path = "/v1/customers/{id}/payment_methods/{pm}", tag = "payment_methods",
    operation_id = "remove_payment_method",
    params(("id" = CustomerId, Path, description = "The customer."),
        ("pm" = PaymentMethodId, Path, description = "The saved method.")),
    responses(
        (status = 200, description = "Removed here and detached at the gateway.", body = DeletedView),
        (status = 409, description = "No payment gateway is configured.", body = ErrorBody),
        (status = 502, description = "The gateway did not answer; try again.", body = ErrorBody),
    ))]
async fn remove_payment_method(
    AxState(state): AxState<Arc<AppState>>,
    Path((id, pm)): Path<(String, String)>,
) -> Result<Json<DeletedView>, ApiError> {
    crate::billing::customers::remove_payment_method(&state.billing, &id, &pm)
        .await
        .map_err(payment_method_error)?;
    Ok(Json(DeletedView {
        id: pm,
        object: "payment_method",
        deleted: true,
    }))
}
