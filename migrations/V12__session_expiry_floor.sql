-- V12 session_expiry_floor
-- auth.sessions.expiry_floor: a time at or before refresh_expires_at, by
-- which the session sweep finds dead sessions (sessions_expiry_floor_idx,
-- sql/indexes.sql) in place of an index on refresh_expires_at. Every
-- rotation moves refresh_expires_at; issue_token sets the floor to it, and
-- a rotation moves the floor only once the expiry has run half of
-- expired_retention past it (or fallen below it). So most rotations change
-- no indexed column of the session row, and PostgreSQL updates it in place
-- on its page (HOT): no new entry in any of the session's indexes, where an
-- index on refresh_expires_at cost three entries a rotation.
-- '-infinity' (every row at the upgrade, and a row written without the
-- column) is before every cutoff: the sweep reads such a session's
-- refresh_expires_at as it did before. migrate then moves the floors of
-- the existing rows to their expiry in small batches, after this
-- migration and once the index is built. A constant default: no table
-- rewrite, whatever the table's size.
ALTER TABLE auth.sessions
    ADD COLUMN expiry_floor timestamptz NOT NULL DEFAULT '-infinity';
