-- The normalized messages, their attachments, and the ledger that decides
-- "new, duplicate, retry or skip" for every message identity.

-- One row per stored message. The (tenant, account, identity) key is the
-- ledger's: a message is stored at most once per provider identity.
CREATE TABLE inbound_messages (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant              text        NOT NULL,
    account             text        NOT NULL,
    provider            text        NOT NULL,
    -- Provider-native immutable identity (jobs.Job.identity(), e.g. imap:INBOX:7:42).
    identity            text        NOT NULL,
    -- The provider's own id (IMAP "UIDVALIDITY:UID", Graph immutable id, Gmail id).
    provider_message_id text,
    folder              text,
    labels              text[]      NOT NULL DEFAULT '{}',
    -- The queue job that stored it.
    job_id              text        NOT NULL,
    -- RFC 5322 Message-ID, normalized, without <>; NULL when the message has none.
    message_id          text,
    in_reply_to         text,
    "references"        text[]      NOT NULL DEFAULT '{}',
    thread_key          text        NOT NULL,
    from_name           text,
    from_address        text,
    -- Address lists as jsonb arrays of {"name": ..., "address": ...}.
    to_addresses        jsonb       NOT NULL DEFAULT '[]',
    cc_addresses        jsonb       NOT NULL DEFAULT '[]',
    reply_to_addresses  jsonb       NOT NULL DEFAULT '[]',
    sender              text,
    -- '' for the null return path <>.
    return_path         text,
    subject             text        NOT NULL DEFAULT '',
    -- Date header (NULL if missing or unparseable), provider's internal date, our storage time.
    sent_at             timestamptz,
    internal_date       timestamptz,
    received_at         timestamptz NOT NULL DEFAULT now(),
    text_body           text,
    html_body           text,
    -- Every top-level header in order, decoded: [[name, value], ...].
    headers             jsonb       NOT NULL DEFAULT '[]',
    -- Size of the raw MIME in bytes.
    size                bigint      NOT NULL,
    is_auto_reply       boolean     NOT NULL DEFAULT false,
    is_bounce           boolean     NOT NULL DEFAULT false,
    auto_reason         text,
    -- What the parser found wrong with the message (human-readable strings).
    defects             text[]      NOT NULL DEFAULT '{}',
    -- The raw MIME, when [store] keep_raw = true (to re-parse later).
    raw                 bytea,
    CONSTRAINT inbound_messages_identity_key UNIQUE (tenant, account, identity)
);

-- The second dedupe key (Message-ID within one account), and threading.
CREATE INDEX inbound_messages_message_id_idx ON inbound_messages (tenant, account, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX inbound_messages_thread_idx ON inbound_messages (tenant, account, thread_key);
CREATE INDEX inbound_messages_received_idx ON inbound_messages (tenant, account, received_at);

CREATE TABLE inbound_attachments (
    id           bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- inbound_messages.id
    message_id   bigint  NOT NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    -- Order of the attachment in the message, from 0.
    position     integer NOT NULL,
    -- As given by the sender (decoded), path separators kept; NULL if none.
    filename     text,
    content_type text    NOT NULL,
    size         bigint  NOT NULL,
    -- Hex SHA-256 of data.
    sha256       text    NOT NULL,
    content_id   text,
    -- Shown inside the HTML body (cid: reference / multipart/related).
    inline       boolean NOT NULL DEFAULT false,
    data         bytea   NOT NULL,
    CONSTRAINT inbound_attachments_position_key UNIQUE (message_id, position)
);

CREATE INDEX inbound_attachments_sha256_idx ON inbound_attachments (sha256);

-- One row per message identity. Terminal statuses (processed, duplicate,
-- skipped) dedupe; processing with an expired lease, and failed, are retried.
CREATE TABLE inbound_ledger (
    tenant           text        NOT NULL,
    account          text        NOT NULL,
    identity         text        NOT NULL,
    provider         text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('processing', 'processed', 'duplicate', 'skipped', 'failed')),
    -- Why: skip reason (oversize, source_deleted, ...), or what it duplicates (message_id, ...).
    reason           text,
    last_error       text,
    -- Claims so far (the first claim is 1; every take-over adds one).
    attempts         integer     NOT NULL DEFAULT 1,
    -- Holder of a 'processing' row: a per-claim token "<instance>:<random>", and until when.
    lease_owner      text,
    lease_expires_at timestamptz,
    -- The queue job that claimed it last.
    job_id           text        NOT NULL,
    -- inbound_messages.id of the stored message (processed) or of the original (duplicate).
    message_id       bigint      REFERENCES inbound_messages (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (tenant, account, identity)
);

-- Operators look for stuck and failing rows.
CREATE INDEX inbound_ledger_open_idx ON inbound_ledger (status, updated_at)
    WHERE status IN ('processing', 'failed');
CREATE INDEX inbound_ledger_message_idx ON inbound_ledger (message_id) WHERE message_id IS NOT NULL;
