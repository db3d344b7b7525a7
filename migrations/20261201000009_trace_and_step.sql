-- Tracing: outbox rows keep the saga step of their message (AMQP header `x-saga-step`), and a
-- saga keeps the trace it was started in, for the messages no incoming message causes
-- (timeouts, operators' retries and cancels).

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['orders', 'inventory', 'payments', 'images', 'notifications', 'sagas'] LOOP
        EXECUTE format('ALTER TABLE %I.outbox ADD COLUMN step text', s);
    END LOOP;
END
$$;

ALTER TABLE sagas.sagas ADD COLUMN traceparent text;
