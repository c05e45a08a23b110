-- Named queries of the PostgreSQL backend. Each block starts with `-- name: <name>`;
-- the block's name is the Store method (and sub-step) that runs it, as in sqlite/queries.sql.
-- Parameters are psycopg's named placeholders. Connections run in autocommit mode and
-- write operations open an explicit transaction, so a one-statement read costs one round trip.
--
-- Lock order, followed by every write so that no two of them can deadlock:
--   items of a lease (in index order) -> the job row -> lease rows (in id order).
-- A claim locks the job row last, only to count the claim, after it leased its items with
-- SKIP LOCKED. Every lease deletion happens while the job row is held.

-- name: migrations.lock
-- Differs by necessity from SQLite, whose single writer is the lock: several nodes may run
-- `joblot migrate` at once, so the first applies a migration and the others wait, then find
-- it recorded. Keyed by schema, so databases shared by several schemas do not wait on each other.
SELECT pg_advisory_xact_lock(1785684588, hashtext(coalesce(current_schema(), '')));

-- name: migrations.create_table
CREATE TABLE IF NOT EXISTS joblot_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at double precision NOT NULL
);

-- name: migrations.exists
-- Whether the migrations table exists in the schema on the search path.
SELECT to_regclass('joblot_migrations') IS NOT NULL;

-- name: migrations.applied
SELECT version FROM joblot_migrations ORDER BY version;

-- name: migrations.record
INSERT INTO joblot_migrations (version, name, applied_at) VALUES (%(version)s, %(name)s, %(now)s);

-- name: submit_job.find_idempotent
-- A retried submission with the same key finds the job the first one made.
SELECT id, request_hash, expires_at FROM jobs
WHERE tenant = %(tenant)s AND idempotency_key = %(key)s;

-- name: submit_job.lock_tenant
-- Differs by necessity from SQLite, whose single writer serializes submits: API nodes submit
-- at once, so submits of one tenant that check its quota take turns (and only those).
SELECT pg_advisory_xact_lock(1785684589, hashtext(%(tenant)s));

-- name: submit_job.count_active
-- The per-tenant quota of queued or working jobs; unfinished jobs are the ones whose
-- listing key starts with 0, so this is a range scan of the tenant's part of jobs_list.
SELECT count(*) FROM jobs WHERE tenant = %(tenant)s AND list_key < '1';

-- name: submit_job.insert_job
-- Differs by necessity from SQLite: two API nodes may insert the same idempotency key at
-- once. ON CONFLICT waits for the other insert to commit and then returns no row, so the
-- caller looks up the winner's job instead of failing on the unique index.
INSERT INTO jobs (id, tenant, job_type, action, status, total, pending, max_failures,
                  idempotency_key, request_hash, created_at, updated_at, list_key, callback_url,
                  public_url, message)
VALUES (%(id)s, %(tenant)s, %(job_type)s, %(action)s, 'queued', %(total)s, %(total)s,
        %(max_failures)s, %(idempotency_key)s, %(request_hash)s, %(created_at)s, %(created_at)s,
        %(list_key)s, %(callback_url)s, %(public_url)s, %(message)s)
ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: submit_job.copy_items
-- Differs from SQLite's one INSERT per item: over a network COPY streams all items of a job
-- (up to max_items) in one operation instead of a round trip each.
COPY items (job_id, idx, payload) FROM STDIN (FORMAT BINARY);

-- name: work.notify
-- Differs by necessity from SQLite, which has no notifications: wakes idle workers.
-- Delivered when the transaction commits, so a woken worker finds the items.
SELECT pg_notify('joblot_work', '');

-- name: work.listen
-- Run once on the dedicated listening connection of each store (see notify.py): new work,
-- and jobs that changed (`changes.notify`), which also frees room for limited job types.
LISTEN joblot_work; LISTEN joblot_changes;

-- name: work.heartbeat
-- Proves the listening connection is still alive between notifications.
SELECT 1;

-- name: get_job.select
-- One primary-key lookup; expired jobs read as missing even before they are purged.
-- Differs from SQLite (get_job.inline_results, a second query): each statement is a network
-- round trip here, so the inline results, a bounded range scan for jobs with at most
-- `inline` items, come back in the same one.
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at,
       CASE WHEN total <= %(inline)s AND status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = jobs.id ORDER BY idx) END
FROM jobs
WHERE id = %(id)s AND tenant = %(tenant)s AND (expires_at IS NULL OR expires_at > %(now)s);

