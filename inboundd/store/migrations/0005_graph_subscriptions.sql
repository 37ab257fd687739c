-- Microsoft Graph subscriptions inboundd created: one per (account, folder),
-- kept so a restarted daemon renews its subscriptions instead of creating
-- new ones, and so any daemon behind the same public URL can check a
-- notification, whichever daemon created the subscription.
CREATE TABLE inbound_graph_subscriptions (
    account          text        NOT NULL,
    folder           text        NOT NULL,
    subscription_id  text        NOT NULL UNIQUE,
    resource         text        NOT NULL,
    notification_url text        NOT NULL,
    lifecycle_url    text        NOT NULL,
    -- The random secret Graph echoes as clientState in every notification of this
    -- subscription: it authenticates them. Never logged, never shown.
    client_state     text        NOT NULL,
    -- Azure AD tenant GUID (lower-case) notifications must carry, learned from the app's token.
    tenant_id        text,
    -- The expiry Graph granted, and when it was granted (half-life renewal is measured from there).
    expires_at       timestamptz NOT NULL,
    renewed_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Failed renewals since the last success, and the last error.
    renew_failures   integer     NOT NULL DEFAULT 0,
    last_error       text,
    -- Fencing token of the account lease the row was written under (only the owner writes).
    fence            bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (account, folder)
);
