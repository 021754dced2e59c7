-- Retention of finished commands, their attempts and inventories (docs/operations.md "Data lifecycle").
-- The dispatchers prune them in small batches (services/dispatcher/.../retention.sql); this migration
-- gives that pruning what it needs and tunes autovacuum for tables that now lose rows all day.

-- Inventories (INVENTORY_SESSIONS: one per online agent per RECONCILE_INTERVAL, the bulk of the table)
-- are pruned per agent, oldest first, and each agent's newest completed one is kept: both are ranges of
-- this index. Only inventory rows are in it, so the commands that carry sessions pay nothing.
-- Built without CONCURRENTLY (migrations run in a transaction): on a big install it holds off command
-- writes while it reads the table, so an operator may build it CONCURRENTLY by hand first (IF NOT
-- EXISTS then keeps it; docs/operations.md "Data lifecycle").
CREATE INDEX IF NOT EXISTS agent_commands_inventories ON agent_commands (agent_id, created_at)
    WHERE action = 'INVENTORY_SESSIONS';

-- Autovacuum by default waits for 20% of a table to be dead rows: on a table of 10 million commands,
-- 2 million. Pruning deletes rows steadily and every command is updated 2-3 times on its way, so these
-- tables are vacuumed (and analysed, for the planner's row counts) after 1-2% instead.
ALTER TABLE agent_commands SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE agent_command_attempts SET (autovacuum_vacuum_scale_factor = 0.02,
                                        autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE audit_log SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