-- name: get_jobs.select
-- Differs from SQLite (one get_job per id): all the asked jobs in one round trip, in the
-- order asked (WITH ORDINALITY), with the same inline results as get_job.select.
SELECT j.id, j.job_type, j.status, j.total, j.progress, j.message, j.version, j.list_key,
       j.failures, j.created_at, j.started_at, j.updated_at, j.finished_at,
       CASE WHEN j.total <= %(inline)s AND j.status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = j.id ORDER BY idx) END
FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS asked (id, n)
JOIN jobs j ON j.id = asked.id
WHERE j.tenant = %(tenant)s AND (j.expires_at IS NULL OR j.expires_at > %(now)s)
ORDER BY asked.n;

-- name: list_jobs.after
-- Small jobs carry their results inline, as in get_job.select. `low` and `high` bound the keys
-- the statuses asked for can have (unfinished jobs' keys start with 0, finished ones' with 1).
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at,
       CASE WHEN total <= %(inline)s AND status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = jobs.id ORDER BY idx) END
FROM jobs
WHERE tenant = %(tenant)s AND list_key > %(key)s AND list_key >= %(low)s AND list_key < %(high)s
  AND status = ANY(%(statuses)s::text[])
  AND (expires_at IS NULL OR expires_at > %(now)s)
ORDER BY list_key LIMIT %(limit)s;

-- name: list_jobs.before
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at,
       CASE WHEN total <= %(inline)s AND status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = jobs.id ORDER BY idx) END
FROM jobs
WHERE tenant = %(tenant)s AND list_key < %(key)s AND list_key >= %(low)s AND list_key < %(high)s
  AND status = ANY(%(statuses)s::text[])
  AND (expires_at IS NULL OR expires_at > %(now)s)
ORDER BY list_key DESC LIMIT %(limit)s;

-- name: list_jobs_of_type.after
-- As list_jobs.after, for one job type: a range of jobs_list_type.
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at,
       CASE WHEN total <= %(inline)s AND status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = jobs.id ORDER BY idx) END
FROM jobs
WHERE tenant = %(tenant)s AND job_type = %(job_type)s
  AND list_key > %(key)s AND list_key >= %(low)s AND list_key < %(high)s
  AND status = ANY(%(statuses)s::text[])
  AND (expires_at IS NULL OR expires_at > %(now)s)
ORDER BY list_key LIMIT %(limit)s;

-- name: list_jobs_of_type.before
SELECT id, job_type, status, total, progress, message, version, list_key,
       failures, created_at, started_at, updated_at, finished_at,
       CASE WHEN total <= %(inline)s AND status <> 'queued' THEN ARRAY(
           SELECT entry FROM results WHERE results.job_id = jobs.id ORDER BY idx) END
FROM jobs
WHERE tenant = %(tenant)s AND job_type = %(job_type)s
  AND list_key < %(key)s AND list_key >= %(low)s AND list_key < %(high)s
  AND status = ANY(%(statuses)s::text[])
  AND (expires_at IS NULL OR expires_at > %(now)s)
ORDER BY list_key DESC LIMIT %(limit)s;

-- name: failed_items.select
-- The payloads of a job's failed items, as submitted, in index order: a range of
-- results_failed. Failures recorded before migration 008 kept no payload.
SELECT payload FROM results
WHERE job_id = %(id)s AND NOT success AND payload IS NOT NULL
ORDER BY idx;

-- name: list_results.after
SELECT idx, entry FROM results WHERE job_id = %(id)s AND idx > %(idx)s
ORDER BY idx LIMIT %(limit)s;

-- name: list_results.before
SELECT idx, entry FROM results WHERE job_id = %(id)s AND idx < %(idx)s
ORDER BY idx DESC LIMIT %(limit)s;

-- name: list_results_failed.after
-- Only the failed entries: a range of the partial index results_failed (the condition is
-- written out, not a parameter, so that the planner can use that index).
SELECT idx, entry FROM results WHERE job_id = %(id)s AND NOT success AND idx > %(idx)s
ORDER BY idx LIMIT %(limit)s;

-- name: list_results_failed.before
SELECT idx, entry FROM results WHERE job_id = %(id)s AND NOT success AND idx < %(idx)s
ORDER BY idx DESC LIMIT %(limit)s;

-- name: list_results_succeeded.after
-- Only the succeeded entries: the job's range of the primary key, stepping over the failed
-- ones. Succeeded entries have no index of their own, which would cost every finish a write;
-- so a page costs its size plus the failures between its entries.
SELECT idx, entry FROM results WHERE job_id = %(id)s AND success AND idx > %(idx)s
ORDER BY idx LIMIT %(limit)s;

-- name: list_results_succeeded.before
SELECT idx, entry FROM results WHERE job_id = %(id)s AND success AND idx < %(idx)s
ORDER BY idx DESC LIMIT %(limit)s;

