-- One address, one customer: uniqueness is on the address's key (its canonical form with any
-- sub-address folded, `Email::key`), so `ada+1@` and `ada@` cannot be two active customers.
-- `email` keeps the address mail goes to.
--
-- Rows written before this migration get no key here: the canonical form (NFC, IDNA) cannot be
-- computed in SQL. The customer-api fills missing keys at start-up and every minute after
-- (`customers::keep_email_keys_filled`), which also covers rows that an instance of the previous
-- release inserts during a rolling update or after a rollback. The index on the address as
-- written stays, so those instances still refuse a second customer for the same written address.
ALTER TABLE customers ADD COLUMN email_key TEXT;
CREATE UNIQUE INDEX customers_active_email_key ON customers (email_key) WHERE status = 'active';
