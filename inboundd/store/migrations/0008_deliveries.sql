-- The outbox: one row per (stored message, [[deliver]] target) owed a
-- delivery, inserted in the store transaction with the message itself, so a
-- message is stored if and only if its deliveries are owed. The deliverer
-- (inboundd/deliver/) sends them and records the outcome here.
CREATE TABLE inbound_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The id receivers dedupe by: the same on every attempt (Standard Webhooks "webhook-id").
    delivery_id     text        NOT NULL DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    -- inbound_messages.id
    message_id      bigint      NOT NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    -- [[deliver]] id, and its kind when the row was made (webhook, action_mailbox).
    target          text        NOT NULL,
    kind            text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Attempts so far (each claim counts one, so a delivery that crashes its sender ends dead).
    attempts        integer     NOT NULL DEFAULT 0,
    -- Pending: due time, or the end of the lease of the sender holding it (lease_owner set).
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_owner     text,
    -- The last attempt: when, the HTTP status (NULL: no answer), what went wrong.
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    -- The raw MIME a kind = "action_mailbox" delivery sends, kept here until
    -- delivered (NULL when [store] keep_raw keeps it in inbound_messages.raw).
    raw             bytea,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    CONSTRAINT inbound_deliveries_delivery_id_key UNIQUE (delivery_id),
    CONSTRAINT inbound_deliveries_message_target_key UNIQUE (message_id, target)
);

-- Claims take the oldest pending rows of a target; the next due time is a min().
CREATE INDEX inbound_deliveries_pending_idx ON inbound_deliveries (target, id) WHERE status = 'pending';
CREATE INDEX inbound_deliveries_due_idx ON inbound_deliveries (target, next_attempt_at) WHERE status = 'pending';
CREATE INDEX inbound_deliveries_dead_idx ON inbound_deliveries (target, id) WHERE status = 'dead';
