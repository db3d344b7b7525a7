-- Saga instances and their append-only logs (schema `sagas`, owned by the orchestrator).

CREATE TABLE sagas.sagas (
    saga_id      uuid PRIMARY KEY,
    definition   text NOT NULL,
    status       text NOT NULL,
    current_step text,
    -- The machine's whole state (saga::machine::Saga); the columns beside it are for queries.
    state        jsonb NOT NULL,
    version      bigint NOT NULL,
    -- When the step or compensation in flight times out; the sweeper claims due rows.
    deadline     timestamptz,
    -- Identifies the request that started the saga (same idempotency key, other body: 409).
    request_hash text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX sagas_due ON sagas.sagas (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX sagas_by_status ON sagas.sagas (status, created_at DESC);
CREATE INDEX sagas_by_created ON sagas.sagas (created_at DESC);

-- Every input a saga received, applied or ignored, in order. Replaying the applied ones
-- through the definition reproduces `sagas.state`.
CREATE TABLE sagas.saga_log (
    saga_id    uuid NOT NULL,
    seq        integer NOT NULL,
    at         timestamptz NOT NULL,
    input      jsonb NOT NULL,
    -- The message that carried the input (none for timeouts and operator actions).
    message_id uuid,
    applied    boolean NOT NULL,
    note       text NOT NULL,
    -- What the transition sent: [{message_id, message_type, step, compensation}].
    commands   jsonb NOT NULL DEFAULT '[]',
    status     text NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
