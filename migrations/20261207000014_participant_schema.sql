-- What every participant's schema holds, as one function a new participant's migration calls:
--
--     SELECT public.warren_participant_schema('loyalty', 'warren_loyalty');
--
-- creates (where missing) the role, unable to log in until a deployment gives it a password; the
-- schema; its outbox and inbox exactly as the earlier migrations left the shipped schemas'
-- (columns, indexes, autovacuum settings, the NOTIFY trigger); and the grants: the role may use
-- its own schema alone, the operator may read it. Tables the migration then adds get the same
-- grants by default. (See docs/extending.md.)

CREATE FUNCTION public.warren_participant_schema(s text, r text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another database's migration created it meanwhile
        END;
    END IF;
    EXECUTE format('CREATE SCHEMA %I', s);

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
            attempts       integer NOT NULL DEFAULT 0,
            available_at   timestamptz NOT NULL DEFAULT now(),
            last_error     text,
            published_at   timestamptz,
            step           text
        ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                autovacuum_vacuum_cost_delay = 0)$sql$, s);
    EXECUTE format('CREATE INDEX outbox_unpublished ON %I.outbox (seq) WHERE published_at IS NULL', s);
    EXECUTE format('CREATE INDEX outbox_published_at ON %I.outbox (published_at) WHERE published_at IS NOT NULL', s);
    EXECUTE format('CREATE TRIGGER outbox_notify AFTER INSERT ON %I.outbox '
                   'FOR EACH ROW WHEN (NEW.available_at <= now()) '
                   'EXECUTE FUNCTION public.warren_outbox_notify()', s);

    EXECUTE format($sql$
        CREATE TABLE %I.inbox (
            consumer    text NOT NULL,
            message_id  uuid NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            duplicates  integer NOT NULL DEFAULT 0,
            PRIMARY KEY (consumer, message_id)
        )$sql$, s);
    EXECUTE format('CREATE INDEX inbox_received_at ON %I.inbox (received_at)', s);

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', s, r);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', s, r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', s, r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I', s, r);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO warren_operator', s);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO warren_operator', s);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO warren_operator', s);
END
$fn$;
