-- The relay claims the rows it publishes with a lease instead of holding a transaction (and its
-- row locks) across the bus call: a row is claimed while claimed_until is in the future. Claims
-- are taken destination by destination, oldest first.
ALTER TABLE outbox ADD COLUMN claimed_until TEXT;
CREATE INDEX outbox_pending_by_destination ON outbox (destination, created_at) WHERE sent_at IS NULL AND failed_at IS NULL;