-- name: job_version
SELECT version FROM jobs
WHERE id = %(id)s AND tenant = %(tenant)s AND (expires_at IS NULL OR expires_at > %(now)s);

-- name: job_expiry
-- When a finished job expires (and may be purged): until then its status can be kept.
SELECT expires_at FROM jobs
WHERE id = %(id)s AND tenant = %(tenant)s AND (expires_at IS NULL OR expires_at > %(now)s);

-- name: job_state.select
-- The counters the lifecycle rules (joblot.models) read inside a write transaction.
-- Differs by necessity from SQLite: the row is locked until commit, since writers on other
-- nodes run at the same time. NO KEY UPDATE is the lock the UPDATE takes anyway; callers
-- take it as late in their transaction as they can, to keep the job row free for others.
SELECT status, total, progress, failures, pending, message, message_set, max_failures,
       skipped, cancelled
FROM jobs WHERE id = %(id)s
FOR NO KEY UPDATE;

-- name: job_state.select_for_tenant
SELECT status, total, progress, failures, pending, message, message_set, max_failures,
       skipped, cancelled
FROM jobs
WHERE id = %(id)s AND tenant = %(tenant)s AND (expires_at IS NULL OR expires_at > %(now)s)
FOR NO KEY UPDATE;

-- name: job_state.save
-- A visible change is stamped with its transaction's id (see migration 011).
-- Writes back what the rules decided; a visible change is stamped in `updated_at`, the first
-- claim in `started_at` (and a claim sets when the job's next turn comes, `claimed_at`), and a job that just finished gets its finish time, its purge time
-- and its place among finished jobs in the listing order.
UPDATE jobs SET
    status = %(status)s, progress = %(progress)s, failures = %(failures)s,
    pending = %(pending)s, message = %(message)s, message_set = %(message_set)s,
    version = version + %(bump)s, skipped = %(skipped)s, cancelled = %(cancelled)s,
    claimed_at = coalesce(%(turn)s::double precision, claimed_at),
    started_at = coalesce(started_at, %(claimed_at)s::double precision),
    updated_at = CASE WHEN %(visible)s THEN %(now)s ELSE updated_at END,
    finished_at = CASE WHEN %(finished)s THEN %(now)s ELSE finished_at END,
    expires_at = CASE WHEN %(finished)s THEN %(now)s + %(retention)s ELSE expires_at END,
    list_key = CASE WHEN %(finished)s THEN %(finished_prefix)s || substr(list_key, 2)
               ELSE list_key END,
    change_xid = CASE WHEN %(visible)s THEN pg_current_xact_id()::text::bigint ELSE change_xid END
WHERE id = %(id)s;

-- name: claim_items.any_runnable
-- The cheap read first: an idle worker polling an idle database opens no transaction and
-- locks nothing (a locking read dirties the row even in autocommit). A job whose pending items
-- all wait for a retry does not count (as in claim_items.has_due).
SELECT EXISTS (
    SELECT 1 FROM jobs
    WHERE pending > 0 AND status IN ('queued', 'working') AND job_type = ANY(%(job_types)s::text[])
      AND pending > (
          SELECT count(*) FROM items
          WHERE job_id = jobs.id AND state = 'pending' AND due_at IS NOT NULL
            AND due_at > %(now)s
      )
);

-- name: claim_items.pick_job
-- Round-robin: the runnable job whose turn came first (new jobs have claimed_at 0). A claim
-- puts a job's next turn after the time its items are expected to take (twice over), so a
-- job of slow items leaves as much time to the others as it takes.
-- Differs by necessity from SQLite: many workers claim at once, so the job is read without a
-- lock (two workers may pick the same job: SKIP LOCKED gives them different items) and its
-- row is locked only at the end of the claim, to count it.
SELECT id, job_type, tenant FROM jobs
WHERE pending > 0 AND status IN ('queued', 'working') AND job_type = ANY(%(job_types)s::text[])
  AND NOT (id = ANY(%(skip_jobs)s::text[]))
ORDER BY claimed_at LIMIT 1;

-- name: claim_items.has_due
-- Whether a job has an item a claim can take now: its pending items may all be waiting to
-- be retried later (`due_at`), and then the claim passes it over. Its `pending` is compared
-- with the items not due yet, counted through items_waiting (only items ever put off), so
-- that the job's other items are not read.
SELECT 1 FROM jobs
WHERE id = %(job_id)s AND pending > (
    SELECT count(*) FROM items
    WHERE job_id = %(job_id)s AND state = 'pending' AND due_at IS NOT NULL AND due_at > %(now)s
);

-- name: claim_items.insert_lease
INSERT INTO leases (job_id, worker_id, expires_at, job_type, slots)
VALUES (%(job_id)s, %(worker_id)s, %(expires_at)s, %(job_type)s, %(slots)s)
RETURNING id;

-- name: claim_items.running
-- The slots of a limited job type's `concurrency` held under live leases: each lease's slots,
-- or its leased items when fewer are left, but for the claiming worker's own. Same as SQLite's.
SELECT coalesce(sum(least(held, coalesce(slots, held))), 0) FROM (
    SELECT leases.slots AS slots, count(*) AS held
    FROM leases JOIN items ON items.lease_id = leases.id AND items.state = 'leased'
    WHERE leases.job_type = %(job_type)s AND leases.expires_at >= %(now)s
      AND NOT leases.id = ANY(%(own)s::bigint[])
    GROUP BY leases.id
) AS held;

-- name: claim_items.started
-- A rate-limited job type's items started (claimed) in the last period: a sliding window.
SELECT coalesce(sum(count), 0) FROM job_type_starts
WHERE job_type = %(job_type)s AND at > %(since)s;

-- name: claim_items.record_start
INSERT INTO job_type_starts (job_type, at, count) VALUES (%(job_type)s, %(now)s, %(count)s);

-- name: claim_items.forget_starts
DELETE FROM job_type_starts WHERE job_type = %(job_type)s AND at <= %(since)s;

-- name: claim_items.throttled
-- A job held back by its type's limit: its message, read before anything is written, so a
-- job whose message already says so is not written again.
SELECT status, message, message_set FROM jobs WHERE id = %(id)s;

-- name: claim_items.lock_type
-- Differs by necessity from SQLite, whose single writer serializes claims: claims of one
-- limited job type take turns from counting its items to committing, so two of them never
-- both take the last free slot. A try-lock, never waited for: a claim that finds the type
-- busy (another claim is serving it this very moment) leaves it to that claim and looks at
-- the other types, so a limited type never holds up the rest; if it finds nothing else, it
-- commits and tries again a few milliseconds later (work.BUSY_PAUSES).
SELECT pg_try_advisory_xact_lock(1785684591, hashtext(%(job_type)s));


-- name: claim_items.by_index
-- Differs by necessity from SQLite (whose claims name their index, INDEXED BY): until the
-- items table is analyzed after a big submit, the planner expects a new job to have a row or
-- two, and reads all its pending items to sort them for the next batch (some 30 ms a claim
-- for 100,000 items) rather than walk items_pending in index order and stop at the batch's
-- size (under 1 ms). Sorting is made its last resort for the rest of the claim; nothing after
-- this in a claim sorts.
SET LOCAL enable_sort = off;

-- name: claim_items.lease_items
-- Differs by necessity from SQLite: pending items are taken with SKIP LOCKED in index order,
-- so a claim never waits on rows another transaction holds. The locked rows are then
-- addressed by ctid (stable while locked): a join back on (job_id, idx) lets the planner,
-- which has no statistics for a new job's id, pick a nested loop over the whole job. Items on
-- their last attempt are left to claim_items.last_attempt.
WITH picked AS (
    SELECT ctid FROM items
    WHERE job_id = %(job_id)s AND state = 'pending' AND attempts < %(last)s
      AND (due_at IS NULL OR due_at <= %(now)s)
    ORDER BY idx LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE items SET state = 'leased', lease_id = %(lease_id)s, attempts = items.attempts + 1
WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked))
RETURNING items.idx, items.payload, items.attempts, items.retries;

