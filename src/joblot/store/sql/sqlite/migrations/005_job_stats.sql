-- 005: what `job_stats` shows beside a JobStatus, and listing by job type.
-- `started_at` is the job's first claim and `updated_at` its last visible change (a version
-- bump). Jobs from before this migration get their creation time as their first claim if they
-- were ever claimed (the first claim was not recorded), and their last known time as their
-- last change.
ALTER TABLE jobs ADD COLUMN started_at REAL;
ALTER TABLE jobs ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
UPDATE jobs SET
    started_at = CASE WHEN claimed_at > 0 THEN created_at END,
    updated_at = max(created_at, claimed_at, coalesce(finished_at, 0));

-- GET /job_statuses?job_type=...: that type's part of the listing order, without a scan.
CREATE INDEX jobs_list_type ON jobs (tenant, job_type, list_key);
