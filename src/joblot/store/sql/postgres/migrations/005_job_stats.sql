-- 005: what `job_stats` shows beside a JobStatus, and listing by job type.
-- Same columns and meaning as the SQLite 005.
ALTER TABLE jobs ADD COLUMN started_at double precision;
ALTER TABLE jobs ADD COLUMN updated_at double precision NOT NULL DEFAULT 0;
UPDATE jobs SET
    started_at = CASE WHEN claimed_at > 0 THEN created_at END,
    updated_at = greatest(created_at, claimed_at, coalesce(finished_at, 0));

-- GET /job_statuses?job_type=...: that type's part of the listing order, without a scan.
CREATE INDEX jobs_list_type ON jobs (tenant, job_type, list_key);
