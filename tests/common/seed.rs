//! The one seeder: families (a session and its tokens) written straight
//! into the tables in one statement, in the terms of the due model, on any
//! schema version from V1 on. Shapes used by several test files are here
//! too; a shape one file needs stays in that file.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;
use uuid::Uuid;

use super::{DAY, HOUR, MINUTE, Reason, Revocation, SessionRow, TokenRow, plus, server_now};

/// A session and its tokens, generation 0 first. As rotate_token keeps them,
/// the session's generation and refresh_expires_at are its newest token's.
#[derive(Debug, Clone)]
pub struct Family {
    pub user: String,
    /// The login: the session's created_at and every token's issued_at.
    pub created_at: SystemTime,
    pub revoked: Option<Revocation>,
    pub tokens: Vec<TokenRow>,
    /// Each token's stored hash, generation 0 first; where there is none,
    /// SHA-256 of the session id's text and the generation.
    pub hashes: Vec<Vec<u8>>,
}

impl Family {
    /// A family of `user` logged in at `created_at`, not revoked as a whole.
    pub fn new(user: impl Into<String>, created_at: SystemTime, tokens: Vec<TokenRow>) -> Self {
        Self {
            user: user.into(),
            created_at,
            revoked: None,
            tokens,
            hashes: Vec::new(),
        }
    }

    /// The session row the seeder writes for this family.
    pub fn session(&self) -> SessionRow {
        SessionRow {
            refresh_expires_at: self.tokens.last().expect("a family has a token").expires_at,
            revoked: self.revoked,
        }
    }
}

/// Writes `families` into auth.sessions and auth.refresh_tokens in one
/// statement (no MAC key: as a release before V4, or a session whose key
/// nothing needs), then ANALYZEs both tables. Returns the session ids, in
/// the order of `families`.
pub async fn seed(client: &Client, families: &[Family]) -> Vec<Uuid> {
    let ids: Vec<Uuid> = families.iter().map(|_| Uuid::new_v4()).collect();
    let mut sessions = SessionColumns::default();
    let mut tokens = TokenColumns::default();
    for (id, family) in ids.iter().zip(families) {
        let session = family.session();
        sessions.user_id.push(family.user.as_str());
        sessions.created_at.push(family.created_at);
        sessions.generation.push(family.tokens.len() as i32 - 1);
        sessions.refresh_expires_at.push(session.refresh_expires_at);
        sessions.revoked_at.push(family.revoked.map(|r| r.at));
        sessions
            .reason
            .push(family.revoked.map(|r| r.reason.as_str()));
        for (generation, token) in family.tokens.iter().enumerate() {
            tokens.session_id.push(*id);
            tokens.generation.push(generation as i32);
            tokens
                .hash
                .push(family.hashes.get(generation).map(Vec::as_slice));
            tokens.issued_at.push(family.created_at);
            tokens.expires_at.push(token.expires_at);
            tokens.revoked_at.push(token.revoked.map(|r| r.at));
            tokens.reason.push(token.revoked.map(|r| r.reason.as_str()));
        }
    }
    client
        .execute(
            "WITH s AS (
                 INSERT INTO auth.sessions (id, user_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::timestamptz[],
                                      $6::timestamptz[], $7::text[]))
             INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason)
             SELECT t.session_id, t.generation, coalesce(t.hash, sha256((t.session_id::text || t.generation)::bytea)),
                    t.issued_at, t.expires_at, t.revoked_at, t.reason
             FROM unnest($8::uuid[], $9::int[], $10::bytea[], $11::timestamptz[], $12::timestamptz[],
                         $13::timestamptz[], $14::text[])
                  t(session_id, generation, hash, issued_at, expires_at, revoked_at, reason)",
            &[
                &ids,
                &sessions.user_id,
                &sessions.created_at,
                &sessions.generation,
                &sessions.refresh_expires_at,
                &sessions.revoked_at,
                &sessions.reason,
                &tokens.session_id,
                &tokens.generation,
                &tokens.hash,
                &tokens.issued_at,
                &tokens.expires_at,
                &tokens.revoked_at,
                &tokens.reason,
            ],
        )
        .await
        .unwrap();
    client
        .batch_execute("ANALYZE auth.sessions, auth.refresh_tokens")
        .await
        .unwrap();
    ids
}

/// auth.sessions' columns, one array each (the session ids apart).
#[derive(Default)]
struct SessionColumns<'a> {
    user_id: Vec<&'a str>,
    created_at: Vec<SystemTime>,
    generation: Vec<i32>,
    refresh_expires_at: Vec<SystemTime>,
    revoked_at: Vec<Option<SystemTime>>,
    reason: Vec<Option<&'static str>>,
}

/// auth.refresh_tokens' columns, one array each.
#[derive(Default)]
struct TokenColumns<'a> {
    session_id: Vec<Uuid>,
    generation: Vec<i32>,
    hash: Vec<Option<&'a [u8]>>,
    issued_at: Vec<SystemTime>,
    expires_at: Vec<SystemTime>,
    revoked_at: Vec<Option<SystemTime>>,
    reason: Vec<Option<&'static str>>,
}

/// Seeds `sessions` live families of `per_session` tokens each, on the
/// server's clock: logged in three hours ago, generations 0..n-2 rotated
/// (about one a minute, ending two hours ago, so all due under the default
/// policy) and the newest live for 30 days.
pub async fn seed_families(client: &Client, sessions: i64, per_session: i32) {
    let now = server_now(client).await;
    let families: Vec<Family> = (1..=sessions)
        .map(|i| {
            let tokens = (0..per_session)
                .map(|g| TokenRow {
                    expires_at: plus(now, 30 * DAY),
                    revoked: (g < per_session - 1).then(|| {
                        let minutes = i64::from(per_session - g) * MINUTE;
                        let jitter = Duration::from_secs_f64(rand::random::<f64>() * 60.0);
                        Reason::Rotated.at(plus(now, -2 * HOUR - minutes) - jitter)
                    }),
                })
                .collect();
            Family::new(format!("user-{i}"), plus(now, -3 * HOUR), tokens)
        })
        .collect();
    seed(client, &families).await;
}
