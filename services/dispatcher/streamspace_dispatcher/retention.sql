-- The audit trail's retention (retention.py). Only rows older than the retention may go: the trigger of
-- migration 0011 refuses any other DELETE, and any DELETE at all in a transaction that has not declared it.

-- name: declare_retention
-- For this transaction only ($1: days, at least 1 or the trigger refuses every row).
SELECT set_config('streamspace.audit_retention', make_interval(days => $1)::text, true);

-- name: prune_audit
-- The oldest $2 rows past $1 days; SKIP LOCKED lets dispatcher replicas prune at the same time.
WITH old AS (
    SELECT id FROM audit_log
    WHERE at < now() - make_interval(days => $1)
    ORDER BY at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM audit_log WHERE id IN (SELECT id FROM old) RETURNING 1
)
SELECT count(*) FROM gone;
