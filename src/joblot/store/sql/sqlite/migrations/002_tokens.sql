-- 002: API tokens. Only a digest of each token is stored; the token itself is shown once.
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,            -- public id, for `joblot tokens list/revoke`
    tenant     TEXT NOT NULL,
    digest     TEXT NOT NULL UNIQUE,        -- SHA-256 of the token
    created_at REAL NOT NULL,
    revoked_at REAL
);
