-- The toy participant's migration, as docs/extending.md has a new participant write its own
-- (migrations/<timestamp>_loyalty.sql): the schema with its outbox, inbox and role, then its
-- tables.
SELECT public.warren_participant_schema('loyalty', 'warren_loyalty');

CREATE TABLE loyalty.points (
    order_id    uuid PRIMARY KEY,
    customer_id text NOT NULL,
    points      bigint NOT NULL CHECK (points >= 0),
    awarded_at  timestamptz NOT NULL DEFAULT now()
);