-- name: claim_items.last_attempt
-- An item on its last attempt (its worker vanished `max_attempts - 1` times) is leased alone,
-- so that if it kills its worker again it fails alone. items_lost holds only items that lost a
-- worker before, which are few. Differs by necessity from SQLite as lease_items does.
WITH picked AS (
    SELECT ctid FROM items
    WHERE job_id = %(job_id)s AND state = 'pending' AND attempts > 0 AND attempts >= %(last)s
      AND (due_at IS NULL OR due_at <= %(now)s)
    ORDER BY idx LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE items SET state = 'leased', lease_id = %(lease_id)s, attempts = items.attempts + 1
WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked))
RETURNING items.idx, items.payload, items.attempts, items.retries;

-- name: finish_items.lease
SELECT job_id, expires_at FROM leases WHERE id = %(lease_id)s;

-- name: finish_items.lease_held
-- Differs by necessity from SQLite: checked again once the job row is locked. Leases are only
-- deleted by transactions holding the job row, so from here on the answer cannot change; a
-- requeue or release of this lease that committed while this finish waited is seen here.
SELECT 1 FROM leases WHERE id = %(lease_id)s AND expires_at >= %(now)s;

-- name: finish_items.lock_all
-- Differs by necessity from SQLite: a finish that also retries items locks all of its items
-- first, in index order, as finish_items.record and requeue_expired.items do, so that taking
-- some and retrying others cannot deadlock with a requeue of the same lease.
SELECT idx FROM items
WHERE job_id = %(job_id)s AND idx = ANY(%(idx)s::bigint[]) AND lease_id = %(lease_id)s
  AND state = 'leased'
