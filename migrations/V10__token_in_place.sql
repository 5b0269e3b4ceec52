-- V10 token_in_place
-- The session is the token (issue 25): with an rt2_ token (one that carries
-- its authenticator), a rotation replaces the session's current token row
-- in place and keeps no row for its predecessor. A rotated-away generation
-- is proven genuine by its authenticator and the grace's sealed successor
-- lives on the current row, so the predecessor's row decided nothing, and
-- every refresh wrote one that the cleanup had to delete later.
--
-- token_history (pinned name): true keeps a row per issued token, as
-- before this release (each rotated row revoked 'rotated' and purged after
-- rotated_retention), for an audit trail of every refresh. false, the
-- default, also on upgrade: one token row per session. Rows written before
-- the upgrade stay and are purged as before; an rt1_ token, which has no
-- authenticator, keeps its row in either mode.
ALTER TABLE auth.cleanup_policy
    ADD COLUMN token_history boolean NOT NULL DEFAULT false;
