-- Approvals and their audit trail.
--
-- `approvals` holds each approval's current state: the whole approval as
-- JSON, plus the columns the store filters and guards on. Times are
-- microseconds since the Unix epoch.
CREATE TABLE approvals (
    id          TEXT    PRIMARY KEY NOT NULL,
    agent       TEXT    NOT NULL,
    status      TEXT    NOT NULL
                CHECK (status IN ('pending', 'approved', 'denied', 'withdrawn', 'expired')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    -- The `jti` of the token minted for it; one token, one approval.
    token_id    TEXT    UNIQUE,
    approval    TEXT    NOT NULL
) STRICT;

CREATE INDEX approvals_newest ON approvals (created_at DESC, id DESC);
CREATE INDEX approvals_by_status ON approvals (status, created_at DESC, id DESC);
CREATE INDEX approvals_by_agent ON approvals (agent, status, created_at DESC, id DESC);
CREATE INDEX approvals_pending_by_expiry ON approvals (expires_at) WHERE status = 'pending';

-- The event log and audit trail: append-only, each row linked to the one
-- before by `prev_hash` (see the store's audit module for the hash).
CREATE TABLE approval_events (
    seq          INTEGER PRIMARY KEY NOT NULL,
    kind         TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    approval_id  TEXT    NOT NULL,
    agent        TEXT    NOT NULL,
    analyst      TEXT,
    payload      TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
) STRICT;

CREATE INDEX approval_events_by_approval ON approval_events (approval_id, seq);

-- The chain's last link. Every write transaction reads and moves it, which
-- serializes appends; a log cut short of it shows as truncated.
CREATE TABLE approval_events_head (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT    NOT NULL
) STRICT;

INSERT INTO approval_events_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER approval_events_no_update BEFORE UPDATE ON approval_events
BEGIN
    SELECT RAISE(ABORT, 'approval_events is append-only');
END;

CREATE TRIGGER approval_events_no_delete BEFORE DELETE ON approval_events
BEGIN
    SELECT RAISE(ABORT, 'approval_events is append-only');
END;