ORDER BY idx
FOR UPDATE;

-- name: finish_items.retry_later
-- An item whose handler raised an error its job type retries goes back to the queue, due at
-- `due_at`; the claim it ran under is not counted as an attempt (its worker did not vanish).
-- Only an item still leased under this token is retried (the fencing check).
UPDATE items SET state = 'pending', lease_id = NULL, due_at = r.due_at,
    retries = items.retries + 1, attempts = items.attempts - 1
FROM unnest(%(idx)s::bigint[], %(due_at)s::double precision[]) AS r(idx, due_at)
WHERE items.job_id = %(job_id)s AND items.idx = r.idx AND items.lease_id = %(lease_id)s
  AND items.state = 'leased';

-- name: finish_items.record
-- The fencing check and the recording, for the whole batch in one statement: only items still
-- leased under this token are taken (the caller refuses the batch on any shortfall of inserted
-- results), and each result is inserted with the item it replaces, a failed one with its
-- payload (for a retry). Rows are locked in index order, as requeue_expired.items does, so the
-- two never deadlock. Locked rows are deleted by ctid, for the same reason as in
-- claim_items.lease_items. Differs from SQLite's statements per item: one round trip.
WITH taken AS (
    SELECT ctid FROM items
    WHERE job_id = %(job_id)s AND idx = ANY(%(idx)s::bigint[])
      AND lease_id = %(lease_id)s AND state = 'leased'
    ORDER BY idx
    FOR UPDATE
), gone AS (
    DELETE FROM items WHERE ctid = ANY(ARRAY(SELECT ctid FROM taken))
    RETURNING idx, payload
)
INSERT INTO results (job_id, idx, success, entry, payload)
SELECT %(job_id)s, r.idx, r.success, r.entry, CASE WHEN NOT r.success THEN gone.payload END
FROM unnest(%(idx)s::bigint[], %(success)s::boolean[], %(entry)s::bytea[]) AS r (idx, success, entry)
JOIN gone ON gone.idx = r.idx;

-- name: leases.release
DELETE FROM leases WHERE id = %(lease_id)s;

-- name: leases.release_if_done
-- A lease is released only once none of its items is left: a leftover item must stay
-- covered, so that when the lease lapses the item goes back to the queue.
DELETE FROM leases WHERE id = %(lease_id)s AND NOT EXISTS (
    SELECT 1 FROM items WHERE lease_id = %(lease_id)s AND state = 'leased'
);

-- name: renew_leases
-- Differs by necessity from SQLite: several leases are locked in one statement, so in id
-- order, the one order every multi-lease lock follows.
WITH live AS (
    SELECT id FROM leases
    WHERE id = ANY(%(lease_ids)s::bigint[]) AND expires_at >= %(now)s
    ORDER BY id
    FOR NO KEY UPDATE
)
UPDATE leases SET expires_at = %(until)s
FROM live WHERE leases.id = live.id
RETURNING leases.id;

-- name: requeue_expired.leases
-- Read without locks; each lease is then handled in a short transaction of its own.
SELECT id, job_id FROM leases WHERE expires_at < %(now)s ORDER BY expires_at LIMIT 100;

-- name: requeue_expired.try_lock
-- Differs by necessity from SQLite: every worker of every node requeues lapsed leases, so
-- each lease is handled by whichever gets here first and skipped by the others, rather than
-- all of them queueing on its items. An advisory lock that nothing ever waits for, so it
-- cannot take part in a deadlock.
SELECT pg_try_advisory_xact_lock(1785684590, (%(lease_id)s %% 2147483647)::integer);

-- name: requeue_expired.items
-- Differs by necessity from SQLite: locks the lease's items first, in index order, so that a
-- finish racing this requeue either commits first (and its items are gone here) or finds
-- its items requeued and is refused.
SELECT idx, payload, attempts FROM items
WHERE lease_id = %(lease_id)s AND state = 'leased'
ORDER BY idx
FOR UPDATE;

-- name: requeue_expired.requeue
UPDATE items SET state = 'pending', lease_id = NULL
WHERE lease_id = %(lease_id)s AND state = 'leased' AND attempts < %(max_attempts)s;

-- name: requeue_expired.lapsed
-- Differs by necessity from SQLite: checked again once the job row is locked, and the lease
-- locked, since its worker may have renewed, finished or released it meanwhile.
SELECT 1 FROM leases WHERE id = %(lease_id)s AND expires_at < %(now)s
FOR UPDATE;

