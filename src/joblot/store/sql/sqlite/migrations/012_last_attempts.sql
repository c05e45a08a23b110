-- 012: an item on its last attempt is claimed alone. An item whose worker vanished
-- `max_attempts - 1` times gets a claim of its own (and its worker runs nothing beside it), so
-- that if it fails with WorkerLost it is the item that killed its worker, never a neighbour
-- that shared its batch. Few items ever lose a worker: this index holds only those, so a claim
-- finds them without reading the job's other items.
CREATE INDEX items_lost ON items (job_id, idx) WHERE state = 'pending' AND attempts > 0;
