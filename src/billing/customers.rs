//! Saving and removing a customer's cards at its gateway. The gateway keeps the card; the
//! daemon keeps the token, brand, last 4 and expiry, never a number.

use settled_jobs::gateway::NewGatewayCustomer;
use settled_jobs::ids::{new_id, prefix};

use super::{Billing, Error, Result};
use crate::store::customers::{self, CustomerPatch};
use crate::store::ms;
use crate::store::payment_methods::{self, PaymentMethodRow};

/// Attaches a gateway token to the customer at `gateway_name` (creating the customer there on
/// first use) and saves the card the gateway describes.
pub async fn add_payment_method(
    b: &Billing,
    customer_id: &str,
    gateway_name: &str,
    token: &str,
    default: Option<bool>,
) -> Result<PaymentMethodRow> {
    let customer = customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let gateway = b.gateways.get(gateway_name).cloned().ok_or_else(|| {
        Error::conflict(
            "gateway_not_configured",
            format!("no payment gateway {gateway_name} is configured (stripe.api_key)"),
        )
    })?;
    let gateway_customer = gateway_customer(b, &customer, gateway.as_ref()).await?;
    let card = gateway
        .attach_payment_method(&gateway_customer, token)
        .await?;
    let existing = payment_methods::list(&b.db, customer_id).await?;
    let make_default = default.unwrap_or(true) || existing.is_empty();
    let row = PaymentMethodRow {
        id: new_id(prefix::PAYMENT_METHOD),
        customer_id: customer_id.to_string(),
        gateway: gateway.name().to_string(),
        token: card.token,
        brand: card.brand,
        last4: card.last4,
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        is_default: make_default,
        created_at: ms(b.now()),
    };
    let mut tx = b.db.begin().await?;
    if let Err(e) = payment_methods::insert(&mut tx, &row, make_default).await {
        if e.is_unique_violation() {
            return Err(Error::conflict(
                "payment_method_exists",
                "this payment method is already saved",
            ));
        }
        return Err(e.into());
    }
    tx.commit().await?;
    tracing::info!(customer_id, payment_method_id = %row.id, brand = %row.brand, "payment method saved");
    Ok(row)
}

/// The customer's id at `gateway`, created there on first use (so customers can exist before a
/// gateway does).
async fn gateway_customer(
    b: &Billing,
    customer: &customers::CustomerRow,
    gateway: &dyn settled_jobs::gateway::Gateway,
) -> Result<String> {
    if let Some(g) = &customer.gateway_customer_id {
        return Ok(g.clone());
    }
    let created = gateway
        .create_customer(&NewGatewayCustomer {
            customer_id: customer.id.clone(),
            email: customer.email.clone(),
            name: customer.name.clone(),
        })
        .await?;
    let mut tx = b.db.begin().await?;
    customers::update(
        &mut tx,
        &customer.id,
        &CustomerPatch {
            gateway_customer_id: Some(created.clone()),
            ..Default::default()
        },
        b.now(),
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// Starts saving a card entered in the customer's browser (the portal's "Add a card"): a card
/// setup at the default gateway for the customer's gateway customer. Card data goes from the
/// browser to the gateway; the daemon only ever sees the setup's id and the token it produced.
pub async fn start_card_setup(
    b: &Billing,
    customer_id: &str,
) -> Result<settled_jobs::gateway::CardSetup> {
    let customer = customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let name = b.gateways.default_name();
    let gateway = b.gateways.get(name).cloned().ok_or_else(|| {
        Error::conflict("gateway_not_configured", "no payment gateway is configured")
    })?;
    let gateway_customer = gateway_customer(b, &customer, gateway.as_ref()).await?;
    Ok(gateway.start_card_setup(&gateway_customer).await?)
}

/// Saves the card a finished card setup produced, with its brand and last 4 read from the
/// gateway; refused unless the setup succeeded for this very customer.
pub async fn finish_card_setup(
    b: &Billing,
    customer_id: &str,
    setup_id: &str,
    make_default: bool,
) -> Result<PaymentMethodRow> {
    let customer = customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let name = b.gateways.default_name();
    let gateway = b.gateways.get(name).cloned().ok_or_else(|| {
        Error::conflict("gateway_not_configured", "no payment gateway is configured")
    })?;
    let state = gateway.card_setup(setup_id).await?;
    let ours = customer.gateway_customer_id.is_some()
        && state.gateway_customer_id == customer.gateway_customer_id;
    let token = match (&state.payment_method, state.succeeded && ours) {
        (Some(pm), true) => pm.clone(),
        _ => {
            return Err(Error::invalid(
                "setup_intent",
                "the card was not saved for this account",
            ));
        }
    };
    if payment_methods::list(&b.db, customer_id)
        .await?
        .iter()
        .any(|m| m.token == token)
    {
        return Err(Error::conflict(
            "payment_method_exists",
            "this payment method is already saved",
        ));
    }
    add_payment_method(b, customer_id, name, &token, Some(make_default)).await
}

/// Detaches the card at its gateway (one the gateway no longer knows is gone already) and
/// removes it here.
pub async fn remove_payment_method(b: &Billing, customer_id: &str, id: &str) -> Result<()> {
    let row = payment_methods::get(&b.db, customer_id, id)
        .await?
        .ok_or_else(|| Error::not_found("payment method", id))?;
    if let Some(gateway) = b.gateways.get(&row.gateway) {
        match gateway.detach_payment_method(&row.token).await {
            Ok(()) | Err(settled_jobs::gateway::GatewayError::Invalid { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    payment_methods::remove(&b.db, customer_id, id, b.now()).await?;
    Ok(())
}
