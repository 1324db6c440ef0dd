//! Every SQL statement of the store, in one place: built once per handle
//! from a [`SchemaName`], the only way a schema name gets into SQL. A
//! view's statements also take its table, built from a checked view name
//! ([`ViewTable`]). The migrations themselves are the embedded `.sql`
//! files (see `setup.rs`).

use evently_core::view::{check_view_name, view_projection_name, ViewError};

use crate::setup::SetupError;

/// A schema name that passed its check (1 to 50 of `a`-`z`, `0`-`9`, `_`,
/// not starting with a digit), so it can go into SQL as it is. The only
/// way to make one is [`SchemaName::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaName(String);

impl SchemaName {
    /// Checks `name`; refuses it with [`SetupError::InvalidSchemaName`].
    pub(crate) fn new(name: &str) -> Result<Self, SetupError> {
        let valid = !name.is_empty()
            && name.len() <= 50
            && !name.as_bytes()[0].is_ascii_digit()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(SchemaName(name.to_owned()))
        } else {
            Err(SetupError::InvalidSchemaName(name.to_owned()))
        }
    }

    /// The bare name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as an identifier: `"name"`.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The LISTEN/NOTIFY channel of the schema.
    pub(crate) fn channel(&self) -> String {
        format!("{}_events", self.0)
    }
}

impl std::fmt::Display for SchemaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first position of the current transaction: its id shifted left by
/// 20 bits (the id is assigned here if the transaction has none yet).
const BASE: &str = "(pg_current_xact_id()::text::bigint << 20)";

/// The end of the single-statement appends (`append_new`,
/// `append_exact`) in schema `s`: inserts the events (`$3` ids, `$4` types, `$5` schema
/// versions, `$6` payloads, `$7` metadata) after the stream's row `s`
/// moved, and returns them in order. No row of `s` (the expectation did
/// not hold, the stream is closed, or a younger transaction appended to
/// it): nothing inserted, no row returned.
fn append_tail(s: &str) -> String {
    format!(
        ", i AS ( \
         INSERT INTO {s}.events AS e \
             (position, event_id, stream_id, stream_version, event_type, schema_version, \
              payload, metadata) \
         SELECT s.first + u.ord - 1, u.id, $1, s.prev + u.ord, u.typ, u.ver, u.pay::jsonb, \
                u.meta::jsonb \
         FROM s, unnest($3::uuid[], $4::text[], $5::integer[], $6::text[], $7::text[]) \
              WITH ORDINALITY AS u(id, typ, ver, pay, meta, ord) \
         RETURNING e.position, e.stream_version, e.recorded_at \
     ) SELECT position, stream_version, recorded_at FROM i ORDER BY position"
    )
}

/// Sends a NOTIFY on a channel (`$1`).
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, '')";

/// The oldest running transaction that has written, for `status()`.
pub(crate) const OLDEST_TRANSACTION: &str =
    "SELECT pid, datname::text, application_name, state, xact_start, left(query, 200) \
     FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
     ORDER BY age(backend_xid) DESC LIMIT 1";

/// Takes a session advisory lock on a text key (`$1`), if free.
pub(crate) const TRY_ADVISORY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

/// Whether some session of this database holds the advisory lock on a text
/// key (`$1`): a bigint key shows in `pg_locks` as its high and low halves.
pub(crate) const ADVISORY_LOCK_HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks l \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid::text::bigint = ((hashtextextended($1, 0) >> 32) & 4294967295) \
       AND l.objid::text::bigint = (hashtextextended($1, 0) & 4294967295))";

/// Releases a session advisory lock on a text key (`$1`).
pub(crate) const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

/// Takes the transaction advisory lock of the migrations (`$1`: its key).
pub(crate) const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

/// Opens the savepoint under which adopting a legacy schema builds its
/// scratch schema.
pub(crate) const SAVEPOINT_ADOPT: &str = "SAVEPOINT es_adopt";

/// Drops the scratch schema of an adoption.
pub(crate) const ROLLBACK_ADOPT: &str = "ROLLBACK TO SAVEPOINT es_adopt";

/// Whether `schema_migrations` exists in schema `$1`, and has checksums.
pub(crate) const BOOKKEEPING: &str =
    "SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL, \
            EXISTS (SELECT 1 FROM pg_attribute \
                    WHERE attrelid = to_regclass(format('%I.schema_migrations', $1::text)) \
                      AND attname = 'checksum' AND NOT attisdropped)";

