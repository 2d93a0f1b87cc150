-- The gateway no longer keeps an enrollment's name and address (decision 0042): the `Enroll`
-- command in the outbox carries them until it is relayed, and the row keeps `name` and `email`
-- empty. The columns stay (NOT NULL, empty) so that the release before this one, which still
-- writes them, runs against this schema during a roll-out or after a rollback; a later release
-- drops them. Rows written before this migration are emptied here; their fingerprints, which
-- hold the same fields as JSON, are hashed by the gateway when it starts (the hash cannot be
-- computed in SQL on SQLite).
UPDATE enrollments SET name = '', email = '';
