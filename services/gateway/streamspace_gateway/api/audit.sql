-- The audit trail through the REST API (api/audit.py); it is written by ../audit.sql only.

-- name: list_audit
-- Newest first; every filter optional (NULL). $1/$2: the actor by id or by name; $3: the action, or an
-- action prefix with $4 true (`session.*`); $5: the target; $6: the client address; $7/$8: since
-- (inclusive) / until (exclusive); $9/$10: the cursor, the (at, id) of the last row seen.
SELECT id::text, at, actor_id::text, actor_name, key_id::text, address, forwarded_for, action, target, detail,
       replica
FROM audit_log
WHERE ($1::uuid IS NULL OR actor_id = $1)
  AND ($2::text IS NULL OR actor_name = $2)
  AND ($3::text IS NULL OR CASE WHEN $4::boolean THEN starts_with(action, $3) ELSE action = $3 END)
  AND ($5::text IS NULL OR target = $5)
  AND ($6::text IS NULL OR address = $6)
  AND ($7::timestamptz IS NULL OR at >= $7)
  AND ($8::timestamptz IS NULL OR at < $8)
  AND ($9::timestamptz IS NULL OR (at, id) < ($9, $10::uuid))
ORDER BY at DESC, id DESC
LIMIT $11;