/// The store's objects in a schema, one line each, independent of the
/// schema's name: columns (type, not null, default), constraints, indexes
/// and functions (signature, language, volatility, a hash of the body),
/// `schema_migrations` left out.
pub(crate) const FINGERPRINT: &str = r#"
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || replace(pg_get_expr(d.adbin, d.adrelid),
                                          '''' || quote_ident($1) || '.', '''__SCHEMA__.'), '')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'constraint ' || c.relname || '.' || con.conname || ' ' || pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'index ' || ic.relname || ' on ' || c.relname
       || coalesce(substring(pg_get_indexdef(i.indexrelid) from ' USING .*$'), '')
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') returns '
       || pg_get_function_result(p.oid) || ' language ' || l.lanname
       || ' volatility ' || p.provolatile::text
       || ' body md5 ' || md5(replace(p.prosrc, '"' || $1 || '"', '__SCHEMA__'))
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = $1
"#;

/// Makes every connection of the store's own pool leave NOTIFY to the
/// notifier task.
pub(crate) const NOTIFY_OFF: &str = "SET es.notify = 'off'";

/// The first position given to events rebased after a restore:
/// transaction id 1, below every normal transaction id (they start at 3).
pub(crate) const FIRST_REBASED: i64 = 1 << 20;

/// The columns of the events table that `recorded_from_row` reads, in its
/// order, for a table aliased `e`.
const EVENT_COLUMNS: &str = "e.position, e.event_id, e.stream_id, e.stream_version, \
                             e.event_type, e.schema_version, e.payload::text, \
                             e.metadata::text, e.recorded_at";

/// The columns of the command journal that `journal::entry` reads.
const JOURNAL_COLUMNS: &str = "command_id, command_type, payload::text, metadata::text, \
                               stream_id, outcome, first_version, last_version, error, \
                               recorded_at";

/// An erased row's metadata: what is not personal (ids, timestamp), and
/// when it was erased.
const ERASED_METADATA: &str = "jsonb_strip_nulls(jsonb_build_object( \
     'correlation_id', metadata->'correlation_id', \
     'causation_id', metadata->'causation_id', \
     'command_id', metadata->'command_id', \
     'timestamp', metadata->'timestamp', \
     'erased_at', to_jsonb(now())))";

/// The statements of one schema.
pub(crate) struct Queries {
    /// The schema they address.
    pub schema: SchemaName,
    // Appends.
    pub append: String,
    pub append_command: String,
    pub append_new: String,
    pub append_exact: String,
    pub append_set: String,
    /// `append_set` with each event's recording time given ($12), for copies.
    pub append_set_at: String,
    pub lock_streams: String,
    // Reads.
    pub read_stream: String,
    pub fold_stream: String,
    pub read_all: String,
    pub read_page: String,
    pub readable_bound: String,
    pub events_after: String,
    pub read_correlation: String,
    pub read_event_at: String,
    pub head_position: String,
    pub stream_version: String,
    pub load_snapshot: String,
    pub save_snapshot: String,
    pub status: String,
    // The command journal and the life cycle of streams.
    pub record_rejected: String,
    pub find_command: String,
    pub command_journal: String,
    pub close_stream: String,
    pub erase_events: String,
    pub erase_commands: String,
    pub erase_parked: String,
    pub erase_snapshot: String,
    // Projections.
    pub projection_position: String,
    pub projection_progress: String,
    pub insert_checkpoint: String,
    pub move_checkpoint: String,
    pub delete_checkpoint: String,
    pub delete_parked_of: String,
    pub delete_parked: String,
    pub parked_events: String,
    pub park: String,
    pub park_unreadable: String,
    // Migrations.
    pub create_bookkeeping: String,
    pub applied_migrations: String,
    pub migration_versions: String,
    pub record_migration: String,
    pub add_checksums: String,
    pub record_checksum: String,
    pub checksums_not_null: String,
    // Restored dumps.
    pub stored_positions: String,
    pub lock_for_rebase: String,
    pub rebase_count: String,
    pub rebase: String,
    pub max_position: String,
}

impl Queries {
    /// Builds every statement for `schema`.
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let columns = EVENT_COLUMNS;
        let tail = append_tail(&s);
        Queries {
            append: format!(
                "SELECT out_position, out_version, out_recorded_at, out_replayed \
                 FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            append_command: format!(
                "SELECT out_position, out_version, out_recorded_at, out_replayed \
                 FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            append_new: format!(
                "WITH s AS ( \
                     INSERT INTO {s}.streams AS s (stream_id, version, last_position) \
                     VALUES ($1, cardinality($3::uuid[]), {BASE} + cardinality($3::uuid[]) - 1) \
                     ON CONFLICT (stream_id) DO UPDATE \
                         SET version = EXCLUDED.version, last_position = EXCLUDED.last_position \
                         WHERE s.version = $2 AND NOT s.closed AND s.last_position < {BASE} \
                     RETURNING s.version - cardinality($3::uuid[]) AS prev, \
                               s.last_position - cardinality($3::uuid[]) + 1 AS first \
                 ){tail}"
            ),
            append_exact: format!(
                "WITH s AS ( \
                     UPDATE {s}.streams s \
                     SET version = s.version + cardinality($3::uuid[]), \
                         last_position = {BASE} + cardinality($3::uuid[]) - 1 \
                     WHERE s.stream_id = $1 AND s.version = $2 AND NOT s.closed \
                       AND s.last_position < {BASE} \
                     RETURNING s.version - cardinality($3::uuid[]) AS prev, \
                               s.last_position - cardinality($3::uuid[]) + 1 AS first \
                 ){tail}"
            ),
            append_set: append_set(&s, false),
            append_set_at: append_set(&s, true),
            lock_streams: format!("SELECT {s}.lock_streams($1::text[])"),
            // The stream's version comes with its events (or alone, when
            // none is read) so that a hole at the end is seen too.
            read_stream: format!(
                "SELECT {columns}, h.version FROM {s}.streams h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events e \
                     WHERE e.stream_id = $1 AND e.stream_version >= $2 \
                     ORDER BY e.stream_version LIMIT $3) e ON true \
                 WHERE h.stream_id = $1 \
                 ORDER BY e.stream_version"
            ),
            // What a fold needs, the rest of a stream in one query: no id,
            // no metadata (only whether the stream was erased), and the
            // stream's version on every row (read once) to see a lost tail.
            // `LIMIT $3` (bound to i64::MAX) keeps the generic plan on the
            // (stream_id, stream_version) index: without a limit, a table
            // of few streams gets a sequential scan and a sort.
            fold_stream: format!(
                "SELECT e.stream_version, e.position, e.event_type, e.schema_version, \
                        e.payload::text, e.metadata ? 'erased_at', \
                        (SELECT h.version FROM {s}.streams h WHERE h.stream_id = $1) \
                 FROM {s}.events e \
                 WHERE e.stream_id = $1 AND e.stream_version >= $2 \
                 ORDER BY e.stream_version LIMIT $3"
            ),
            read_all: format!(
                "SELECT {columns} FROM {s}.events e \
                 WHERE e.position >= $1 AND e.position < {s}.readable_bound() \
                 ORDER BY e.position LIMIT $2"
            ),
            // A page for a subscription: at most $2 events, and only as
            // many as fit in $3 bytes by their stored size (at least one).
            // The limit is taken first and the running size summed over
            // those rows only: with the window over the whole range, a
            // table without statistics yet (a bulk import a moment ago) is
            // planned as a scan and sort of everything past $1 per page.
            read_page: format!(
                "SELECT {columns} FROM (\
                     SELECT e.*, sum(pg_column_size(e.payload) + pg_column_size(e.metadata)) \
                                 OVER (ORDER BY e.position ROWS UNBOUNDED PRECEDING) AS running_bytes \
                     FROM (SELECT * FROM {s}.events e \
                           WHERE e.position >= $1 AND e.position < {s}.readable_bound() \
                           ORDER BY e.position LIMIT $2) e) e \
                 WHERE e.running_bytes - pg_column_size(e.payload) - pg_column_size(e.metadata) < $3 \
                 ORDER BY e.position"
            ),
            readable_bound: format!("SELECT {s}.readable_bound()"),
            // Counted on the primary key alone, and no further than the cap.
            events_after: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {s}.events \
                 WHERE position > $1 AND position < {s}.readable_bound() LIMIT $2) e"
            ),
            read_correlation: format!(
                "SELECT {columns} FROM {s}.events e \
                 WHERE e.metadata ? 'correlation_id' AND e.metadata->>'correlation_id' = $1 \
                   AND e.position >= $2 AND e.position < {s}.readable_bound() \
                 ORDER BY e.position LIMIT $3"
            ),
            read_event_at: format!("SELECT {columns} FROM {s}.events e WHERE e.position = $1"),
            head_position: format!(
                "SELECT coalesce(max(e.position), 0) FROM {s}.events e \
                 WHERE e.position < {s}.readable_bound()"
            ),
            stream_version: format!("SELECT version FROM {s}.streams WHERE stream_id = $1"),
            load_snapshot: format!(
                "SELECT version, schema_version, state::text, taken_at FROM {s}.snapshots \
                 WHERE stream_id = $1"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots AS t (stream_id, version, schema_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4::jsonb, $5) \
                 ON CONFLICT (stream_id) DO UPDATE \
                 SET version = excluded.version, schema_version = excluded.schema_version, \
                     state = excluded.state, taken_at = excluded.taken_at \
                 WHERE t.version < excluded.version"
            ),
            status: format!(
                "SELECT b.bound, \
                        (SELECT coalesce(max(position), 0) FROM {s}.events WHERE position < b.bound), \
                        (SELECT count(*) FROM {s}.events WHERE position >= b.bound) \
                 FROM (SELECT {s}.readable_bound() AS bound) b"
            ),
            record_rejected: format!(
                "INSERT INTO {s}.commands \
                 (command_id, command_type, stream_id, outcome, error, payload, metadata) \
                 VALUES ($1, $2, $3, 'rejected', $4, $5::jsonb, $6::jsonb)"
            ),
            find_command: format!(
                "SELECT {JOURNAL_COLUMNS} FROM {s}.commands WHERE command_id = $1 \
                 ORDER BY (outcome = 'accepted') DESC, seq DESC LIMIT 1"
            ),
            command_journal: format!(
                "SELECT {JOURNAL_COLUMNS} FROM {s}.commands WHERE stream_id = $1 ORDER BY seq"
            ),
            close_stream: format!(
                "INSERT INTO {s}.streams AS s (stream_id, version, closed) VALUES ($1, 0, true) \
                 ON CONFLICT (stream_id) DO UPDATE SET closed = true"
            ),
            erase_events: format!(
                "UPDATE {s}.events SET payload = '{{}}'::jsonb, metadata = {ERASED_METADATA} \
                 WHERE stream_id = $1"
            ),
            erase_commands: format!(
                "UPDATE {s}.commands SET payload = NULL, \
                     error = CASE WHEN error IS NULL THEN NULL ELSE $2 END, \
                     metadata = {ERASED_METADATA} \
                 WHERE stream_id = $1"
            ),
            erase_parked: format!("UPDATE {s}.parked_events SET error = $2 WHERE stream_id = $1"),
            erase_snapshot: format!("DELETE FROM {s}.snapshots WHERE stream_id = $1"),
            projection_position: format!("SELECT position FROM {s}.projections WHERE name = $1"),
            projection_progress: format!(
                "SELECT coalesce(max(e.position), 0), count(e.position) FROM {s}.events e \
                 WHERE e.position > $1 AND e.position < {s}.readable_bound()"
            ),
            insert_checkpoint: format!(
                "INSERT INTO {s}.projections (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
            ),
            move_checkpoint: format!(
                "UPDATE {s}.projections SET position = $3, updated_at = now() \
                 WHERE name = $1 AND position = $2"
            ),
            delete_checkpoint: format!(
                "DELETE FROM {s}.projections WHERE name = $1 RETURNING position"
            ),
            delete_parked_of: format!("DELETE FROM {s}.parked_events WHERE projection = $1"),
            delete_parked: format!(
                "DELETE FROM {s}.parked_events WHERE projection = $1 AND position = $2"
            ),
            parked_events: format!(
                "SELECT position, event_id, stream_id, stream_version, event_type, error \
                 FROM {s}.parked_events WHERE projection = $1 ORDER BY position"
            ),
            park: format!(
                "INSERT INTO {s}.parked_events \
                 (projection, position, event_id, stream_id, stream_version, event_type, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
            ),
            park_unreadable: format!(
                "INSERT INTO {s}.parked_events \
                 (projection, position, event_id, stream_id, stream_version, event_type, error) \
                 SELECT $1, position, event_id, stream_id, stream_version, event_type, $3 \
                 FROM {s}.events WHERE position = $2 ON CONFLICT DO NOTHING"
            ),
            create_bookkeeping: format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE {s}.schema_migrations (
                     version integer PRIMARY KEY,
                     description text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now(),
                     checksum bytea NOT NULL
                 );"
            ),
            applied_migrations: format!(
                "SELECT version, checksum FROM {s}.schema_migrations ORDER BY version"
            ),
            migration_versions: format!(
                "SELECT version FROM {s}.schema_migrations ORDER BY version"
            ),
            record_migration: format!(
                "INSERT INTO {s}.schema_migrations (version, description, checksum) \
                 VALUES ($1, $2, $3)"
            ),
            add_checksums: format!("ALTER TABLE {s}.schema_migrations ADD COLUMN checksum bytea"),
            record_checksum: format!(
                "UPDATE {s}.schema_migrations SET checksum = $2 WHERE version = $1"
            ),
            checksums_not_null: format!(
                "ALTER TABLE {s}.schema_migrations ALTER COLUMN checksum SET NOT NULL"
            ),
            stored_positions: format!(
                "SELECT greatest((SELECT max(position) FROM {s}.events), \
                                 (SELECT max(position) FROM {s}.projections), 0), \
                        pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ),
            lock_for_rebase: format!(
                "LOCK TABLE {s}.events, {s}.streams, {s}.projections, {s}.parked_events \
                 IN ACCESS EXCLUSIVE MODE"
            ),
            rebase_count: format!(
                "SELECT (SELECT count(*) FROM {s}.events), \
                        pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            ),
            // Old → new, in log order. Positions move through negative
            // values so the primary key never sees two rows at one position.
            rebase: format!(
                "CREATE TEMPORARY TABLE es_rebase ON COMMIT DROP AS
                     SELECT position AS old, {FIRST_REBASED} + row_number() OVER (ORDER BY position) - 1 AS new
                     FROM {s}.events;
                 CREATE UNIQUE INDEX ON es_rebase (old);
                 ANALYZE es_rebase;
                 UPDATE {s}.events SET position = -position;
                 UPDATE {s}.events e SET position = m.new FROM es_rebase m WHERE e.position = -m.old;
                 UPDATE {s}.streams t SET last_position = m.new FROM es_rebase m
                     WHERE t.last_position = m.old;
                 UPDATE {s}.parked_events SET position = -position;
                 UPDATE {s}.parked_events p SET position = m.new FROM es_rebase m
                     WHERE p.position = -m.old;
                 UPDATE {s}.parked_events SET position = -position WHERE position < 0;
                 UPDATE {s}.projections p SET position = coalesce(
                     (SELECT max(m.new) FROM es_rebase m WHERE m.old <= p.position), 0);"
            ),
            max_position: format!("SELECT coalesce(max(position), 0) FROM {s}.events"),
            schema: schema.clone(),
        }
    }
}

