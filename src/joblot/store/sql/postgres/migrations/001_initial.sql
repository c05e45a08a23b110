-- 001: jobs, their items (the work queue), results, and leases.
-- Same tables, columns and meaning as the SQLite 001. No foreign keys, on purpose: a
-- foreign-key check takes a KEY SHARE lock on the job row for every item and result
-- written, which would queue those writes behind the job-row lock of claims and finishes.

-- One row per job. Counters change in the same transaction that finishes items,
-- so a status read is one primary-key lookup whatever `total` is.
CREATE TABLE jobs (
    id              text PRIMARY KEY,
    tenant          text NOT NULL DEFAULT '',
    job_type        text NOT NULL,
    action          text,
    status          text NOT NULL CHECK (status IN ('queued', 'working', 'failed', 'completed')),
    total           bigint NOT NULL CHECK (total >= 0),
    progress        bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    pending         bigint NOT NULL,                  -- items waiting to be claimed
    message         text,
    message_set     boolean NOT NULL DEFAULT false,   -- a handler set the message
    max_failures    bigint,
    skipped         bigint NOT NULL DEFAULT 0,        -- items that never ran: the job stopped
    cancelled       boolean NOT NULL DEFAULT false,
    version         bigint NOT NULL DEFAULT 1,        -- bumped by every visible change (ETag)
    claimed_at      double precision NOT NULL DEFAULT 0,  -- last claim: round-robin order
    idempotency_key text,
    request_hash    text,
    created_at      double precision NOT NULL,
    finished_at     double precision,
    expires_at      double precision,                 -- purge after this (finished jobs only)
    -- Sort key of GET /job_statuses. Differs by necessity from SQLite: SQLite compares text
    -- byte by byte, PostgreSQL by the database's collation unless told to use "C".
    list_key        text COLLATE "C" NOT NULL
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
    job_id   text NOT NULL,
    idx      bigint NOT NULL,
    payload  bytea NOT NULL,
    state    text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'leased')),
    lease_id bigint,
    attempts integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);

CREATE INDEX items_pending ON items (job_id, idx) WHERE state = 'pending';
CREATE INDEX items_leased ON items (lease_id) WHERE state = 'leased';

-- One row per finished item; the primary key makes recording an index twice impossible.
CREATE TABLE results (
    job_id  text NOT NULL,
    idx     bigint NOT NULL,
    success boolean NOT NULL,
    entry   bytea NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- A lease covers one claimed batch; its id is the fencing token. A sequence never hands
-- out an id twice, so a lapsed worker can never present a live token.
CREATE TABLE leases (
    id         bigserial PRIMARY KEY,
    job_id     text NOT NULL,
    worker_id  text NOT NULL,
    expires_at double precision NOT NULL
);

CREATE INDEX leases_expiry ON leases (expires_at);
CREATE INDEX leases_job ON leases (job_id);
