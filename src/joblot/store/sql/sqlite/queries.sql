-- Named queries of the SQLite backend. Each block starts with `-- name: <name>`;
-- the block's name is the Store method (and sub-step) that runs it.

-- name: migrations.create_table
CREATE TABLE IF NOT EXISTS joblot_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- name: migrations.exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'joblot_migrations';

-- name: migrations.applied
SELECT version FROM joblot_migrations ORDER BY version;

-- name: migrations.record
INSERT INTO joblot_migrations (version, name, applied_at) VALUES (:version, :name, :now);

-- name: submit_job.find_idempotent
-- A retried submission with the same key finds the job the first one made.
SELECT id, request_hash, expires_at FROM jobs
WHERE tenant = :tenant AND idempotency_key = :key;

-- name: submit_job.insert_job
INSERT INTO jobs (id, tenant, job_type, action, status, total, pending, max_failures,
                  idempotency_key, request_hash, created_at, updated_at, list_key, callback_url,
                  public_url, message, change_seq)
VALUES (:id, :tenant, :job_type, :action, 'queued', :total, :total, :max_failures,
        :idempotency_key, :request_hash, :created_at, :created_at, :list_key, :callback_url,
        :public_url, :message, (SELECT seq FROM job_changes));

-- name: submit_job.insert_item
INSERT INTO items (job_id, idx, payload) VALUES (?, ?, ?);

-- name: submit_job.begin_load
-- A big job's items go in over several write transactions, each holding the write lock
-- briefly, before its job row exists: claims and reads start from `jobs`, so nobody sees them.
INSERT INTO loading_jobs (job_id, expires_at) VALUES (:id, :until);

-- name: submit_job.load_held
-- Each step checks, under the write lock, that its load was not given up meanwhile.
SELECT 1 FROM loading_jobs WHERE job_id = :id AND abandoned = 0;

-- name: submit_job.end_load
DELETE FROM loading_jobs WHERE job_id = :id AND abandoned = 0;

-- name: get_job.select
-- One primary-key lookup; expired jobs read as missing even before they are purged.
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at
FROM jobs
WHERE id = :id AND tenant = :tenant AND (expires_at IS NULL OR expires_at > :now);

-- name: get_job.inline_results
-- Only for jobs with at most `inline_results` items: a bounded range scan.
SELECT entry FROM results WHERE job_id = :id ORDER BY idx;

-- name: list_jobs.after
-- A range of the tenant's part of jobs_list: `low` and `high` bound the keys the statuses asked
-- for can have (unfinished jobs' keys start with 0, finished ones' with 1).
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at
FROM jobs
WHERE tenant = :tenant AND list_key > :key AND list_key >= :low AND list_key < :high
  AND status IN (SELECT value FROM json_each(:statuses))
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY list_key LIMIT :limit;

-- name: list_jobs.before
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at
FROM jobs
WHERE tenant = :tenant AND list_key < :key AND list_key >= :low AND list_key < :high
  AND status IN (SELECT value FROM json_each(:statuses))
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY list_key DESC LIMIT :limit;

-- name: list_jobs_of_type.after
-- As list_jobs.after, for one job type: a range of jobs_list_type. Without statistics SQLite
-- would rather walk jobs_list and skip the other types' jobs, hence INDEXED BY.
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at
FROM jobs INDEXED BY jobs_list_type
WHERE tenant = :tenant AND job_type = :job_type
  AND list_key > :key AND list_key >= :low AND list_key < :high
  AND status IN (SELECT value FROM json_each(:statuses))
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY list_key LIMIT :limit;

-- name: list_jobs_of_type.before
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at
FROM jobs INDEXED BY jobs_list_type
WHERE tenant = :tenant AND job_type = :job_type
  AND list_key < :key AND list_key >= :low AND list_key < :high
  AND status IN (SELECT value FROM json_each(:statuses))
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY list_key DESC LIMIT :limit;

-- name: failed_items.select
-- The payloads of a job's failed items, as submitted, in index order: a range of
-- results_failed. Failures recorded before migration 008 kept no payload.
SELECT payload FROM results INDEXED BY results_failed
WHERE job_id = :id AND success = 0 AND payload IS NOT NULL
ORDER BY idx;

-- name: list_results.after
SELECT idx, entry FROM results WHERE job_id = :id AND idx > :idx ORDER BY idx LIMIT :limit;

