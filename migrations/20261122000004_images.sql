-- The image participant's table (schema `images`, which already holds its inbox and outbox).
-- One row per image the service heard of, keyed by image id, so a command re-sent under a new
-- message id finds what the first one left. Bytes live in the image store; `original` and
-- the keys inside `outputs` point there.
--
-- processing: started (committed before the work, so readers see it); processed: every
--   variant written; completed: recorded by the saga; failed: nothing kept, `reason` says
--   why; deleted: variants removed by compensation. A delete that arrives before any process
--   leaves a `deleted` tombstone (no customer, no original) so the late process is refused.
CREATE TABLE images.images (
    image_id    uuid PRIMARY KEY,
    customer_id text,
    status      text NOT NULL
                CHECK (status IN ('processing', 'processed', 'completed', 'failed', 'deleted')),
    original    text,
    -- [ImageVariant], as in the image.evt.processed reply.
    outputs     jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(outputs) = 'array'),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT only_tombstones_lack_an_original CHECK (original IS NOT NULL OR status = 'deleted'),
    CONSTRAINT failures_have_a_reason CHECK (status <> 'failed' OR reason IS NOT NULL)
);
CREATE INDEX images_customer ON images.images (customer_id) WHERE customer_id IS NOT NULL;