-- name: release_lease.held
-- As requeue_expired.lapsed, for a lease handed back by its worker before it lapsed.
SELECT 1 FROM leases WHERE id = %(lease_id)s
FOR UPDATE;

-- name: release_lease.refund
-- Items handed back unstarted by a cleanly stopping worker do not use up an attempt.
UPDATE items SET attempts = attempts - 1 WHERE lease_id = %(lease_id)s AND state = 'leased';

-- name: requeue_expired.job_action
SELECT action FROM jobs WHERE id = %(id)s;

-- name: purge_expired.jobs
-- A job whose event was never sent yet stays until it is: the event is built from it.
SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= %(now)s
  AND NOT EXISTS (SELECT 1 FROM deliveries WHERE job_id = jobs.id AND body IS NULL)
LIMIT 100;

-- name: purge_expired.items
-- Bounded deletes keep each transaction short even for a job of a million items.
DELETE FROM items WHERE job_id = %(id)s AND idx IN (
    SELECT idx FROM items WHERE job_id = %(id)s LIMIT 5000
);

-- name: purge_expired.results
DELETE FROM results WHERE job_id = %(id)s AND idx IN (
    SELECT idx FROM results WHERE job_id = %(id)s LIMIT 5000
);

-- name: purge_expired.leases
-- A lease can outlive its job's retention (workers offline for longer); it goes too.
DELETE FROM leases WHERE job_id = %(id)s;

-- name: purge_expired.job
DELETE FROM jobs WHERE id = %(id)s;

-- name: maintenance.lead
-- Take the lead of a chore, or keep it: only a lead that has lapsed changes hands, so one
-- process at a time requeues and purges for every node sharing the database. Two nodes
-- inserting the first lead at once meet on the primary key; the loser gets no row.
INSERT INTO leaders (chore, holder, expires_at) VALUES (%(chore)s, %(holder)s, %(until)s)
ON CONFLICT (chore) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leaders.holder = excluded.holder OR leaders.expires_at < %(now)s
RETURNING holder;

-- name: tokens.create
INSERT INTO tokens (id, tenant, digest, created_at) VALUES (%(id)s, %(tenant)s, %(digest)s, %(now)s);

-- name: tokens.list
SELECT id, tenant, created_at, revoked_at FROM tokens ORDER BY created_at, id;

-- name: tokens.revoke
UPDATE tokens SET revoked_at = %(now)s WHERE id = %(id)s AND revoked_at IS NULL;

-- name: tokens.find
SELECT id, tenant FROM tokens WHERE digest = %(digest)s AND revoked_at IS NULL;

-- name: tokens.count
-- Live and revoked tokens: a server with revoked tokens only stays closed.
SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FILTER (WHERE revoked_at IS NOT NULL)
FROM tokens;

-- name: tokens.live
-- Which of these tokens are still live (API nodes ask this for their open streams).
SELECT id FROM tokens WHERE id = ANY(%(ids)s) AND revoked_at IS NULL;

-- name: lapsed_leases
-- Who lost which items: the leases requeue_expired.leases finds, read before they are
-- requeued so that each can be logged with its job and worker.
SELECT l.id, l.worker_id, l.job_id, j.job_type, j.tenant, j.status,
       (SELECT count(*) FROM items i WHERE i.lease_id = l.id AND i.state = 'leased')
FROM leases l JOIN jobs j ON j.id = l.job_id
WHERE l.expires_at < %(now)s ORDER BY l.expires_at LIMIT 100;

-- name: purge_expired.counts
-- What a job counted, read in the transaction that deletes it, for metric_totals.add; the
-- row is locked so that a scrape sees the job either in jobs or in metric_totals.
SELECT job_type, status, progress, failures, created_at, finished_at FROM jobs
WHERE id = %(id)s
FOR UPDATE;

-- name: metric_totals.add
INSERT INTO metric_totals (name, job_type, label, value)
VALUES (%(name)s, %(job_type)s, %(label)s, %(value)s)
ON CONFLICT (name, job_type, label) DO UPDATE SET value = metric_totals.value + excluded.value;

-- name: metric_counts.begin
-- Differs by necessity from SQLite: PostgreSQL's default isolation takes a snapshot per
-- statement, and the reads of a scrape must share one, so that a job purged meanwhile is
-- counted once: either in jobs or in metric_totals.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: metric_counts.jobs
-- A scan of jobs (which holds only jobs within their retention), once per scrape.
SELECT job_type, status, count(*), sum(progress - failures), sum(failures), sum(pending)
FROM jobs GROUP BY job_type, status;

