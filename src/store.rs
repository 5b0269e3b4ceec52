//! `TokenStore`: issue, rotate and revoke refresh tokens through the SQL API.
//!
//! Each SQL function has one Rust function here that takes any client or
//! transaction (`*_with`), so callers can compose them with their own work;
//! [`TokenStore`] runs the same functions on a pooled connection.

use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::{Result, db};
use crate::token::{self, RefreshToken, Secret};

/// Default refresh token lifetime: 30 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A freshly issued token and where it sits.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Hand this to the client; it is never stored.
    pub token: RefreshToken,
    /// The session (token family).
    pub session_id: Uuid,
    /// 0 for a new session, +1 per rotation.
    pub generation: i32,
    /// When this token stops being accepted.
    pub expires_at: SystemTime,
}

/// The result of presenting a token for rotation (`auth.rotate_token` outcomes).
#[derive(Debug, Clone)]
pub enum Rotation {
    /// The token was live: here is its successor.
    Rotated(Issued),
    /// An older generation was replayed: the whole session is now revoked.
    ReuseDetected,
    /// The token or its session has expired.
    Expired,
    /// The token or its session was revoked.
    Revoked,
    /// The token's row exists but its secret does not match.
    Invalid,
    /// No such session, or a generation it never issued.
    Unknown,
}

/// Why a session is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The user logged out.
    Logout,
    /// An administrator revoked it.
    Admin,
    /// A replay of a rotated token was seen.
    ReuseDetected,
}

impl RevokeReason {
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Admin => "admin",
            Self::ReuseDetected => "reuse_detected",
        }
    }
}

/// One session as `auth.list_sessions` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session (family) id.
    pub session_id: Uuid,
    /// Login time.
    pub created_at: SystemTime,
    /// Generation of the newest token.
    pub generation: i32,
    /// Expiry of the newest token.
    pub refresh_expires_at: SystemTime,
    /// When the session was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// Why: logout, admin or reuse_detected.
    pub revoke_reason: Option<String>,
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

/// `auth.issue_token`: starts a session for `user_id`. `now` drives the clock
/// (None: the server's `now()`).
///
/// # Errors
/// [`crate::Error::Db`] with the server's message (e.g. an empty user id).
pub async fn issue_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    ttl: Duration,
    now: Option<SystemTime>,
) -> Result<Issued> {
    let secret = Secret::generate();
    let row = client
        .query_one(
            "SELECT session_id, generation, expires_at FROM auth.issue_token(
                 p_user_id => $1, p_token_hash => $2,
                 p_ttl => make_interval(secs => $3), p_now => coalesce($4, now()))",
            &[&user_id, &secret.hash(), &seconds(ttl), &now],
        )
        .await
        .map_err(db("issuing a refresh token"))?;
    let session_id: Uuid = row.get(0);
    let generation: i32 = row.get(1);
    Ok(Issued {
        token: secret.token(session_id, generation),
        session_id,
        generation,
        expires_at: row.get(2),
    })
}

/// `auth.rotate_token`: presents `token` and, when it is live, issues its
/// successor.
///
/// # Errors
/// [`crate::Error::MalformedToken`] for a string that is not a token (the
/// database is not asked); [`crate::Error::Db`] otherwise.
pub async fn rotate_with<C: GenericClient>(
    client: &C,
    token: &str,
    ttl: Duration,
    now: Option<SystemTime>,
) -> Result<Rotation> {
    let presented = token::parse(token)?;
    let next = Secret::generate();
    let row = client
        .query_one(
            "SELECT outcome, generation, expires_at FROM auth.rotate_token(
                 p_session_id => $1, p_generation => $2, p_token_hash => $3,
                 p_new_token_hash => $4, p_ttl => make_interval(secs => $5),
                 p_now => coalesce($6, now()))",
            &[
                &presented.session_id,
                &presented.generation,
                &presented.secret.hash(),
                &next.hash(),
                &seconds(ttl),
                &now,
            ],
        )
        .await
        .map_err(db("rotating a refresh token"))?;
    let outcome: &str = row.get(0);
    Ok(match outcome {
        "rotated" => {
            let generation: i32 = row.get(1);
            Rotation::Rotated(Issued {
                token: next.token(presented.session_id, generation),
                session_id: presented.session_id,
                generation,
                expires_at: row.get(2),
            })
        }
        "reuse_detected" => Rotation::ReuseDetected,
        "expired" => Rotation::Expired,
        "revoked" => Rotation::Revoked,
        "invalid" => Rotation::Invalid,
        _ => Rotation::Unknown,
    })
}