/// The table of a view, `"<schema>".view_<name>`, for a name that passed
/// [`check_view_name`]: the only way to make one is [`ViewTable::new`].
#[derive(Debug, Clone)]
pub(crate) struct ViewTable(String);

impl ViewTable {
    /// Checks the view's name; refuses it with [`ViewError::InvalidName`].
    pub(crate) fn new(schema: &SchemaName, name: &str) -> Result<Self, ViewError> {
        check_view_name(name)?;
        Ok(ViewTable(format!(
            "{}.{}",
            schema.quoted(),
            view_projection_name(name)
        )))
    }

    /// The qualified table name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Creates the table if it does not exist.
    pub(crate) fn create(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
                 key text COLLATE \"C\" PRIMARY KEY, \
                 doc jsonb NOT NULL, \
                 position bigint NOT NULL, \
                 version bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())",
            self.0
        )
    }

    /// Reads the documents after key `$1` (all when null), at most `$2`.
    pub(crate) fn list(&self) -> String {
        format!(
            "SELECT key, doc::text AS doc, position, version FROM {} \
             WHERE $1::text IS NULL OR key > $1 ORDER BY key LIMIT $2",
            self.0
        )
    }
}

/// The statements of a view's sink. The sink is handed its table by the
/// view's projection (evently-core), which got it from a [`ViewTable`].
pub(crate) mod view_sink {
    /// Reads the document of key `$1`.
    pub(crate) fn load(table: &str) -> String {
        format!("SELECT doc::text AS doc, position, version FROM {table} WHERE key = $1")
    }

