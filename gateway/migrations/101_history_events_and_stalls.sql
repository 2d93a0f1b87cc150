-- Which event (or the HTTP acceptance) produced each history entry; late events that do not move
-- the saga are recorded too.
ALTER TABLE enrollment_history ADD COLUMN event TEXT;

-- When the stall sweeper last reported this saga as stalled; cleared whenever the saga advances.
ALTER TABLE enrollments ADD COLUMN stall_reported_at TEXT;
CREATE INDEX enrollments_open ON enrollments (status, updated_at);
