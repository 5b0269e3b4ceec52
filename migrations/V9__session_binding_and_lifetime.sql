-- V9 session_binding_and_lifetime
-- Sessions as identity teams expect them (issue 26): an absolute lifetime
-- (policy), a binding to a client and a proof-of-possession key, and what a
-- device list shows (a label, the client; its last use is the newest
-- token's issued_at, which every rotation writes anyway). Every new column is
-- NULL for the sessions that exist at the upgrade: they stay unbound,
-- unlabelled and without an absolute lifetime, and keep rotating as before.
-- ADD COLUMN without a default rewrites nothing, whatever the table's size.

-- max_session_lifetime (pinned name): no rotation extends a session past
-- created_at + max_session_lifetime. NULL (the default, also on upgrade):
-- none, as before this release; setting it applies to every session, the
-- existing ones included, at their next rotation.
ALTER TABLE auth.cleanup_policy
    ADD COLUMN max_session_lifetime interval
        CONSTRAINT max_session_lifetime_must_be_between_1_second_and_10_years
        CHECK (max_session_lifetime BETWEEN interval '1 second' AND interval '10 years');

-- client_id: the OAuth client the session was issued to (RFC 6819
-- §5.2.2.2); dpop_jkt: the JWK SHA-256 thumbprint (RFC 7638, base64url, 43
-- characters) of the DPoP key it is bound to (RFC 9449 §5). A rotation must
-- present the same. device_label: what the user sees in a device list.
ALTER TABLE auth.sessions
    ADD COLUMN client_id text
        CONSTRAINT sessions_client_id_length CHECK (length(client_id) BETWEEN 1 AND 256),
    ADD COLUMN dpop_jkt text
        CONSTRAINT sessions_dpop_jkt_is_a_sha256_thumbprint CHECK (dpop_jkt ~ '^[A-Za-z0-9_-]{43}$'),
    ADD COLUMN device_label text
        CONSTRAINT sessions_device_label_length CHECK (length(device_label) BETWEEN 1 AND 100);
