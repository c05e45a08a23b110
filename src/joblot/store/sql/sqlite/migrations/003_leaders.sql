-- 003: who leads each cluster-wide chore (requeue of lapsed leases, purge). A process holds
-- a lead until `expires_at` and renews it while alive; when it dies, the lead lapses and
-- another process takes it.
CREATE TABLE leaders (
    chore      TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
);
