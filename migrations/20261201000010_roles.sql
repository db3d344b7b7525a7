-- Least privilege in the database. One role per service schema, which may use that schema
-- alone (its tables, inbox and outbox): warren_orders, warren_inventory, warren_payments,
-- warren_images, warren_notifications, warren_sagas (the orchestrator). warren_gateway owns no
-- table and gets none (it only checks the database answers). warren_operator is for the
-- operator's tools: `warren chaos verify` reads every schema, `warren saga retry|cancel` change
-- sagas and send through the orchestrator's outbox. Migrations run as the database's owner
-- (`warren migrate`), which owns every schema and table.
--
-- Roles belong to the cluster, grants to a database. A cluster may hold many Warren databases
-- (every test gets its own, several migrating at once), so a role is created only where none
-- exists, and a concurrent migration creating the same role first is no error. The roles are
-- created unable to log in and with no password: a deployment gives each its password
-- (scripts/lib.sh, docker-compose.yml). The migrating user needs CREATEROLE, or a database
-- administrator creates these roles beforehand.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['warren_orders', 'warren_inventory', 'warren_payments', 'warren_images',
                             'warren_notifications', 'warren_sagas', 'warren_gateway', 'warren_operator'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- another database's migration created it meanwhile
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
DECLARE
    s text;
    r text;
BEGIN
    FOREACH s IN ARRAY ARRAY['orders', 'inventory', 'payments', 'images', 'notifications', 'sagas'] LOOP
        r := 'warren_' || s;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, r);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', s, r);
        EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', s, r);
        -- Tables and sequences that later migrations (run by the same owner) add get the same.
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                       'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', s, r);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I', s, r);

        EXECUTE format('GRANT USAGE ON SCHEMA %I TO warren_operator', s);
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO warren_operator', s);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO warren_operator', s);
    END LOOP;
END
$$;

-- Repairing sagas writes the saga's row and log and the orchestrator's outbox.
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sagas TO warren_operator;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA sagas TO warren_operator;
ALTER DEFAULT PRIVILEGES IN SCHEMA sagas GRANT INSERT, UPDATE, DELETE ON TABLES TO warren_operator;
ALTER DEFAULT PRIVILEGES IN SCHEMA sagas GRANT USAGE, SELECT ON SEQUENCES TO warren_operator;
