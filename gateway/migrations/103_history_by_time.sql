-- Live updates ask which enrollments gained history entries lately (gateway/src/live.rs).
CREATE INDEX enrollment_history_by_time ON enrollment_history (at);
