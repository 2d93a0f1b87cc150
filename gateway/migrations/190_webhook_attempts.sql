-- Each attempt of a webhook delivery (issue 23, decision 0044), for the operator's view of an
-- enrollment: written in the transaction that records the attempt's outcome on its
-- `webhook_deliveries` row, numbered by that row's `attempts` after the update.
-- `result`: delivered (2xx), retry (timeout, connection failure, any other status), gone (410),
-- refused (the URL leads to an address callbacks may not reach; no request was sent).
-- A delivery's attempts are bounded by its 24 h schedule; the view shows the last 100 of each.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    at           TEXT NOT NULL,
    result       TEXT NOT NULL,
    http_status  BIGINT,
    duration_ms  BIGINT NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
