-- Refresh tokens that a provider's token endpoint rotated, so that a restart
-- (or another daemon sharing this database) does not present a revoked one.
-- origin is the SHA-256 (hex) of the refresh token in the configured
-- credentials: a row applies only while that file is unchanged, so an
-- operator who puts a fresh token in the file is never overridden by an old
-- rotation.
CREATE TABLE inbound_oauth_tokens (
    account       text        PRIMARY KEY,
    origin        text        NOT NULL,
    refresh_token text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
