-- 012: an item on its last attempt is claimed alone. Same index and meaning as the SQLite 012.
CREATE INDEX items_lost ON items (job_id, idx) WHERE state = 'pending' AND attempts > 0;
