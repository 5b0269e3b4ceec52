//! Tokens through the SQL API at a driven clock (issue, rotate, purge), and
//! token strings taken apart and put together as a client or a thief can.

use std::time::SystemTime;

use base64::Engine;
use tokio_postgres::Client;

/// A stand-in token hash: SHA-256 of `seed`.
pub fn hash(seed: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(seed.as_bytes()).to_vec()
}

/// `auth.issue_token` with hash(seed), a TTL in seconds, at `now`.
pub async fn issue(
    client: &Client,
    user: &str,
    seed: &str,
    ttl_s: i64,
    now: SystemTime,
) -> uuid::Uuid {
    client
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => $1, p_token_hash => $2,
                 p_ttl => make_interval(secs => $3), p_now => $4)",
            &[&user, &hash(seed), &(ttl_s as f64), &now],
        )
        .await
        .unwrap()
        .get(0)
}

/// `auth.rotate_token` presenting hash(seed) for `generation` and asking for
/// hash(new_seed); returns the outcome. The token carries the authenticator
/// its issuer would have given it for that hash (computed with the session's
/// key, as only the database can): a genuine token when `seed` is the one
/// issued. A forger has no key: tests/forgery.rs builds its tokens.
pub async fn rotate(
    client: &Client,
    session: uuid::Uuid,
    generation: i32,
    seed: &str,
    new_seed: &str,
    ttl_s: i64,
    now: SystemTime,
) -> String {
    client
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                 p_token_hash => $3, p_new_token_hash => $4,
                 p_ttl => make_interval(secs => $5), p_now => $6,
                 p_authenticator => (SELECT auth._authenticator(s.mac_key, $1, $2, $3)
                                     FROM auth.sessions s WHERE s.id = $1))",
            &[
                &session,
                &generation,
                &hash(seed),
                &hash(new_seed),
                &(ttl_s as f64),
                &now,
            ],
        )
        .await
        .unwrap()
        .get(0)
}

/// `auth.purge_refresh_tokens` at `now`: (expired, revoked, rotated, sessions).
pub async fn purge(client: &Client, now: SystemTime, limit: Option<i32>) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT expired, revoked, rotated, sessions
             FROM auth.purge_refresh_tokens(p_now => $1, p_limit => $2)",
            &[&now, &limit],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// A token string taken apart as a client (or a thief) can: session id,
/// generation, secret, authenticator (rt2_ only).
pub struct Parts {
    pub session: uuid::Uuid,
    pub generation: i32,
    pub secret: Vec<u8>,
    pub authenticator: Option<Vec<u8>>,
}

pub fn parts(token: &str) -> Parts {
    let (prefix, body) = token.split_at(4);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    Parts {
        session: uuid::Uuid::from_slice(&bytes[..16]).unwrap(),
        generation: i32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        secret: bytes[20..52].to_vec(),
        authenticator: (prefix == "rt2_").then(|| bytes[52..68].to_vec()),
    }
}

/// A token string built from parts: rt2_ with an authenticator, rt1_ without.
pub fn build(
    session: uuid::Uuid,
    generation: i32,
    secret: &[u8],
    authenticator: Option<&[u8]>,
) -> String {
    let mut bytes = session.as_bytes().to_vec();
    bytes.extend_from_slice(&generation.to_be_bytes());
    bytes.extend_from_slice(secret);
    let prefix = match authenticator {
        Some(a) => {
            bytes.extend_from_slice(a);
            "rt2_"
        }
        None => "rt1_",
    };
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    bytes
}

/// Sets `auth.cleanup_policy.token_history`: `true` keeps a row per issued
/// token, `false` (the default) rotates an `rt2_` token in place. The
/// tests of the invariants run in both modes.
pub async fn set_token_history(client: &Client, on: bool) {
    client
        .execute("UPDATE auth.cleanup_policy SET token_history = $1", &[&on])
        .await
        .unwrap();
}