-- name: list_results.before
SELECT idx, entry FROM results WHERE job_id = :id AND idx < :idx
ORDER BY idx DESC LIMIT :limit;

-- name: list_results_failed.after
-- Only the failed entries: a range of the partial index results_failed (the condition is
-- written out, not a parameter, so that it matches the index's; without statistics SQLite
-- would rather walk the primary key, hence INDEXED BY).
SELECT idx, entry FROM results INDEXED BY results_failed
WHERE job_id = :id AND success = 0 AND idx > :idx
ORDER BY idx LIMIT :limit;

-- name: list_results_failed.before
SELECT idx, entry FROM results INDEXED BY results_failed
WHERE job_id = :id AND success = 0 AND idx < :idx
ORDER BY idx DESC LIMIT :limit;

-- name: list_results_succeeded.after
-- Only the succeeded entries: the job's range of the primary key, stepping over the failed
-- ones. Succeeded entries have no index of their own, which would cost every finish a write;
-- so a page costs its size plus the failures between its entries.
SELECT idx, entry FROM results WHERE job_id = :id AND success = 1 AND idx > :idx
ORDER BY idx LIMIT :limit;

-- name: list_results_succeeded.before
SELECT idx, entry FROM results WHERE job_id = :id AND success = 1 AND idx < :idx
ORDER BY idx DESC LIMIT :limit;

-- name: job_version
SELECT version FROM jobs
WHERE id = :id AND tenant = :tenant AND (expires_at IS NULL OR expires_at > :now);

-- name: job_expiry
-- When a finished job expires (and may be purged): until then its status can be kept.
SELECT expires_at FROM jobs
WHERE id = :id AND tenant = :tenant AND (expires_at IS NULL OR expires_at > :now);

-- name: job_state.select
-- The counters the lifecycle rules (joblot.models) read inside a write transaction.
SELECT status, total, progress, failures, pending, message, message_set, max_failures,
       skipped, cancelled
FROM jobs WHERE id = :id;

-- name: job_state.select_for_tenant
SELECT status, total, progress, failures, pending, message, message_set, max_failures,
       skipped, cancelled
FROM jobs WHERE id = :id AND tenant = :tenant AND (expires_at IS NULL OR expires_at > :now);

