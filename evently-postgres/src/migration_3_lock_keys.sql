-- es-postgres schema, version 3: per-schema stream lock keys, taken in key
-- order. Released migrations never change; this one replaces the functions
-- concerned.

-- The advisory lock key of a stream. It includes the schema, so stores in
-- two schemas of one database never wait for each other's streams of the
-- same name. (Schema names have no spaces, so the text is unambiguous.)
CREATE OR REPLACE FUNCTION __SCHEMA__.stream_lock_key(p_stream text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT hashtextextended('es-stream __SCHEMA_NAME__ ' || p_stream, 0)
$fn$;

-- Locks several streams for the rest of the transaction, in the order of
-- their keys: every transaction that locks more than one stream takes the
-- keys in one order, so two of them cannot deadlock, even when two streams
-- share a key. (Sorting by name and locking by key would not hold.)
CREATE OR REPLACE FUNCTION __SCHEMA__.lock_streams(p_streams text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    k bigint;
BEGIN
    FOR k IN
        SELECT DISTINCT __SCHEMA__.stream_lock_key(s) FROM unnest(p_streams) AS u(s) ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END;
$fn$;

-- Appends one stream's events: one round trip, one statement. Raises
-- ESWEV (wrong expected version, DETAIL = actual version), ESDUP (event id
-- stored with other content, DETAIL = JSON of where) or ESINV (malformed).
-- Expected kinds: 0 any, 1 no stream, 2 stream exists, 3 exact.
CREATE OR REPLACE FUNCTION __SCHEMA__.append_events(
    p_stream text,
    p_expected_kind smallint,
    p_expected bigint,
    p_ids uuid[],
    p_types text[],
    p_versions integer[],
    p_payloads text[],
    p_metadata text[],
    p_command_id uuid DEFAULT NULL,
    p_command_type text DEFAULT NULL,
    p_command_payload text DEFAULT NULL,
    p_command_metadata text DEFAULT NULL
) RETURNS TABLE (out_position bigint, out_version bigint, out_recorded_at timestamptz, out_replayed boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n integer := coalesce(array_length(p_ids, 1), 0);
    v_current bigint;
    v_closed boolean;
    v_last_position bigint;
    v_command record;
    v_inserted integer;
    v_first record;
    v_base bigint;
    v_next bigint;
BEGIN
    -- Lock the stream. The advisory lock comes first because taking it
    -- gives this transaction no id: an append that waited for it takes its
    -- id (and so its positions) after the append before it, so a stream's
    -- versions follow the global order. Then the stream's row (created at
    -- version 0 if new).
    PERFORM pg_advisory_xact_lock(__SCHEMA__.stream_lock_key(p_stream));
    INSERT INTO __SCHEMA__.streams AS s (stream_id, version) VALUES (p_stream, 0)
        ON CONFLICT (stream_id) DO NOTHING;
    SELECT s.version, s.closed, s.last_position INTO v_current, v_closed, v_last_position
        FROM __SCHEMA__.streams s
        WHERE s.stream_id = p_stream FOR UPDATE;

    IF NOT (p_expected_kind = 0
            OR (p_expected_kind = 1 AND v_current = 0)
            OR (p_expected_kind = 2 AND v_current > 0)
            OR (p_expected_kind = 3 AND v_current = p_expected)) THEN
        -- A retry of an append already stored (its expectation is stale
        -- now) returns it as first stored.
        IF n > 0 AND EXISTS (SELECT 1 FROM __SCHEMA__.events e WHERE e.event_id = p_ids[1]) THEN
            RETURN QUERY SELECT * FROM __SCHEMA__.stored_append(
                p_stream, p_ids, p_types, p_versions, p_payloads, p_metadata);
            RETURN;
        END IF;
        RAISE EXCEPTION 'wrong expected version on stream %', p_stream
            USING ERRCODE = 'ESWEV', DETAIL = v_current::text;
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;

    -- A command id executed before: its events, not new ones.
    IF p_command_id IS NOT NULL THEN
        SELECT c.stream_id, c.first_version, c.last_version INTO v_command
            FROM __SCHEMA__.commands c
            WHERE c.command_id = p_command_id AND c.outcome = 'accepted';
        IF FOUND THEN
            RAISE EXCEPTION 'command % was already executed', p_command_id
                USING ERRCODE = 'ESCMD',
                      DETAIL = json_build_object(
                          'stream_id', v_command.stream_id,
                          'first_version', v_command.first_version,
                          'last_version', v_command.last_version)::text;
        END IF;
    END IF;
    IF v_closed THEN
        RAISE EXCEPTION 'stream % is closed', p_stream USING ERRCODE = 'ESCLS';
    END IF;


    -- Positions: this transaction's id, then the next free index in it.
    v_base := (pg_current_xact_id()::text::bigint) << 20;
    SELECT coalesce(max(e.position) + 1, v_base) INTO v_next
        FROM __SCHEMA__.events e
        WHERE e.position >= v_base AND e.position < v_base + 1048576;
    IF v_next + n > v_base + 1048576 THEN
        RAISE EXCEPTION 'one transaction may append at most 1048576 events'
            USING ERRCODE = 'ESINV';
    END IF;
    -- A transaction that took its id before a younger one appended to this
    -- stream would put this stream's next version before the previous one
    -- in the log: it must start again (with a new id).
    IF v_last_position >= v_base + 1048576 THEN
        RAISE EXCEPTION 'stream % was appended to by a younger transaction; retry the transaction', p_stream
            USING ERRCODE = '40001';
    END IF;

    -- Stored ids are caught by their unique index, not looked up first:
    -- the common case (new events) pays nothing for idempotency.
    RETURN QUERY
        WITH inserted AS (
            INSERT INTO __SCHEMA__.events AS e
                (position, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
            SELECT v_next + u.ord - 1, u.id, p_stream, v_current + u.ord, u.typ, u.ver, u.pay::jsonb, u.meta::jsonb
            FROM unnest(p_ids, p_types, p_versions, p_payloads, p_metadata)
                 WITH ORDINALITY AS u(id, typ, ver, pay, meta, ord)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING e.position, e.stream_version, e.recorded_at
        )
        SELECT i.position, i.stream_version, i.recorded_at, false FROM inserted i ORDER BY i.position;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted < n THEN
        IF v_inserted > 0 THEN
            SELECT e.stream_id, e.stream_version, e.event_id INTO v_first
                FROM __SCHEMA__.events e
                WHERE e.event_id = ANY (p_ids) AND NOT (e.position >= v_next AND e.position < v_next + n)
                ORDER BY e.position LIMIT 1;
            RAISE EXCEPTION 'event id % is already stored', v_first.event_id
                USING ERRCODE = 'ESDUP',
                      DETAIL = json_build_object(
                          'event_id', v_first.event_id,
                          'stream_id', v_first.stream_id,
                          'stream_version', v_first.stream_version,
                          'reason', 'the append mixes stored and new event ids')::text;
        END IF;
        -- Every id is stored already: a retry, or a reuse.
        RETURN QUERY SELECT * FROM __SCHEMA__.stored_append(
            p_stream, p_ids, p_types, p_versions, p_payloads, p_metadata);
        RETURN;
    END IF;
    UPDATE __SCHEMA__.streams s SET version = v_current + n, last_position = v_next + n - 1
        WHERE s.stream_id = p_stream;
    IF p_command_id IS NOT NULL THEN
        INSERT INTO __SCHEMA__.commands
            (command_id, command_type, stream_id, outcome, first_version, last_version, payload, metadata)
        VALUES (p_command_id, p_command_type, p_stream, 'accepted', v_current + 1, v_current + n,
                p_command_payload::jsonb, p_command_metadata::jsonb);
    END IF;
    -- Wake the subscribers, unless this connection's store turned it off
    -- (NOTIFY serialises commits on a global lock).
    IF coalesce(current_setting('es.notify', true), 'on') <> 'off' THEN
        PERFORM pg_notify('__CHANNEL__', '');
    END IF;
END;
$fn$;

-- Appends several streams' events in one statement, each in a
-- subtransaction of its own: one refused append (a conflict, say) is
-- reported as a row and leaves the others standing. Used by group commit:
-- concurrent appends batched into one transaction.
-- p_appends: [{stream, kind, expected, ids: [..], types: [..], versions:
-- [..], payloads: [json text, ..], metadata: [json text, ..]}, ..]
CREATE OR REPLACE FUNCTION __SCHEMA__.append_batch(p_appends jsonb)
RETURNS TABLE (out_index integer, out_position bigint, out_version bigint,
               out_recorded_at timestamptz, out_replayed boolean,
               out_code text, out_detail text, out_message text)
LANGUAGE plpgsql AS $fn$
DECLARE
    a jsonb;
    i integer;
    v_detail text;
BEGIN
    -- Every stream of the batch first, in key order (see lock_streams).
    PERFORM __SCHEMA__.lock_streams(ARRAY(
        SELECT x ->> 'stream' FROM jsonb_array_elements(p_appends) AS t(x)));
    FOR i IN 0 .. jsonb_array_length(p_appends) - 1 LOOP
        a := p_appends -> i;
        BEGIN
            RETURN QUERY
                SELECT i, r.out_position, r.out_version, r.out_recorded_at, r.out_replayed,
                       NULL::text, NULL::text, NULL::text
                FROM __SCHEMA__.append_events(
                    a ->> 'stream',
                    (a ->> 'kind')::smallint,
                    (a ->> 'expected')::bigint,
                    ARRAY(SELECT x::uuid FROM jsonb_array_elements_text(a -> 'ids') WITH ORDINALITY AS t(x, n) ORDER BY n),
                    ARRAY(SELECT x FROM jsonb_array_elements_text(a -> 'types') WITH ORDINALITY AS t(x, n) ORDER BY n),
                    ARRAY(SELECT x::integer FROM jsonb_array_elements_text(a -> 'versions') WITH ORDINALITY AS t(x, n) ORDER BY n),
                    ARRAY(SELECT x FROM jsonb_array_elements_text(a -> 'payloads') WITH ORDINALITY AS t(x, n) ORDER BY n),
                    ARRAY(SELECT x FROM jsonb_array_elements_text(a -> 'metadata') WITH ORDINALITY AS t(x, n) ORDER BY n)
                ) r;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
            RETURN QUERY SELECT i, NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::boolean,
                                SQLSTATE::text, v_detail, SQLERRM::text;
        END;
    END LOOP;
END;
$fn$;
