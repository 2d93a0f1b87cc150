-- Customers are never deleted: an unenrolled (rolled back) customer keeps its row with the
-- reason and time, so the history of a saga can be explained later.
CREATE TABLE customers (
    id             TEXT PRIMARY KEY,
    enrollment_id  TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    email          TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'unenrolled')),
    enrolled_at    TEXT NOT NULL,
    unenrolled_at  TEXT,
    unenroll_reason TEXT
);

-- An e-mail address belongs to at most one active customer; a rolled-back enrollment frees it.
CREATE UNIQUE INDEX customers_active_email ON customers (email) WHERE status = 'active';
