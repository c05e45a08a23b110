-- 013: retries of items whose handler raised an error the job type retries. Same columns and
-- meaning as the SQLite 013.
ALTER TABLE items ADD COLUMN due_at double precision;
ALTER TABLE items ADD COLUMN retries integer NOT NULL DEFAULT 0;
