-- Confirmation by e-mail (decision 0035): what the gateway holds of an enrollment that waits for
-- its address's owner. Only the SHA-256 of the token (hex), never the token; it is replaced on a
-- resend and cleared once used, and its unique index is how a confirmation finds its enrollment
-- (several NULLs are allowed on SQLite and PostgreSQL alike). `confirm_by` is the deadline the
-- expiry scan reads (in the database, so it survives restarts); `mailed_to` the masked address
-- the public view shows (`a…@example.com`); `resends` and `last_mailed_at` the resend limit's
-- bookkeeping; `already_enrolled` (0 or 1, from `ConfirmationRequested`) is for operators only.
ALTER TABLE enrollments ADD COLUMN confirmation_token_hash TEXT;
ALTER TABLE enrollments ADD COLUMN confirm_by TEXT;
ALTER TABLE enrollments ADD COLUMN mailed_to TEXT;
ALTER TABLE enrollments ADD COLUMN resends BIGINT NOT NULL DEFAULT 0;
ALTER TABLE enrollments ADD COLUMN last_mailed_at TEXT;
ALTER TABLE enrollments ADD COLUMN already_enrolled BIGINT;
CREATE UNIQUE INDEX enrollments_by_confirmation_token ON enrollments (confirmation_token_hash);
CREATE INDEX enrollments_by_confirm_by ON enrollments (status, confirm_by);
