-- Message attributes a row's message carries besides `type`, `correlation_id` and `traceparent`
-- (those its type declares, for subscriptions to filter on: the gateway's status events say
-- whether their enrollment has a callback), as a JSON object of strings; NULL when none. The
-- relay sends them with the message. Numbered apart from the services' own migrations (decision
-- 0045): every service's database gets it.
ALTER TABLE outbox ADD COLUMN attributes TEXT;
