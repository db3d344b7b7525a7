-- Saga definition versions. A saga is pinned to the definition it started under (its digest,
-- `saga::Definition::digest`), so a definition changed while sagas run cannot move them onto
-- other steps. Every version a saga started under is kept here, so an orchestrator restarted on
-- a changed file still has the old one for the sagas that began with it.
CREATE TABLE sagas.definitions (
    name          text NOT NULL,
    digest        text NOT NULL,
    -- The definition's human `version` label, if it has one.
    label         text,
    -- The definition itself (its JSON form); its digest is checked when it is read back.
    body          jsonb NOT NULL,
    first_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, digest)
);

-- The version lives in the saga's state (`definition_version`); the column is derived from it
-- for queries, so the two cannot disagree. Not indexed: a step's update of the row stays HOT.
-- Sagas started before this migration have none and follow the definition of their name.
ALTER TABLE sagas.sagas
    ADD COLUMN definition_version text GENERATED ALWAYS AS (state ->> 'definition_version') STORED;

-- The version each log entry was applied under.
ALTER TABLE sagas.saga_log ADD COLUMN definition_version text;
