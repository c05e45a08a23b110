-- 010: cluster-wide limits per job type. Same columns, table and meaning as the SQLite 010.
ALTER TABLE leases ADD COLUMN job_type text;
CREATE INDEX leases_type ON leases (job_type, expires_at) WHERE job_type IS NOT NULL;

CREATE TABLE job_type_starts (
    job_type text NOT NULL,
    at       double precision NOT NULL,
    count    integer NOT NULL
);
CREATE INDEX job_type_starts_at ON job_type_starts (job_type, at);
