-- 011: where each job last changed, so that one watcher per API process can ask "which jobs
-- changed since I last looked?" in one indexed query for all its long polls and event
-- streams, and an event stream of a whole tenant can resume from where it was cut off.
--
-- Differs by necessity from SQLite's counter: writers on many nodes commit in parallel, so
-- numbers handed out in a transaction would become visible out of order (a reader that saw
-- 11 could later find a 10 committed after it). Each change records instead the id of its
-- transaction, and a reader's position is the snapshot it read at: the changes it has not
-- seen are those of transactions that snapshot did not see as committed (those still running
-- then, and every later one). Jobs from before this migration carry NULL: they changed before
-- anyone could ask. The default stamps new jobs; `job_state.save` stamps visible changes.
-- The id is kept as a bigint (a 64-bit xid8 fits for the next few billion years), whose
-- statistics let the planner see that "changed after X" is a handful of rows: for xid8 it
-- would guess a third of the table and scan it all.
ALTER TABLE jobs ADD COLUMN change_xid bigint;
ALTER TABLE jobs ALTER COLUMN change_xid SET DEFAULT pg_current_xact_id()::text::bigint;

CREATE INDEX jobs_changes ON jobs (change_xid);
CREATE INDEX jobs_tenant_changes ON jobs (tenant, change_xid);
