-- V11 deleted_by_kind
-- Adding a purge kind is a row of auth.purge_targets (issue 27): each run's
-- deletes by kind as one jsonb object (kind -> rows), so a new kind needs
-- no column here. The per-kind columns stay, still written for the kinds
-- that have one, for readers of earlier releases. Past runs get the object
-- from those columns (the table holds history_retention of runs, a few
-- thousand rows).
ALTER TABLE auth.cleanup_runs
    ADD COLUMN deleted_by_kind jsonb NOT NULL DEFAULT '{}';
UPDATE auth.cleanup_runs
SET deleted_by_kind = jsonb_build_object('expired', expired_deleted, 'revoked', revoked_deleted,
                                         'rotated', rotated_deleted, 'security_events', security_events_deleted,
                                         'sessions', sessions_deleted);