    /// Writes the document of key `$1`.
    pub(crate) fn save(table: &str) -> String {
        format!(
            "INSERT INTO {table} (key, doc, position, version) VALUES ($1, $2::jsonb, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, position = excluded.position, \
             version = excluded.version, updated_at = now()"
        )
    }

    /// Deletes the document of key `$1`.
    pub(crate) fn delete(table: &str) -> String {
        format!("DELETE FROM {table} WHERE key = $1")
    }
}

/// The set-based append of several streams in one statement (group commit,
/// `append_ordered_in`); with `times`, each event's recording time comes
/// in a twelfth array instead of `now()` (a copied log keeps its times).
fn append_set(s: &impl std::fmt::Display, times: bool) -> String {
    let (at_arg, at_col, at_name, at_value) = if times {
        (", $12::timestamptz[]", ", at", ", recorded_at", ", u.at")
    } else {
        ("", "", "", "")
    };
    format!(
        "WITH a AS ( \
                     SELECT a.*, {BASE} + sum(a.n) OVER (ORDER BY a.idx) - a.n AS first \
                     FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::integer[]) \
                          WITH ORDINALITY AS a(stream, kind, expected, n, idx) \
                 ), u AS ( \
                     SELECT * FROM unnest($5::integer[], $6::integer[], $7::uuid[], $8::text[], \
                                          $9::integer[], $10::text[], $11::text[]{at_arg}) \
                          AS u(idx, k, id, typ, ver, pay, meta{at_col}) \
                 ), s AS ( \
                     INSERT INTO {s}.streams AS s (stream_id, version, last_position) \
                     SELECT a.stream, a.n, a.first + a.n - 1 \
                     FROM a LEFT JOIN {s}.streams x ON x.stream_id = a.stream \
                     WHERE (a.kind IN (0, 1) OR (a.kind = 3 AND a.expected = 0) \
                            OR x.stream_id IS NOT NULL) \
                       AND NOT EXISTS (SELECT 1 FROM u JOIN {s}.events e ON e.event_id = u.id \
                                       WHERE u.idx = a.idx) \
                     ORDER BY a.stream \
                     ON CONFLICT (stream_id) DO UPDATE \
                         SET version = s.version + EXCLUDED.version, \
                             last_position = EXCLUDED.last_position \
                         WHERE NOT s.closed AND s.last_position < {BASE} \
                           AND EXISTS (SELECT 1 FROM a WHERE a.stream = EXCLUDED.stream_id \
                                AND (a.kind = 0 OR (a.kind = 1 AND s.version = 0) \
                                     OR (a.kind = 2 AND s.version > 0) \
                                     OR (a.kind = 3 AND s.version = a.expected))) \
                     RETURNING s.stream_id, s.version \
                 ), i AS ( \
                     INSERT INTO {s}.events AS e \
                         (position, event_id, stream_id, stream_version, event_type, \
                          schema_version, payload, metadata{at_name}) \
                     SELECT a.first + u.k - 1, u.id, a.stream, s.version - a.n + u.k, u.typ, \
                            u.ver, u.pay::jsonb, u.meta::jsonb{at_value} \
                     FROM u JOIN a ON a.idx = u.idx JOIN s ON s.stream_id = a.stream \
                     RETURNING e.stream_id, e.position, e.stream_version, e.recorded_at \
                 ) \
                 SELECT a.idx::integer, i.position, i.stream_version, i.recorded_at \
                 FROM i JOIN a ON a.stream = i.stream_id ORDER BY i.position"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["es", "billing_events", "_x", "a1"] {
            assert!(SchemaName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Es", "a-b", "a\"b", "a;drop", &"x".repeat(51)] {
            assert!(
                matches!(SchemaName::new(bad), Err(SetupError::InvalidSchemaName(_))),
                "{bad}"
            );
        }
    }
}
