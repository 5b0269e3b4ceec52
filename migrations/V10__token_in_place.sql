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

-- rotates_in_place: whether a rotation may replace this row (token_history
-- off, and the token presented with its authenticator). issue_token and
-- rotate_token set it on the rows they write while token_history is off.
-- False for every row that exists at the upgrade, and for any row written
-- without it: a rotation revokes such a row 'rotated', as before, and
-- writes its successor's row, which the next rotation then replaces. A
-- constant default: no table rewrite, whatever the table's size.
ALTER TABLE auth.refresh_tokens
    ADD COLUMN rotates_in_place boolean NOT NULL DEFAULT false;
