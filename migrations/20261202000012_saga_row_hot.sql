-- Saga rows updated in place (HOT). A saga row is rewritten at every step, and its deadline
-- changes at every step; while `deadline` was indexed, every rewrite also wrote a new entry in
-- each of the table's four indexes. Now no index holds `deadline`: the sweeper finds due sagas
-- through an index of the unfinished ones (keyed by id, filtered on `status`, which changes only
-- when a saga starts compensating or ends), and PostgreSQL can keep a step's new row version on
-- the same page without touching any index. Fill pages only so far, so the new version fits.

DROP INDEX sagas.sagas_due;
CREATE INDEX sagas_unfinished ON sagas.sagas (saga_id) WHERE status IN ('running', 'compensating');
ALTER TABLE sagas.sagas SET (fillfactor = 50);
