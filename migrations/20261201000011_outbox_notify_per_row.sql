-- The outbox's wake-up as a row trigger with a WHEN clause instead of a statement trigger over
-- a transition table. The statement trigger copied every inserted row (payload included) into
-- a transition table only to ask whether one of them was available at once; handed-off rows
-- (the hot path) never are, and PostgreSQL now skips them without calling anything. Rows that
-- are available at once (operator actions, the sweeper, image progress) notify as before;
-- PostgreSQL sends one notification per channel and payload per transaction, however many rows.

CREATE OR REPLACE FUNCTION public.warren_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('warren_outbox', TG_TABLE_SCHEMA);
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
                       'FOR EACH ROW WHEN (NEW.available_at <= now()) '
                       'EXECUTE FUNCTION public.warren_outbox_notify()', s);
    END LOOP;
END
$$;
