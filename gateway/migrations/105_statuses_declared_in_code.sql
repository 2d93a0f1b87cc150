-- The saga's statuses are declared once, in code (`gateway::saga::Status`), which is the only
-- writer of the column; the list in 100's CHECK repeated them, and changing a CHECK on SQLite
-- means rebuilding the table. So both tables are rebuilt once, without it, in SQL that runs on
-- SQLite and PostgreSQL alike: copy into new tables, drop the old ones (the history first, as it
-- references the enrollments), and rename. Renaming keeps the history's reference on both (SQLite
-- rewrites it, PostgreSQL follows the table).
CREATE TABLE enrollments_next (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    email               TEXT NOT NULL,
    status              TEXT NOT NULL,
    customer_id         TEXT,
    bonus_points        BIGINT,
    reason              TEXT,
    idempotency_key     TEXT UNIQUE,
    request_fingerprint TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    stall_reported_at   TEXT,
    public_reason       TEXT,
    history_seq         BIGINT NOT NULL DEFAULT 0
);
INSERT INTO enrollments_next (id, name, email, status, customer_id, bonus_points, reason, idempotency_key,
                              request_fingerprint, created_at, updated_at, stall_reported_at, public_reason, history_seq)
    SELECT id, name, email, status, customer_id, bonus_points, reason, idempotency_key,
           request_fingerprint, created_at, updated_at, stall_reported_at, public_reason, history_seq
    FROM enrollments;

CREATE TABLE enrollment_history_next (
    id             TEXT PRIMARY KEY,
    enrollment_id  TEXT NOT NULL REFERENCES enrollments_next (id),
    status         TEXT NOT NULL,
    at             TEXT NOT NULL,
    event          TEXT,
    seq            BIGINT
);
INSERT INTO enrollment_history_next (id, enrollment_id, status, at, event, seq)
    SELECT id, enrollment_id, status, at, event, seq FROM enrollment_history;

DROP TABLE enrollment_history;
DROP TABLE enrollments;
ALTER TABLE enrollments_next RENAME TO enrollments;
ALTER TABLE enrollment_history_next RENAME TO enrollment_history;
CREATE INDEX enrollments_open ON enrollments (status, updated_at);
CREATE INDEX enrollment_history_by_enrollment ON enrollment_history (enrollment_id, at);
