-- Agent tokens, as the gateway reads them (agent_tokens.py): who a socket is, and whose token ended.

-- name: agent_for_token
-- The agent a live token (not revoked, not expired) belongs to; superseded_at and expires_at say
-- whether it is an old token inside its rotation overlap (the gateway logs a warning for those).
-- deleted_at: the agent was deleted (drained); its socket is refused after hello (4404).
SELECT t.agent_id, t.superseded_at, t.expires_at, a.deleted_at
FROM agent_tokens t LEFT JOIN agents a USING (agent_id)
WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now());

-- name: revoked_tokens
-- Those of these token hashes that are no longer live (revoked, expired or gone), and whether it
-- is its expiry that ended it: usually none, so the upkeep of 10,000 sockets reads back nothing
-- rather than 10,000 rows.
SELECT h.token_hash, coalesce(t.revoked_at IS NULL AND t.expires_at <= now(), false) AS expired
FROM unnest($1::text[]) AS h(token_hash)
LEFT JOIN agent_tokens t ON t.token_hash = h.token_hash
WHERE t.token_hash IS NULL OR t.revoked_at IS NOT NULL OR t.expires_at <= now();
