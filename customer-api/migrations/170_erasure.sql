-- An operator's erasure of an enrollment's personal data (decision 0042, `ErasePersonalData`):
-- the customer's name and address are replaced by a tombstone and the row stays, so that the
-- ledger's postings, which name the customer's id, still name a customer. When it happened:
ALTER TABLE customers ADD COLUMN erased_at TEXT;
ALTER TABLE rejected_enrollments ADD COLUMN erased_at TEXT;
