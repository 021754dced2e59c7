-- The key signing deliveries when DELIVERY_KEYS is empty (delivery_auth.py).

-- name: delivery_key
-- The shared delivery-signing key: the first process to start inserts its candidate, every one reads the winner.
WITH inserted AS (
    INSERT INTO auth_secrets (name, secret) VALUES ('delivery_signing', $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING secret
)
SELECT secret FROM inserted
UNION ALL
SELECT secret FROM auth_secrets WHERE name = 'delivery_signing'
LIMIT 1;

-- name: read_delivery_key
SELECT secret FROM auth_secrets WHERE name = 'delivery_signing';
