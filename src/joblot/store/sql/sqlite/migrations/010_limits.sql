-- 010: cluster-wide limits per job type. A claim of a limited type counts, in the same
-- transaction, the type's items leased under live leases (its concurrency) and the items of
-- it started in the last period (its rate), so the limits hold across every worker process.
-- Leases made before this migration name no type: they count for none.
ALTER TABLE leases ADD COLUMN job_type TEXT;
CREATE INDEX leases_type ON leases (job_type, expires_at) WHERE job_type IS NOT NULL;

-- One row per claim of a rate-limited job type: when, and how many items it started. Rows
-- older than the type's period are deleted by its next claim.
CREATE TABLE job_type_starts (
    job_type TEXT NOT NULL,
    at       REAL NOT NULL,
    count    INTEGER NOT NULL
);
CREATE INDEX job_type_starts_at ON job_type_starts (job_type, at);
