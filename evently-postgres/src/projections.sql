-- es-postgres schema, version 2: projection checkpoints and parked events.

-- One row per projection: the position of the last event it processed.
-- Moved in the same transaction as the read-model writes, and only from
-- the position the runner last read (a fence against a second instance).
CREATE TABLE IF NOT EXISTS __SCHEMA__.projections (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a projection gave up on, with the error, to list and retry.
CREATE TABLE IF NOT EXISTS __SCHEMA__.parked_events (
    projection text NOT NULL,
    position bigint NOT NULL,
    event_id uuid NOT NULL,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    event_type text NOT NULL,
    error text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, position)          -- list one projection's parked events in log order
);