/// `auth.revoke_session`: returns how many tokens it revoked.
///
/// # Errors
/// [`crate::Error::Db`].
pub async fn revoke_session_with<C: GenericClient>(
    client: &C,
    session_id: Uuid,
    reason: RevokeReason,
    now: Option<SystemTime>,
) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT auth.revoke_session(p_session_id => $1, p_reason => $2, p_now => coalesce($3, now()))",
            &[&session_id, &reason.as_str(), &now],
        )
        .await
        .map_err(db("revoking a session"))?;
    Ok(row.get(0))
}

/// `auth.revoke_user_sessions`: returns how many sessions it revoked.
///
/// # Errors
/// [`crate::Error::Db`].
pub async fn revoke_user_sessions_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    reason: RevokeReason,
    now: Option<SystemTime>,
) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT auth.revoke_user_sessions(p_user_id => $1, p_reason => $2, p_now => coalesce($3, now()))",
            &[&user_id, &reason.as_str(), &now],
        )
        .await
        .map_err(db("revoking a user's sessions"))?;
    Ok(row.get(0))
}

/// `auth.list_sessions`: a user's sessions, newest first.
///
/// # Errors
/// [`crate::Error::Db`].
pub async fn list_sessions_with<C: GenericClient>(
    client: &C,
    user_id: &str,
) -> Result<Vec<SessionInfo>> {
    let rows = client
        .query(
            "SELECT session_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason
             FROM auth.list_sessions(p_user_id => $1)",
            &[&user_id],
        )
        .await
        .map_err(db("listing sessions"))?;
    Ok(rows
        .iter()
        .map(|row| SessionInfo {
            session_id: row.get(0),
            created_at: row.get(1),
            generation: row.get(2),
            refresh_expires_at: row.get(3),
            revoked_at: row.get(4),
            revoke_reason: row.get(5),
        })
        .collect())
}

/// Refresh tokens over a connection pool, with one token lifetime.
#[derive(Clone)]
pub struct TokenStore {
    pool: Pool,
    ttl: Duration,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TokenStore {
    /// A store on `pool` issuing tokens that live [`DEFAULT_TTL`] (30 days).
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            ttl: DEFAULT_TTL,
        }
    }

    /// Sets the lifetime of issued tokens. Default: [`DEFAULT_TTL`].
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Starts a session for `user_id` and returns its first token.
    ///
    /// # Errors
    /// [`crate::Error::Pool`] when no connection can be had, [`crate::Error::Db`].
    pub async fn issue(&self, user_id: &str) -> Result<Issued> {
        issue_with(&**self.pool.get().await?, user_id, self.ttl, None).await
    }

    /// Presents a token for rotation.
    ///
    /// # Errors
    /// [`crate::Error::MalformedToken`], [`crate::Error::Pool`], [`crate::Error::Db`].
    pub async fn rotate(&self, token: &str) -> Result<Rotation> {
        rotate_with(&**self.pool.get().await?, token, self.ttl, None).await
    }

    /// Revokes one session; returns how many tokens were revoked.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::Db`].
    pub async fn revoke_session(&self, session_id: Uuid, reason: RevokeReason) -> Result<i32> {
        revoke_session_with(&**self.pool.get().await?, session_id, reason, None).await
    }

    /// Revokes every session of a user; returns how many were revoked.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::Db`].
    pub async fn revoke_user_sessions(&self, user_id: &str, reason: RevokeReason) -> Result<i32> {
        revoke_user_sessions_with(&**self.pool.get().await?, user_id, reason, None).await
    }

    /// A user's sessions, newest first.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::Db`].
    pub async fn list_sessions(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        list_sessions_with(&**self.pool.get().await?, user_id).await
    }
}
