-- Agents and analysts allowed to talk to the gateway. Only SHA-256 hashes of
-- their keys and tokens are kept; the secrets themselves are shown once.

CREATE TABLE agents (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    key_hash   BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE TABLE analysts (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'approver', 'admin')),
    token_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