-- name: job_state.save
-- A visible change takes the change number `changes.next` just handed out.
-- Writes back what the rules decided; a visible change is stamped in `updated_at`, the first
-- claim in `started_at` (and a claim sets when the job's next turn comes, `claimed_at`), and a job that just finished gets its finish time, its purge time
-- and its place among finished jobs in the listing order.
UPDATE jobs SET
    status = :status, progress = :progress, failures = :failures, pending = :pending,
    message = :message, message_set = :message_set, version = version + :bump,
    skipped = :skipped, cancelled = :cancelled,
    claimed_at = coalesce(:turn, claimed_at),
    started_at = coalesce(started_at, :claimed_at),
    updated_at = CASE WHEN :visible THEN :now ELSE updated_at END,
    finished_at = CASE WHEN :finished THEN :now ELSE finished_at END,
    expires_at = CASE WHEN :finished THEN :now + :retention ELSE expires_at END,
    list_key = CASE WHEN :finished THEN :finished_prefix || substr(list_key, 2) ELSE list_key END,
    change_seq = CASE WHEN :visible THEN (SELECT seq FROM job_changes) ELSE change_seq END
WHERE id = :id;

-- name: claim_items.pick_job
-- Round-robin: the runnable job whose turn came first (new jobs have claimed_at 0). A claim
-- puts a job's next turn after the time its items are expected to take (twice over), so a
-- job of slow items leaves as much time to the others as it takes.
SELECT id, job_type, tenant FROM jobs
WHERE pending > 0 AND status IN ('queued', 'working')
  AND job_type IN (SELECT value FROM json_each(:job_types))
  AND id NOT IN (SELECT value FROM json_each(:skip_jobs))
ORDER BY claimed_at LIMIT 1;

-- name: claim_items.has_due
-- Whether a job has an item a claim can take now: its pending items may all be waiting to
-- be retried later (`due_at`), and then the claim passes it over. Its `pending` is compared
-- with the items not due yet, counted through items_waiting (only items ever put off), so
-- that the job's other items are not read.
SELECT 1 FROM jobs
WHERE id = :job_id AND pending > (
    SELECT count(*) FROM items
    WHERE job_id = :job_id AND state = 'pending' AND due_at IS NOT NULL AND due_at > :now
);

-- name: claim_items.insert_lease
INSERT INTO leases (job_id, worker_id, expires_at, job_type, slots)
VALUES (:job_id, :worker_id, :expires_at, :job_type, :slots);

-- name: claim_items.running
-- The slots of a limited job type's `concurrency` held under live leases: each lease's slots,
-- or its leased items when fewer are left (reported items are no longer leased). A lapsed
-- lease counts no more, so a dead worker's share is free again as soon as its lease lapses
-- (the items themselves go back to the queue at the next requeue). The claiming worker's own
-- leases (`own`, a JSON list of ids) are left out: it says what they hold (TypeLimits.own).
SELECT coalesce(sum(min(held, coalesce(slots, held))), 0) FROM (
    SELECT leases.slots AS slots, count(*) AS held
    FROM leases JOIN items ON items.lease_id = leases.id AND items.state = 'leased'
    WHERE leases.job_type = :job_type AND leases.expires_at >= :now
      AND leases.id NOT IN (SELECT value FROM json_each(:own))
    GROUP BY leases.id
);

-- name: claim_items.started
-- A rate-limited job type's items started (claimed) in the last period: a sliding window.
SELECT coalesce(sum(count), 0) FROM job_type_starts
WHERE job_type = :job_type AND at > :since;

-- name: claim_items.record_start
INSERT INTO job_type_starts (job_type, at, count) VALUES (:job_type, :now, :count);

-- name: claim_items.forget_starts
DELETE FROM job_type_starts WHERE job_type = :job_type AND at <= :since;

-- name: claim_items.throttled
-- A job held back by its type's limit: its message, read before anything is written, so a
-- job whose message already says so is not written again.
SELECT status, message, message_set FROM jobs WHERE id = :id;


-- name: claim_items.last_attempt
-- An item on its last attempt (its worker vanished `max_attempts - 1` times) is leased alone,
-- so that if it kills its worker again it fails alone. items_lost holds only items that lost a
-- worker before, which are few. Differs by necessity from PostgreSQL as lease_items does.
-- INDEXED BY, here and in lease_items: without statistics SQLite would walk the job's items
-- by primary key, reading every item already done (or all of them, here) on each claim.
UPDATE items SET state = 'leased', lease_id = :lease_id, attempts = attempts + 1
WHERE job_id = :job_id AND idx = (
    SELECT idx FROM items INDEXED BY items_lost
    WHERE job_id = :job_id AND state = 'pending' AND attempts > 0 AND attempts >= :last
      AND (due_at IS NULL OR due_at <= :now)
    ORDER BY idx LIMIT 1
)
RETURNING idx, payload, attempts, retries;

-- name: claim_items.lease_items
-- Differs by necessity from PostgreSQL: SQLite has one writer at a time, so the
-- transaction itself is the lock and no SKIP LOCKED is needed. Items on their last attempt
-- are left to claim_items.last_attempt.
UPDATE items SET state = 'leased', lease_id = :lease_id, attempts = attempts + 1
WHERE job_id = :job_id AND state = 'pending' AND idx IN (
    SELECT idx FROM items INDEXED BY items_pending
    WHERE job_id = :job_id AND state = 'pending' AND attempts < :last
      AND (due_at IS NULL OR due_at <= :now)
    ORDER BY idx LIMIT :limit
)
RETURNING idx, payload, attempts, retries;

-- name: finish_items.lease
SELECT job_id, expires_at FROM leases WHERE id = :lease_id;

-- name: finish_items.take_item
-- The fencing check: only an item still leased under this token can be finished.
DELETE FROM items WHERE job_id = ? AND idx = ? AND lease_id = ? AND state = 'leased';

-- name: finish_items.retry_later
-- An item whose handler raised an error its job type retries goes back to the queue, due at
-- `due_at`; the claim it ran under is not counted as an attempt (its worker did not vanish).
-- Only an item still leased under this token is retried (the fencing check).
UPDATE items SET state = 'pending', lease_id = NULL, due_at = ?, retries = retries + 1,
    attempts = attempts - 1
WHERE job_id = ? AND idx = ? AND lease_id = ? AND state = 'leased';

-- name: finish_items.insert_result
INSERT INTO results (job_id, idx, success, entry) VALUES (?, ?, ?, ?);

-- name: finish_items.insert_failure
-- A failed item's result keeps its payload (for a retry), copied from the item before the
-- item is taken; only an item still leased under this token is copied (the fencing check).
INSERT INTO results (job_id, idx, success, entry, payload)
SELECT job_id, idx, 0, ?, payload FROM items
WHERE job_id = ? AND idx = ? AND lease_id = ? AND state = 'leased';

-- name: leases.release
DELETE FROM leases WHERE id = :lease_id;

-- name: leases.release_if_done
-- A lease is released only once none of its items is left: a leftover item must stay
-- covered, so that when the lease lapses the item goes back to the queue.
DELETE FROM leases WHERE id = :lease_id AND NOT EXISTS (
    SELECT 1 FROM items WHERE lease_id = :lease_id AND state = 'leased'
);

-- name: renew_leases
UPDATE leases SET expires_at = :until
WHERE id IN (SELECT value FROM json_each(:lease_ids)) AND expires_at >= :now
RETURNING id;

-- name: requeue_expired.leases
SELECT id, job_id FROM leases WHERE expires_at < :now ORDER BY expires_at LIMIT 100;

-- name: requeue_expired.items
SELECT idx, payload, attempts FROM items WHERE lease_id = :lease_id AND state = 'leased';

-- name: requeue_expired.requeue
UPDATE items SET state = 'pending', lease_id = NULL
WHERE lease_id = :lease_id AND state = 'leased' AND attempts < :max_attempts;

-- name: release_lease.refund
-- Items handed back unstarted by a cleanly stopping worker do not use up an attempt.
UPDATE items SET attempts = attempts - 1 WHERE lease_id = :lease_id AND state = 'leased';

-- name: requeue_expired.job_action
SELECT action FROM jobs WHERE id = :id;

-- name: purge_expired.jobs
-- A job whose event was never sent yet stays until it is: the event is built from it.
SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= :now
  AND NOT EXISTS (SELECT 1 FROM deliveries WHERE job_id = jobs.id AND body IS NULL)
LIMIT 100;

-- name: purge_expired.items
-- Bounded deletes keep each write transaction short even for a job of a million items.
DELETE FROM items WHERE job_id = :id AND idx IN (
    SELECT idx FROM items WHERE job_id = :id LIMIT 5000
);

-- name: purge_expired.results
DELETE FROM results WHERE job_id = :id AND idx IN (
    SELECT idx FROM results WHERE job_id = :id LIMIT 5000
);

-- name: purge_expired.job
DELETE FROM jobs WHERE id = :id;

-- name: purge_expired.loads
-- Loads whose submit died (or is being given up): their items go, in bounded steps.
SELECT job_id FROM loading_jobs WHERE expires_at <= :now OR abandoned = 1 LIMIT 100;

-- name: abandon_load.mark
-- Once marked, no further step of the load can commit (submit_job.load_held).
UPDATE loading_jobs SET abandoned = 1 WHERE job_id = :id;

-- name: abandon_load.forget
DELETE FROM loading_jobs WHERE job_id = :id;

-- name: purge_expired.leases
-- A lease can outlive its job's retention (workers offline for longer); it goes too.
DELETE FROM leases WHERE job_id = :id;

-- name: maintenance.lead
-- Take the lead of a chore, or keep it: only a lead that has lapsed changes hands, so one
-- process at a time requeues and purges for everyone sharing the database.
INSERT INTO leaders (chore, holder, expires_at) VALUES (:chore, :holder, :until)
ON CONFLICT (chore) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leaders.holder = excluded.holder OR leaders.expires_at < :now
RETURNING holder;

-- name: submit_job.count_active
-- The per-tenant quota of queued or working jobs; unfinished jobs are the ones whose
-- listing key starts with 0, so this is a range scan of the tenant's part of jobs_list.
SELECT count(*) FROM jobs WHERE tenant = :tenant AND list_key < '1';

-- name: tokens.create
INSERT INTO tokens (id, tenant, digest, created_at) VALUES (:id, :tenant, :digest, :now);

-- name: tokens.list
SELECT id, tenant, created_at, revoked_at FROM tokens ORDER BY created_at, id;

-- name: tokens.revoke
UPDATE tokens SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: tokens.find
SELECT id, tenant FROM tokens WHERE digest = :digest AND revoked_at IS NULL;

-- name: tokens.count
-- Live and revoked tokens: a server with revoked tokens only stays closed.
SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FILTER (WHERE revoked_at IS NOT NULL)
FROM tokens;

-- name: tokens.live
-- Which of these tokens are still live (API nodes ask this for their open streams).
SELECT id FROM tokens
WHERE id IN (SELECT value FROM json_each(:ids)) AND revoked_at IS NULL;

-- name: lapsed_leases
-- Who lost which items: the leases requeue_expired.leases finds, read before they are
-- requeued so that each can be logged with its job and worker.
SELECT l.id, l.worker_id, l.job_id, j.job_type, j.tenant, j.status,
       (SELECT count(*) FROM items i WHERE i.lease_id = l.id AND i.state = 'leased')
FROM leases l JOIN jobs j ON j.id = l.job_id
WHERE l.expires_at < :now ORDER BY l.expires_at LIMIT 100;

-- name: purge_expired.counts
-- What a job counted, read in the transaction that deletes it, for metric_totals.add.
SELECT job_type, status, progress, failures, created_at, finished_at FROM jobs WHERE id = :id;

-- name: metric_totals.add
INSERT INTO metric_totals (name, job_type, label, value) VALUES (:name, :job_type, :label, :value)
ON CONFLICT (name, job_type, label) DO UPDATE SET value = metric_totals.value + excluded.value;

-- name: metric_counts.begin
-- The reads of a scrape share one snapshot, so that a job purged meanwhile is counted once:
-- either in jobs or in metric_totals.
BEGIN;

-- name: metric_counts.end
COMMIT;

-- name: metric_counts.jobs
-- A scan of jobs (which holds only jobs within their retention), once per scrape.
SELECT job_type, status, count(*), sum(progress - failures), sum(failures), sum(pending)
FROM jobs GROUP BY job_type, status;

-- name: metric_counts.durations
-- Finished jobs by the first bucket their duration fits in: the number of bounds below it.
SELECT job_type, bucket, count(*), sum(seconds) FROM (
    SELECT job_type, finished_at - created_at AS seconds,
           (SELECT count(*) FROM json_each(:bounds) WHERE value < finished_at - created_at)
               AS bucket
    FROM jobs WHERE finished_at IS NOT NULL
) GROUP BY job_type, bucket;

-- name: metric_counts.leases
SELECT count(*) FROM leases WHERE expires_at >= :now;

-- name: metric_counts.running
-- Items running under live leases, by job type, as a concurrency limit counts them: each
-- lease's leased items, or its slots when it has fewer (claim_items.running).
SELECT job_type, sum(min(held, coalesce(slots, held))) FROM (
    SELECT j.job_type AS job_type, l.slots AS slots, count(*) AS held FROM leases l
    JOIN items i ON i.lease_id = l.id AND i.state = 'leased'
    JOIN jobs j ON j.id = l.job_id
    WHERE l.expires_at >= :now
    GROUP BY l.id
) GROUP BY job_type;

-- name: metric_counts.totals
SELECT name, job_type, label, value FROM metric_totals;

-- name: purge_expired.delivery_attempts
-- Deliveries that are no longer being sent go with their job; pending ones finish first.
DELETE FROM delivery_attempts WHERE delivery_id IN (
    SELECT id FROM deliveries WHERE job_id = :id AND state <> 'pending'
);

-- name: purge_expired.deliveries
DELETE FROM deliveries WHERE job_id = :id AND state <> 'pending';

-- name: deliveries.enqueue
-- The outbox: run in the transaction that writes a job's final status (save_state), so a
-- finished job with a callback_url always has its event queued, due at once.
INSERT INTO deliveries (id, job_id, tenant, job_type, url, type, public_url, created_at,
                        next_attempt_at)
SELECT :delivery_id, id, tenant, job_type, callback_url, :type, public_url, :now, :now
FROM jobs WHERE id = :id AND callback_url IS NOT NULL;

-- name: deliveries.any_due
-- The cheap read first: a process with nothing to send opens no write transaction.
SELECT EXISTS (
    SELECT 1 FROM deliveries
    WHERE state = 'pending' AND next_attempt_at <= :now AND leased_until < :now
);

-- name: deliveries.claim
-- Lease due deliveries for one attempt each; the write lock keeps two processes apart.
UPDATE deliveries SET attempts = attempts + 1, lease_token = lease_token + 1,
                      leased_until = :until
WHERE id IN (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND next_attempt_at <= :now AND leased_until < :now
    ORDER BY next_attempt_at LIMIT :limit
)
RETURNING id, job_id, tenant, job_type, url, type, public_url, created_at, attempts,
          round_start, lease_token, body;

-- name: deliveries.mark_lost
-- An earlier attempt still without an answer was cut off when its process stopped.
UPDATE delivery_attempts SET error = :lost
WHERE delivery_id = :id AND status_code IS NULL AND error IS NULL;

-- name: deliveries.insert_attempt
INSERT INTO delivery_attempts (delivery_id, n, at) VALUES (:id, :n, :now);

-- name: deliveries.keep_body
-- The event is built once, at the first attempt; every later attempt sends the same bytes.
UPDATE deliveries SET body = coalesce(body, :body) WHERE id = :id RETURNING body;

-- name: deliveries.finish_attempt
-- The receiver's answer is recorded even when the lease was lost meanwhile: it was sent.
UPDATE delivery_attempts SET status_code = :status_code, error = :error
WHERE delivery_id = :id AND n = :n;

-- name: deliveries.finish
-- The fencing check: only the holder of the current lease decides what happens next.
UPDATE deliveries SET state = :state, next_attempt_at = :next_attempt_at, leased_until = 0
WHERE id = :id AND lease_token = :lease_token;

-- name: deliveries.drop_orphan_attempts
-- A delivery that outlived its job (purged while it was still being sent) goes once it ends.
DELETE FROM delivery_attempts WHERE delivery_id = :id AND EXISTS (
    SELECT 1 FROM deliveries d WHERE d.id = :id AND d.state <> 'pending'
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = d.job_id)
);

