-- The public view of an enrollment is addressed by a view key: 128 random bits (base64url),
-- made at acceptance and answered in `Location`. The id (a UUIDv7: creation time, few random
-- bits) stays for correlation and the operator; public routes no longer take it (decision 0040).
-- Enrollments accepted before this migration have no key, hence no public view; a replay of
-- their submission (same `Idempotency-Key` and body) gives them one.
ALTER TABLE enrollments ADD COLUMN view_key TEXT;
CREATE UNIQUE INDEX enrollments_by_view_key ON enrollments (view_key);
