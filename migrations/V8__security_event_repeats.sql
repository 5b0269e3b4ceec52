-- V8 security_event_repeats
-- One security event per family and kind: a replay repeated against a family
-- that stays revoked counts on its event instead of adding a row per call
-- (2,000 replays kept 2,000 rows for audit_retention). And a counter of
-- committed events for monitoring: the identity's sequence, read before,
-- also moved for events rolled back (verify's self-test, 3 per run).

-- How many times the event was seen (the first time included), and when it
-- was last. occurred_at stays the first time; audit_retention counts from it.
ALTER TABLE auth.security_events
    ADD COLUMN count bigint NOT NULL DEFAULT 1
        CONSTRAINT security_events_count_positive CHECK (count >= 1),
    ADD COLUMN last_seen_at timestamptz;

-- Append-only, but for a repeat: only count may rise, and last_seen_at with
-- it; every other column is as first recorded.
CREATE OR REPLACE FUNCTION auth.security_events_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.id, NEW.occurred_at, NEW.session_id, NEW.user_id, NEW.generation, NEW.kind)
           IS DISTINCT FROM (OLD.id, OLD.occurred_at, OLD.session_id, OLD.user_id, OLD.generation, OLD.kind)
       OR NEW.count <= OLD.count
       OR NEW.last_seen_at IS NULL OR NEW.last_seen_at < OLD.last_seen_at THEN
        RAISE EXCEPTION 'auth.security_events is append-only: rows are never updated but to count a repeat (count up, last_seen_at not back)'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

-- Rows recorded before this release were each seen once.
ALTER TABLE auth.security_events DISABLE TRIGGER security_events_append_only;
UPDATE auth.security_events SET last_seen_at = occurred_at;
ALTER TABLE auth.security_events ENABLE TRIGGER security_events_append_only;
ALTER TABLE auth.security_events
    ALTER COLUMN last_seen_at SET NOT NULL,
    ADD CONSTRAINT security_events_last_seen_not_before_occurred CHECK (last_seen_at >= occurred_at);

-- auth.security_events_first_seen: an event inserted without last_seen_at
-- (every row written with the pinned columns alone) was last seen when it
-- occurred.
CREATE FUNCTION auth.security_events_first_seen()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.last_seen_at := coalesce(NEW.last_seen_at, NEW.occurred_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER security_events_first_seen
    BEFORE INSERT ON auth.security_events
    FOR EACH ROW EXECUTE FUNCTION auth.security_events_first_seen();

-- A repeat finds its family's event by session.
CREATE INDEX security_events_session_id_idx ON auth.security_events (session_id, kind);

-- auth.security_event_totals: per kind, how many security events (repeats
-- included) committed transactions recorded: the Prometheus counter
-- token_janitor_security_events_total. Kept by a trigger, so a rolled-back
-- event (verify's self-test) never counts; the purge never lowers it.
CREATE TABLE auth.security_event_totals (
    kind     text   PRIMARY KEY,
    recorded bigint NOT NULL CONSTRAINT security_event_totals_recorded_not_negative CHECK (recorded >= 0)
);

-- It starts where the sequence stood, so the counter exported before the
-- upgrade does not go down.
INSERT INTO auth.security_event_totals (kind, recorded)
VALUES ('reuse_detected',
        coalesce(pg_catalog.pg_sequence_last_value(
                     pg_catalog.pg_get_serial_sequence('auth.security_events', 'id')::pg_catalog.regclass), 0));

-- auth.security_events_count: adds each new event, or its repeats, to
-- auth.security_event_totals. Lock: that kind's row, until commit.
CREATE FUNCTION auth.security_events_count()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO auth.security_event_totals AS t (kind, recorded)
    VALUES (NEW.kind, NEW.count - CASE TG_OP WHEN 'UPDATE' THEN OLD.count ELSE 0 END)
    ON CONFLICT (kind) DO UPDATE SET recorded = t.recorded + excluded.recorded;
    RETURN NULL;
END
$$;

CREATE TRIGGER security_events_count
    AFTER INSERT OR UPDATE ON auth.security_events
    FOR EACH ROW EXECUTE FUNCTION auth.security_events_count();
