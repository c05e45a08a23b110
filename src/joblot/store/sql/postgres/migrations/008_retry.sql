-- 008: a failed item's payload, as submitted, is kept beside its result for as long as the job
-- is. Same column and meaning as the SQLite 008.
ALTER TABLE results ADD COLUMN payload bytea;
