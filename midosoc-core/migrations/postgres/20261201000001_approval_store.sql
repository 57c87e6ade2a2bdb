-- Approvals and their audit trail.
--
-- `approvals` holds each approval's current state: the whole approval as
-- JSON, plus the columns the store filters and guards on.
CREATE TABLE approvals (
    id          uuid        PRIMARY KEY,
    agent       text        NOT NULL,
    status      text        NOT NULL
                CHECK (status IN ('pending', 'approved', 'denied', 'withdrawn', 'expired')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- The `jti` of the token minted for it; one token, one approval.
    token_id    text        UNIQUE,
    approval    jsonb       NOT NULL
);

CREATE INDEX approvals_newest ON approvals (created_at DESC, id DESC);
CREATE INDEX approvals_by_status ON approvals (status, created_at DESC, id DESC);
CREATE INDEX approvals_by_agent ON approvals (agent, status, created_at DESC, id DESC);
CREATE INDEX approvals_pending_by_expiry ON approvals (expires_at) WHERE status = 'pending';

-- The event log and audit trail: append-only, each row linked to the one
-- before by `prev_hash` (see the store's audit module for the hash). The
-- payload is kept as the exact canonical text that was hashed.
CREATE TABLE approval_events (
    seq          bigint      PRIMARY KEY,
    kind         text        NOT NULL,
    at           timestamptz NOT NULL,
    approval_id  uuid        NOT NULL,
    agent        text        NOT NULL,
    analyst      text,
    payload      text        NOT NULL,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL
);

CREATE INDEX approval_events_by_approval ON approval_events (approval_id, seq);

-- The chain's last link. Every write transaction locks and moves it, which
-- serializes appends across instances; a log cut short of it shows as
-- truncated.
CREATE TABLE approval_events_head (
    id    smallint PRIMARY KEY CHECK (id = 1),
    seq   bigint   NOT NULL,
    hash  text     NOT NULL
);

INSERT INTO approval_events_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE FUNCTION approval_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'approval_events is append-only';
END;
$$;

CREATE TRIGGER approval_events_no_change
    BEFORE UPDATE OR DELETE ON approval_events
    FOR EACH ROW EXECUTE FUNCTION approval_events_append_only();

CREATE TRIGGER approval_events_no_truncate
    BEFORE TRUNCATE ON approval_events
    FOR EACH STATEMENT EXECUTE FUNCTION approval_events_append_only();
