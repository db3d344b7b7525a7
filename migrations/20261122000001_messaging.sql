-- Each service owns one schema; each schema has its own inbox (deduplication of consumed
-- messages) and outbox (messages committed with the change that caused them, published by the
-- relay). The relays wake on NOTIFY warren_outbox, whose payload names the schema.

CREATE FUNCTION public.warren_outbox_notify() RETURNS trigger
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
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', s);

        EXECUTE format($sql$
            CREATE TABLE %I.outbox (
                message_id     uuid PRIMARY KEY,
                seq            bigint GENERATED ALWAYS AS IDENTITY,
                exchange       text NOT NULL,
                routing_key    text NOT NULL,
                message_type   text NOT NULL,
                correlation_id uuid,
                causation_id   uuid,
                producer       text NOT NULL,
                traceparent    text,
                schema_version integer NOT NULL,
                payload        jsonb NOT NULL,
                created_at     timestamptz NOT NULL DEFAULT now(),
                -- A failed publish (unroutable, nacked) backs off instead of blocking the head.
                attempts       integer NOT NULL DEFAULT 0,
                available_at   timestamptz NOT NULL DEFAULT now(),
                last_error     text,
                published_at   timestamptz
            )$sql$, s);
        -- The relay's claim walks only unpublished rows, in commit order.
        EXECUTE format('CREATE INDEX outbox_unpublished ON %I.outbox (seq) WHERE published_at IS NULL', s);
        EXECUTE format('CREATE INDEX outbox_published_at ON %I.outbox (published_at) WHERE published_at IS NOT NULL', s);
        EXECUTE format('CREATE TRIGGER outbox_notify AFTER INSERT ON %I.outbox '
                       'FOR EACH STATEMENT EXECUTE FUNCTION public.warren_outbox_notify()', s);

        EXECUTE format($sql$
            CREATE TABLE %I.inbox (
                consumer    text NOT NULL,
                message_id  uuid NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, message_id)
            )$sql$, s);
        EXECUTE format('CREATE INDEX inbox_received_at ON %I.inbox (received_at)', s);
    END LOOP;
END
$$;
