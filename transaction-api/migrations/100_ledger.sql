-- Every points movement, one row each. The unique (enrollment_id, kind) pair is the last line of
-- defence against a double bonus: one enrollment earns the enrollment bonus once, whatever the bus
-- delivers.
CREATE TABLE ledger (
    id             TEXT PRIMARY KEY,
    customer_id    TEXT NOT NULL,
    enrollment_id  TEXT NOT NULL,
    kind           TEXT NOT NULL,
    points         BIGINT NOT NULL,
    posted_at      TEXT NOT NULL,
    UNIQUE (enrollment_id, kind)
);
CREATE INDEX ledger_customer ON ledger (customer_id, posted_at);

-- Current balance per customer, kept in step with the ledger in the same transaction.
CREATE TABLE balances (
    customer_id    TEXT PRIMARY KEY,
    points         BIGINT NOT NULL
);

-- Points granted so far per campaign; the budget check is a single conditional UPDATE, so two
-- consumers cannot both take the last points.
CREATE TABLE campaigns (
    id             TEXT PRIMARY KEY,
    granted_points BIGINT NOT NULL
);
INSERT INTO campaigns (id, granted_points) VALUES ('enrollment-bonus', 0);
