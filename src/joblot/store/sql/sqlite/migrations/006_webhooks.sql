-- 006: completion webhooks. A job may name a `callback_url`; the transaction that writes its
-- final status also inserts its delivery (an outbox row), so a finished job always gets its
-- event, whatever happens to the process afterwards.
ALTER TABLE jobs ADD COLUMN callback_url TEXT;
ALTER TABLE jobs ADD COLUMN public_url TEXT;     -- base of the JobStatus `url` the event carries

-- One row per event to send. `id` is the webhook-id: the same on every attempt, so receivers
-- can deduplicate. A process claims a due delivery by bumping `lease_token` and setting
-- `leased_until`; no other process sends it until that lapses.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    job_type        TEXT NOT NULL,
    url             TEXT NOT NULL,
    type            TEXT NOT NULL CHECK (type IN ('job.completed', 'job.failed')),
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    public_url      TEXT,                         -- base of the JobStatus `url` in the event
    created_at      REAL NOT NULL,                -- when the job finished: the event's time
    attempts        INTEGER NOT NULL DEFAULT 0,   -- attempts started, every round
    round_start     INTEGER NOT NULL DEFAULT 0,   -- attempts made before this round (redeliver)
    next_attempt_at REAL,                         -- set while pending
    lease_token     INTEGER NOT NULL DEFAULT 0,   -- bumped by every claim: the fencing token
    leased_until    REAL NOT NULL DEFAULT 0,
    body            BLOB                          -- the event as first sent; retries resend it
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id);

-- Every attempt, as the receiver answered it. Only a short excerpt of its body is kept.
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    n           INTEGER NOT NULL,               -- 1, 2, ... across rounds
    at          REAL NOT NULL,
    status_code INTEGER,                        -- null: no HTTP answer (yet)
    error       TEXT,
    PRIMARY KEY (delivery_id, n)
) WITHOUT ROWID;

-- Each tenant's signing secret (`whsec_...`), created on first use. Kept as is, since the
-- server must compute HMACs with it; `previous` still signs for a while after a rotation.
CREATE TABLE webhook_secrets (
    tenant     TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    previous   TEXT,
    rotated_at REAL,
    created_at REAL NOT NULL
);
