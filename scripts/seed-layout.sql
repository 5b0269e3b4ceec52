-- seed-layout.sql — a migrated, empty database filled for the scripts'
-- measurements: :sessions families of ten tokens, generations 0-8 rotated
-- between two days and two hours ago (all due under the default one-hour
-- rotated_retention), generation 9 live. Token hashes are
-- sha256('<session>/<generation>'), which a rotation can recompute. The
-- sessions have MAC keys and expiry floors, and the live rows are written
-- as this release's rotate_token writes them (rotates_in_place): the state
-- of a database upgraded to rotation in place after each session's first
-- rotation since, so a rotation that presents the live token's
-- authenticator replaces its row, unless token_history is on.
--
--   psql -v ON_ERROR_STOP=1 -v sessions=N -v layout=time|ties|spread -f scripts/seed-layout.sql
--
-- Layouts (time and ties as `token-janitor bench` names them):
--   time    rows in the order they were revoked, each at its own instant;
--   ties    a session's rows together, sessions in primary-key order, each
--           generation's due rows revoked at one instant (a mass
--           revocation);
--   spread  as ties, with sessions in login order: their random ids do not
--           follow the heap (an import grouped by session), so neither the
--           timestamp nor the primary key does.
INSERT INTO auth.sessions (id, user_id, created_at, generation, refresh_expires_at, expiry_floor, mac_key)
SELECT md5(s::text)::uuid, 'user-' || s, now() - interval '3 days', 9, now() + interval '30 days',
       now() + interval '30 days', auth._new_mac_key()
FROM generate_series(0, :sessions - 1) s;
INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason,
                                 rotates_in_place)
SELECT md5(s::text)::uuid, g, sha256(convert_to(md5(s::text)::uuid::text || '/' || g, 'UTF8')),
       now() - interval '3 days', now() + interval '30 days',
       CASE WHEN g < 9 THEN
           CASE :'layout' WHEN 'time' THEN now() - interval '2 days' + (g * :sessions + s) * (interval '46 hours' / (:sessions * 9))
                          ELSE now() - interval '2 days' + g * interval '1 hour' END
       END,
       CASE WHEN g < 9 THEN 'rotated' END, g = 9
FROM generate_series(0, :sessions - 1) s, generate_series(0, 9) g
ORDER BY CASE :'layout' WHEN 'time' THEN g END, CASE :'layout' WHEN 'ties' THEN NULL ELSE s END, md5(s::text)::uuid, g;
VACUUM ANALYZE auth.sessions, auth.refresh_tokens;
CHECKPOINT;
