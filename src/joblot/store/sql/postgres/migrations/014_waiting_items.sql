-- 014: items waiting for a retry. Same index and meaning as the SQLite 014.
CREATE INDEX items_waiting ON items (job_id, due_at) WHERE state = 'pending' AND due_at IS NOT NULL;
