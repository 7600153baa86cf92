//! PDFs through the API: `GET /v1/invoices/{id}/pdf` and `GET /v1/payments/{id}/receipt.pdf`,
//! each the same bytes as the attachment of the email that carried it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use settled_jobs::template::Template;

use super::openapi::wire::{ErrorBody, InvoiceId, PaymentId};
use super::{ApiError, AppState};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/invoices/{id}/pdf", get(invoice_pdf))
        .route("/payments/{id}/receipt.pdf", get(receipt_pdf))
}

#[utoipa::path(get, path = "/v1/invoices/{id}/pdf", tag = "invoices", operation_id = "get_invoice_pdf",
    params(("id" = InvoiceId, Path, description = "The invoice.")),
    responses(
        (status = 200, description = "The invoice PDF, the same bytes as the email's attachment.",
            content_type = "application/pdf", body = Vec<u8>),
        (status = 404, description = "No such invoice, or not issued yet.", body = ErrorBody),
    ))]
async fn invoice_pdf(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pdf(&state, Template::Invoice, &id, "invoice").await
}

#[utoipa::path(get, path = "/v1/payments/{id}/receipt.pdf", tag = "payments",
    operation_id = "get_receipt_pdf",
    params(("id" = PaymentId, Path, description = "The payment.")),
    responses(
        (status = 200, description = "The receipt PDF, the same bytes as the email's attachment.",
            content_type = "application/pdf", body = Vec<u8>),
        (status = 404, description = "No such payment, or no receipt for it.", body = ErrorBody),
    ))]
async fn receipt_pdf(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    pdf(&state, Template::Receipt, &id, "payment").await
}

async fn pdf(
    state: &AppState,
    template: Template,
    id: &str,
    what: &str,
) -> Result<Response, ApiError> {
    let billing = &state.billing;
    let Some(doc) = crate::outbox::document(&billing.db, &billing.config, template, id).await?
    else {
        return Err(ApiError::NotFound(format!(
            "no {what} {id} with a {} PDF (unknown, not issued yet, or its email's snapshot \
             was pruned by retention)",
            template.name()
        )));
    };
    let doc = doc.map_err(|e| ApiError::Unexpected(anyhow::anyhow!(e)))?;
    let disposition = format!(
        "inline; filename=\"{}\"",
        doc.filename.replace(['"', '\\', '\r', '\n'], "_")
    );
    let mut response = doc.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
