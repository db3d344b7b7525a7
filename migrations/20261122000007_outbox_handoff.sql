-- Outbox hand-off: a handler that commits outbox rows also hands the messages to its process's
-- relay in memory, which publishes them at once and deletes each row after its confirm. Such
-- rows are written with a lease (`available_at` a few seconds ahead): no notification is sent
-- for them, and the relay's claim only takes them up if the process died before publishing.
-- Rows written without a hand-off (operator actions, the sweeper) are available at once and
-- still wake the relays.

CREATE OR REPLACE FUNCTION public.warren_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE available_at <= now()) THEN
        PERFORM pg_notify('warren_outbox', TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['orders', 'inventory', 'payments', 'images', 'notifications', 'sagas'] LOOP
        EXECUTE format('DROP TRIGGER outbox_notify ON %I.outbox', s);
        EXECUTE format('CREATE TRIGGER outbox_notify AFTER INSERT ON %I.outbox '
                       'REFERENCING NEW TABLE AS inserted '
                       'FOR EACH STATEMENT EXECUTE FUNCTION public.warren_outbox_notify()', s);
    END LOOP;
END
$$;
