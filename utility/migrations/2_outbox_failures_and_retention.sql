-- Rows the bus refused as the sender's fault (invalid characters, too large) are set aside with
-- the reason instead of blocking the relay forever; an operator inspects them.
ALTER TABLE outbox ADD COLUMN failed_at TEXT;
ALTER TABLE outbox ADD COLUMN error TEXT;

-- The retention sweeper deletes by these columns.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX processed_messages_at ON processed_messages (processed_at);