-- name: deliveries.drop_orphan
DELETE FROM deliveries WHERE id = :id AND state <> 'pending'
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = deliveries.job_id);

-- name: deliveries.list
SELECT id, type, state, next_attempt_at FROM deliveries
WHERE job_id = :job_id AND tenant = :tenant ORDER BY id;

-- name: deliveries.list_attempts
SELECT a.delivery_id, a.at, a.status_code, a.error
FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE d.job_id = :job_id AND d.tenant = :tenant
ORDER BY a.delivery_id, a.n;

-- name: deliveries.redeliver
-- A new round of attempts, due now. The lease token moves on, so an attempt still running
-- records its answer but no longer decides the delivery's state.
UPDATE deliveries SET state = 'pending', next_attempt_at = :now, round_start = attempts,
                      lease_token = lease_token + 1, leased_until = 0
WHERE job_id = :job_id AND tenant = :tenant;

-- name: webhook_secrets.create
-- Created on first use; two processes creating one at once meet on the primary key.
INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES (:tenant, :secret, :now)
ON CONFLICT (tenant) DO NOTHING;

-- name: webhook_secrets.rotate
INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES (:tenant, :secret, :now)
ON CONFLICT (tenant) DO UPDATE
SET previous = webhook_secrets.secret, secret = excluded.secret, rotated_at = :now;

