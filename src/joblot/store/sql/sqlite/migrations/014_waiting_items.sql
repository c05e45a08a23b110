-- 014: items waiting for a retry, found without reading the rest of their job. A claim passes
-- over a job whose pending items all wait (claim_items.has_due): it compares the job's
-- `pending` with how many of them are not due yet, counted through this index, which holds
-- only items that were ever put off.
CREATE INDEX items_waiting ON items (job_id, due_at) WHERE state = 'pending' AND due_at IS NOT NULL;
