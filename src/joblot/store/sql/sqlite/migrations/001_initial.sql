-- 001: jobs, their items (the work queue), results, and leases.

-- One row per job. Counters change in the same transaction that finishes items,
-- so a status read is one primary-key lookup whatever `total` is.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL DEFAULT '',
    job_type        TEXT NOT NULL,
    action          TEXT,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'working', 'failed', 'completed')),
    total           INTEGER NOT NULL CHECK (total >= 0),
    progress        INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    pending         INTEGER NOT NULL,             -- items waiting to be claimed
    message         TEXT,
    message_set     INTEGER NOT NULL DEFAULT 0,   -- a handler set the message
    max_failures    INTEGER,
    skipped         INTEGER NOT NULL DEFAULT 0,   -- items that never ran: the job stopped
    cancelled       INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 1,   -- bumped by every visible change (ETag)
    claimed_at      REAL NOT NULL DEFAULT 0,      -- last claim: round-robin order across jobs
    idempotency_key TEXT,
    request_hash    TEXT,
    created_at      REAL NOT NULL,
    finished_at     REAL,
    expires_at      REAL,                         -- purge after this (finished jobs only)
    list_key        TEXT NOT NULL                 -- sort key of GET /job_statuses
);

CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Only runnable jobs are in this index, so picking the next job is cheap.
CREATE INDEX jobs_runnable ON jobs (claimed_at)
    WHERE pending > 0 AND status IN ('queued', 'working');
CREATE INDEX jobs_list ON jobs (tenant, list_key);
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;

-- Items not yet finished. A finished item moves to `results`.
CREATE TABLE items (
    job_id   TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    payload  BLOB NOT NULL,
    state    TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'leased')),
    lease_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

CREATE INDEX items_pending ON items (job_id, idx) WHERE state = 'pending';
CREATE INDEX items_leased ON items (lease_id) WHERE state = 'leased';

-- One row per finished item; the primary key makes recording an index twice impossible.
CREATE TABLE results (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    success INTEGER NOT NULL,
    entry   BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

-- A lease covers one claimed batch; its id is the fencing token. AUTOINCREMENT so
-- that an id is never reused and a lapsed worker can never present a live token.
CREATE TABLE leases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    expires_at REAL NOT NULL
);

CREATE INDEX leases_expiry ON leases (expires_at);
CREATE INDEX leases_job ON leases (job_id);