-- name: webhook_secrets.select
SELECT secret, previous, rotated_at FROM webhook_secrets WHERE tenant = :tenant;

-- name: job_callback
-- Where a job's event goes, for a retry of its failed items to send its own event there too.
SELECT callback_url, public_url FROM jobs
WHERE id = :id AND tenant = :tenant AND callback_url IS NOT NULL
  AND (expires_at IS NULL OR expires_at > :now);

-- name: changes.next
-- Differs by necessity from PostgreSQL, which stamps changes with their transaction id: the
-- next change number, taken inside the write transaction of a visible change or an insert
-- (`submit_job.insert_job`, `job_state.save` read it). The single writer makes the numbers
-- commit in order.
UPDATE job_changes SET seq = seq + 1;

-- name: changes.current
-- The position of a reader that wants only what changes from now on.
SELECT seq FROM job_changes;

-- name: changes.since
-- What the watcher of an API process asks once per tick for all its waiters: the jobs that
-- changed after position `since` (a range scan of jobs_changes; usually empty).
SELECT id, tenant, version, change_seq FROM jobs
WHERE change_seq > :since
ORDER BY change_seq;

-- name: tenant_changes.select
-- A tenant's jobs that changed after `since`, as its event stream sends them (results are
-- never inline there), each in its latest state, oldest change first. As many as changed:
-- at most the tenant's jobs still kept (retention).
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at, change_seq
FROM jobs
WHERE tenant = :tenant AND change_seq > :since
  AND (expires_at IS NULL OR expires_at > :now)
ORDER BY change_seq;
