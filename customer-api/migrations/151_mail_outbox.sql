-- Mails to send, written in the transaction of the handler that decided to send them and sent
-- after the commit by the mail relay (SES), which deletes a row once SES accepted it: a crash
-- between the two sends a mail twice, the worst a crash can cause.
--
-- `claimed_until` is the relay's lease on a row while SES is called (as the message outbox's).
-- A mail SES refuses for good (an unverified recipient in the SES sandbox, an address SES cannot
-- take) is set aside with `failed_at` and the reason, and not tried again; an operator clears
-- `failed_at` to send it again. Every row of an enrollment, set aside or not, goes with its
-- pending enrollment (confirmed, forgotten, expired): the body holds the link.
CREATE TABLE mail_outbox (
    id            TEXT PRIMARY KEY,
    enrollment_id TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    claimed_until TEXT,
    failed_at     TEXT,
    error         TEXT
);
CREATE INDEX mail_outbox_pending ON mail_outbox (created_at) WHERE failed_at IS NULL;
CREATE INDEX mail_outbox_enrollment ON mail_outbox (enrollment_id);
