-- 006: completion webhooks. Same tables, columns and meaning as the SQLite 006.
ALTER TABLE jobs ADD COLUMN callback_url text;
ALTER TABLE jobs ADD COLUMN public_url text;     -- base of the JobStatus `url` the event carries

-- One row per event to send. `id` is the webhook-id: the same on every attempt, so receivers
-- can deduplicate. A process claims a due delivery with SKIP LOCKED, bumping `lease_token`
-- and setting `leased_until`; no other process sends it until that lapses.
CREATE TABLE deliveries (
    id              text PRIMARY KEY,
    job_id          text NOT NULL,
    tenant          text NOT NULL,
    job_type        text NOT NULL,
    url             text NOT NULL,
    type            text NOT NULL CHECK (type IN ('job.completed', 'job.failed')),
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    public_url      text,                          -- base of the JobStatus `url` in the event
    created_at      double precision NOT NULL,     -- when the job finished: the event's time
    attempts        integer NOT NULL DEFAULT 0,    -- attempts started, every round
    round_start     integer NOT NULL DEFAULT 0,    -- attempts made before this round (redeliver)
    next_attempt_at double precision,              -- set while pending
    lease_token     bigint NOT NULL DEFAULT 0,     -- bumped by every claim: the fencing token
    leased_until    double precision NOT NULL DEFAULT 0,
    body            bytea                          -- the event as first sent; retries resend it
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id);

-- Every attempt, as the receiver answered it. Only a short excerpt of its body is kept.
CREATE TABLE delivery_attempts (
    delivery_id text NOT NULL,
    n           integer NOT NULL,                -- 1, 2, ... across rounds
    at          double precision NOT NULL,
    status_code integer,                         -- null: no HTTP answer (yet)
    error       text,
    PRIMARY KEY (delivery_id, n)
);

-- Each tenant's signing secret (`whsec_...`), created on first use. Kept as is, since the
-- server must compute HMACs with it; `previous` still signs for a while after a rotation.
CREATE TABLE webhook_secrets (
    tenant     text PRIMARY KEY,
    secret     text NOT NULL,
    previous   text,
    rotated_at double precision,
    created_at double precision NOT NULL
);
