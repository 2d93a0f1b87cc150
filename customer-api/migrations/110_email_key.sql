-- One address, one customer: uniqueness is on the address's key (its written form with any
-- sub-address folded, `Email::key`), no longer on the address as written, so `ada+1@` and `ada@`
-- cannot be two active customers. `email` keeps the address mail goes to.
--
-- Rows written before this migration take their address as key: they were lower-cased already,
-- but not folded, so two earlier customers whose addresses fold together both stay active (a
-- unique index on the folded form would refuse to build). New enrollments meet the folded key.
ALTER TABLE customers ADD COLUMN email_key TEXT;
UPDATE customers SET email_key = email;
DROP INDEX customers_active_email;
CREATE UNIQUE INDEX customers_active_email_key ON customers (email_key) WHERE status = 'active';
