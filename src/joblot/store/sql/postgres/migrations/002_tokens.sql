-- 002: API tokens. Only a digest of each token is stored; the token itself is shown once.
CREATE TABLE tokens (
    id         text PRIMARY KEY,                 -- public id, for `joblot tokens list/revoke`
    tenant     text NOT NULL,
    digest     text NOT NULL UNIQUE,             -- SHA-256 of the token
    created_at double precision NOT NULL,
    revoked_at double precision
);
