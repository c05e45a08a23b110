-- 004: counters kept in the database for the Prometheus metrics.
-- Metrics are counted from the jobs table when they are scraped, so every worker process and
-- API node agrees on them. When a job is purged, what it counted moves here in the same
-- transaction, so that no counter goes down; events that leave no row behind (a lease that
-- lapsed) are added here as they happen.
CREATE TABLE metric_totals (
    name     text NOT NULL,             -- items_finished, jobs_finished, job_duration, ...
    job_type text NOT NULL DEFAULT '',
    label    text NOT NULL DEFAULT '',  -- the metric's other label (outcome, status, bucket)
    value    double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (name, job_type, label)
);
