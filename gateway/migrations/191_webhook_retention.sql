-- Finished webhook deliveries (and their attempts) are deleted `OUTBOX_RETENTION_HOURS` after
-- they finished (the dispatcher's hourly pass): this index finds them without a full scan.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at);
