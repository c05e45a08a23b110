-- 007: a job's failed result entries, by index, without reading the others:
-- GET .../results?success=false pages through this index. Only failed entries are in it, so
-- a finish of succeeded items writes nothing more than before.
CREATE INDEX results_failed ON results (job_id, idx) WHERE success = 0;
