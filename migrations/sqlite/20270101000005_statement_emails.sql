-- When the customer last opted in to monthly statements (NULL while opted out). A month's
-- statement goes out only to customers who had opted in before that month ended in their time
-- zone, so opting in mid-month brings the next statement, not the one just past. Customers
-- already opted in count from their last change, the latest moment they can have opted in.
ALTER TABLE customers ADD COLUMN statement_emails_since BIGINT;
UPDATE customers SET statement_emails_since = updated_at WHERE statement_emails;
-- The sweep looks for opted-in customers by time zone.
CREATE INDEX customers_statement_emails ON customers(timezone, statement_emails_since) WHERE statement_emails;
