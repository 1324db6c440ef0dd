-- evently-sqlite schema, version 2: projection checkpoints, parked events,
-- and the lease that lets one instance of a projection run at a time.

-- One row per projection: the position of the last event it processed,
-- moved in the transaction that writes its read model, and only from the
-- position the runner last read (a fence against a second instance).
CREATE TABLE IF NOT EXISTS projections (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Events a projection gave up on, with the error, to list and retry.
CREATE TABLE IF NOT EXISTS parked_events (
    projection TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    PRIMARY KEY (projection, position)
) WITHOUT ROWID;

-- Who runs a projection now: renewed with every batch, taken over when it
-- expires (a crashed process holds nothing for long).
CREATE TABLE IF NOT EXISTS projection_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
