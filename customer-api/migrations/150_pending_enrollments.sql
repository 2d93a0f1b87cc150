-- Enrollments waiting for the owner of their address to confirm them (decision 0035): nothing is
-- a customer until then. A row goes when the enrollment is confirmed (the customer is created
-- from it), forgotten (`ForgetEnrollment`) or past `expires_at` (the customer-api's own sweep),
-- so no name or address outlives the deadline.
--
-- `email_key` is the address's key under the sub-address policy in force when the enrollment
-- arrived; `already_enrolled` (0 or 1) says an active customer had that key then, so the mail was
-- a note without a link. Several rows may share an address: anyone may ask, only its owner
-- confirms, and the customers' unique key decides between two confirmations.
CREATE TABLE pending_enrollments (
    enrollment_id    TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    email            TEXT NOT NULL,
    email_key        TEXT NOT NULL,
    already_enrolled BIGINT NOT NULL CHECK (already_enrolled IN (0, 1)),
    expires_at       TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX pending_enrollments_expiry ON pending_enrollments (expires_at);
