-- The audit trail (audit.py, migration 0011): the one statement that writes it.

-- name: record
-- $2 NULL: the username is looked up (a stream knows its user's id only).
INSERT INTO audit_log (actor_id, actor_name, key_id, address, forwarded_for, action, target, detail)
VALUES ($1::uuid, coalesce($2, (SELECT username FROM users WHERE id = $1::uuid)), $3::uuid, $4, $5, $6, $7, $8);
