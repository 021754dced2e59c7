--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: streamspace_access_revoked(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_access_revoked() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('streamspace_access_revoked', OLD.id::text);
    ELSE
        PERFORM pg_notify('streamspace_access_revoked', NEW.user_id::text);
    END IF;
    RETURN NULL;
END $$;


--
-- Name: streamspace_agent_max_sessions(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_agent_max_sessions() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
    NEW.max_sessions := 0;
    IF jsonb_typeof(NEW.capabilities) = 'array' THEN
        NEW.max_sessions := coalesce((
            SELECT substring(c FROM '^max_sessions=([0-9]{1,9})$')::integer
            FROM jsonb_array_elements_text(NEW.capabilities) AS c
            WHERE c ~ '^max_sessions=[0-9]{1,9}$'
            LIMIT 1), 0);
    END IF;
    RETURN NEW;
END $_$;


--
-- Name: streamspace_audit_guard(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_audit_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    retention interval;
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.at := now();
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        retention := nullif(current_setting('streamspace.audit_retention', true), '')::interval;
        IF retention >= interval '1 day' AND OLD.at < now() - retention THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit_log is append-only: row % (of %) is within the retention (%)',
            OLD.id, OLD.at, coalesce(retention::text, 'not declared')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;


--
-- Name: streamspace_command_transition_allowed(text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_command_transition_allowed(old_status text, new_status text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE old_status
        WHEN 'pending'      THEN new_status IN ('sent', 'cancelled', 'failed', 'expired')
        WHEN 'sent'         THEN new_status IN ('pending', 'acknowledged', 'completed', 'failed', 'cancelled')
        WHEN 'acknowledged' THEN new_status IN ('pending', 'completed', 'failed', 'cancelled')
        ELSE false  -- completed, failed, cancelled and expired are final
    END
$$;


--
-- Name: streamspace_guard_command_transition(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_guard_command_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT streamspace_command_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'command % cannot move from % to %', OLD.command_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;


--
-- Name: streamspace_inventory_on_connect(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_inventory_on_connect() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status = 'online' AND NEW.capabilities ? 'INVENTORY_SESSIONS'
       AND (OLD.status <> 'online' OR OLD.connected_at IS DISTINCT FROM NEW.connected_at)
       AND EXISTS (SELECT 1 FROM sessions WHERE agent_id = NEW.agent_id)
       AND NOT EXISTS (SELECT 1 FROM agent_commands c
                       WHERE c.agent_id = NEW.agent_id AND c.action = 'INVENTORY_SESSIONS'
                         AND c.status IN ('pending', 'sent', 'acknowledged')) THEN
        INSERT INTO agent_commands (agent_id, action, max_attempts, timeout_seconds)
        VALUES (NEW.agent_id, 'INVENTORY_SESSIONS', 3, 120);
    END IF;
    RETURN NULL;
END $$;


--
-- Name: streamspace_inventory_reported(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_inventory_reported() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
    IF jsonb_typeof(NEW.result -> 'sessions') <> 'array' OR jsonb_typeof(NEW.result -> 'workloads') <> 'array' THEN
        RETURN NULL;
    END IF;
    UPDATE sessions s
    SET state = 'failed', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
        reason = CASE WHEN seen.state IS NULL
                      THEN format('agent %s no longer has this session (inventory of %s)', s.agent_id,
                                  to_char(NEW.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                      ELSE format('agent %s found this session %s, not %s (inventory of %s)', s.agent_id,
                                  seen.state, s.state,
                                  to_char(NEW.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) END
    FROM sessions b
    LEFT JOIN jsonb_to_recordset(NEW.result -> 'sessions') AS seen(session_id text, state text)
           ON seen.session_id = b.id::text
    WHERE s.id = b.id
      AND b.agent_id = NEW.agent_id AND b.deleted_at IS NULL
      AND b.state IN ('running', 'hibernated')
      AND b.state_changed_at < NEW.sent_at
      AND NOT EXISTS (SELECT 1 FROM agent_commands c
                      WHERE c.session_id = b.id::text AND c.status IN ('pending', 'sent', 'acknowledged'))
      AND (seen.state IS NULL
           OR (b.state = 'running' AND seen.state <> 'running')
           OR (b.state = 'hibernated' AND seen.state NOT IN ('hibernated', 'stopped')));
    INSERT INTO agent_commands (agent_id, action, payload, session_id, max_attempts)
    SELECT NEW.agent_id, 'DELETE_SESSION', jsonb_build_object('session_id', w.id), w.id, 3
    FROM (SELECT DISTINCT value AS id FROM jsonb_array_elements_text(NEW.result -> 'workloads')) AS w
    WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.deleted_at IS NULL
                      AND s.id = CASE WHEN w.id ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                                      THEN w.id::uuid END)  -- the primary key, never a cast error
      AND NOT EXISTS (SELECT 1 FROM agent_commands c
                      WHERE c.session_id = w.id AND c.action = 'DELETE_SESSION'
                        AND c.status IN ('pending', 'sent', 'acknowledged'));
    RETURN NULL;
END $_$;


--
-- Name: streamspace_notify_agent(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_notify_agent() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status = 'online'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'online' OR OLD.gateway_pod IS DISTINCT FROM NEW.gateway_pod) THEN
        PERFORM pg_notify('streamspace_dispatch', NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;


--
-- Name: streamspace_notify_command(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_notify_command() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status <> 'pending')
       OR (TG_OP = 'UPDATE' AND OLD.status IN ('sent', 'acknowledged') AND NEW.status <> OLD.status
           AND (NEW.session_id IS NOT NULL
                OR EXISTS (SELECT 1 FROM agents WHERE agent_id = NEW.agent_id AND concurrency > 0))) THEN
        PERFORM streamspace_wake_dispatchers(NEW.agent_id);
    END IF;
    RETURN NULL;
END $$;


--
-- Name: streamspace_notify_inserted_commands(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_notify_inserted_commands() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    first_agent text;
    last_agent text;
BEGIN
    SELECT min(agent_id), max(agent_id) INTO first_agent, last_agent
    FROM inserted_commands WHERE status = 'pending';
    IF first_agent IS NOT NULL THEN
        PERFORM streamspace_wake_dispatchers(CASE WHEN first_agent = last_agent THEN first_agent ELSE '*' END);
    END IF;
    RETURN NULL;
END $$;


--
-- Name: streamspace_record_attempt(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_record_attempt() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.attempts < OLD.attempts THEN
        RETURN NULL;  -- a claim handed back before it reached the agent: refunded, not an attempt
    END IF;
    INSERT INTO agent_command_attempts (command_id, attempt, left_status, outcome, reason, dispatched_by,
                                        delivered_via_pod, sent_at, acknowledged_at)
    VALUES (OLD.command_id, OLD.attempts, OLD.status, NEW.status, NEW.error_message, OLD.dispatched_by,
            NEW.delivered_via_pod, OLD.sent_at, OLD.acknowledged_at)
    ON CONFLICT (command_id, attempt) DO UPDATE
        SET left_status = EXCLUDED.left_status, outcome = EXCLUDED.outcome, reason = EXCLUDED.reason,
            ended_at = EXCLUDED.ended_at;
    RETURN NULL;
END $$;


--
-- Name: streamspace_retry_delay(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_retry_delay(attempts integer) RETURNS interval
    LANGUAGE sql
    AS $$
    SELECT make_interval(secs => least(power(2, greatest(attempts, 1) - 1), 30) * (0.5 + random() / 2))
$$;


--
-- Name: streamspace_session_command_moved(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_session_command_moved() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
DECLARE
    sid uuid;
    reported text;
BEGIN
    IF NEW.session_id IS NULL
       OR NEW.session_id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN NULL;
    END IF;
    sid := NEW.session_id::uuid;
    IF NEW.status = 'acknowledged' THEN
        UPDATE sessions SET state = 'starting', state_changed_at = now()
        WHERE id = sid AND state = 'pending' AND NEW.action = 'CREATE_SESSION';
        RETURN NULL;
    END IF;
    IF NEW.status NOT IN ('completed', 'failed', 'cancelled', 'expired') THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM agent_commands c
               WHERE c.session_id = NEW.session_id AND c.id <> NEW.id
                 AND c.status IN ('pending', 'sent', 'acknowledged')
                 AND (c.created_at, c.id) > (NEW.created_at, NEW.id)) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'completed' THEN
        reported := NEW.result ->> 'state';
        IF reported = 'deleted' THEN
            DELETE FROM sessions WHERE id = sid AND deleted_at IS NOT NULL;
            IF FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE sessions
        SET state = CASE WHEN reported IN ('running', 'hibernated', 'stopped') THEN reported ELSE 'failed' END,
            reason = CASE WHEN reported IN ('running', 'hibernated', 'stopped') THEN NULL
                          ELSE coalesce(NEW.result ->> 'reason',
                                        format('%s reported state %s', NEW.action, coalesce(reported, 'none'))) END,
            endpoint_host = CASE WHEN reported = 'running' THEN NEW.result -> 'endpoint' ->> 'host' END,
            endpoint_port = CASE WHEN reported = 'running' THEN (NEW.result -> 'endpoint' ->> 'port')::integer END,
            last_activity_at = CASE WHEN reported = 'running' AND state <> 'running' THEN now()
                                    ELSE last_activity_at END,
            state_changed_at = now()
        WHERE id = sid AND state <> 'lost';
    ELSE
        UPDATE sessions
        SET state = 'failed', endpoint_host = NULL, endpoint_port = NULL, state_changed_at = now(),
            reason = format('%s %s: %s', NEW.action, NEW.status, coalesce(NEW.error_message, 'no reason given'))
        WHERE id = sid AND state <> 'lost';
    END IF;
    RETURN NULL;
END $_$;


--
-- Name: streamspace_touch_updated_at(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;


--
-- Name: streamspace_wake_dispatchers(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.streamspace_wake_dispatchers(agent text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('streamspace_dispatch_creators'));
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT EXISTS (SELECT 1 FROM dispatcher_streaks WHERE until > clock_timestamp()) THEN
        PERFORM pg_notify('streamspace_dispatch', agent);
    END IF;
END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: agent_command_attempts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_command_attempts (
    command_id character varying(255) NOT NULL,
    attempt integer NOT NULL,
    left_status character varying(32) NOT NULL,
    outcome character varying(32) NOT NULL,
    reason text,
    dispatched_by character varying(255),
    delivered_via_pod character varying(255),
    sent_at timestamp with time zone,
    acknowledged_at timestamp with time zone,
    ended_at timestamp with time zone DEFAULT now() NOT NULL
)
WITH (autovacuum_vacuum_scale_factor='0.02', autovacuum_analyze_scale_factor='0.05');


--
-- Name: agent_commands; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_commands (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    command_id character varying(255) DEFAULT (gen_random_uuid())::text NOT NULL,
    agent_id character varying(255) NOT NULL,
    session_id character varying(255),
    action character varying(64) NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    status character varying(32) DEFAULT 'pending'::character varying NOT NULL,
    error_message text,
    result jsonb,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    next_attempt_at timestamp with time zone,
    ack_deadline timestamp with time zone,
    dispatched_by character varying(255),
    delivered_via_pod character varying(255),
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    sent_at timestamp with time zone,
    acknowledged_at timestamp with time zone,
    completed_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    timeout_seconds integer,
    retry_scheduled_at timestamp with time zone,
    epoch bigint,
    expires_at timestamp with time zone,
    CONSTRAINT agent_commands_status_check CHECK (((status)::text = ANY ((ARRAY['pending'::character varying, 'sent'::character varying, 'acknowledged'::character varying, 'completed'::character varying, 'failed'::character varying, 'cancelled'::character varying, 'expired'::character varying])::text[]))),
    CONSTRAINT agent_commands_timeout_seconds_check CHECK ((timeout_seconds > 0))
)
WITH (autovacuum_vacuum_scale_factor='0.01', autovacuum_analyze_scale_factor='0.02');


--
-- Name: agent_instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_instances (
    agent_id character varying(255) NOT NULL,
    instance_id character varying(255) NOT NULL,
    gateway_pod character varying(255) NOT NULL,
    connected_at timestamp with time zone DEFAULT now() NOT NULL,
    seen_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: agent_leases; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_leases (
    agent_id character varying(255) NOT NULL,
    instance_id character varying(255) NOT NULL,
    gateway_pod character varying(255) NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    holder_hash character(64)
);


--
-- Name: agent_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_tokens (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    agent_id character varying(255) NOT NULL,
    token_hash character(64) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    expires_at timestamp with time zone,
    superseded_at timestamp with time zone
);


--
-- Name: agents; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agents (
    agent_id character varying(255) NOT NULL,
    status character varying(16) DEFAULT 'offline'::character varying NOT NULL,
    gateway_pod character varying(255),
    platform character varying(64),
    version character varying(64),
    capabilities jsonb DEFAULT '[]'::jsonb NOT NULL,
    concurrency integer DEFAULT 0 NOT NULL,
    instance_id character varying(255),
    last_heartbeat timestamp with time zone,
    connected_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    max_sessions integer DEFAULT 0 NOT NULL,
    deleted_at timestamp with time zone,
    CONSTRAINT agents_status_check CHECK (((status)::text = ANY ((ARRAY['online'::character varying, 'offline'::character varying])::text[])))
);


--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid NOT NULL,
    name character varying(128) NOT NULL,
    prefix character varying(16) NOT NULL,
    key_hash character(64) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone
);


--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_log (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    actor_id uuid,
    actor_name text,
    key_id uuid,
    address text,
    forwarded_for text,
    action text NOT NULL,
    target text,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    replica text DEFAULT current_setting('application_name'::text) NOT NULL
)
WITH (autovacuum_vacuum_scale_factor='0.02', autovacuum_analyze_scale_factor='0.05');


--
-- Name: auth_secrets; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.auth_secrets (
    name character varying(64) NOT NULL,
    secret text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: dispatcher_streaks; Type: TABLE; Schema: public; Owner: -
--

CREATE UNLOGGED TABLE public.dispatcher_streaks (
    dispatcher text NOT NULL,
    until timestamp with time zone NOT NULL
);


--
-- Name: revoked_login_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.revoked_login_tokens (
    token_hash text NOT NULL,
    user_id uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sessions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid NOT NULL,
    template character varying(64) NOT NULL,
    agent_id character varying(255) NOT NULL,
    platform character varying(64) NOT NULL,
    state character varying(16) DEFAULT 'pending'::character varying NOT NULL,
    desired_state character varying(16) DEFAULT 'running'::character varying NOT NULL,
    reason text,
    endpoint_host character varying(255),
    endpoint_port integer,
    idle_timeout_seconds integer DEFAULT 0 NOT NULL,
    last_activity_at timestamp with time zone DEFAULT now() NOT NULL,
    state_changed_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    deleted_at timestamp with time zone,
    name text,
    CONSTRAINT sessions_desired_state_check CHECK (((desired_state)::text = ANY ((ARRAY['running'::character varying, 'hibernated'::character varying, 'stopped'::character varying, 'deleted'::character varying])::text[]))),
    CONSTRAINT sessions_name_check CHECK (((name IS NULL) OR ((char_length(name) <= 64) AND (name ~ '^[A-Za-z0-9]([A-Za-z0-9 ._-]*[A-Za-z0-9._-])?$'::text)))),
    CONSTRAINT sessions_state_check CHECK (((state)::text = ANY ((ARRAY['pending'::character varying, 'starting'::character varying, 'running'::character varying, 'hibernated'::character varying, 'stopping'::character varying, 'stopped'::character varying, 'failed'::character varying, 'lost'::character varying])::text[])))
);


--
-- Name: templates; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.templates (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name character varying(64) NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    image character varying(500) DEFAULT ''::character varying NOT NULL,
    command jsonb DEFAULT '[]'::jsonb NOT NULL,
    ports jsonb DEFAULT '[]'::jsonb NOT NULL,
    cpu real DEFAULT 0.5 NOT NULL,
    memory integer DEFAULT 256 NOT NULL,
    env jsonb DEFAULT '{}'::jsonb NOT NULL,
    platforms jsonb DEFAULT '[]'::jsonb NOT NULL,
    idle_timeout_seconds integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    username character varying(64) NOT NULL,
    password_hash text NOT NULL,
    role character varying(16) DEFAULT 'user'::character varying NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    disabled_at timestamp with time zone,
    CONSTRAINT users_role_check CHECK (((role)::text = ANY ((ARRAY['admin'::character varying, 'user'::character varying])::text[])))
);


--
-- Name: agent_command_attempts agent_command_attempts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_command_attempts
    ADD CONSTRAINT agent_command_attempts_pkey PRIMARY KEY (command_id, attempt);


--
-- Name: agent_commands agent_commands_command_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_commands
    ADD CONSTRAINT agent_commands_command_id_key UNIQUE (command_id);


--
-- Name: agent_commands agent_commands_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_commands
    ADD CONSTRAINT agent_commands_pkey PRIMARY KEY (id);


--
-- Name: agent_instances agent_instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_instances
    ADD CONSTRAINT agent_instances_pkey PRIMARY KEY (agent_id, instance_id);


--
-- Name: agent_leases agent_leases_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_leases
    ADD CONSTRAINT agent_leases_pkey PRIMARY KEY (agent_id);


--
-- Name: agent_tokens agent_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_tokens
    ADD CONSTRAINT agent_tokens_pkey PRIMARY KEY (id);


--
-- Name: agent_tokens agent_tokens_token_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_tokens
    ADD CONSTRAINT agent_tokens_token_hash_key UNIQUE (token_hash);


--
-- Name: agents agents_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_pkey PRIMARY KEY (agent_id);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);


--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);


--
-- Name: auth_secrets auth_secrets_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.auth_secrets
    ADD CONSTRAINT auth_secrets_pkey PRIMARY KEY (name);


--
-- Name: dispatcher_streaks dispatcher_streaks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.dispatcher_streaks
    ADD CONSTRAINT dispatcher_streaks_pkey PRIMARY KEY (dispatcher);


--
-- Name: revoked_login_tokens revoked_login_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revoked_login_tokens
    ADD CONSTRAINT revoked_login_tokens_pkey PRIMARY KEY (token_hash);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: sessions sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (id);


--
-- Name: templates templates_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.templates
    ADD CONSTRAINT templates_name_key UNIQUE (name);


--
-- Name: templates templates_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.templates
    ADD CONSTRAINT templates_pkey PRIMARY KEY (id);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: users users_username_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);


--
-- Name: agent_commands_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_created ON public.agent_commands USING btree (created_at DESC, id DESC);


--
-- Name: agent_commands_expiring; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_expiring ON public.agent_commands USING btree (expires_at) WHERE (((status)::text = 'pending'::text) AND (expires_at IS NOT NULL));


--
-- Name: agent_commands_in_flight; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_in_flight ON public.agent_commands USING btree (status, ack_deadline) WHERE ((status)::text = ANY ((ARRAY['sent'::character varying, 'acknowledged'::character varying])::text[]));


--
-- Name: agent_commands_inventories; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_inventories ON public.agent_commands USING btree (agent_id, created_at) WHERE ((action)::text = 'INVENTORY_SESSIONS'::text);


--
-- Name: agent_commands_open_by_action; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_open_by_action ON public.agent_commands USING btree (agent_id, action) WHERE ((status)::text = ANY ((ARRAY['pending'::character varying, 'sent'::character varying, 'acknowledged'::character varying])::text[]));


--
-- Name: agent_commands_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_pending ON public.agent_commands USING btree (agent_id, created_at) WHERE ((status)::text = 'pending'::text);


--
-- Name: agent_commands_session; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_session ON public.agent_commands USING btree (session_id, created_at) WHERE (session_id IS NOT NULL);


--
-- Name: agent_commands_unscheduled_retries; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_commands_unscheduled_retries ON public.agent_commands USING btree (next_attempt_at) WHERE (((status)::text = 'pending'::text) AND (next_attempt_at IS NOT NULL) AND (retry_scheduled_at IS NULL));


--
-- Name: api_keys_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_keys_user ON public.api_keys USING btree (user_id, created_at);


--
-- Name: audit_log_actor; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_actor ON public.audit_log USING btree (actor_id, at DESC, id DESC);


--
-- Name: audit_log_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_at ON public.audit_log USING btree (at DESC, id DESC);


--
-- Name: audit_log_target; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_log_target ON public.audit_log USING btree (target, at DESC, id DESC);


--
-- Name: revoked_login_tokens_expiry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX revoked_login_tokens_expiry ON public.revoked_login_tokens USING btree (expires_at);


--
-- Name: sessions_agent; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_agent ON public.sessions USING btree (agent_id, state);


--
-- Name: sessions_idle; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_idle ON public.sessions USING btree (last_activity_at) WHERE (((state)::text = 'running'::text) AND (idle_timeout_seconds > 0));


--
-- Name: sessions_listed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_listed ON public.sessions USING btree (created_at DESC, id DESC) WHERE (deleted_at IS NULL);


--
-- Name: sessions_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX sessions_user ON public.sessions USING btree (user_id, created_at DESC, id DESC) WHERE (deleted_at IS NULL);


--
-- Name: agent_commands agent_commands_guard_transition; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_guard_transition BEFORE UPDATE OF status ON public.agent_commands FOR EACH ROW EXECUTE FUNCTION public.streamspace_guard_command_transition();


--
-- Name: agent_commands agent_commands_inventory_reported; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_inventory_reported AFTER UPDATE OF status ON public.agent_commands FOR EACH ROW WHEN ((((new.action)::text = 'INVENTORY_SESSIONS'::text) AND ((new.status)::text = 'completed'::text) AND ((old.status)::text IS DISTINCT FROM (new.status)::text))) EXECUTE FUNCTION public.streamspace_inventory_reported();


--
-- Name: agent_commands agent_commands_notify; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_notify AFTER UPDATE OF status ON public.agent_commands FOR EACH ROW WHEN (((((new.status)::text = 'pending'::text) AND ((old.status)::text <> 'pending'::text)) OR (((old.status)::text = ANY ((ARRAY['sent'::character varying, 'acknowledged'::character varying])::text[])) AND ((new.status)::text <> (old.status)::text)))) EXECUTE FUNCTION public.streamspace_notify_command();


--
-- Name: agent_commands agent_commands_notify_inserted; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_notify_inserted AFTER INSERT ON public.agent_commands REFERENCING NEW TABLE AS inserted_commands FOR EACH STATEMENT EXECUTE FUNCTION public.streamspace_notify_inserted_commands();


--
-- Name: agent_commands agent_commands_record_attempt; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_record_attempt AFTER UPDATE OF status ON public.agent_commands FOR EACH ROW WHEN ((((old.status)::text = ANY ((ARRAY['sent'::character varying, 'acknowledged'::character varying])::text[])) AND ((new.status)::text = ANY ((ARRAY['pending'::character varying, 'failed'::character varying, 'cancelled'::character varying])::text[])))) EXECUTE FUNCTION public.streamspace_record_attempt();


--
-- Name: agent_commands agent_commands_session_moved; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_session_moved AFTER UPDATE OF status ON public.agent_commands FOR EACH ROW WHEN (((new.session_id IS NOT NULL) AND ((new.status)::text IS DISTINCT FROM (old.status)::text) AND ((new.status)::text = ANY ((ARRAY['acknowledged'::character varying, 'completed'::character varying, 'failed'::character varying, 'cancelled'::character varying, 'expired'::character varying])::text[])) AND ((new.action)::text = ANY ((ARRAY['CREATE_SESSION'::character varying, 'STOP_SESSION'::character varying, 'HIBERNATE_SESSION'::character varying, 'WAKE_SESSION'::character varying, 'DELETE_SESSION'::character varying])::text[])))) EXECUTE FUNCTION public.streamspace_session_command_moved();


--
-- Name: agent_commands agent_commands_touch; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agent_commands_touch BEFORE UPDATE ON public.agent_commands FOR EACH ROW EXECUTE FUNCTION public.streamspace_touch_updated_at();


--
-- Name: agents agents_inventory_on_connect; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agents_inventory_on_connect AFTER UPDATE OF status, connected_at ON public.agents FOR EACH ROW EXECUTE FUNCTION public.streamspace_inventory_on_connect();


--
-- Name: agents agents_max_sessions; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agents_max_sessions BEFORE INSERT OR UPDATE OF capabilities ON public.agents FOR EACH ROW EXECUTE FUNCTION public.streamspace_agent_max_sessions();


--
-- Name: agents agents_notify; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agents_notify AFTER INSERT OR UPDATE OF status, gateway_pod ON public.agents FOR EACH ROW EXECUTE FUNCTION public.streamspace_notify_agent();


--
-- Name: agents agents_touch; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER agents_touch BEFORE UPDATE ON public.agents FOR EACH ROW EXECUTE FUNCTION public.streamspace_touch_updated_at();


--
-- Name: api_keys api_keys_revoked; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER api_keys_revoked AFTER UPDATE ON public.api_keys FOR EACH ROW WHEN (((old.revoked_at IS NULL) AND (new.revoked_at IS NOT NULL))) EXECUTE FUNCTION public.streamspace_access_revoked();


--
-- Name: audit_log audit_log_append_only; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_log_append_only BEFORE INSERT OR DELETE OR UPDATE ON public.audit_log FOR EACH ROW EXECUTE FUNCTION public.streamspace_audit_guard();


--
-- Name: audit_log audit_log_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON public.audit_log FOR EACH STATEMENT EXECUTE FUNCTION public.streamspace_audit_guard();


--
-- Name: revoked_login_tokens login_tokens_revoked; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER login_tokens_revoked AFTER INSERT ON public.revoked_login_tokens FOR EACH ROW EXECUTE FUNCTION public.streamspace_access_revoked();


--
-- Name: sessions sessions_touch; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER sessions_touch BEFORE UPDATE ON public.sessions FOR EACH ROW EXECUTE FUNCTION public.streamspace_touch_updated_at();


--
-- Name: templates templates_touch; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER templates_touch BEFORE UPDATE ON public.templates FOR EACH ROW EXECUTE FUNCTION public.streamspace_touch_updated_at();


--
-- Name: users users_access_revoked; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER users_access_revoked AFTER UPDATE ON public.users FOR EACH ROW WHEN (((old.password_hash IS DISTINCT FROM new.password_hash) OR ((old.role)::text IS DISTINCT FROM (new.role)::text) OR ((old.disabled_at IS NULL) AND (new.disabled_at IS NOT NULL)))) EXECUTE FUNCTION public.streamspace_access_revoked();


--
-- Name: users users_deleted; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER users_deleted AFTER DELETE ON public.users FOR EACH ROW EXECUTE FUNCTION public.streamspace_access_revoked();


--
-- Name: agent_command_attempts agent_command_attempts_command_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_command_attempts
    ADD CONSTRAINT agent_command_attempts_command_id_fkey FOREIGN KEY (command_id) REFERENCES public.agent_commands(command_id) ON DELETE CASCADE;


--
-- Name: agent_commands agent_commands_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_commands
    ADD CONSTRAINT agent_commands_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(agent_id);


--
-- Name: agent_instances agent_instances_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_instances
    ADD CONSTRAINT agent_instances_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(agent_id) ON DELETE CASCADE;


--
-- Name: agent_leases agent_leases_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_leases
    ADD CONSTRAINT agent_leases_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(agent_id) ON DELETE CASCADE;


--
-- Name: agent_tokens agent_tokens_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_tokens
    ADD CONSTRAINT agent_tokens_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(agent_id) ON DELETE CASCADE;


--
-- Name: api_keys api_keys_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: revoked_login_tokens revoked_login_tokens_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revoked_login_tokens
    ADD CONSTRAINT revoked_login_tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: sessions sessions_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(agent_id);


--
-- Name: sessions sessions_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--


