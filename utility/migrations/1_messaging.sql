-- Shared by every service: the transactional outbox and the record of handled messages.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Messages written in the same transaction as the state change that caused them; the relay
-- publishes pending rows and stamps sent_at.
CREATE TABLE outbox (
    id             TEXT PRIMARY KEY,   -- envelope message id
    destination    TEXT NOT NULL,      -- logical endpoint name, e.g. 'customer-events'
    message_type   TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    body           TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    sent_at        TEXT
);
CREATE INDEX outbox_pending ON outbox (created_at) WHERE sent_at IS NULL;

-- Ids of messages whose effect is committed, so a redelivery has no second effect.
CREATE TABLE processed_messages (
    message_id     TEXT PRIMARY KEY,
    message_type   TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    processed_at   TEXT NOT NULL
);
