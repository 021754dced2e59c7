-- Templates through the REST API (api/templates.py).
-- The statements streamspace-admin runs as well are in streamspace_common/registry.sql.

-- name: replace_template
UPDATE templates
SET description = $2, image = $3, command = $4, ports = $5, cpu = $6, memory = $7, env = $8, platforms = $9,
    idle_timeout_seconds = $10
WHERE name = $1
RETURNING id::text, name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds,
          created_at, updated_at;

-- name: get_template
SELECT id::text, name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds,
       created_at, updated_at
FROM templates WHERE name = $1;

-- name: list_templates
SELECT id::text, name, description, image, command, ports, cpu, memory, env, platforms, idle_timeout_seconds,
       created_at, updated_at
FROM templates ORDER BY name;

-- name: delete_template
-- Sessions made from it keep running: each carries its own copy of what it needs.
DELETE FROM templates WHERE name = $1 RETURNING id;
