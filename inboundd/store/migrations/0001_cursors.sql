-- Resume points of the ingress side, one row per (account, folder).
-- IMAP: UIDVALIDITY + the last UID whose pointer job Redis acknowledged.
-- Gmail: the last historyId walked (folder = ''). Graph: the delta link.
CREATE TABLE inbound_cursors (
    account     text        NOT NULL,
    folder      text        NOT NULL DEFAULT '',
    uidvalidity bigint,
    last_uid    bigint,
    history_id  numeric(20),
    delta_link  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, folder)
);
