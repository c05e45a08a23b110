-- 009: submits still loading their items. A big job's items go in over several short write
-- transactions, before its job row exists, so no worker and no reader can see them; the job
-- row comes last, in the transaction of its last step. A submit that fails midway deletes
-- what it loaded; one whose process died leaves this row behind, and the maintenance leader
-- deletes its items once `expires_at` has passed.
CREATE TABLE loading_jobs (
    job_id     TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,              -- a load still going after this is abandoned
    abandoned  INTEGER NOT NULL DEFAULT 0  -- being deleted: no further step may join it
);

CREATE INDEX loading_jobs_expiry ON loading_jobs (expires_at);
