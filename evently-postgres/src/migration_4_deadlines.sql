-- Durable deadlines (evently_core::deadline): one per owner and name; a
-- runner claims due ones for a lease (claim, claimed_until), and removes
-- one when it has fired.
CREATE TABLE IF NOT EXISTS __SCHEMA__.deadlines (
    owner text NOT NULL,
    name text NOT NULL,
    id uuid NOT NULL,
    due timestamptz NOT NULL,
    payload jsonb NOT NULL,
    claim uuid,
    claimed_until timestamptz,
    PRIMARY KEY (owner, name)
);
CREATE INDEX IF NOT EXISTS deadlines_due_idx ON __SCHEMA__.deadlines (due);
