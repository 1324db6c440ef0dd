-- evently-sqlite schema, version 3: durable deadlines (evently_core::deadline),
-- one per owner and name; a runner claims due ones for a lease.
CREATE TABLE IF NOT EXISTS deadlines (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    due INTEGER NOT NULL,              -- microseconds since the Unix epoch
    payload TEXT NOT NULL,
    claim TEXT,
    claimed_until INTEGER,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deadlines_due_idx ON deadlines (due);
CREATE INDEX IF NOT EXISTS deadlines_id_idx ON deadlines (id);