-- name: metric_counts.durations
-- Finished jobs by the first bucket their duration fits in: the number of bounds below it.
SELECT job_type, bucket, count(*), sum(seconds) FROM (
    SELECT job_type, finished_at - created_at AS seconds,
           (SELECT count(*) FROM unnest(%(bounds)s::float8[]) AS b
            WHERE b < finished_at - created_at) AS bucket
    FROM jobs WHERE finished_at IS NOT NULL
) AS finished GROUP BY job_type, bucket;

-- name: metric_counts.leases
SELECT count(*) FROM leases WHERE expires_at >= %(now)s;

-- name: metric_counts.running
-- Items running under live leases, by job type, as a concurrency limit counts them: each
-- lease's leased items, or its slots when it has fewer (claim_items.running).
SELECT job_type, sum(least(held, coalesce(slots, held))) FROM (
    SELECT j.job_type AS job_type, l.slots AS slots, count(*) AS held FROM leases l
    JOIN items i ON i.lease_id = l.id AND i.state = 'leased'
    JOIN jobs j ON j.id = l.job_id
    WHERE l.expires_at >= %(now)s
    GROUP BY l.id, j.job_type
) AS held GROUP BY job_type;

-- name: metric_counts.totals
SELECT name, job_type, label, value FROM metric_totals;

-- name: purge_expired.delivery_attempts
-- Deliveries that are no longer being sent go with their job; pending ones finish first.
DELETE FROM delivery_attempts WHERE delivery_id IN (
    SELECT id FROM deliveries WHERE job_id = %(id)s AND state <> 'pending'
);

-- name: purge_expired.deliveries
DELETE FROM deliveries WHERE job_id = %(id)s AND state <> 'pending';

-- name: deliveries.enqueue
-- The outbox: run in the transaction that writes a job's final status (save_state), so a
-- finished job with a callback_url always has its event queued, due at once.
INSERT INTO deliveries (id, job_id, tenant, job_type, url, type, public_url, created_at,
                        next_attempt_at)
SELECT %(delivery_id)s, id, tenant, job_type, callback_url, %(type)s, public_url, %(now)s, %(now)s
FROM jobs WHERE id = %(id)s AND callback_url IS NOT NULL;

-- name: deliveries.any_due
-- The cheap read first: a process with nothing to send opens no write transaction.
SELECT EXISTS (
    SELECT 1 FROM deliveries
    WHERE state = 'pending' AND next_attempt_at <= %(now)s AND leased_until < %(now)s
);

-- name: deliveries.claim
-- Differs by necessity from SQLite: processes on many nodes claim at once, so due rows are
-- taken with SKIP LOCKED; a row another process just leased fails `leased_until` when
-- re-checked, so one attempt is never handed to two processes.
WITH due AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND next_attempt_at <= %(now)s AND leased_until < %(now)s
    ORDER BY next_attempt_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d SET attempts = d.attempts + 1, lease_token = d.lease_token + 1,
                        leased_until = %(until)s
FROM due WHERE d.id = due.id
RETURNING d.id, d.job_id, d.tenant, d.job_type, d.url, d.type, d.public_url, d.created_at,
          d.attempts, d.round_start, d.lease_token, d.body;

-- name: deliveries.mark_lost
-- An earlier attempt still without an answer was cut off when its process stopped.
-- Differs from SQLite's one statement per delivery: the claimed batch as an array.
UPDATE delivery_attempts SET error = %(lost)s
WHERE delivery_id = ANY(%(ids)s::text[]) AND status_code IS NULL AND error IS NULL;

-- name: deliveries.insert_attempt
-- Differs from SQLite's one statement per delivery: the claimed batch as arrays.
INSERT INTO delivery_attempts (delivery_id, n, at)
SELECT a.id, a.n, %(now)s FROM unnest(%(ids)s::text[], %(ns)s::integer[]) AS a (id, n);

-- name: deliveries.keep_body
-- The event is built once, at the first attempt; every later attempt sends the same bytes.
UPDATE deliveries SET body = coalesce(body, %(body)s) WHERE id = %(id)s RETURNING body;

-- name: deliveries.finish_attempt
-- The receiver's answer is recorded even when the lease was lost meanwhile: it was sent.
UPDATE delivery_attempts SET status_code = %(status_code)s, error = %(error)s
WHERE delivery_id = %(id)s AND n = %(n)s;

-- name: deliveries.finish
-- The fencing check: only the holder of the current lease decides what happens next.
UPDATE deliveries SET state = %(state)s, next_attempt_at = %(next_attempt_at)s, leased_until = 0
WHERE id = %(id)s AND lease_token = %(lease_token)s;

