-- 013: retries of items whose handler raised an error the job type retries. Such an item goes
-- back to the queue (no lease held while it waits) with `due_at`, before which no claim takes
-- it, and `retries`, how many times it was retried so far (its result says how many attempts
-- it took). Items queued before this migration are due at once and were never retried.
ALTER TABLE items ADD COLUMN due_at REAL;
ALTER TABLE items ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
