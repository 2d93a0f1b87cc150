-- Callbacks (issue 23, decision 0044). An enrollment may name a URL to call on each status
-- change; a 410 from it stops its callbacks (`callback_gone_at`).
ALTER TABLE enrollments ADD COLUMN callback_url TEXT;
ALTER TABLE enrollments ADD COLUMN callback_gone_at TEXT;
-- One row per status change to deliver: the schedule of its attempts, kept here because retries
-- last up to 24 h, beyond what SQS can delay. `id` is the status event's message id, sent as
-- `webhook-id`: stable across attempts, and a redelivered event finds its row already there.
-- `state`: pending, delivered, stopped (410), failed (24 h of failures, or an address refused).
-- A dispatcher claims due rows with a lease (`claimed_until`), as the outbox relay does.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    enrollment_id    TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT,
    claimed_until    TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status      INTEGER,
    last_error       TEXT,
    finished_at      TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_by_enrollment ON webhook_deliveries (enrollment_id);
