-- 008: a failed item's payload, as submitted, is kept beside its result for as long as the job
-- is (its retention), so POST .../retry can queue exactly the failed items again. Succeeded
-- items keep none (NULL costs nothing), so a job whose items succeed writes what it did.
ALTER TABLE results ADD COLUMN payload BLOB;
