-- The records accepted by `POST /data` and persisted by `svc consume`.
-- Ids are UUID v7 (time-ordered), so the primary key index also serves
-- keyset pagination newest-first; no extra index is needed.
CREATE TABLE IF NOT EXISTS data (
    id          uuid        PRIMARY KEY,
    value       text        NOT NULL,
    accepted_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
