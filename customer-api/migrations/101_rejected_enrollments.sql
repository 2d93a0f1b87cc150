-- Enrollments refused because the e-mail was taken. Remembered so that the same enrollment,
-- should its Enroll come again under a new message id, gets the same answer even after a
-- rollback has freed the e-mail: a rejected saga never gains a customer.
CREATE TABLE rejected_enrollments (
    enrollment_id TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    reason        TEXT NOT NULL,
    rejected_at   TEXT NOT NULL
);
