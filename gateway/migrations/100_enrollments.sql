-- The saga read model: one row per accepted enrollment, kept current from the events the gateway
-- consumes, plus its timestamped history.
CREATE TABLE enrollments (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    email               TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                          ('pending', 'enrolled', 'completed', 'rejected', 'compensating', 'rolled_back')),
    customer_id         TEXT,
    bonus_points        BIGINT,
    reason              TEXT,
    idempotency_key     TEXT UNIQUE,
    request_fingerprint TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

CREATE TABLE enrollment_history (
    id             TEXT PRIMARY KEY,
    enrollment_id  TEXT NOT NULL REFERENCES enrollments (id),
    status         TEXT NOT NULL,
    at             TEXT NOT NULL
);
CREATE INDEX enrollment_history_by_enrollment ON enrollment_history (enrollment_id, at);
