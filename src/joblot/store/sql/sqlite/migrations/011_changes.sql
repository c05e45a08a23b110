-- 011: a change number on jobs, so that one watcher per API process can ask "which jobs
-- changed since N?" in one indexed query for all its long polls and event streams, and an
-- event stream of a whole tenant can resume from the number it last saw.
--
-- `job_changes` holds the last number handed out. Every write that changes a job visibly (or
-- inserts one) takes the next number, inside its own transaction: SQLite's single writer
-- hands numbers out in commit order, so a reader that saw N has seen every change up to N.
-- Jobs from before this migration carry 0: they changed before anyone could ask.
ALTER TABLE jobs ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE job_changes (
    seq INTEGER NOT NULL
);
INSERT INTO job_changes (seq) VALUES (0);

CREATE INDEX jobs_changes ON jobs (change_seq);
CREATE INDEX jobs_tenant_changes ON jobs (tenant, change_seq);
