-- evently-sqlite schema, version 1. Every statement is idempotent.

-- One row per stream: its version, and whether it takes more events.
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 0),
    closed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The log. `position` is the global position: the rowid, assigned as the
-- last position + 1 by the one writer at a time SQLite allows, inside the
-- appending transaction, so positions are gap-free by construction.
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT NOT NULL,
    correlation_id TEXT,
    recorded_at INTEGER NOT NULL,              -- microseconds since the Unix epoch, UTC
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS events_correlation_idx
    ON events (correlation_id, position) WHERE correlation_id IS NOT NULL;

-- Commands: executed with a client-given id (idempotency) and the journal.
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL,
    command_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
    first_version INTEGER,
    last_version INTEGER,
    error TEXT,
    payload TEXT,
    metadata TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS commands_accepted_key
    ON commands (command_id) WHERE outcome = 'accepted';
CREATE INDEX IF NOT EXISTS commands_id_idx ON commands (command_id, seq);
CREATE INDEX IF NOT EXISTS commands_stream_idx ON commands (stream_id, seq);

-- The latest snapshot of a stream's aggregate state.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state TEXT NOT NULL,
    taken_at INTEGER NOT NULL
) WITHOUT ROWID;
