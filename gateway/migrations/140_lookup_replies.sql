-- Replies to operator lookups that reached a gateway instance other than the one waiting for
-- them (all instances share one replies queue): held here until the asking instance collects
-- them, or until `reply_by` has passed, when any instance sweeps them (`gateway/src/lookups.rs`).
-- Rows live for seconds; nothing else reads them.
CREATE TABLE lookup_replies (
    query_id  TEXT PRIMARY KEY,
    body      TEXT NOT NULL,
    reply_by  TEXT NOT NULL
);
CREATE INDEX lookup_replies_by_deadline ON lookup_replies (reply_by);