-- name: deliveries.drop_orphan_attempts
-- A delivery that outlived its job (purged while it was still being sent) goes once it ends.
DELETE FROM delivery_attempts WHERE delivery_id = %(id)s AND EXISTS (
    SELECT 1 FROM deliveries d WHERE d.id = %(id)s AND d.state <> 'pending'
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = d.job_id)
);

-- name: deliveries.drop_orphan
DELETE FROM deliveries WHERE id = %(id)s AND state <> 'pending'
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = deliveries.job_id);

-- name: deliveries.list
SELECT id, type, state, next_attempt_at FROM deliveries
WHERE job_id = %(job_id)s AND tenant = %(tenant)s ORDER BY id;

-- name: deliveries.list_attempts
SELECT a.delivery_id, a.at, a.status_code, a.error
FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE d.job_id = %(job_id)s AND d.tenant = %(tenant)s
ORDER BY a.delivery_id, a.n;

-- name: deliveries.redeliver
-- A new round of attempts, due now. The lease token moves on, so an attempt still running
-- records its answer but no longer decides the delivery's state.
UPDATE deliveries SET state = 'pending', next_attempt_at = %(now)s, round_start = attempts,
                      lease_token = lease_token + 1, leased_until = 0
WHERE job_id = %(job_id)s AND tenant = %(tenant)s;

-- name: webhook_secrets.create
-- Created on first use; two processes creating one at once meet on the primary key.
INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES (%(tenant)s, %(secret)s, %(now)s)
ON CONFLICT (tenant) DO NOTHING;

-- name: webhook_secrets.rotate
INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES (%(tenant)s, %(secret)s, %(now)s)
ON CONFLICT (tenant) DO UPDATE
SET previous = webhook_secrets.secret, secret = excluded.secret, rotated_at = %(now)s;

-- name: webhook_secrets.select
SELECT secret, previous, rotated_at FROM webhook_secrets WHERE tenant = %(tenant)s;

-- name: job_callback
-- Where a job's event goes, for a retry of its failed items to send its own event there too.
SELECT callback_url, public_url FROM jobs
WHERE id = %(id)s AND tenant = %(tenant)s AND callback_url IS NOT NULL
  AND (expires_at IS NULL OR expires_at > %(now)s);

-- name: durability.settings
-- What decides whether a commit is on disk when it returns: `fsync` (off: never, for
-- anything) and `synchronous_commit` (off: a commit returns before its WAL is flushed).
SELECT current_setting('fsync'), current_setting('synchronous_commit');

-- name: acknowledged.synchronous_commit
-- Where the server runs with synchronous_commit = off, a transaction whose success is
-- answered to a client still waits for its WAL to be flushed (any user may set this).
SET LOCAL synchronous_commit = on;

-- name: changes.notify
-- Differs by necessity from SQLite, which has no notifications: after a transaction that
-- changed jobs commits, wakes the watchers of every API node (and idle workers). Sent on its
-- own, after the commit, rather than inside the changing transaction: a transaction that
-- notifies holds a cluster-wide lock while it commits, and finishes are frequent.
SELECT pg_notify('joblot_changes', '');

-- name: changes.current
-- The position of a reader that wants only what changes from now on: the snapshot of now.
SELECT pg_current_snapshot()::text;

-- name: changes.since
-- What the watcher of an API process asks once per tick for all its waiters: the jobs whose
-- last change the snapshot it read at last did not see (transactions that were still running
-- then, `running`, or began after, from its `xmax` on), with the snapshot this query reads
-- at, the next position. Two index probes of jobs_changes, usually finding nothing.
SELECT now.snapshot::text, j.id, j.tenant, j.version
FROM (SELECT pg_current_snapshot() AS snapshot) AS now
LEFT JOIN jobs j ON j.change_xid >= %(xmax)s OR j.change_xid = ANY(%(running)s::bigint[]);

-- name: tenant_changes.select
-- A tenant's jobs whose last change the snapshot `xmax`, `running` did not see (as in
-- changes.since), as its event stream sends them (results are never inline there), each in
-- its latest state, with the snapshot read at; one row of NULLs but the snapshot when none
-- changed. As many as changed: at most the tenant's jobs still kept (retention).
SELECT j.id, j.job_type, j.status, j.total, j.progress, j.message, j.version, j.list_key,
       j.failures, j.created_at, j.started_at, j.updated_at, j.finished_at, now.snapshot::text
FROM (SELECT pg_current_snapshot() AS snapshot) AS now
LEFT JOIN jobs j
  ON j.tenant = %(tenant)s
  AND (j.change_xid >= %(xmax)s OR j.change_xid = ANY(%(running)s::bigint[]))
  AND (j.expires_at IS NULL OR j.expires_at > %(now)s)
ORDER BY j.change_xid;
