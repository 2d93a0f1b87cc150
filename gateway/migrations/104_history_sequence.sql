-- Each enrollment numbers its history entries 1, 2, 3, ... under its own row lock, so their order
-- is the order the saga took, whichever instance (and clock) wrote them. Live updates order,
-- resume and detect changes by this number instead of by time.
ALTER TABLE enrollments ADD COLUMN history_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE enrollment_history ADD COLUMN seq BIGINT;
-- Live updates no longer scan the history by time (see 103).
DROP INDEX enrollment_history_by_time;
