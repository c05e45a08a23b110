-- 007: a job's failed result entries, by index, without reading the others.
-- Same partial index as the SQLite 007.
CREATE INDEX results_failed ON results (job_id, idx) WHERE NOT success;
