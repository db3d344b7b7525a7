-- Tables that churn with every message get vacuumed after a fixed number of dead rows rather
-- than a share of their size, so a long history does not let dead rows pile up in the hot
-- paths: outbox rows are deleted as soon as they are published, saga rows are rewritten at
-- every step, notification rows once when delivered.
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['orders', 'inventory', 'payments', 'images', 'notifications', 'sagas'] LOOP
        EXECUTE format('ALTER TABLE %I.outbox SET (autovacuum_vacuum_scale_factor = 0, '
                       'autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0)', s);
    END LOOP;
END
$$;

ALTER TABLE sagas.sagas SET (autovacuum_vacuum_scale_factor = 0.01,
                             autovacuum_vacuum_threshold = 5000,
                             autovacuum_vacuum_cost_delay = 0);
ALTER TABLE notifications.notifications SET (autovacuum_vacuum_scale_factor = 0.02,
                                             autovacuum_vacuum_threshold = 5000);
