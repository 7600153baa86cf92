-- The operator's view of the email outbox lists by customer and by invoice, newest first.
CREATE INDEX emails_customer ON emails(customer_id, created_at);
CREATE INDEX emails_invoice ON emails(invoice_id);
